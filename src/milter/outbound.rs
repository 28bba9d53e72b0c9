//! Outbound end of message: skip recipients an earlier attempt already reinjected, encrypt
//! every batch, reinject batches 2..n (journaled), and keep batch 1 in this transaction.
//! Recipients of a batch an earlier attempt may have queued without journaling it (an intent
//! without a record: in doubt) are sent again, and each such batch is logged and counted.

use super::actions::{apply, delete_recipients, with_progress};
use super::session::{Context, Message};
use super::SessionError;
use crate::deadline::Deadline;
use crate::metrics::{self, Direction, Outcome};
use crate::outbound::{Plan, Transaction};
use crate::reinject::{self, Delivery, OnRefusedRcpt, ReinjectError};
use crate::state::block_in_place;
use crate::store::Store;
use indymilter::{ContextActions, EomActions, Status};
use std::sync::atomic::{AtomicUsize, Ordering};
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
    let ids = crate::inbound::emitted_message_ids(&message.bytes);
    confirm_replay(cx, qid, &list, ids).await?;
    let digest = body_digest(&message.bytes);
    let msgid = message_id_for_log(&message.bytes);
    let sender = tx.sender().to_string();
    let (already, in_doubt) = cx
        .daemon
        .blocking(move |d| -> Result<_, crate::store::StoreError> {
            let sent = d.store().journal_sent(&sender, &digest)?;
            Ok((sent, d.store().journal_in_doubt(&sender, &digest)?))
        })
        .await??;
    let bytes = Arc::new(message.bytes);
    // Archived before any copy goes out: a failure here is a 451, never an unarchived post.
    super::archive::post(cx, qid, &tx, &bytes).await?;
    let tx = Arc::new(tx);
    let timeout = Duration::from_secs(cx.config.limits.message_timeout);
    // The encryption checks it between batches: a timed-out or abandoned plan stops.
    let deadline = Deadline::after(timeout);
    let _cancel = deadline.cancel_on_drop();
    let work = {
        let (bytes, tx) = (bytes.clone(), tx.clone());
        tokio::task::spawn_blocking(move || tx.finish_until(&bytes, &already, &deadline))
    };
    let started = std::time::Instant::now();
    let plan = with_progress(work, actions, timeout).await??;
    let sizes = plan.batches.iter().map(|b| b.recipients.len());
    metrics::encrypted(started.elapsed(), sizes);
    delete_recipients(actions, &plan.done).await?;
    let Some(first) = plan.batches.first() else {
        metrics::decision(&list, Direction::Outbound, Outcome::Discard);
        tracing::info!(
            "{qid}: {list}: every recipient already got this message in an earlier attempt; discarded"
        );
        return Ok(Status::Discard);
    };
    for n in resent_in_doubt(&in_doubt, &plan) {
        log_in_doubt(qid, &list, &msgid, n);
    }
    let post = Post {
        digest: &digest,
        msgid: &msgid,
    };
    let reinjected = reinject(qid, cx, store, &tx, &post, &plan, &bytes, actions).await?;
    for batch in plan.batches.iter().skip(1) {
        delete_recipients(actions, &batch.recipients).await?;
    }
    apply(actions, &message.header_names, &first.rewrite).await?;
    metrics::decision(&list, Direction::Outbound, Outcome::Accept);
    tracing::info!("{qid}: {list}: {}", summary(&tx, &plan, &reinjected));
    Ok(Status::Continue)
}

/// Mailman emitting a post, or a hold or rejection notice carrying it, shows that Mailman has
/// it: the post's tentative replay record becomes final (see `inbound::replay`).
async fn confirm_replay(
    cx: &Context,
    qid: &str,
    list: &str,
    ids: Vec<String>,
) -> Result<(), SessionError> {
    if ids.is_empty() {
        return Ok(());
    }
    let l = list.to_string();
    let n = cx
        .daemon
        .blocking(move |d| {
            // The clock inbound claimed the record with (the database's with PostgreSQL).
            let now = d.store().now()?;
            d.store().replay_confirm(&l, &ids, now)
        })
        .await??;
    if n > 0 {
        tracing::debug!("{qid}: {list}: {n} replay record(s) now final");
    }
    Ok(())
}

/// What names a post in the journal and in its log lines.
struct Post<'a> {
    /// The journal key's message part ([`body_digest`]).
    digest: &'a [u8; 32],
    /// The Message-ID, for log lines ([`message_id_for_log`]).
    msgid: &'a str,
}

/// Reinjects batches 2..n, journaling each right after the listener's 250. A recipient the
/// listener refuses gets a content-free bounce to the list's bounces address (Mailman counts
/// it against that member) instead of failing the whole post.
#[allow(clippy::too_many_arguments)] // the transaction's parts, each used
async fn reinject(
    qid: &str,
    cx: &Context,
    store: &dyn Store,
    tx: &Transaction,
    post: &Post<'_>,
    plan: &Plan,
    message: &[u8],
    actions: &EomActions,
) -> Result<Vec<String>, SessionError> {
    let mut reinjected = Vec::new();
    for batch in plan.batches.iter().skip(1) {
        let _ = actions.progress().await;
        let copy = batch.rewrite.render(message);
        let delivery = send_once(qid, cx, store, tx, post, &batch.recipients, &copy).await?;
        for (rcpt, reply) in &delivery.refused {
            bounce(qid, cx, store, tx, post.digest, rcpt, reply).await?;
        }
        if let Some(id) = delivery.queue_id {
            let n = batch.recipients.len() - delivery.refused.len();
            reinjected.push(format!("{id} ({n} recipient(s))"));
        }
    }
    Ok(reinjected)
}

/// Sends one batch, journaling an intent before its final dot. When its fate is unknown (the
/// connection broke after the dot) it is sent once more: at least once, like Postfix itself,
/// and logged as in doubt. An intent that cannot be journaled keeps the dot back and fails the
/// transaction (451); a record that cannot be journaled after the listener's 250 is logged,
/// and its intent makes a retry of the post resend the batch as in doubt.
async fn send_once(
    qid: &str,
    cx: &Context,
    store: &dyn Store,
    tx: &Transaction,
    post: &Post<'_>,
    recipients: &[String],
    copy: &[u8],
) -> Result<Delivery, SessionError> {
    let digest = post.digest;
    let addr = &cx.config.reinject_smtp;
    let (sender, list) = (tx.sender(), &tx.list().address);
    let mut attempt = 0;
    loop {
        attempt += 1;
        // Atomic only because the future must be Send.
        let intended = AtomicUsize::new(0);
        // Called after the body and before the dot, then right after the listener's 250,
        // inside the SMTP exchange.
        let intent = |accepted: &[String]| {
            intended.store(accepted.len(), Ordering::Relaxed);
            block_in_place(|| intend(store, sender, digest, accepted))
        };
        let journal = |qid: &str, accepted: &[String]| {
            block_in_place(|| journal(store, sender, digest, accepted, qid))
        };
        let sent = reinject::deliver(
            addr,
            sender,
            recipients,
            copy,
            OnRefusedRcpt::Report,
            intent,
            journal,
        );
        match sent.await {
            Ok(delivery) => return Ok(delivery),
            Err(ReinjectError::Journal {
                queue_id, reason, ..
            }) => {
                tracing::error!(
                    "{qid}: {list}: batch queued as {queue_id} but not journaled ({reason}); a retry of this post would send it again, logged as in doubt"
                );
                return Ok(Delivery {
                    queue_id: Some(queue_id),
                    refused: Vec::new(),
                });
            }
            Err(e) => {
                if let Some(reply) = e.refused_message() {
                    // Too large for the listener, say: each recipient gets its bounce.
                    tracing::warn!(
                        "{qid}: {list}: batch refused at end of DATA ({}); its recipients are bounced",
                        reply.code
                    );
                    metrics::reinjection_failure();
                    let refused = recipients.iter().map(|r| (r.clone(), reply.clone()));
                    return Ok(Delivery {
                        queue_id: None,
                        refused: refused.collect(),
                    });
                }
                if !(e.in_doubt() && attempt == 1) {
                    if !matches!(e, ReinjectError::Intent { .. }) {
                        metrics::reinjection_failure();
                    }
                    return Err(e.into());
                }
                tracing::debug!("{qid}: {list}: batch in doubt: {e}");
                log_in_doubt(qid, list, post.msgid, intended.load(Ordering::Relaxed));
            }
        }
    }
}

/// The one line (and count) per in-doubt batch sent again; the fault campaign's ledger parses
/// it, so its form stays as it is.
fn log_in_doubt(qid: &str, list: &str, msgid: &str, n: usize) {
    metrics::reinject_in_doubt();
    tracing::warn!(
        "{qid}: {list}: reinjection in doubt for message-id {msgid}: {n} recipient(s) may get a second copy; resending"
    );
}

/// For each batch an earlier attempt left in doubt, how many of its recipients this plan
/// sends to (in batch 1 or reinjected): recipients already journaled are in no batch.
fn resent_in_doubt(in_doubt: &[Vec<String>], plan: &Plan) -> Vec<usize> {
    let planned: std::collections::HashSet<String> = plan
        .batches
        .iter()
        .flat_map(|b| &b.recipients)
        .map(|r| crate::keys::normalize_address(r))
        .collect();
    in_doubt
        .iter()
        .map(|batch| batch.iter().filter(|r| planned.contains(*r)).count())
        .filter(|&n| n > 0)
        .collect()
}

/// The post's Message-ID for a log line, angle brackets included (`<none>` without one),
/// with nothing in it that could break the line.
fn message_id_for_log(message: &[u8]) -> String {
    let id = crate::mime::Entity::parse(message)
        .ok()
        .and_then(|e| e.get("Message-ID").map(crate::mime::header_text))
        .and_then(|v| crate::inbound::message_id_key(&v));
    let Some(id) = id else {
        return "<none>".into();
    };
    // Whole (at most a header line long), so that a ledger can match it to the post.
    let id: String = id.chars().filter(|c| !c.is_control()).collect();
    let bare = id.trim_start_matches('<').trim_end_matches('>');
    format!("<{bare}>")
}

/// Normalised like the journal's records, so that the record settles the intent.
fn normalized(recipients: &[String]) -> Vec<String> {
    recipients
        .iter()
        .map(|r| crate::keys::normalize_address(r))
        .collect()
}

fn intend(
    store: &dyn Store,
    sender: &str,
    digest: &[u8; 32],
    recipients: &[String],
) -> Result<(), String> {
    store
        .journal_intent(
            sender,
            digest,
            &normalized(recipients),
            JOURNAL_RETENTION_SECS,
        )
        .map_err(|e| e.to_string())
}

fn journal(
    store: &dyn Store,
    sender: &str,
    digest: &[u8; 32],
    recipients: &[String],
    qid: &str,
) -> Result<(), String> {
    store
        .journal_record(
            sender,
            digest,
            &normalized(recipients),
            qid,
            JOURNAL_RETENTION_SECS,
        )
        .map_err(|e| e.to_string())
}

/// A content-free DSN for a refused recipient, to the list's bounces address; journaled, so a
/// retry of the post neither sends it nor bounces it again.
async fn bounce(
    qid: &str,
    cx: &Context,
    store: &dyn Store,
    tx: &Transaction,
    digest: &[u8; 32],
    rcpt: &str,
    reply: &reinject::SmtpReply,
) -> Result<(), SessionError> {
    let host = tx.list().parts().1.to_string();
    let dsn = crate::bounce::refused_recipient(
        tx.sender(),
        rcpt,
        reply.code,
        &reply.text,
        &host,
        chrono::DateTime::from(std::time::SystemTime::now()),
    );
    let to = [tx.sender().to_string()];
    let id = reinject::send_batch(&cx.config.reinject_smtp, "", &to, &dsn).await?;
    block_in_place(|| journal(store, tx.sender(), digest, &[rcpt.to_string()], &id)).map_err(
        |e| {
            tracing::error!(
                "{qid}: {}: bounce for {rcpt} not journaled: {e}",
                tx.list().address
            );
            SessionError::Journal(e)
        },
    )?;
    tracing::info!(
        "{qid}: {}: recipient {rcpt} refused by the reinjection listener ({}); bounce queued as {id}",
        tx.list().address,
        reply.code
    );
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::message_id_for_log;

    #[test]
    fn the_log_names_the_message_id_in_angle_brackets_or_none() {
        let id = |m: &[u8]| message_id_for_log(m);
        assert_eq!(id(b"Message-ID: <a.1@x.test>\n\nbody\n"), "<a.1@x.test>");
        // RFC 5322 §3.6.4 allows folding and comments around it; they are not the id.
        assert_eq!(
            id(b"Message-Id:\n <a.2@x.test> (a comment)\n\nbody\n"),
            "<a.2@x.test>"
        );
        assert_eq!(id(b"Message-ID: a.3@x.test\n\nbody\n"), "<a.3@x.test>");
        assert_eq!(
            id(b"Message-ID: <a\x1b[31m.4@x.test>\n\n"),
            "<a[31m.4@x.test>"
        );
        assert_eq!(id(b"Subject: none\n\nbody\n"), "<none>");
        assert_eq!(id(b"Message-ID:  \n\nbody\n"), "<none>");
    }
}
