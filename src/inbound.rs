//! The inbound pipeline, pure: (envelope, message bytes, list, policy) -> Verdict.
//! It decides; the milter adapter and `process inbound` apply.

use crate::config::{Action, Limits};
use crate::keys::{Keyring, ListKeys};
use crate::message::{first_address, Reply, Rewrite};
use crate::mime::{self, Entity, MimeError, Shape};
use crate::pgp::{self, Failure, SigCheck};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Headers listcrypt itself sets toward Mailman: incoming copies are always removed, so a
/// poster cannot forge a verification result.
pub const OWN_HEADERS: &[&str] = &["X-Listcrypt-Hold", "X-Listcrypt-Signer"];

/// MIME headers that belong to the body and come from the decrypted entity.
const CONTENT_HEADERS: &[&str] = &[
    "Content-Type",
    "Content-Transfer-Encoding",
    "Content-Disposition",
    "Content-Description",
    "Content-ID",
    "Content-Language",
    "Content-Location",
    "Content-MD5",
];

/// Headers that protected-header schemes (RFC 9788, `protected-headers="v1"`) carry inside.
const PROTECTED: &[&str] = &[
    "Subject",
    "From",
    "To",
    "Cc",
    "Reply-To",
    "Date",
    "Message-ID",
    "In-Reply-To",
    "References",
    "Followup-To",
];

/// Which of a list's addresses a recipient is (Mailman's LMTP accepts these).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListAddress {
    Post,
    Request,
    Join,
    Leave,
    Confirm,
    Owner,
    Bounces,
}

impl ListAddress {
    /// Whether posts to this address must be encrypted and signed. Commands, owner mail and
    /// bounces pass to Mailman as they are for now; Mailman's replies leave encrypted.
    pub fn enforced(self) -> bool {
        matches!(self, ListAddress::Post)
    }
}

/// Maps a recipient to one of a managed list's addresses.
pub fn lookup(keyring: &Keyring, rcpt: &str) -> Option<(Arc<ListKeys>, ListAddress)> {
    let rcpt = crate::keys::normalize_address(rcpt);
    if let Some(l) = keyring.lists.get(&rcpt) {
        return Some((l.clone(), ListAddress::Post));
    }
    let (local, domain) = rcpt.split_once('@')?;
    let (base, suffix) = local.rsplit_once('-')?;
    let (suffix, plus) = match suffix.split_once('+') {
        Some((s, _)) => (s, true),
        None => (suffix, false),
    };
    let kind = match (suffix, plus) {
        ("request", false) => ListAddress::Request,
        ("join" | "subscribe", false) => ListAddress::Join,
        ("leave" | "unsubscribe", false) => ListAddress::Leave,
        ("confirm", _) => ListAddress::Confirm,
        ("owner", false) => ListAddress::Owner,
        ("bounces", _) => ListAddress::Bounces,
        _ => return None,
    };
    // A VERP/confirm local part may itself contain '-': find the list by the first '-SUFFIX'.
    let list = format!("{base}@{domain}");
    if let Some(l) = keyring.lists.get(&list) {
        return Some((l.clone(), kind));
    }
    let idx = local.find(&format!("-{suffix}"))?;
    let list = format!("{}@{domain}", &local[..idx]);
    keyring.lists.get(&list).map(|l| (l.clone(), kind))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Hand Mailman the rewritten message. `hold` is set when the policy said hold.
    Deliver {
        rewrite: Rewrite,
        hold: Option<String>,
        summary: String,
    },
    Reject(Reply),
    Discard(String),
    Tempfail(Reply),
}

impl Verdict {
    /// The first line `process inbound` prints for a message that is not processed.
    pub fn decision_line(&self) -> String {
        match self {
            Verdict::Deliver { hold: Some(r), .. } => format!("hold {r}"),
            Verdict::Deliver { .. } => "accept".into(),
            Verdict::Reject(r) => format!("reject {r}"),
            Verdict::Discard(r) => format!("discard {r}"),
            Verdict::Tempfail(r) => format!("tempfail {r}"),
        }
    }
}

pub struct Envelope<'a> {
    pub sender: &'a str,
}

/// Applies a policy action to a finding. `reply` is the refusal when the action is reject.
fn act(action: Action, reply: Reply, deliver: impl FnOnce(Option<String>) -> Verdict) -> Verdict {
    match action {
        Action::Reject => Verdict::Reject(reply),
        Action::Discard => Verdict::Discard(reply.reason),
        Action::Hold => deliver(Some(reply.reason)),
        Action::Accept => deliver(None),
    }
}

fn limit_reply(e: &MimeError) -> Reply {
    match e {
        MimeError::Malformed(why) => Reply::new("554", "5.6.0", format!("malformed MIME: {why}")),
        MimeError::TooDeep(_) => Reply::new("552", "5.3.4", "MIME nesting exceeds the limit"),
        MimeError::TooManyParts(_) => Reply::new("552", "5.3.4", "too many MIME parts"),
    }
}

/// The original message for Mailman, without our own headers (accept/hold of a post that was
/// not decrypted).
fn pass_original(hold: Option<String>, summary: String) -> Verdict {
    let mut rewrite = Rewrite {
        remove: OWN_HEADERS.iter().map(|s| s.to_string()).collect(),
        ..Rewrite::default()
    };
    if let Some(reason) = &hold {
        rewrite
            .add
            .push(("X-Listcrypt-Hold".into(), reason.clone()));
    }
    Verdict::Deliver {
        rewrite,
        hold,
        summary,
    }
}

/// Runs the inbound policy on a post to `list`.
pub fn process(env: &Envelope<'_>, message: &[u8], list: &ListKeys, limits: &Limits) -> Verdict {
    let policy = &list.policy;
    if message.len() as u64 > limits.max_message_bytes {
        return Verdict::Reject(Reply::new("552", "5.3.4", "message exceeds the size limit"));
    }
    let shape = match mime::classify(message, limits.max_mime_depth, limits.max_mime_parts) {
        Ok(s) => s,
        Err(e) => return Verdict::Reject(limit_reply(&e)),
    };
    let ciphertext = match shape {
        Shape::PgpMime { ciphertext } => ciphertext,
        Shape::NotEncrypted => {
            let reply = Reply::new("550", "5.7.1", "post must be encrypted to the list key");
            return act(policy.nonencrypted_action, reply, |hold| {
                pass_original(hold, "unencrypted post passed by policy".into())
            });
        }
        Shape::InlinePgp => {
            let reply = Reply::new("550", "5.7.1", "inline PGP is not accepted, use PGP/MIME");
            return act(policy.inline_pgp_action, reply, |hold| {
                pass_original(hold, "inline PGP post passed undecrypted by policy".into())
            });
        }
    };

    let decrypted = match pgp::decrypt_verify(
        &ciphertext,
        list,
        limits.max_packets,
        limits.max_plaintext_bytes,
    ) {
        Ok(d) => d,
        Err(f) => return Verdict::Reject(failure_reply(&f)),
    };
    let inner = match Entity::parse(&decrypted.plaintext) {
        Ok(e) => e,
        Err(_) => {
            return Verdict::Reject(Reply::new(
                "554",
                "5.6.0",
                "decrypted content is not a MIME entity",
            ))
        }
    };
    if let Err(e) = mime::walk_entity(
        &decrypted.plaintext,
        limits.max_mime_depth,
        limits.max_mime_parts,
    ) {
        return Verdict::Reject(match e {
            MimeError::Malformed(why) => Reply::new(
                "554",
                "5.6.0",
                format!("malformed MIME in the decrypted post: {why}"),
            ),
            other => limit_reply(&other),
        });
    }

    let outer = match Entity::parse(message) {
        Ok(e) => e,
        Err(e) => return Verdict::Reject(limit_reply(&e)),
    };
    let ct = inner.content_type();
    let lifts = ct.params.contains_key("hp")
        || ct
            .params
            .get("protected-headers")
            .is_some_and(|v| v.eq_ignore_ascii_case("v1"));

    // The message Mailman gets: outer header (minus MIME and our own fields), the decrypted
    // entity's MIME fields, and protected fields lifted over their outer copies.
    let mut rewrite = Rewrite::default();
    let mut remove: Vec<&str> = CONTENT_HEADERS.to_vec();
    remove.push("MIME-Version");
    remove.extend_from_slice(OWN_HEADERS);
    let lifted: Vec<&mime::Header> = if lifts {
        inner
            .headers
            .iter()
            .filter(|h| PROTECTED.iter().any(|p| h.is(p)))
            .collect()
    } else {
        Vec::new()
    };
    for h in &lifted {
        if !remove.iter().any(|r| h.is(r)) {
            remove.push(
                PROTECTED
                    .iter()
                    .find(|p| h.is(p))
                    .copied()
                    .unwrap_or("X-Unused"),
            );
        }
    }
    rewrite.remove = remove.iter().map(|s| s.to_string()).collect();
    rewrite.add.push(("MIME-Version".into(), "1.0".into()));
    for h in inner
        .headers
        .iter()
        .filter(|h| CONTENT_HEADERS.iter().any(|c| h.is(c)))
    {
        rewrite.add.push((h.name.clone(), mime::header_text(h)));
    }
    for h in &lifted {
        rewrite.add.push((h.name.clone(), mime::header_text(h)));
    }
    if inner.get("Content-Type").is_none() {
        rewrite
            .add
            .push(("Content-Type".into(), "text/plain; charset=us-ascii".into()));
    }
    rewrite.body = Some(mime::to_crlf(inner.body));

    // Who the post claims to be from: the protected From if present, else the outer one.
    let from = lifted
        .iter()
        .find(|h| h.is("From"))
        .copied()
        .or_else(|| outer.get("From"))
        .and_then(first_address);
    let sender = crate::keys::normalize_address(env.sender);
    judge_signatures(
        list,
        limits,
        &decrypted.signatures,
        from.as_deref(),
        &sender,
        rewrite,
    )
}

fn failure_reply(f: &Failure) -> Reply {
    match f {
        Failure::NotForList => Reply::new("550", "5.7.5", "post must be encrypted to the list key"),
        Failure::NoIntegrity => {
            Reply::new("550", "5.7.7", "encrypted data is not integrity protected")
        }
        Failure::Integrity => Reply::new(
            "550",
            "5.7.7",
            "integrity check of the encrypted data failed",
        ),
        Failure::WeakCipher => Reply::new("550", "5.7.6", "weak or obsolete OpenPGP algorithm"),
        Failure::Malformed(_) => Reply::new("554", "5.6.0", "malformed OpenPGP message"),
        Failure::TooManyPackets(_) => Reply::new("552", "5.3.4", "too many OpenPGP packets"),
        Failure::TooMuchPlaintext(_) => {
            Reply::new("552", "5.3.4", "decrypted message exceeds the size limit")
        }
    }
}

/// The most severe finding first, so the reply names the real problem.
fn severity(s: &SigCheck) -> u8 {
    match s {
        SigCheck::Bad(_) => 0,
        SigCheck::Weak(_) => 1,
        SigCheck::Revoked(_) => 2,
        SigCheck::Expired(_) => 3,
        SigCheck::UnknownSigner(_) => 4,
        SigCheck::Good { .. } => 5,
    }
}

fn judge_signatures(
    list: &ListKeys,
    limits: &Limits,
    sigs: &[SigCheck],
    from: Option<&str>,
    sender: &str,
    rewrite: Rewrite,
) -> Verdict {
    let policy = &list.policy;
    let deliver = |summary: String| {
        move |hold: Option<String>| {
            let mut rewrite = rewrite;
            if let Some(r) = &hold {
                rewrite.add.push(("X-Listcrypt-Hold".into(), r.clone()));
            }
            Verdict::Deliver {
                rewrite,
                hold,
                summary,
            }
        }
    };
    if sigs.is_empty() {
        let reply = Reply::new("550", "5.7.1", "post must be signed inside the encryption");
        return act(
            policy.unsigned_action,
            reply,
            deliver("unsigned post passed by policy, decrypted".into()),
        );
    }
    let list_fpr = list.secret.fingerprint();
    let bound = |signer: &sequoia_openpgp::Fingerprint, addr: &str| {
        list.member(addr)
            .is_some_and(|m| &m.cert.fingerprint() == signer)
    };
    // A good signature by the key bound to both the From address and the envelope sender.
    let good = sigs.iter().find_map(|s| match s {
        SigCheck::Good {
            signer,
            created,
            intended_recipients,
            ..
        } if from.is_some_and(|f| bound(signer, f))
            && (sender.is_empty() || bound(signer, sender)) =>
        {
            Some((signer, created, intended_recipients))
        }
        _ => None,
    });
    if let Some((signer, created, intended)) = good {
        if !intended.is_empty() && !intended.contains(&list_fpr) {
            let reply = Reply::new("550", "5.7.1", "signature is intended for other recipients");
            return act(
                policy.invalid_signature_action,
                reply,
                deliver(format!("signed by 0x{signer}, decrypted")),
            );
        }
        let window = Duration::from_secs(limits.signature_time_window);
        let now = SystemTime::now();
        let in_window = created.is_some_and(|t| {
            t <= now + window && now.duration_since(t).map(|d| d <= window).unwrap_or(true)
        });
        if !in_window {
            let reply = Reply::new(
                "550",
                "5.7.7",
                "signature time is outside the accepted window",
            );
            return act(
                policy.invalid_signature_action,
                reply,
                deliver(format!("signed by 0x{signer}, decrypted")),
            );
        }
        let from = from.unwrap_or("?");
        return deliver(format!(
            "post from {from} accepted, signed by 0x{signer}, decrypted"
        ))(None);
    }
    let worst = sigs.iter().min_by_key(|s| severity(s)).expect("non-empty");
    let summary = "post passed by policy despite its signature, decrypted".to_string();
    match worst {
        SigCheck::Bad(_) => act(
            policy.invalid_signature_action,
            Reply::new("550", "5.7.7", "bad signature"),
            deliver(summary),
        ),
        SigCheck::Weak(_) => act(
            policy.invalid_signature_action,
            Reply::new("550", "5.7.6", "signature uses a weak algorithm"),
            deliver(summary),
        ),
        SigCheck::Revoked(_) => act(
            policy.revoked_signature_action,
            Reply::new("550", "5.7.5", "signer key is revoked"),
            deliver(summary),
        ),
        SigCheck::Expired(_) => act(
            policy.expired_signature_action,
            Reply::new("550", "5.7.5", "signer key has expired"),
            deliver(summary),
        ),
        SigCheck::UnknownSigner(_) => act(
            policy.unknown_signer_action,
            Reply::new("550", "5.7.1", "signer is not a member of this list"),
            deliver(summary),
        ),
        SigCheck::Good { .. } => act(
            policy.unknown_signer_action,
            Reply::new(
                "550",
                "5.7.1",
                "signer key is not bound to the sender address on this list",
            ),
            deliver(summary),
        ),
    }
}
