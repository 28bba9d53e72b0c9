//! Outbound end of message: skip recipients an earlier attempt already reinjected, encrypt
//! every batch, reinject batches 2..n (journaled), and keep batch 1 in this transaction.

use super::actions::{apply, delete_recipients, with_progress};
use super::session::{Context, Message};
use super::SessionError;
use crate::outbound::{Plan, Transaction};
use crate::store::Store;
use indymilter::{ContextActions, EomActions, Status};
use std::sync::Arc;
use std::time::Duration;

/// Journal entries outlive Mailman's retry period (5 days) with a margin.
const JOURNAL_RETENTION_SECS: u64 = 10 * 24 * 3600;

pub(super) async fn finish(
    cx: &Context,
    tx: Transaction,
    message: Message,
    actions: &EomActions,
) -> Result<Status, SessionError> {
    let store = cx.daemon.store();
    let qid = &message.queue_id;
    let list = tx.list().address.clone();
    let digest = body_digest(&message.bytes);
    let already = store.journal_sent(tx.sender(), &digest)?;
    let bytes = Arc::new(message.bytes);
    let tx = Arc::new(tx);
    let work = {
        let (bytes, tx) = (bytes.clone(), tx.clone());
        tokio::task::spawn_blocking(move || tx.finish(&bytes, &already))
    };
    let timeout = Duration::from_secs(cx.config.limits.message_timeout);
    let plan = with_progress(work, actions, timeout).await??;
    delete_recipients(actions, &plan.done).await?;
    let Some(first) = plan.batches.first() else {
        tracing::info!(
            "{qid}: {list}: every recipient already got this message in an earlier attempt; discarded"
        );
        return Ok(Status::Discard);
    };
    let reinjected = reinject(cx, store, &tx, &digest, &plan, &bytes, actions).await?;
    for batch in plan.batches.iter().skip(1) {
        delete_recipients(actions, &batch.recipients).await?;
    }
    apply(actions, &message.header_names, &first.rewrite).await?;
    tracing::info!("{qid}: {list}: {}", summary(&tx, &plan, &reinjected));
    Ok(Status::Continue)
}

/// Reinjects batches 2..n, journaling each right after the listener's 250.
async fn reinject(
    cx: &Context,
    store: &dyn Store,
    tx: &Transaction,
    digest: &[u8; 32],
    plan: &Plan,
    message: &[u8],
    actions: &EomActions,
) -> Result<Vec<String>, SessionError> {
    let addr = &cx.config.reinject_smtp;
    let sender = tx.sender();
    let mut reinjected = Vec::new();
    for batch in plan.batches.iter().skip(1) {
        let _ = actions.progress().await;
        let copy = batch.rewrite.render(message);
        let normalized: Vec<String> = batch
            .recipients
            .iter()
            .map(|r| crate::keys::normalize_address(r))
            .collect();
        let journal = |qid: &str| {
            store
                .journal_record(sender, digest, &normalized, qid, JOURNAL_RETENTION_SECS)
                .map_err(|e| e.to_string())
        };
        let qid = crate::reinject::send_batch_then(addr, sender, &batch.recipients, &copy, journal)
            .await?;
        reinjected.push(format!("{qid} ({} recipient(s))", batch.recipients.len()));
    }
    Ok(reinjected)
}

/// The decision's log line, after the queue id and list.
fn summary(tx: &Transaction, plan: &Plan, reinjected: &[String]) -> String {
    let n: usize = plan.batches.iter().map(|b| b.recipients.len()).sum();
    let mut line = format!(
        "message from {} encrypted to {n} recipient(s) in {} batch(es), signed by the list",
        tx.sender(),
        plan.batches.len()
    );
    if !reinjected.is_empty() {
        line.push_str(&format!("; reinjected as {}", reinjected.join(", ")));
    }
    if !plan.done.is_empty() {
        line.push_str(&format!(
            "; {} recipient(s) already served by an earlier attempt",
            plan.done.len()
        ));
    }
    line
}

/// The journal key's message part: SHA-256 of the Message-ID and the body. Not the whole
/// header: the MTA's own Received field differs on every attempt. The Message-ID keeps two
/// posts with the same body apart (Mailman reuses it only across one post's chunks).
fn body_digest(message: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    match crate::mime::Entity::parse(message) {
        Ok(e) => {
            if let Some(id) = e.get("Message-ID") {
                h.update(crate::mime::header_text(id).as_bytes());
            }
            h.update([0]);
            h.update(e.body);
        }
        Err(_) => h.update(message),
    }
    h.finalize().into()
}
