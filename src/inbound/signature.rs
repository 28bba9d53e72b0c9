//! The signature rules: a good signature by the key bound to both the From address and the
//! envelope sender, intended for this list, made inside the time window.

use crate::config::{Action, Limits};
use crate::keys::ListKeys;
use crate::mime::{self, Entity};
use crate::pgp::{self, SigCheck};
use crate::refusal::Refusal;
use std::time::{Duration, SystemTime};

/// The outcome of the signature rules.
pub(super) enum Judgement {
    /// A good signature by the bound key.
    Good {
        signer: pgp::Fingerprint,
        address: String,
        sig: pgp::GoodSignature,
    },
    /// A command that need not be signed: decrypted and passed.
    Command,
    /// A finding, handled by its policy action.
    Act {
        action: Action,
        refusal: Refusal,
        summary: String,
    },
}

/// The most severe finding first, so the reply names the real problem.
fn severity(s: &SigCheck) -> u8 {
    match s {
        SigCheck::Bad(_) => 0,
        SigCheck::Weak(_) => 1,
        SigCheck::Revoked(_) => 2,
        SigCheck::Expired(_) => 3,
        SigCheck::UnknownSigner(_) => 4,
        SigCheck::Good(_) => 5,
    }
}

/// Whether a signature made at `created` is inside `window` either side of `now`.
pub(super) fn in_window(created: Option<SystemTime>, now: SystemTime, window: Duration) -> bool {
    created.is_some_and(|t| {
        t <= now + window && now.duration_since(t).map(|d| d <= window).unwrap_or(true)
    })
}

pub(super) fn judge_signatures(
    list: &ListKeys,
    limits: &Limits,
    sigs: &[SigCheck],
    from: Option<&str>,
    sender: &str,
    now: SystemTime,
) -> Judgement {
    let policy = &list.policy;
    let act = |action: Action, refusal: Refusal| Judgement::Act {
        action,
        refusal,
        summary: "post passed by policy despite its signature, decrypted".into(),
    };
    if sigs.is_empty() {
        return Judgement::Act {
            action: policy.unsigned_action,
            refusal: Refusal::Unsigned,
            summary: "unsigned post passed by policy, decrypted".into(),
        };
    }
    let bound = |signer: &pgp::Fingerprint, addr: &str| {
        list.member(addr)
            .is_some_and(|m| &m.cert.fingerprint() == signer)
    };
    let good = sigs.iter().find_map(|s| match s {
        SigCheck::Good(g)
            if from.is_some_and(|f| bound(&g.signer, f)) && bound(&g.signer, sender) =>
        {
            Some(g)
        }
        _ => None,
    });
    if let Some(g) = good {
        let list_fpr = list.secret.fingerprint();
        if !g.intended_recipients.is_empty() && !g.intended_recipients.contains(&list_fpr) {
            return act(policy.invalid_signature_action, Refusal::NotIntendedForList);
        }
        if g.intended_recipients.is_empty() && policy.require_intended_recipient {
            return act(
                policy.invalid_signature_action,
                Refusal::NoIntendedRecipient,
            );
        }
        let window = Duration::from_secs(limits.signature_time_window);
        if !in_window(g.created, now, window) {
            return act(policy.invalid_signature_action, Refusal::SignatureTime);
        }
        return Judgement::Good {
            signer: g.signer.clone(),
            address: from.unwrap_or_default().to_string(),
            sig: g.clone(),
        };
    }
    let worst = sigs.iter().min_by_key(|s| severity(s)).expect("non-empty");
    match worst {
        SigCheck::Bad(_) => act(policy.invalid_signature_action, Refusal::BadSignature),
        SigCheck::Weak(_) => act(policy.invalid_signature_action, Refusal::WeakSignature),
        SigCheck::Revoked(_) => act(policy.revoked_signature_action, Refusal::SignerRevoked),
        SigCheck::Expired(_) => act(policy.expired_signature_action, Refusal::SignerExpired),
        SigCheck::UnknownSigner(_) => act(policy.unknown_signer_action, Refusal::UnknownSigner),
        SigCheck::Good(_) => act(policy.unknown_signer_action, Refusal::SignerNotBound),
    }
}

/// Verifies the detached signature of an inner multipart/signed over its CRLF-canonical
/// first part (RFC 3156 §5).
pub(super) fn verify_inner_signed(
    inner: &Entity<'_>,
    ct: &mailparse::ParsedContentType,
    list: &ListKeys,
) -> Vec<SigCheck> {
    let Some(boundary) = ct.params.get("boundary") else {
        return Vec::new();
    };
    let Ok(parts) = mime::split_multipart(inner.body, boundary) else {
        return Vec::new();
    };
    if parts.len() != 2 {
        return Vec::new();
    }
    let Ok(sig_part) = mailparse::parse_mail(parts[1]) else {
        return Vec::new();
    };
    if sig_part.ctype.mimetype != "application/pgp-signature" {
        return Vec::new();
    }
    let Ok(sig) = sig_part.get_body_raw() else {
        return Vec::new();
    };
    pgp::verify_detached(&mime::to_crlf(parts[0]), &sig, list)
}

#[cfg(test)]
mod tests {
    use super::in_window;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn time_window_edges_are_inclusive() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let w = 7 * DAY;
        assert!(in_window(Some(now), now, w));
        assert!(in_window(Some(now - w), now, w), "exactly a window old");
        assert!(in_window(Some(now + w), now, w), "exactly a window ahead");
        assert!(!in_window(Some(now - w - Duration::from_secs(1)), now, w));
        assert!(!in_window(Some(now + w + Duration::from_secs(1)), now, w));
        assert!(
            !in_window(None, now, w),
            "a signature without a creation time"
        );
        let _ = SystemTime::now();
    }
}
