//! Postfix's own notifications (DSNs): one that quotes list mail is reduced to a content-free
//! notice before it goes anywhere.

use super::actions::apply;
use super::session::{Context, Message};
use super::SessionError;
use indymilter::{EomActions, Status};

pub(super) async fn finish(
    cx: &Context,
    message: Message,
    actions: &EomActions,
) -> Result<Status, SessionError> {
    let keyring = cx.daemon.keyring()?;
    let bytes = message.bytes;
    // Parsing a whole notification is CPU work: off the async workers.
    let reduced = tokio::task::spawn_blocking(move || crate::dsn::reduce(&bytes, &keyring));
    let Some(rewrite) = reduced.await? else {
        return Ok(Status::Accept);
    };
    apply(actions, &message.header_names, &rewrite).await?;
    tracing::info!(
        "{}: delivery notification for list mail reduced to a content-free notice",
        message.queue_id
    );
    Ok(Status::Continue)
}
