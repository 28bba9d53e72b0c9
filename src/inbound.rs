//! The inbound pipeline, pure: (envelope, message bytes, list, policy) -> Verdict.
//! It decides; the milter adapter and `process inbound` apply.

use crate::config::{Action, Limits};
use crate::keys::{Keyring, ListKeys};
use crate::message::{first_address, Reply, Rewrite};
use crate::mime::{self, Entity, MimeError, Shape, CONTENT_HEADERS, PROTECTED};
use crate::pgp::{self, Failure, SigCheck};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Headers listcrypt itself sets toward Mailman: incoming copies are always removed, so a
/// poster cannot forge a verification result.
pub const OWN_HEADERS: &[&str] = &["X-Listcrypt-Hold", "X-Listcrypt-Signer"];

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
    /// listcrypt's own key address (`LIST-key@` by default): key requests and bindings,
    /// answered by listcrypt, never passed to Mailman.
    Key,
}

impl ListAddress {
    /// Whether posts to this address must be encrypted and signed.
    pub fn enforced(self) -> bool {
        matches!(self, ListAddress::Post)
    }

    /// Command addresses: decrypted when encrypted; plaintext per `command_nonencrypted_action`.
    /// Owner mail and bounces (remote DSNs) pass to Mailman as they are; whatever Mailman
    /// sends on leaves encrypted.
    pub fn is_command(self) -> bool {
        matches!(
            self,
            ListAddress::Request | ListAddress::Join | ListAddress::Leave | ListAddress::Confirm
        )
    }
}

/// Maps a recipient to one of a managed list's addresses.
pub fn lookup(keyring: &Keyring, rcpt: &str) -> Option<(Arc<ListKeys>, ListAddress)> {
    let rcpt = crate::keys::normalize_address(rcpt);
    if let Some(l) = keyring.lists.get(&rcpt) {
        return Some((l.clone(), ListAddress::Post));
    }
    let (local, domain) = rcpt.split_once('@')?;
    // `LIST-SUFFIX` or `LIST-SUFFIX+DETAIL` (VERP, confirmation tokens); the detail may
    // contain anything, the list name may contain '-', the suffix contains neither.
    let (pre, plus) = match local.split_once('+') {
        Some((p, _)) => (p, true),
        None => (local, false),
    };
    let (base, suffix) = pre.rsplit_once('-')?;
    let list = keyring.lists.get(&format!("{base}@{domain}"))?;
    if !plus && suffix == list.policy.key_suffix {
        return Some((list.clone(), ListAddress::Key));
    }
    let kind = match (suffix, plus) {
        ("request", false) => ListAddress::Request,
        ("join" | "subscribe", false) => ListAddress::Join,
        ("leave" | "unsubscribe", false) => ListAddress::Leave,
        ("confirm", _) => ListAddress::Confirm,
        ("owner", false) => ListAddress::Owner,
        ("bounces", _) => ListAddress::Bounces,
        _ => return None,
    };
    Some((list.clone(), kind))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Hand Mailman the rewritten message. `hold` is set when the policy said hold.
    Deliver {
        rewrite: Rewrite,
        hold: Option<String>,
        summary: String,
        /// Digest of the accepted author signature, for the replay record.
        replay: Option<[u8; 32]>,
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
    let mut rewrite = strip_own_headers();
    if let Some(reason) = &hold {
        rewrite
            .add
            .push(("X-Listcrypt-Hold".into(), reason.clone()));
    }
    Verdict::Deliver {
        rewrite,
        hold,
        summary,
        replay: None,
    }
}

/// Applies `duplicate_action` to an accepted post whose signature digest was seen before.
pub fn apply_replay(verdict: Verdict, seen: bool, list: &ListKeys) -> Verdict {
    match verdict {
        Verdict::Deliver {
            mut rewrite,
            replay: Some(d),
            summary,
            ..
        } if seen => {
            let reply = Reply::new(
                "550",
                "5.7.1",
                "duplicate post (this signature was already accepted)",
            );
            act(list.policy.duplicate_action, reply, move |hold| {
                if let Some(r) = &hold {
                    rewrite.add.push(("X-Listcrypt-Hold".into(), r.clone()));
                }
                Verdict::Deliver {
                    rewrite,
                    hold,
                    summary: format!("{summary}; duplicate"),
                    replay: Some(d),
                }
            })
        }
        other => other,
    }
}

/// Seconds a replay record is kept: twice the signature time window, so a signature can never
/// be replayed inside its window after its record expired.
pub fn replay_retention(limits: &Limits) -> u64 {
    limits.signature_time_window.saturating_mul(2)
}

/// The rewrite for mail that passes to Mailman as it is (owner mail, bounces): only forged
/// copies of listcrypt's own header fields go.
pub fn strip_own_headers() -> Rewrite {
    Rewrite {
        remove: OWN_HEADERS.iter().map(|s| s.to_string()).collect(),
        ..Rewrite::default()
    }
}

/// A transaction to one list: the strict post rules when its posting address is among the
/// recipients (`post`), else the command rules.
pub fn process_transaction(
    env: &Envelope<'_>,
    message: &[u8],
    list: &ListKeys,
    limits: &Limits,
    post: bool,
) -> Verdict {
    if post {
        process(env, message, list, limits)
    } else {
        process_command(env, message, list, limits)
    }
}

/// Runs the inbound policy on a post to `list`.
pub fn process(env: &Envelope<'_>, message: &[u8], list: &ListKeys, limits: &Limits) -> Verdict {
    run(env, message, list, limits, false)
}

/// Runs the inbound policy on mail to one of the list's command addresses (`-request`,
/// `-join`, `-leave`, `-confirm`): decrypted when encrypted; a signature is not required, since
/// Mailman confirms commands itself and non-members must be able to ask to join.
pub fn process_command(
    env: &Envelope<'_>,
    message: &[u8],
    list: &ListKeys,
    limits: &Limits,
) -> Verdict {
    run(env, message, list, limits, true)
}

fn strip_list(list: &ListKeys) -> Vec<String> {
    list.policy.strip_headers.clone()
}

fn run(
    env: &Envelope<'_>,
    message: &[u8],
    list: &ListKeys,
    limits: &Limits,
    command: bool,
) -> Verdict {
    let policy = &list.policy;
    if message.len() as u64 > limits.max_message_bytes {
        return Verdict::Reject(Reply::new("552", "5.3.4", "message exceeds the size limit"));
    }
    let shape = match mime::classify(message, limits.max_mime_depth, limits.max_mime_parts) {
        Ok(s) => s,
        Err(e) => return Verdict::Reject(limit_reply(&e)),
    };
    let mut inline = false;
    let ciphertext = match shape {
        Shape::PgpMime { ciphertext } => ciphertext,
        Shape::NotEncrypted | Shape::InlinePgp if command => {
            let reply = Reply::new("550", "5.7.1", "commands to this list must be encrypted");
            let strip = strip_list(list);
            return act(policy.command_nonencrypted_action, reply, |hold| {
                let mut v = pass_original(hold, "unencrypted command passed".into());
                if let Verdict::Deliver { rewrite, .. } = &mut v {
                    rewrite.remove.extend(strip);
                }
                v
            });
        }
        Shape::NotEncrypted => {
            let reply = Reply::new("550", "5.7.1", "post must be encrypted to the list key");
            return act(policy.nonencrypted_action, reply, |hold| {
                pass_original(hold, "unencrypted post passed by policy".into())
            });
        }
        Shape::InlinePgp => {
            let reply = Reply::new("550", "5.7.1", "inline PGP is not accepted, use PGP/MIME");
            match policy.inline_pgp_action {
                Action::Reject | Action::Discard => {
                    return act(policy.inline_pgp_action, reply, |_| unreachable_deliver());
                }
                // Accepted or held: decrypted like a PGP/MIME post, below.
                Action::Accept | Action::Hold => match inline_block(message) {
                    Some(block) => {
                        inline = true;
                        block
                    }
                    None => {
                        return Verdict::Reject(Reply::new(
                            "554",
                            "5.6.0",
                            "malformed inline PGP message",
                        ))
                    }
                },
            }
        }
    };

    let mut decrypted = match pgp::decrypt_verify(
        &ciphertext,
        list,
        limits.max_packets,
        limits.max_plaintext_bytes,
    ) {
        Ok(d) => d,
        Err(f) => return Verdict::Reject(failure_reply(&f)),
    };
    if inline {
        // Inline PGP carries text, not a MIME entity: make it one. Its signature covers the
        // text, not this entity, so the signer is stated inside the list's copy (below).
        let mut entity = b"Content-Type: text/plain; charset=utf-8\r\n\r\n".to_vec();
        entity.extend_from_slice(&mime::to_crlf(&decrypted.plaintext));
        decrypted.plaintext = entity;
    }
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
    let lifted: Vec<&mime::Header> = if lifts {
        inner
            .headers
            .iter()
            .filter(|h| PROTECTED.iter().any(|p| h.is(p)))
            .collect()
    } else {
        Vec::new()
    };

    // The author's signature: inside the encryption, or else the detached signature of an
    // inner multipart/signed (RFC 3156 §6.1, sign then encrypt).
    let mut signatures = decrypted.signatures;
    let inner_signed = ct.mimetype == "multipart/signed";
    if signatures.is_empty() && inner_signed {
        signatures = verify_inner_signed(&inner, &ct, list);
    }

    // Who the post claims to be from: the protected From if present, else the outer one.
    let from = lifted
        .iter()
        .find(|h| h.is("From"))
        .copied()
        .or_else(|| outer.get("From"))
        .and_then(first_address);
    let sender = crate::keys::normalize_address(env.sender);
    let mut judgement = judge_signatures(list, limits, &signatures, from.as_deref(), &sender);
    if command {
        if let Judgement::Act { .. } = judgement {
            judgement = Judgement::Act {
                action: Action::Accept,
                reply: Reply::new("250", "2.0.0", "command"),
                summary: "command decrypted".into(),
            };
        }
    }

    // The message Mailman gets: outer header (minus MIME and our own fields), protected fields
    // lifted over their outer copies, and a body that keeps the author's signature.
    let mut rewrite = Rewrite::default();
    let mut remove: Vec<&str> = CONTENT_HEADERS.to_vec();
    remove.push("MIME-Version");
    remove.extend_from_slice(OWN_HEADERS);
    remove.extend(policy.strip_headers.iter().map(|s| s.as_str()));
    for h in &lifted {
        if let Some(p) = PROTECTED.iter().find(|p| h.is(p)) {
            if !remove.contains(p) {
                remove.push(p);
            }
        }
    }
    rewrite.remove = remove.iter().map(|s| s.to_string()).collect();
    rewrite.add.push(("MIME-Version".into(), "1.0".into()));
    for h in &lifted {
        rewrite.add.push((h.name.clone(), mime::header_text(h)));
    }
    let mut note = String::new();
    let signed_body = match &judgement {
        Judgement::Good { .. } if inline => {
            note = "; inline PGP, signer stated inside the list copy".into();
            None
        }
        Judgement::Good { sig, .. } if !inner_signed => {
            let r = signed_copy(&decrypted.plaintext, sig);
            if r.is_none() {
                // A binary signature over LF-only text cannot ride in a CRLF-canonical
                // multipart/signed: state the verified signer inside the list's copy instead.
                note = "; author signature not transportable as multipart/signed (binary signature over LF text), signer stated inside the list copy".into();
            }
            r
        }
        _ => None,
    };
    match signed_body {
        Some((content_type, body)) => {
            rewrite.add.push(("Content-Type".into(), content_type));
            rewrite.body = Some(body);
        }
        None => {
            for h in inner
                .headers
                .iter()
                .filter(|h| CONTENT_HEADERS.iter().any(|c| h.is(c)))
            {
                rewrite.add.push((h.name.clone(), mime::header_text(h)));
            }
            if inner.get("Content-Type").is_none() {
                rewrite
                    .add
                    .push(("Content-Type".into(), "text/plain; charset=us-ascii".into()));
            }
            rewrite.body = Some(mime::to_crlf(inner.body));
        }
    }

    let verdict = match judgement {
        Judgement::Good {
            signer,
            address,
            sig,
        } => {
            if !note.is_empty() {
                rewrite.add.push((
                    "X-Listcrypt-Signer".into(),
                    format!("{address} 0x{signer} (signature verified by the list)"),
                ));
            }
            let what = if command { "command" } else { "post" };
            Verdict::Deliver {
                rewrite,
                hold: None,
                summary: format!(
                    "{what} from {address} accepted, signed by 0x{signer}, decrypted{note}"
                ),
                // Commands are not replay-checked: Mailman's confirmations are one-shot already.
                replay: (!command).then(|| replay_digest(&list.address, &sig.packet)),
            }
        }
        Judgement::Act {
            action,
            reply,
            summary,
        } => act(action, reply, move |hold| {
            if let Some(r) = &hold {
                rewrite.add.push(("X-Listcrypt-Hold".into(), r.clone()));
            }
            Verdict::Deliver {
                rewrite,
                hold,
                summary,
                replay: None,
            }
        }),
    };
    // `inline_pgp_action = "hold"`: an inline post that passes otherwise is held.
    match verdict {
        Verdict::Deliver {
            mut rewrite,
            hold: None,
            summary,
            replay,
        } if inline && policy.inline_pgp_action == Action::Hold => {
            let reason = "inline PGP post".to_string();
            rewrite
                .add
                .push(("X-Listcrypt-Hold".into(), reason.clone()));
            Verdict::Deliver {
                rewrite,
                hold: Some(reason),
                summary,
                replay,
            }
        }
        other => other,
    }
}

/// The first armored OpenPGP message in a text body (decoded per its transfer encoding).
fn inline_block(message: &[u8]) -> Option<Vec<u8>> {
    let parsed = mailparse::parse_mail(message).ok()?;
    let body = parsed.get_body_raw().ok()?;
    let begin = b"-----BEGIN PGP MESSAGE-----";
    let end = b"-----END PGP MESSAGE-----";
    let start = body.windows(begin.len()).position(|w| w == begin)?;
    let stop = body[start..].windows(end.len()).position(|w| w == end)? + start + end.len();
    Some(body[start..stop].to_vec())
}

/// For `act` calls whose action never delivers (reject, discard).
fn unreachable_deliver() -> Verdict {
    Verdict::Tempfail(Reply::internal("internal error"))
}

/// SHA-256 over the list and the author's signature packet: the replay record.
fn replay_digest(list: &str, packet: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(list.as_bytes());
    h.update([0]);
    h.update(packet);
    h.finalize().into()
}

/// RFC 3156 §5 multipart/signed from the exact signed bytes and the author's signature, or
/// `None` when the signed bytes are not CRLF-canonical text for a binary signature.
fn signed_copy(plaintext: &[u8], sig: &pgp::GoodSignature) -> Option<(String, Vec<u8>)> {
    let canonical = mime::to_crlf(plaintext);
    if !sig.text && canonical != plaintext {
        return None;
    }
    let boundary = mime::new_boundary();
    if canonical
        .windows(boundary.len())
        .any(|w| w == boundary.as_bytes())
    {
        return None;
    }
    let micalg = format!("pgp-{}", sig.hash_name.to_ascii_lowercase());
    let content_type = format!(
        "multipart/signed; micalg={micalg};\n\tprotocol=\"application/pgp-signature\";\n\tboundary=\"{boundary}\""
    );
    let mut body = Vec::with_capacity(canonical.len() + sig.armored.len() + 512);
    body.extend_from_slice(b"This is an OpenPGP/MIME signed message (RFC 4880 and 3156)\r\n");
    body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
    body.extend_from_slice(&canonical);
    // The CRLF before the delimiter belongs to the delimiter (RFC 2046 §5.1.1).
    body.extend_from_slice(format!("\r\n--{boundary}\r\n").as_bytes());
    body.extend_from_slice(b"Content-Type: application/pgp-signature; name=\"signature.asc\"\r\n");
    body.extend_from_slice(b"Content-Description: OpenPGP digital signature\r\n");
    body.extend_from_slice(b"Content-Disposition: attachment; filename=\"signature.asc\"\r\n\r\n");
    body.extend_from_slice(&mime::to_crlf(&sig.armored));
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    Some((content_type, body))
}

/// Verifies the detached signature of an inner multipart/signed over its CRLF-canonical
/// first part (RFC 3156 §5).
fn verify_inner_signed(
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
        SigCheck::Good(_) => 5,
    }
}

/// The outcome of the signature rules: a good signature by the bound key, or a policy action.
enum Judgement {
    Good {
        signer: sequoia_openpgp::Fingerprint,
        address: String,
        sig: pgp::GoodSignature,
    },
    Act {
        action: Action,
        reply: Reply,
        summary: String,
    },
}

fn judge_signatures(
    list: &ListKeys,
    limits: &Limits,
    sigs: &[SigCheck],
    from: Option<&str>,
    sender: &str,
) -> Judgement {
    let policy = &list.policy;
    let passed = "post passed by policy despite its signature, decrypted".to_string();
    let act = |action: Action, code, xcode, reason: &str, summary: &str| Judgement::Act {
        action,
        reply: Reply::new(code, xcode, reason),
        summary: summary.to_string(),
    };
    if sigs.is_empty() {
        return act(
            policy.unsigned_action,
            "550",
            "5.7.1",
            "post must be signed inside the encryption",
            "unsigned post passed by policy, decrypted",
        );
    }
    let list_fpr = list.secret.fingerprint();
    let bound = |signer: &sequoia_openpgp::Fingerprint, addr: &str| {
        list.member(addr)
            .is_some_and(|m| &m.cert.fingerprint() == signer)
    };
    // A good signature by the key bound to both the From address and the envelope sender.
    let good = sigs.iter().find_map(|s| match s {
        SigCheck::Good(g)
            if from.is_some_and(|f| bound(&g.signer, f))
                && (sender.is_empty() || bound(&g.signer, sender)) =>
        {
            Some(g)
        }
        _ => None,
    });
    if let Some(g) = good {
        if !g.intended_recipients.is_empty() && !g.intended_recipients.contains(&list_fpr) {
            return act(
                policy.invalid_signature_action,
                "550",
                "5.7.1",
                "signature is intended for other recipients",
                &passed,
            );
        }
        let window = Duration::from_secs(limits.signature_time_window);
        let now = SystemTime::now();
        let in_window = g.created.is_some_and(|t| {
            t <= now + window && now.duration_since(t).map(|d| d <= window).unwrap_or(true)
        });
        if !in_window {
            return act(
                policy.invalid_signature_action,
                "550",
                "5.7.7",
                "signature time is outside the accepted window",
                &passed,
            );
        }
        return Judgement::Good {
            signer: g.signer.clone(),
            address: from.unwrap_or_default().to_string(),
            sig: g.clone(),
        };
    }
    let worst = sigs.iter().min_by_key(|s| severity(s)).expect("non-empty");
    match worst {
        SigCheck::Bad(_) => act(
            policy.invalid_signature_action,
            "550",
            "5.7.7",
            "bad signature",
            &passed,
        ),
        SigCheck::Weak(_) => act(
            policy.invalid_signature_action,
            "550",
            "5.7.6",
            "signature uses a weak algorithm",
            &passed,
        ),
        SigCheck::Revoked(_) => act(
            policy.revoked_signature_action,
            "550",
            "5.7.5",
            "signer key is revoked",
            &passed,
        ),
        SigCheck::Expired(_) => act(
            policy.expired_signature_action,
            "550",
            "5.7.5",
            "signer key has expired",
            &passed,
        ),
        SigCheck::UnknownSigner(_) => act(
            policy.unknown_signer_action,
            "550",
            "5.7.1",
            "signer is not a member of this list",
            &passed,
        ),
        SigCheck::Good(_) => act(
            policy.unknown_signer_action,
            "550",
            "5.7.1",
            "signer key is not bound to the sender address on this list",
            &passed,
        ),
    }
}
