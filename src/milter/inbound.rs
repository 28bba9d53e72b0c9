//! Inbound end of message: the transaction's verdict, applied through the milter.

use super::actions::{apply, refuse, with_progress};
use super::session::{Context, Message};
use super::SessionError;
use crate::config::{InboundEnvelopeSender, Limits};
use crate::deadline::Deadline;
use crate::inbound::{Recording, Target, Transaction, Verdict};
use crate::metrics::{self, Direction, Outcome};
use crate::refusal::{Internal, Refusal};
use crate::state::{block_in_place, Daemon};
use indymilter::{ContextActions, EomActions, SmtpReply, Status};
use std::ffi::CString;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// What a post decided on the async worker may cost (see [`decide_on_worker`]): the message
/// on the wire, the plaintext it inflates to, and its OpenPGP packets (each signature with a
/// member's issuer is one verification, each PKESK one X25519 try). Within these, a post takes
/// at most about 10 ms of CPU; a typical one well under a millisecond.
const ON_WORKER_MAX_BYTES: usize = 32 * 1024;
const ON_WORKER_MAX_PLAINTEXT: u64 = 256 * 1024;
const ON_WORKER_MAX_PACKETS: u32 = 64;

pub(super) async fn finish(
    cx: &Context,
    tx: Transaction,
    message: Message,
    actions: &EomActions,
    reply: &mut SmtpReply,
) -> Result<Status, SessionError> {
    let timeout = Duration::from_secs(cx.config.limits.message_timeout);
    // The pipeline checks it between phases: a timed-out or abandoned message stops.
    let deadline = Deadline::after(timeout);
    let _cancel = deadline.cancel_on_drop();
    let post = Post::new(cx, tx, message.bytes);
    let list = post.list.clone();
    let decided = |outcome| metrics::decision(&list, Direction::Inbound, outcome);
    let (verdict, envelope) = match decide_on_worker(&post, &deadline) {
        // The replay record's durable write waits on the disk: off the worker.
        Some((verdict, now)) => block_in_place(|| post.conclude(verdict, now)),
        None => {
            // Decryption and verification share the cores with every other message's crypto
            // (the transaction takes a crypto permit around them, not around the replay write).
            let work = tokio::task::spawn_blocking(move || post.finish(&deadline));
            with_progress(work, actions, timeout).await?
        }
    };
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

/// One post at end of message, with what deciding it needs from the session.
struct Post {
    daemon: Arc<Daemon>,
    tx: Transaction,
    bytes: Vec<u8>,
    limits: Limits,
    setting: InboundEnvelopeSender,
    list: String,
}

impl Post {
    fn new(cx: &Context, tx: Transaction, bytes: Vec<u8>) -> Post {
        let list = match tx.target() {
            Target::List { list, .. } => list.address.clone(),
            _ => String::new(),
        };
        Post {
            daemon: cx.daemon.clone(),
            tx,
            bytes,
            limits: cx.config.limits.clone(),
            setting: cx.config.inbound_envelope_sender,
            list,
        }
    }

    /// The whole decision, blocking: the store's clock, the pipeline, the replay record.
    fn finish(&self, deadline: &Deadline) -> (Verdict, Option<String>) {
        // One clock reading per message, the database's where hosts share one (skew between
        // hosts must not move signature, replay or token windows).
        let now = match self.daemon.store().now() {
            Ok(now) => now,
            Err(e) => {
                tracing::warn!("the store's clock is unavailable: {e}");
                return (Verdict::Tempfail(Refusal::Internal(Internal::State)), None);
            }
        };
        let verdict = self
            .tx
            .decide_until(&self.bytes, &self.limits, now, deadline);
        self.conclude(verdict, now)
    }

    /// The replay rule on the pipeline's verdict (a durable write for an accepted post), the
    /// envelope sender Mailman gets, and the author's Autocrypt key offered for refresh.
    fn conclude(&self, verdict: Verdict, now: SystemTime) -> (Verdict, Option<String>) {
        let ledger = Recording(self.daemon.store());
        let verdict = self
            .tx
            .record(verdict, &self.bytes, &self.limits, &ledger, now);
        let envelope = self.tx.envelope_sender(self.setting, &verdict);
        crate::refresh::offer_from_post(&self.daemon, &self.list, &verdict, &self.bytes);
        (verdict, envelope)
    }
}

/// Decides a small post on the async worker when that costs no waiting: the store's clock is
/// this host's (no database round trip) and a crypto permit is free at once. Handing the
/// post to the blocking pool and back costs thread wake-ups: on a 2-core virtual machine this
/// path used about a tenth less of the daemon's CPU per 10 KiB post, and 22-29 context
/// switches instead of 29-36 (`contrib/bench/accept-rate.sh` with `CSW=1`, 2026-12-07; the
/// replay write still leaves the worker). The work is bounded by the `ON_WORKER_*` limits: a
/// post over them is decided again on the blocking pool under the configured limits. `None`:
/// the caller takes the blocking pool.
fn decide_on_worker(post: &Post, deadline: &Deadline) -> Option<(Verdict, SystemTime)> {
    if post.bytes.len() > ON_WORKER_MAX_BYTES {
        return None;
    }
    let now = post.daemon.store().local_now()?;
    let _permit = crate::crypto_pool::global().try_acquire()?;
    let limits = Limits {
        max_plaintext_bytes: post.limits.max_plaintext_bytes.min(ON_WORKER_MAX_PLAINTEXT),
        max_packets: post.limits.max_packets.min(ON_WORKER_MAX_PACKETS),
        ..post.limits.clone()
    };
    match post.tx.decide_until(&post.bytes, &limits, now, deadline) {
        // Over the worker's bounds, which may be below the configured ones.
        Verdict::Reject(Refusal::PlaintextTooLarge | Refusal::TooManyPackets) => None,
        verdict => Some((verdict, now)),
    }
}
