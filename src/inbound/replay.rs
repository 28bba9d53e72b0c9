//! The replay rule: an accepted post's author signature is recorded; the same signature again
//! is a duplicate, handled by `duplicate_action`. The daemon records; a dry run only looks.

use super::{act, Verdict};
use crate::config::Limits;
use crate::keys::ListKeys;
use crate::refusal::{Internal, Refusal};
use crate::store::{Store, StoreError};

/// Where replay digests are kept: recorded by the daemon, only consulted by a dry run.
pub trait ReplayLedger {
    /// Whether `digest` was seen on `list` before (recording it, for the daemon).
    fn seen(&self, list: &str, digest: &[u8; 32], retain_secs: u64) -> Result<bool, StoreError>;
}

/// The daemon's ledger: checks and records in one step.
pub struct Recording<'a>(pub &'a dyn Store);

/// A dry run's ledger: consults the record, never adds to it.
pub struct Peeking<'a>(pub &'a dyn Store);

impl ReplayLedger for Recording<'_> {
    fn seen(&self, list: &str, digest: &[u8; 32], retain_secs: u64) -> Result<bool, StoreError> {
        self.0.replay_record(list, digest, retain_secs)
    }
}

impl ReplayLedger for Peeking<'_> {
    fn seen(&self, list: &str, digest: &[u8; 32], _retain_secs: u64) -> Result<bool, StoreError> {
        self.0.replay_seen(list, digest)
    }
}

/// Seconds a replay record is kept: twice the signature time window, so a signature can never
/// be replayed inside its window after its record expired.
pub fn replay_retention(limits: &Limits) -> u64 {
    limits.signature_time_window.saturating_mul(2)
}

/// SHA-256 over the list and the author's signature packet: the replay record.
pub(super) fn digest(list: &str, packet: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(list.as_bytes());
    h.update([0]);
    h.update(packet);
    h.finalize().into()
}

/// Applies `duplicate_action` to an accepted post whose signature digest was seen before.
pub(super) fn apply(
    verdict: Verdict,
    list: &ListKeys,
    limits: &Limits,
    ledger: &dyn ReplayLedger,
) -> Verdict {
    let Verdict::Deliver {
        replay: Some(d), ..
    } = &verdict
    else {
        return verdict;
    };
    match ledger.seen(&list.address, d, replay_retention(limits)) {
        Ok(true) => duplicate(verdict, list),
        Ok(false) => verdict,
        Err(e) => {
            tracing::warn!("{}: replay record unavailable: {e}", list.address);
            Verdict::Tempfail(Refusal::Internal(Internal::State))
        }
    }
}

fn duplicate(verdict: Verdict, list: &ListKeys) -> Verdict {
    let Verdict::Deliver {
        mut rewrite,
        replay,
        summary,
        ..
    } = verdict
    else {
        return verdict;
    };
    act(
        list.policy.duplicate_action,
        Refusal::Duplicate,
        move |hold| {
            if let Some(r) = &hold {
                rewrite.add.push(("X-Listcrypt-Hold".into(), r.clone()));
            }
            Verdict::Deliver {
                rewrite,
                hold,
                summary: format!("{summary}; duplicate"),
                replay,
            }
        },
    )
}
