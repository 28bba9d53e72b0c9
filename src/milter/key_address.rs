//! End of message at a list's key address: listcrypt answers (through the reinjection
//! listener) and consumes the mail; Mailman never sees it. The processor only plans its
//! writes; they are made once the reply is with the MTA, so a retry after a failed reply is
//! answered again rather than taken for a replay.

use super::actions::with_progress;
use super::session::{Context, Message};
use super::SessionError;
use crate::key_address::Processor;
use crate::keys::ListKeys;
use crate::metrics::{self, Direction, Outcome};
use indymilter::{EomActions, Status};
use std::sync::Arc;
use std::time::Duration;

pub(super) async fn finish(
    cx: &Context,
    list: Arc<ListKeys>,
    message: Message,
    actions: &EomActions,
) -> Result<Status, SessionError> {
    let timeout = Duration::from_secs(cx.config.limits.message_timeout);
    let (daemon, config) = (cx.daemon.clone(), cx.config.clone());
    let (l, sender, bytes) = (list.clone(), message.sender.clone(), message.bytes);
    let work = tokio::task::spawn_blocking(move || {
        let processor = Processor {
            list: &l,
            store: daemon.store(),
            keyring_dir: &config.keyring_dir,
            limits: &config.limits,
        };
        // The database's clock where hosts share one: challenge tokens expire on it.
        let now = daemon.store().now()?;
        crate::crypto_pool::global().run(|| processor.process(&sender, &bytes, now))
    });
    let outcome = with_progress(work, actions, timeout).await??;
    let queued = match &outcome.reply {
        Some(out) => {
            let to = [out.to.clone()];
            let qid = crate::reinject::send_batch(&cx.config.reinject_smtp, "", &to, &out.message)
                .await
                .inspect_err(|_| metrics::reinjection_failure())?;
            format!("; reply queued as {qid}")
        }
        None => String::new(),
    };
    let (daemon, config) = (cx.daemon.clone(), cx.config.clone());
    let summary = outcome.summary.clone();
    let commit = tokio::task::spawn_blocking(move || {
        outcome.commit(daemon.store(), &config.keyring_dir)?;
        // A binding made here counts from the sender's next message on.
        if let Err(e) = daemon.refresh_now() {
            tracing::error!("keyring reload failed, still using the previous one: {e}");
        }
        Ok::<_, crate::key_address::KeyAddressError>(())
    });
    with_progress(commit, actions, timeout).await??;
    // Answered is accepted; mail the processor ignores (no reply) counts as discarded.
    let outcome = if queued.is_empty() {
        Outcome::Discard
    } else {
        Outcome::Accept
    };
    metrics::decision(&list.address, Direction::KeyAddress, outcome);
    tracing::info!("{}: {}: {summary}{queued}", message.queue_id, list.address);
    // Consumed: Mailman never sees mail to the key address.
    Ok(Status::Discard)
}
