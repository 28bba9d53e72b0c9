//! The replay rule: an accepted post's author signature is recorded; the same signature again
//! is a duplicate. The record is tentative until the outbound side sees Mailman emit the post
//! (or a notice carrying it) under its Message-ID, and final after that. A duplicate of a
//! final record is handled by `duplicate_action`; a duplicate of a tentative one may be the
//! sender's retry of a copy lost after listcrypt's yes, so it gets `451 4.7.1`; a tentative
//! record with no evidence within `limits.replay_confirm_window` is dropped, so the next retry
//! counts as new. The daemon records; a dry run only looks.

use super::{act, Verdict};
use crate::config::{Action, Limits};
use crate::keys::ListKeys;
use crate::message::Rewrite;
use crate::refusal::{Internal, Refusal};
use crate::store::{ReplayClaim, ReplayState, Store, StoreError};
use std::time::SystemTime;

/// Where replay digests are kept: recorded by the daemon, only consulted by a dry run.
pub trait ReplayLedger {
    /// The state of the record for the claim's digest, or `None` when there is none (the
    /// daemon then records the claim as tentative).
    fn claim(
        &self,
        claim: &ReplayClaim<'_>,
        now: SystemTime,
    ) -> Result<Option<ReplayState>, StoreError>;
}

/// The daemon's ledger: checks and records in one step.
pub struct Recording<'a>(pub &'a dyn Store);

/// A dry run's ledger: consults the record, never adds to it.
pub struct Peeking<'a>(pub &'a dyn Store);

impl ReplayLedger for Recording<'_> {
    fn claim(
        &self,
        claim: &ReplayClaim<'_>,
        now: SystemTime,
    ) -> Result<Option<ReplayState>, StoreError> {
        self.0.replay_claim(claim, now)
    }
}

impl ReplayLedger for Peeking<'_> {
    fn claim(
        &self,
        claim: &ReplayClaim<'_>,
        _now: SystemTime,
    ) -> Result<Option<ReplayState>, StoreError> {
        // A dry run shows what `duplicate_action` would do once the first copy is distributed.
        Ok(self
            .0
            .replay_state(claim.scope, claim.digest)?
            .map(|_| ReplayState::Final))
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

/// The Message-ID Mailman keeps for a post: the one the rewrite sets (a protected Message-ID
/// lifted over the outer one), else the outer one unless the rewrite removes it.
fn message_id_for_mailman(rewrite: &Rewrite, message: &[u8]) -> Option<String> {
    if let Some((_, v)) = rewrite
        .add
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("Message-ID"))
    {
        return message_id_key(v);
    }
    if rewrite.removes("Message-ID") {
        return None;
    }
    let outer = crate::mime::Entity::parse(message).ok()?;
    message_id_key(&crate::mime::header_text(outer.get("Message-ID")?))
}

/// A Message-ID as the ledger compares it: the `<…>` token, unfolded; `None` when empty or
/// longer than a header line may be.
pub fn message_id_key(value: &str) -> Option<String> {
    let value = value.trim();
    let id = match (value.find('<'), value.find('>')) {
        (Some(a), Some(b)) if a < b => &value[a..=b],
        _ => value,
    };
    let id: String = id.split_whitespace().collect();
    (!id.is_empty() && id.len() <= 998).then_some(id)
}

/// At most this many first-level parts of a notice are looked at for a carried post: a hold
/// or rejection notice carries it as its second part.
const NOTICE_PARTS: usize = 4;

/// The Message-IDs a message from a list's bounces address shows Mailman has: its own, and
/// those of posts it carries as `message/rfc822` among its first few first-level parts (hold
/// and rejection notices). Nested parts (a MIME digest's) are not read: bounded work.
pub fn emitted_message_ids(message: &[u8]) -> Vec<String> {
    let Ok(outer) = crate::mime::Entity::parse(message) else {
        return Vec::new();
    };
    let mut ids: Vec<String> = outer
        .get("Message-ID")
        .and_then(|h| message_id_key(&crate::mime::header_text(h)))
        .into_iter()
        .collect();
    let ct = outer.content_type();
    let Some(boundary) = ct.params.get("boundary") else {
        return ids;
    };
    if ct.mimetype != "multipart/mixed" {
        return ids;
    }
    let Ok(parts) = crate::mime::split_multipart(outer.body, boundary) else {
        return ids;
    };
    for part in parts.into_iter().take(NOTICE_PARTS) {
        let Ok(entity) = crate::mime::Entity::parse(part) else {
            continue;
        };
        if entity.content_type().mimetype != "message/rfc822" {
            continue;
        }
        let carried = crate::mime::Entity::parse(entity.body).ok();
        if let Some(id) = carried
            .as_ref()
            .and_then(|c| c.get("Message-ID"))
            .and_then(|h| message_id_key(&crate::mime::header_text(h)))
        {
            ids.push(id);
        }
    }
    ids
}

/// Applies the replay rule to an accepted post: a new digest is recorded (tentative), a
/// duplicate of a final record follows `duplicate_action`, one of a tentative record gets
/// `451 4.7.1` (unless duplicates are accepted anyway).
pub(super) fn apply(
    verdict: Verdict,
    list: &ListKeys,
    limits: &Limits,
    ledger: &dyn ReplayLedger,
    message: &[u8],
    now: SystemTime,
) -> Verdict {
    let Verdict::Deliver {
        replay: Some(d),
        rewrite,
        ..
    } = &verdict
    else {
        return verdict;
    };
    let message_id = message_id_for_mailman(rewrite, message);
    let claim = ReplayClaim {
        scope: HOST_SCOPE,
        digest: d,
        list: &list.address,
        message_id: message_id.as_deref(),
        retain_secs: replay_retention(limits),
        confirm_secs: limits.replay_confirm_window,
    };
    match ledger.claim(&claim, now) {
        Ok(None) => verdict,
        Ok(Some(ReplayState::Tentative)) if list.policy.duplicate_action != Action::Accept => {
            Verdict::Tempfail(Refusal::DuplicatePending)
        }
        Ok(Some(_)) => duplicate(verdict, list),
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
                // A copy of an earlier post refreshes no key.
                signer: None,
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::digest;
    use crate::pgp::testkit::primary_only;
    use crate::pgp::Fingerprint;
    use crate::pgp::GoodSignature;
    use crate::store::Store;
    use std::time::SystemTime;

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
            let cert = primary_only(&[a]);
            ListKeys::new(a.into(), Policy::default(), cert, Vec::new())
        };
        let (one, two) = (list("one@x.test"), list("two@x.test"));
        let d = digest(&sig(Vec::new()), &one.address);
        let post = || Verdict::Deliver {
            rewrite: Default::default(),
            hold: None,
            summary: String::new(),
            replay: Some(d),
            signer: None,
        };
        let limits = Limits::default();
        let ledger = Recording(&store);
        let now = SystemTime::now();
        let message = b"Message-ID: <p1@x.test>\r\n\r\nbody\r\n";
        assert!(matches!(
            apply(post(), &one, &limits, &ledger, message, now),
            Verdict::Deliver { .. }
        ));
        // Not yet seen with Mailman: the sender is asked to retry.
        assert_eq!(
            apply(post(), &two, &limits, &ledger, message, now),
            Verdict::Tempfail(crate::refusal::Refusal::DuplicatePending)
        );
        // Mailman emitted it on list one: duplicate_action (default discard) on any list.
        let ids = vec!["<p1@x.test>".to_string()];
        assert_eq!(store.replay_confirm(&one.address, &ids, now).unwrap(), 1);
        assert!(matches!(
            apply(post(), &two, &limits, &ledger, message, now),
            Verdict::Discard(_)
        ));
    }

    /// The window elapses with no evidence: the retry counts as new (the clock is injected).
    #[test]
    fn a_tentative_record_past_the_confirm_window_lets_the_retry_through() {
        use super::{apply, Recording};
        use crate::config::{Limits, Policy};
        use crate::inbound::Verdict;
        use crate::keys::ListKeys;
        use crate::store::SqliteStore;
        use std::time::Duration;
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        let cert = primary_only(&["one@x.test"]);
        let list = ListKeys::new("one@x.test".into(), Policy::default(), cert, Vec::new());
        let post = || Verdict::Deliver {
            rewrite: Default::default(),
            hold: None,
            summary: String::new(),
            replay: Some([7; 32]),
            signer: None,
        };
        let limits = Limits::default();
        let ledger = Recording(&store);
        let t0 = SystemTime::now();
        let msg = b"Message-ID: <p2@x.test>\r\n\r\nbody\r\n";
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert!(matches!(
            apply(post(), &list, &limits, &ledger, msg, t0),
            Verdict::Deliver { .. }
        ));
        let inside = at(limits.replay_confirm_window);
        assert!(matches!(
            apply(post(), &list, &limits, &ledger, msg, inside),
            Verdict::Tempfail(_)
        ));
        let past = at(limits.replay_confirm_window + 1);
        assert!(matches!(
            apply(post(), &list, &limits, &ledger, msg, past),
            Verdict::Deliver { .. }
        ));
    }

    #[test]
    fn the_message_id_mailman_keeps_is_the_lifted_one_else_the_outer_one() {
        use super::message_id_for_mailman;
        use crate::message::Rewrite;
        let msg = b"Message-ID:\r\n <outer@x.test> (comment)\r\n\r\nbody\r\n";
        assert_eq!(
            message_id_for_mailman(&Rewrite::default(), msg).as_deref(),
            Some("<outer@x.test>")
        );
        let lifted = Rewrite {
            remove: vec!["Message-ID".into()],
            add: vec![("Message-ID".into(), "<inner@x.test>".into())],
            body: None,
        };
        assert_eq!(
            message_id_for_mailman(&lifted, msg).as_deref(),
            Some("<inner@x.test>")
        );
        let stripped = Rewrite {
            remove: vec!["message-id".into()],
            ..Rewrite::default()
        };
        assert_eq!(message_id_for_mailman(&stripped, msg), None);
    }

    /// Mailman's hold notice (chains/hold.py): multipart/mixed of a text part, the post as
    /// message/rfc822 and the confirmation message as message/rfc822.
    #[test]
    fn a_hold_notice_shows_the_post_it_carries_but_a_digest_is_not_read_deeply() {
        use super::emitted_message_ids;
        let notice = b"Message-ID: <notice@x.test>\r\n\
Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n\
--b1\r\nContent-Type: text/plain\r\n\r\nAs list administrator...\r\n\
--b1\r\nContent-Type: message/rfc822\r\n\r\nMessage-ID: <post@x.test>\r\nSubject: s\r\n\r\ntext\r\n\
--b1\r\nContent-Type: message/rfc822\r\n\r\nMessage-ID: <confirm@x.test>\r\nSubject: confirm t\r\n\r\n\r\n\
--b1--\r\n";
        assert_eq!(
            emitted_message_ids(notice),
            ["<notice@x.test>", "<post@x.test>", "<confirm@x.test>"]
        );
        let digest = b"Message-ID: <digest@x.test>\r\n\
Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n\
--b1\r\nContent-Type: multipart/digest; boundary=\"b2\"\r\n\r\n\
--b2\r\nContent-Type: message/rfc822\r\n\r\nMessage-ID: <post@x.test>\r\n\r\ntext\r\n\
--b2--\r\n\
--b1--\r\n";
        assert_eq!(emitted_message_ids(digest), ["<digest@x.test>"]);
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
