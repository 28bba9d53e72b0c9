//! Inbound end of message: the transaction's verdict, applied through the milter.

use super::actions::{apply, refuse, with_progress};
use super::session::{Context, Message};
use super::SessionError;
use crate::deadline::Deadline;
use crate::inbound::{Recording, Target, Transaction, Verdict};
use crate::metrics::{self, Direction, Outcome};
use crate::refusal::{Internal, Refusal};
use indymilter::{ContextActions, EomActions, SmtpReply, Status};
use std::ffi::CString;
use std::time::Duration;

pub(super) async fn finish(
    cx: &Context,
    tx: Transaction,
    message: Message,
    actions: &EomActions,
    reply: &mut SmtpReply,
) -> Result<Status, SessionError> {
    let daemon = cx.daemon.clone();
    let limits = cx.config.limits.clone();
    let bytes = message.bytes;
    let timeout = Duration::from_secs(cx.config.limits.message_timeout);
    // The pipeline checks it between phases: a timed-out or abandoned message stops.
    let deadline = Deadline::after(timeout);
    let _cancel = deadline.cancel_on_drop();
    let list = match tx.target() {
        Target::List { list, .. } => list.address.clone(),
        _ => String::new(),
    };
    let decided = |outcome| metrics::decision(&list, Direction::Inbound, outcome);
    let setting = cx.config.inbound_envelope_sender;
    let list_name = list.clone();
    // Decryption and verification share the cores with every other message's crypto (the
    // transaction takes a crypto permit around them, not around the replay write).
    let work = tokio::task::spawn_blocking(move || {
        // One clock reading per message, the database's where hosts share one (skew between
        // hosts must not move signature, replay or token windows).
        let now = match daemon.store().now() {
            Ok(now) => now,
            Err(e) => {
                tracing::warn!("the store's clock is unavailable: {e}");
                return (Verdict::Tempfail(Refusal::Internal(Internal::State)), None);
            }
        };
        let verdict = tx.finish_until(&bytes, &limits, &Recording(daemon.store()), now, &deadline);
        let envelope = tx.envelope_sender(setting, &verdict);
        crate::refresh::offer_from_post(&daemon, &list_name, &verdict, &bytes);
        (verdict, envelope)
    });
    let (verdict, envelope) = with_progress(work, actions, timeout).await?;
    let qid = &message.queue_id;
    let sender = &message.sender;
    match verdict {
        Verdict::Deliver {
            rewrite,
            hold,
            summary,
            ..
        } => {
            apply(actions, &message.header_names, &rewrite).await?;
            // Fail closed: a sender change the MTA refuses is our 451, never the author's DSN.
            let summary = match &envelope {
                Some(bounces) => {
                    actions
                        .change_sender(format!("<{bounces}>"), None::<CString>)
                        .await?;
                    format!("{summary}; envelope sender {bounces}")
                }
                None => summary,
            };
            decided(if hold.is_some() {
                Outcome::Hold
            } else {
                Outcome::Accept
            });
            match hold {
                Some(r) => tracing::info!("{qid}: {summary}; held for moderation: {r}"),
                None => tracing::info!("{qid}: {summary}"),
            }
            Ok(Status::Continue)
        }
        Verdict::Reject(r) | Verdict::Tempfail(r) => {
            tracing::info!("{qid}: post from {sender} refused: {r}");
            let status = refuse(reply, r);
            decided(if status == Status::Reject {
                Outcome::Reject
            } else {
                Outcome::Tempfail
            });
            Ok(status)
        }
        Verdict::Discard(why) => {
            decided(Outcome::Discard);
            tracing::info!("{qid}: post from {sender} discarded: {why}");
            Ok(Status::Discard)
        }
    }
}
