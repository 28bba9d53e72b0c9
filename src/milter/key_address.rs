//! End of message at a list's key address: listcrypt answers (through the reinjection
//! listener) and consumes the mail; Mailman never sees it.

use super::actions::with_progress;
use super::session::{Context, Message};
use super::SessionError;
use crate::keys::ListKeys;
use indymilter::{EomActions, Status};
use std::sync::Arc;
use std::time::Duration;

pub(super) async fn finish(
    cx: &Context,
    list: Arc<ListKeys>,
    message: Message,
    actions: &EomActions,
) -> Result<Status, SessionError> {
    let daemon = cx.daemon.clone();
    let limits = cx.config.limits.clone();
    let keyring_dir = cx.config.keyring_dir.clone();
    let sender = message.sender.clone();
    let l = list.clone();
    let bytes = message.bytes;
    let work = tokio::task::spawn_blocking(move || {
        crate::commands::handle(&l, daemon.store(), &keyring_dir, &sender, &bytes, &limits)
    });
    let timeout = Duration::from_secs(cx.config.limits.message_timeout);
    let outcome = with_progress(work, actions, timeout).await??;
    let qid = &message.queue_id;
    match &outcome.reply {
        Some(out) => {
            let to = [out.to.clone()];
            let sent = crate::reinject::send_batch(&cx.config.reinject_smtp, "", &to, &out.message)
                .await?;
            tracing::info!(
                "{qid}: {}: {}; reply queued as {sent}",
                list.address,
                outcome.summary
            );
        }
        None => tracing::info!("{qid}: {}: {}", list.address, outcome.summary),
    }
    // Consumed: Mailman never sees mail to the key address.
    Ok(Status::Discard)
}
