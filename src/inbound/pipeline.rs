//! The inbound policy on one message, in phases chained with `?`: find the ciphertext, open
//! it, lift the protected headers, judge the signatures, rewrite for Mailman, decide.
//! A phase that settles the message returns its `Verdict` as the error.

use super::signature::{judge_signatures, verify_inner_signed, Judgement};
use super::{act, strip_own_headers, Envelope, Signer, Verdict, OWN_HEADERS};
use crate::config::{Action, Limits};
use crate::deadline::Deadline;
use crate::keys::ListKeys;
use crate::message::{first_address, Rewrite};
use crate::mime::{self, Entity, Header, Shape, CONTENT_HEADERS, PROTECTED};
use crate::pgp::{self, Failure, SigCheck};
use crate::refusal::{Internal, Refusal};
use std::time::SystemTime;

/// Which rules apply: the posting address was among the recipients, or only a command address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rules {
    Post,
    /// `-request`, `-join`, `-leave`, `-confirm`: decrypted when encrypted; a signature is not
    /// required, since Mailman confirms commands itself and non-members must be able to join.
    Command,
}

/// A phase's result; `Err` is a verdict that settles the message early (boxed: it is large).
type Step<T> = Result<T, Box<Verdict>>;

/// How the OpenPGP message was carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Carrier {
    PgpMime,
    Inline,
}

/// The decrypted post: its plaintext as a MIME entity, and the signatures found.
struct Opened {
    plaintext: Vec<u8>,
    signatures: Vec<SigCheck>,
    carrier: Carrier,
}

pub(super) fn run(
    env: &Envelope<'_>,
    message: &[u8],
    list: &ListKeys,
    limits: &Limits,
    rules: Rules,
    now: SystemTime,
) -> Verdict {
    run_until(env, message, list, limits, rules, now, &Deadline::none())
}

/// [`run`] that settles with `451 4.3.0` (timeout) once `deadline` passed, checked between
/// the costly phases: the blocking thread it runs on cannot be cancelled from outside.
pub(super) fn run_until(
    env: &Envelope<'_>,
    message: &[u8],
    list: &ListKeys,
    limits: &Limits,
    rules: Rules,
    now: SystemTime,
    deadline: &Deadline,
) -> Verdict {
    decide(env, message, list, limits, rules, now, deadline).unwrap_or_else(|settled| *settled)
}

fn in_time(deadline: &Deadline) -> Step<()> {
    if !deadline.admit() {
        return Err(Box::new(Verdict::Tempfail(Internal::Timeout.into())));
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)] // run_until's inputs, passed through
fn decide(
    env: &Envelope<'_>,
    message: &[u8],
    list: &ListKeys,
    limits: &Limits,
    rules: Rules,
    now: SystemTime,
    deadline: &Deadline,
) -> Step<Verdict> {
    if rules == Rules::Post && env.sender.is_empty() {
        // Posts need a sender that can be bound to the signer; `<>` is for notifications.
        return Err(reject(Refusal::NullSender));
    }
    let (ciphertext, carrier) = find_ciphertext(message, list, limits, rules)?;
    in_time(deadline)?;
    let opened = open(&ciphertext, carrier, list, limits)?;
    in_time(deadline)?;
    let inner = Entity::parse(&opened.plaintext).map_err(|_| reject(Refusal::DecryptedNotMime))?;
    check_fields(&inner.headers)?;
    let outer = Entity::parse(message).map_err(|e| reject(Refusal::mime(&e)))?;
    let lifted = lift_headers(&inner)?;
    let lifted: Vec<&Header> = lifted.iter().collect();
    let judgement = judge(
        env, list, limits, rules, now, &opened, &inner, &outer, &lifted,
    );
    in_time(deadline)?;
    let (mut rewrite, note) = rewrite_for_mailman(list, &opened, &inner, &lifted, &judgement);
    if !sender_field_is_signer(list, &outer, &judgement) {
        rewrite.remove.push("Sender".into());
    }
    Ok(verdict(list, rules, carrier, judgement, rewrite, note))
}

/// RFC 5322 §2.2 field bodies: a NUL, a bare CR or LF, or another control character would
/// let one field turn into several on the way to Mailman and the members.
fn check_fields(headers: &[Header]) -> Step<()> {
    if headers.iter().all(|h| mime::header_value_ok(&h.value)) {
        Ok(())
    } else {
        Err(reject(Refusal::MalformedHeader))
    }
}

/// Whether the outer `Sender:` may reach Mailman (which counts it for membership): only when
/// it names an address bound to the verified signer's key. No `Sender:` at all is fine too.
fn sender_field_is_signer(list: &ListKeys, outer: &Entity<'_>, judgement: &Judgement) -> bool {
    let Some(field) = outer.get("Sender") else {
        return true;
    };
    let Judgement::Good { signer, .. } = judgement else {
        return false;
    };
    first_address(field)
        .and_then(|a| list.member(&a))
        .is_some_and(|m| &m.cert.fingerprint() == signer)
}

fn reject(refusal: Refusal) -> Box<Verdict> {
    Box::new(Verdict::Reject(refusal))
}

/// Phase 1: the OpenPGP message, by structure: PGP/MIME, or inline PGP where policy allows.
fn find_ciphertext(
    message: &[u8],
    list: &ListKeys,
    limits: &Limits,
    rules: Rules,
) -> Step<(Vec<u8>, Carrier)> {
    let policy = &list.policy;
    if message.len() as u64 > limits.max_message_bytes {
        return Err(reject(Refusal::MessageTooLarge));
    }
    if let Ok(outer) = Entity::parse(message) {
        check_fields(&outer.headers)?;
    }
    let shape = mime::classify(message, limits.max_mime_depth, limits.max_mime_parts)
        .map_err(|e| reject(Refusal::mime(&e)))?;
    match (shape, rules) {
        (Shape::PgpMime { ciphertext }, _) => Ok((ciphertext, Carrier::PgpMime)),
        (Shape::NotEncrypted | Shape::InlinePgp, Rules::Command) => {
            let strip = policy.strip_headers.clone();
            Err(Box::new(act(
                policy.command_nonencrypted_action,
                Refusal::CommandNotEncrypted,
                |hold| {
                    let mut v = pass_original(hold, "unencrypted command passed".into());
                    if let Verdict::Deliver { rewrite, .. } = &mut v {
                        rewrite.remove.extend(strip);
                    }
                    v
                },
            )))
        }
        (Shape::NotEncrypted, Rules::Post) => Err(Box::new(act(
            policy.nonencrypted_action,
            Refusal::NotEncrypted,
            |hold| pass_original(hold, "unencrypted post passed by policy".into()),
        ))),
        (Shape::InlinePgp, Rules::Post) => match policy.inline_pgp_action {
            Action::Reject | Action::Discard => Err(Box::new(act(
                policy.inline_pgp_action,
                Refusal::InlinePgp,
                |_| unreachable_deliver(),
            ))),
            // Accepted or held: decrypted like a PGP/MIME post.
            Action::Accept | Action::Hold => inline_block(message)
                .map(|block| (block, Carrier::Inline))
                .ok_or_else(|| reject(Refusal::MalformedInlinePgp)),
        },
    }
}

/// Phase 2: decrypt and verify; the plaintext must be a MIME entity within the limits.
fn open(ciphertext: &[u8], carrier: Carrier, list: &ListKeys, limits: &Limits) -> Step<Opened> {
    let decrypted = pgp::decrypt_verify(
        ciphertext,
        list,
        limits.max_packets,
        limits.inbound_plaintext_bytes(),
    )
    .map_err(|f| reject(failure_refusal(&f)))?;
    let mut plaintext = decrypted.plaintext;
    if carrier == Carrier::Inline {
        // Inline PGP carries text, not a MIME entity: make it one. Its signature covers the
        // text, not this entity, so the signer is stated inside the list's copy.
        let mut entity = b"Content-Type: text/plain; charset=utf-8\r\n\r\n".to_vec();
        entity.extend_from_slice(&mime::to_crlf(&plaintext));
        plaintext = entity;
    }
    Entity::parse(&plaintext).map_err(|_| reject(Refusal::DecryptedNotMime))?;
    mime::walk_entity(&plaintext, limits.max_mime_depth, limits.max_mime_parts)
        .map_err(|e| reject(Refusal::decrypted_mime(&e)))?;
    Ok(Opened {
        plaintext,
        signatures: decrypted.signatures,
        carrier,
    })
}

/// Phase 3: protected headers (RFC 9788 `hp=`, or the older `protected-headers="v1"`), only
/// from signed data: for an inner multipart/signed (sign then encrypt) its first part, since
/// the detached signature does not cover the wrapper's header.
fn lift_headers(inner: &Entity<'_>) -> Step<Vec<Header>> {
    let ct = inner.content_type();
    if ct.mimetype == "multipart/signed" {
        let Some(first) = ct
            .params
            .get("boundary")
            .and_then(|b| mime::split_multipart(inner.body, b).ok())
            .and_then(|parts| parts.first().copied())
        else {
            return Ok(Vec::new());
        };
        let signed = Entity::parse(first).map_err(|e| reject(Refusal::decrypted_mime(&e)))?;
        check_fields(&signed.headers)?;
        return Ok(protected_fields(&signed));
    }
    Ok(protected_fields(inner))
}

fn protected_fields(entity: &Entity<'_>) -> Vec<Header> {
    let ct = entity.content_type();
    let lifts = ct.params.contains_key("hp")
        || ct
            .params
            .get("protected-headers")
            .is_some_and(|v| v.eq_ignore_ascii_case("v1"));
    if !lifts {
        return Vec::new();
    }
    entity
        .headers
        .iter()
        .filter(|h| PROTECTED.iter().any(|p| h.is(p)))
        .cloned()
        .collect()
}

/// Phase 4: the author's signature, inside the encryption or else the detached signature of an
/// inner multipart/signed (RFC 3156 §6.1, sign then encrypt), judged against the bindings.
#[allow(clippy::too_many_arguments)] // the phase's inputs, each used once
fn judge(
    env: &Envelope<'_>,
    list: &ListKeys,
    limits: &Limits,
    rules: Rules,
    now: SystemTime,
    opened: &Opened,
    inner: &Entity<'_>,
    outer: &Entity<'_>,
    lifted: &[&Header],
) -> Judgement {
    let ct = inner.content_type();
    let mut signatures = opened.signatures.clone();
    // A signed and encrypted post whose content is a multipart/signed: members would see only
    // the inner signature, so it must be the poster's own (Bob must not pass on Alice's).
    let mut wrapped = None;
    if ct.mimetype == "multipart/signed" {
        let inner_sigs = verify_inner_signed(inner, &ct, list);
        if signatures.is_empty() {
            signatures = inner_sigs;
        } else {
            wrapped = Some(inner_sigs);
        }
    }
    // Who the post claims to be from: the protected From if present, else the outer one.
    let from = lifted
        .iter()
        .find(|h| h.is("From"))
        .copied()
        .or_else(|| outer.get("From"))
        .and_then(first_address);
    let sender = crate::keys::normalize_address(env.sender);
    let judgement = judge_signatures(list, limits, &signatures, from.as_deref(), &sender, now);
    if let Some(inner_sigs) = &wrapped {
        let own = |s: &SigCheck| match (&judgement, s) {
            (Judgement::Good { signer, .. }, SigCheck::Good(g)) => &g.signer == signer,
            _ => false,
        };
        if inner_sigs.is_empty() || !inner_sigs.iter().all(own) {
            return Judgement::Act {
                action: Action::Reject,
                refusal: Refusal::WrapsOtherSignature,
                summary: String::new(),
            };
        }
    }
    match (rules, judgement) {
        (Rules::Command, Judgement::Act { .. }) => Judgement::Command,
        (_, j) => j,
    }
}

/// Phase 5: the message Mailman gets: outer header (minus MIME and our own fields), protected
/// fields lifted over their outer copies, and a body that keeps the author's signature.
/// Returns the rewrite and a note for the log line.
fn rewrite_for_mailman(
    list: &ListKeys,
    opened: &Opened,
    inner: &Entity<'_>,
    lifted: &[&Header],
    judgement: &Judgement,
) -> (Rewrite, String) {
    let mut rewrite = Rewrite {
        remove: removed_fields(list, lifted),
        ..Rewrite::default()
    };
    rewrite.add.push(("MIME-Version".into(), "1.0".into()));
    for h in lifted {
        rewrite.add.push((h.name.clone(), mime::header_text(h)));
    }
    let inner_signed = inner.content_type().mimetype == "multipart/signed";
    let mut note = String::new();
    let signed_body = match judgement {
        Judgement::Good { .. } if opened.carrier == Carrier::Inline => {
            note = "; inline PGP, signer stated inside the list copy".into();
            None
        }
        Judgement::Good { sig, .. } if !inner_signed => {
            let r = signed_copy(&opened.plaintext, sig);
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
    (rewrite, note)
}

/// Outer fields that do not reach Mailman: MIME, our own, the policy's, and outer copies of
/// lifted protected fields.
fn removed_fields(list: &ListKeys, lifted: &[&Header]) -> Vec<String> {
    let mut remove: Vec<&str> = CONTENT_HEADERS.to_vec();
    remove.push("MIME-Version");
    remove.extend_from_slice(OWN_HEADERS);
    remove.extend(list.policy.strip_headers.iter().map(|s| s.as_str()));
    for h in lifted {
        if let Some(p) = PROTECTED.iter().find(|p| h.is(p)) {
            if !remove.contains(p) {
                remove.push(p);
            }
        }
    }
    remove.iter().map(|s| s.to_string()).collect()
}

/// Phase 6: the verdict from the judgement, with `inline_pgp_action = "hold"` applied.
fn verdict(
    list: &ListKeys,
    rules: Rules,
    carrier: Carrier,
    judgement: Judgement,
    mut rewrite: Rewrite,
    note: String,
) -> Verdict {
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
            let what = match rules {
                Rules::Post => "post",
                Rules::Command => "command",
            };
            Verdict::Deliver {
                rewrite,
                hold: None,
                summary: format!(
                    "{what} from {address} accepted, signed by 0x{signer}, decrypted{note}"
                ),
                // Commands are not replay-checked: Mailman's confirmations are one-shot already.
                replay: (rules == Rules::Post).then(|| super::replay::digest(&sig, &list.address)),
                // Only posts refresh the signer's key (`crate::refresh`).
                signer: (rules == Rules::Post).then_some(Signer {
                    address,
                    fingerprint: signer,
                }),
            }
        }
        Judgement::Command => deliver(rewrite, None, "command decrypted".into()),
        Judgement::Act {
            action,
            refusal,
            summary,
        } => act(action, refusal, move |hold| deliver(rewrite, hold, summary)),
    };
    match verdict {
        Verdict::Deliver {
            rewrite,
            hold: None,
            summary,
            replay,
            signer,
        } if carrier == Carrier::Inline && list.policy.inline_pgp_action == Action::Hold => {
            let mut held = deliver(rewrite, Some("inline PGP post".into()), summary);
            if let Verdict::Deliver {
                replay: r,
                signer: s,
                ..
            } = &mut held
            {
                *r = replay;
                *s = signer;
            }
            held
        }
        other => other,
    }
}

/// Delivery of a rewritten message, held when `hold` says why.
fn deliver(mut rewrite: Rewrite, hold: Option<String>, summary: String) -> Verdict {
    if let Some(r) = &hold {
        rewrite.add.push(("X-Listcrypt-Hold".into(), r.clone()));
    }
    Verdict::Deliver {
        rewrite,
        hold,
        summary,
        replay: None,
        signer: None,
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
        signer: None,
    }
}

/// The first armored OpenPGP message in a text body (decoded per its transfer encoding).
fn inline_block(message: &[u8]) -> Option<Vec<u8>> {
    let parsed = mailparse::parse_mail(message).ok()?;
    let body = parsed.get_body_raw().ok()?;
    let begin = b"-----BEGIN PGP MESSAGE-----";
    let end = b"-----END PGP MESSAGE-----";
    let start = mime::find(&body, begin)?;
    let stop = mime::find(&body[start..], end)? + start + end.len();
    Some(body[start..stop].to_vec())
}

/// For `act` calls whose action never delivers (reject, discard).
fn unreachable_deliver() -> Verdict {
    Verdict::Tempfail(crate::refusal::Internal::Failure.into())
}

/// RFC 3156 §5 multipart/signed from the exact signed bytes and the author's signature, or
/// `None` when the signed bytes are not CRLF-canonical text for a binary signature.
fn signed_copy(plaintext: &[u8], sig: &pgp::GoodSignature) -> Option<(String, Vec<u8>)> {
    let canonical = mime::to_crlf(plaintext);
    if !sig.text && canonical != plaintext {
        return None;
    }
    let boundary = mime::new_boundary();
    if mime::contains(&canonical, boundary.as_bytes()) {
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

fn failure_refusal(f: &Failure) -> Refusal {
    match f {
        Failure::NotForList => Refusal::NotForListKey,
        Failure::NoIntegrity => Refusal::NoIntegrity,
        Failure::Integrity => Refusal::IntegrityFailed,
        Failure::WeakCipher => Refusal::WeakCipher,
        Failure::Malformed(_) => Refusal::MalformedOpenPgp,
        Failure::TooManyPackets(_) => Refusal::TooManyPackets,
        Failure::TooMuchPlaintext(_) => Refusal::PlaintextTooLarge,
    }
}
