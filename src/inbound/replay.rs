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

/// The ledger scope every digest is recorded under: one scope for the host, so that a signature
/// without an Intended Recipient is a replay on any of its lists (the list, when the signature
/// names one, is inside the digest instead).
pub const HOST_SCOPE: &str = "*";

/// SHA-256 over what the author's signature binds (`GoodSignature::bound`, so re-wrapping it
/// with other unhashed subpackets changes nothing) and, for a signature with an Intended
/// Recipient, the list it was accepted on.
pub(super) fn digest(sig: &crate::pgp::GoodSignature, list: &str) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    if sig.intended_recipients.is_empty() {
        h.update(b"any list\0");
    } else {
        h.update(b"list\0");
        h.update(list.as_bytes());
        h.update([0]);
    }
    h.update(&sig.bound);
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
    match ledger.seen(HOST_SCOPE, d, replay_retention(limits)) {
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

#[cfg(test)]
mod tests {
    use super::digest;
    use crate::pgp::GoodSignature;
    use sequoia_openpgp::Fingerprint;

    fn sig(intended: Vec<Fingerprint>) -> GoodSignature {
        GoodSignature {
            signer: Fingerprint::from_bytes(4, &[1; 20]).unwrap(),
            created: None,
            hash_name: "SHA256".into(),
            intended_recipients: intended,
            text: false,
            packet: b"packet one".to_vec(),
            bound: b"bound".to_vec(),
            armored: Vec::new(),
        }
    }

    /// A signature without Intended Recipient accepted on one list of the host is a replay on
    /// another, through the real ledger.
    #[test]
    fn a_digest_accepted_on_one_list_is_a_replay_on_another() {
        use super::{apply, Recording};
        use crate::config::{Limits, Policy};
        use crate::inbound::Verdict;
        use crate::keys::ListKeys;
        use crate::store::SqliteStore;
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        let list = |a: &str| {
            let (cert, _) = sequoia_openpgp::cert::CertBuilder::new()
                .add_userid(a)
                .generate()
                .unwrap();
            ListKeys::new(a.into(), Policy::default(), cert, Vec::new())
        };
        let (one, two) = (list("one@x.test"), list("two@x.test"));
        let d = digest(&sig(Vec::new()), &one.address);
        let post = || Verdict::Deliver {
            rewrite: Default::default(),
            hold: None,
            summary: String::new(),
            replay: Some(d),
        };
        let limits = Limits::default();
        let ledger = Recording(&store);
        assert!(matches!(
            apply(post(), &one, &limits, &ledger),
            Verdict::Deliver { .. }
        ));
        // duplicate_action defaults to discard.
        assert!(matches!(
            apply(post(), &two, &limits, &ledger),
            Verdict::Discard(_)
        ));
    }

    #[test]
    fn digest_ignores_the_packet_and_the_list_without_intended_recipient() {
        let a = sig(Vec::new());
        let mut b = a.clone();
        b.packet = b"packet two, extra unhashed subpacket".to_vec();
        assert_eq!(digest(&a, "one@x"), digest(&b, "one@x"));
        // GnuPG 2.2: no Intended Recipient, so accepted on one list is a replay on any other.
        assert_eq!(digest(&a, "one@x"), digest(&a, "two@x"));
        let named = sig(vec![Fingerprint::from_bytes(4, &[2; 20]).unwrap()]);
        assert_ne!(digest(&named, "one@x"), digest(&named, "two@x"));
        let mut other = a.clone();
        other.bound = b"other data".to_vec();
        assert_ne!(digest(&a, "one@x"), digest(&other, "one@x"));
    }
}
