//! listcrypt's own key address (`LIST-key@DOMAIN`): list key requests and proven key binding
//! by email. Nothing sent here reaches Mailman; replies go out through the reinjection
//! listener with a null envelope sender (RFC 3834 automatic replies).
//!
//! Binding proves both halves of a key: the challenge token travels only inside a message
//! encrypted to the offered key (proving decryption), and the binding becomes active only
//! when a reply signed by that key carries the token back (proving signing).

use crate::config::Limits;
use crate::keys::{check_member_cert, normalize_address, CertDir, ListKeys, Member};
use crate::message::first_address;
use crate::mime::{self, Entity, Shape};
use crate::pgp::{self, BatchRecipient, SigCheck};
use crate::store::{Binding, BindingState, Role, Store};
use openpgp::cert::CertParser;
use openpgp::parse::Parse;
use openpgp::serialize::SerializeInto;
use openpgp::Cert;
use sequoia_openpgp as openpgp;
use std::path::Path;

/// A challenge is valid this long.
pub const TOKEN_TTL_SECS: u64 = 3 * 24 * 3600;
/// At most one list-key reply per sender per hour, one challenge per ten minutes.
const KEY_REPLY_INTERVAL: u64 = 3600;
const CHALLENGE_INTERVAL: u64 = 600;

/// A reply to send: recipient and the whole message.
pub struct OutMail {
    pub to: String,
    pub message: Vec<u8>,
}

/// What happened, for the log line, and the reply (if any).
pub struct Outcome {
    pub summary: String,
    pub reply: Option<OutMail>,
}

impl Outcome {
    fn quiet(summary: impl Into<String>) -> Outcome {
        Outcome {
            summary: summary.into(),
            reply: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Keys(#[from] crate::keys::KeyError),
    #[error("OpenPGP: {0}")]
    Crypto(String),
}

/// Handles one message to the list's key address.
pub fn handle(
    list: &ListKeys,
    store: &dyn Store,
    keyring_dir: &Path,
    envelope_sender: &str,
    message: &[u8],
    limits: &Limits,
) -> Result<Outcome, CommandError> {
    let sender = normalize_address(envelope_sender);
    let Ok(entity) = Entity::parse(message) else {
        return Ok(Outcome::quiet("unparseable key request ignored"));
    };
    // Never answer bounces or other automatic mail (RFC 3834 §2), nor a From that is not
    // the envelope sender (we would reflect replies at a third party).
    if sender.is_empty() {
        return Ok(Outcome::quiet("key request with a null sender ignored"));
    }
    if entity
        .get("Auto-Submitted")
        .is_some_and(|h| !mime::header_text(h).eq_ignore_ascii_case("no"))
    {
        return Ok(Outcome::quiet("automatic mail to the key address ignored"));
    }
    let from = entity.get("From").and_then(first_address);
    if from.as_deref() != Some(sender.as_str()) {
        return Ok(Outcome::quiet(
            "key request whose From is not the envelope sender ignored",
        ));
    }

    // The certificates this sender offered earlier and has not yet proven.
    let certs = CertDir::new(keyring_dir);
    let mut pending = Vec::new();
    for fpr in store.pending_for(&list.address, &sender)? {
        if let Some(cert) = fpr.parse().ok().and_then(|f| certs.get(&f).ok().flatten()) {
            pending.push(cert);
        }
    }
    // The key this address is bound to now, if any: a key change must be announced with it.
    let current = list.member(&sender).map(|m| m.cert.clone());
    let mut known: Vec<Member> = pending
        .iter()
        .map(|cert| Member {
            address: sender.clone(),
            cert: cert.clone(),
            role: Role::Member,
            show_key_id: false,
        })
        .collect();
    if let Some(cert) = &current {
        known.push(Member {
            address: sender.clone(),
            cert: cert.clone(),
            role: Role::Member,
            show_key_id: false,
        });
    }
    let verifier = ListKeys::new(
        list.address.clone(),
        list.policy.clone(),
        list.secret.clone(),
        known,
    );

    // What the sender wrote (decrypted if it was encrypted to the list) and who signed it.
    let (content, signatures) =
        match mime::classify(message, limits.max_mime_depth, limits.max_mime_parts) {
            Ok(Shape::PgpMime { ciphertext }) => {
                match pgp::decrypt_verify(
                    &ciphertext,
                    &verifier,
                    limits.max_packets,
                    limits.max_plaintext_bytes,
                ) {
                    Ok(d) => (d.plaintext, d.signatures),
                    Err(_) => {
                        return Ok(Outcome::quiet(
                            "undecryptable mail to the key address ignored",
                        ))
                    }
                }
            }
            Ok(_) => {
                // In a multipart/signed, only what the signature covers counts (the token, an
                // announced key): nothing from the unsigned rest of the message.
                let ct = entity.content_type();
                match (ct.mimetype.as_str(), ct.params.get("boundary")) {
                    ("multipart/signed", Some(b)) => {
                        match signed_part_checks(entity.body, b, &verifier) {
                            Some((signed, sigs)) => (signed, sigs),
                            None => (Vec::new(), Vec::new()),
                        }
                    }
                    _ => (message.to_vec(), Vec::new()),
                }
            }
            Err(_) => return Ok(Outcome::quiet("malformed mail to the key address ignored")),
        };

    // Commands are fresh: a signature outside the time window, or one already used, counts
    // for nothing (a replayed confirmation or key-change announcement).
    let window = std::time::Duration::from_secs(limits.signature_time_window);
    let now = std::time::SystemTime::now();
    let fresh = |g: &pgp::GoodSignature| {
        g.created.is_some_and(|t| {
            t <= now + window && now.duration_since(t).map(|d| d <= window).unwrap_or(true)
        })
    };
    let mut good_sigs = Vec::new();
    for sig in &signatures {
        let SigCheck::Good(good) = sig else { continue };
        if !fresh(good) {
            continue;
        }
        let digest = command_digest(&list.address, &good.packet);
        if store.replay_record(
            &list.address,
            &digest,
            limits.signature_time_window.saturating_mul(2),
        )? {
            return Ok(Outcome::quiet(format!(
                "replayed command from {sender} ignored"
            )));
        }
        good_sigs.push(good);
    }

    // 1. A signed confirmation carrying the token of a pending binding.
    let text = String::from_utf8_lossy(&content);
    for good in &good_sigs {
        let Some(cert) = pending.iter().find(|c| c.fingerprint() == good.signer) else {
            continue;
        };
        let fingerprint = cert.fingerprint().to_hex();
        // The store keeps only the token's hash: offer it each token-shaped word of the text.
        let mut proven = false;
        for candidate in token_candidates(&text) {
            if store.pending_token_matches(&list.address, &sender, &fingerprint, candidate)? {
                proven = true;
                break;
            }
        }
        if !proven {
            continue;
        }
        check_member_cert(cert, &sender)
            .map_err(|p| crate::keys::KeyError::Unusable(p.to_string()))?;
        // A member's existing role and key-id preference survive a key change.
        let old = store
            .bindings(&list.address)?
            .into_iter()
            .find(|b| b.address == sender);
        store.bind(&Binding {
            list: list.address.clone(),
            address: sender.clone(),
            fingerprint: fingerprint.clone(),
            role: old.as_ref().map(|b| b.role).unwrap_or(Role::Member),
            state: BindingState::Active,
            show_key_id: old.as_ref().is_some_and(|b| b.show_key_id),
        })?;
        store.pending_remove(&list.address, &sender, &fingerprint)?;
        let body = format!(
            "Your key {fingerprint} is now bound to {sender} on {}.\r\n\
             Posts to the list must be encrypted to the list key and signed with this key.\r\n",
            list.address
        );
        let reply = encrypted_reply(list, &sender, cert, "Your key is bound", &body)?;
        return Ok(Outcome {
            summary: format!("binding of {sender} to 0x{fingerprint} proven and activated"),
            reply: Some(reply),
        });
    }

    // 2. A member returns the list key certified by their bound key, in a message signed
    //    with it (that is the opt-in): the certifications are merged and published with
    //    the list key (key requests, WKD, export-key).
    if let Some(bound) = &current {
        let signed_by_bound = good_sigs.iter().any(|g| g.signer == bound.fingerprint());
        let list_fpr = list.secret.fingerprint();
        if signed_by_bound {
            if let Some(returned) = find_cert(&content, limits, |c| c.fingerprint() == list_fpr) {
                let sigs = member_certifications(&returned, bound);
                if !sigs.is_empty() {
                    let n = crate::keys::add_list_certifications(keyring_dir, &list.address, sigs)?;
                    store.touch()?;
                    let body = format!(
                        "Your certification of the list key of {} is published with it.\r\n",
                        list.address
                    );
                    let reply = encrypted_reply(
                        list,
                        &sender,
                        bound,
                        "Your certification is published",
                        &body,
                    )?;
                    return Ok(Outcome {
                        summary: format!(
                            "{n} certification(s) of the list key by {sender} merged and published"
                        ),
                        reply: Some(reply),
                    });
                }
            }
        }
    }

    // 3. A certificate offered for binding: challenge it.
    if let Some(cert) = offered_cert(&content, &sender, limits) {
        if let Err(why) = check_member_cert(&cert, &sender) {
            if !store.rate_allow(&list.address, &sender, "refusal", CHALLENGE_INTERVAL)? {
                return Ok(Outcome::quiet(
                    "refused key offer not answered again (rate limit)",
                ));
            }
            let body = format!(
                "The key you sent cannot be bound to {sender} on {}:\r\n  {why}\r\n\
                 Please send a key with a user ID for {sender} and a usable encryption subkey\r\n\
                 (Curve25519, or RSA of at least 2048 bits).\r\n",
                list.address
            );
            let reply = signed_reply(list, &sender, "Your key cannot be bound", &body, None)?;
            return Ok(Outcome {
                summary: format!("key offered by {sender} refused: {why}"),
                reply: Some(reply),
            });
        }
        // Replacing a bound key takes an announcement signed by the bound key: otherwise
        // whoever can read the member's mail on the wire could swap in a key of their own.
        if let Some(bound) = &current {
            if bound.fingerprint() == cert.fingerprint() {
                // The bound key itself, e.g. with an extended expiry: merge the owner's new
                // self-signatures (third-party ones are dropped) and reload.
                certs.insert(&strip_third_party(cert))?;
                store.touch()?;
                return Ok(Outcome::quiet(format!("{sender} refreshed the bound key")));
            }
            let announced = good_sigs.iter().any(|g| g.signer == bound.fingerprint());
            if !announced {
                if !store.rate_allow(&list.address, &sender, "refusal", CHALLENGE_INTERVAL)? {
                    return Ok(Outcome::quiet(
                        "unannounced key change not answered again (rate limit)",
                    ));
                }
                let body = format!(
                    "{sender} is already bound on {} to the key {}.\r\n\
                     To change keys, send the new key in a message signed with the current one.\r\n\
                     If you lost the current key, ask the list owner.\r\n",
                    list.address,
                    bound.fingerprint()
                );
                let reply = encrypted_reply(list, &sender, bound, "Key change refused", &body)?;
                return Ok(Outcome {
                    summary: format!(
                        "key change for {sender} refused: not signed by the bound key"
                    ),
                    reply: Some(reply),
                });
            }
        }
        let kind = if current.is_some() {
            "change"
        } else {
            "challenge"
        };
        if !store.rate_allow(&list.address, &sender, kind, CHALLENGE_INTERVAL)? {
            return Ok(Outcome::quiet(
                "key offer not challenged again yet (rate limit)",
            ));
        }
        // Only self-signed user IDs and subkeys are kept: no third-party certification flooding.
        let cert = strip_third_party(cert);
        certs.insert(&cert)?;
        let token = new_token();
        let fingerprint = cert.fingerprint().to_hex();
        store.pending_put(&list.address, &sender, &fingerprint, &token, TOKEN_TTL_SECS)?;
        let body = format!(
            "Someone asked to bind this key ({fingerprint}) to {sender} on the encrypted\r\n\
             list {list}. If it was you, reply to this message, signed with this key (and\r\n\
             preferably encrypted to the list key), keeping this line:\r\n\
             \r\n\
             listcrypt-token: {token}\r\n\
             \r\n\
             The token expires in {days} days. If it was not you, ignore this message.\r\n",
            list = list.address,
            days = TOKEN_TTL_SECS / 86_400
        );
        let reply = encrypted_reply(list, &sender, &cert, "Confirm your key for the list", &body)?;
        return Ok(Outcome {
            summary: format!("challenge sent to {sender} for key 0x{fingerprint}"),
            reply: Some(reply),
        });
    }

    // 4. Anything else: the list's public key.
    if !store.rate_allow(&list.address, &sender, "key", KEY_REPLY_INTERVAL)? {
        return Ok(Outcome::quiet(
            "list key request not answered again yet (rate limit)",
        ));
    }
    let public = list
        .secret
        .clone()
        .strip_secret_key_material()
        .armored()
        .to_vec()
        .map_err(|e| CommandError::Crypto(e.to_string()))?;
    let body = format!(
        "This is the OpenPGP key of the encrypted list {list} ({fpr}).\r\n\
         Encrypt posts to it and sign them with your own key. To bind your key to your\r\n\
         address, send your public key (attached) to this address.\r\n",
        list = list.address,
        fpr = list.secret.fingerprint()
    );
    let reply = signed_reply(
        list,
        &sender,
        "The list's OpenPGP key",
        &body,
        Some(&public),
    )?;
    Ok(Outcome {
        summary: format!("list key sent to {sender}"),
        reply: Some(reply),
    })
}

/// The signed part of a top-level multipart/signed (CRLF) and the checks of its detached
/// signature.
fn signed_part_checks(
    body: &[u8],
    boundary: &str,
    verifier: &ListKeys,
) -> Option<(Vec<u8>, Vec<SigCheck>)> {
    let parts = mime::split_multipart(body, boundary).ok()?;
    if parts.len() != 2 {
        return None;
    }
    let sig = mailparse::parse_mail(parts[1])
        .and_then(|p| p.get_body_raw())
        .ok()?;
    let signed = mime::to_crlf(parts[0]);
    let checks = pgp::verify_detached(&signed, &sig, verifier);
    Some((signed, checks))
}

/// The first certificate in the message (an application/pgp-keys part, or an armored block in
/// any text part, whatever its transfer encoding) with a user ID for `address`.
fn offered_cert(content: &[u8], address: &str, limits: &Limits) -> Option<Cert> {
    find_cert(content, limits, |cert| {
        cert.userids().any(|u| {
            u.userid()
                .email_normalized()
                .ok()
                .flatten()
                .is_some_and(|e| e == address)
        })
    })
}

/// The first certificate in the message's key parts (application/pgp-keys, or an armored
/// block in any part, whatever its transfer encoding) that `wanted` accepts.
fn find_cert(content: &[u8], limits: &Limits, wanted: impl Fn(&Cert) -> bool) -> Option<Cert> {
    let mut stack = vec![(content, 0u32)];
    let mut seen = 0u32;
    while let Some((part, depth)) = stack.pop() {
        seen += 1;
        if seen > limits.max_mime_parts || depth > limits.max_mime_depth {
            return None;
        }
        let entity = Entity::parse(part).ok()?;
        let ct = entity.content_type();
        if ct.mimetype.starts_with("multipart/") {
            let b = ct.params.get("boundary")?;
            for sub in mime::split_multipart(entity.body, b).ok()? {
                stack.push((sub, depth + 1));
            }
            continue;
        }
        let decoded = match mailparse::parse_mail(part).and_then(|p| p.get_body_raw()) {
            Ok(d) => d,
            Err(_) => continue,
        };
        let looks_like_key = ct.mimetype == "application/pgp-keys"
            || decoded
                .windows(36)
                .any(|w| w == b"-----BEGIN PGP PUBLIC KEY BLOCK-----");
        if !looks_like_key {
            continue;
        }
        let Ok(parser) = CertParser::from_bytes(&decoded) else {
            continue;
        };
        for cert in parser.flatten() {
            if wanted(&cert) {
                return Some(cert.strip_secret_key_material());
            }
        }
    }
    None
}

/// The certifications in `returned` (the list key as a member sent it back) that `member`'s
/// key really made over one of the list key's user IDs.
fn member_certifications(returned: &Cert, member: &Cert) -> Vec<openpgp::packet::Signature> {
    use crate::keys::POLICY;
    let Ok(vc) = member.with_policy(&POLICY, None) else {
        return Vec::new();
    };
    let certifiers: Vec<_> = vc
        .keys()
        .for_certification()
        .alive()
        .revoked(false)
        .collect();
    let primary = returned.primary_key().key();
    let mut out = Vec::new();
    for ua in returned.userids() {
        for sig in ua.certifications() {
            let ok = certifiers.iter().any(|ka| {
                sig.verify_userid_binding(ka.key(), primary, ua.userid())
                    .is_ok()
            });
            if ok {
                out.push(sig.clone());
            }
        }
    }
    out
}

/// Keeps only what the key's owner signed: user IDs and subkeys with their self-signatures.
fn strip_third_party(cert: Cert) -> Cert {
    let fpr = cert.fingerprint();
    let keyid = cert.keyid();
    let packets: Vec<openpgp::Packet> = cert
        .into_packets()
        .filter(|p| match p {
            openpgp::Packet::Signature(sig) => {
                let issuers = sig.get_issuers();
                issuers.is_empty()
                    || issuers.iter().any(|h| {
                        h.aliases(openpgp::KeyHandle::from(&fpr))
                            || h.aliases(openpgp::KeyHandle::from(&keyid))
                    })
            }
            _ => true,
        })
        .collect();
    Cert::from_packets(packets.into_iter()).expect("a subset of a valid certificate")
}

/// The replay record of a key-address command: its signature, apart from posts' records.
fn command_digest(list: &str, packet: &[u8]) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"key-address\0");
    h.update(list.as_bytes());
    h.update([0]);
    h.update(packet);
    h.finalize().to_vec()
}

/// Letters in a token from `new_token`: 160 bits in base32.
const TOKEN_CHARS: usize = 32;

/// At most this many token-shaped words are tried: a reply quotes one token, and each try
/// costs a hash and a lookup.
const TOKEN_CANDIDATES: usize = 64;

/// The words of `text` shaped like a token from `new_token` (lower-case base32, 32 letters).
fn token_candidates(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !matches!(c, 'a'..='z' | '2'..='7'))
        .filter(|w| w.len() == TOKEN_CHARS)
        .take(TOKEN_CANDIDATES)
}

/// 160 random bits, base32.
fn new_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 20];
    rand::thread_rng().fill_bytes(&mut bytes);
    data_encoding::BASE32_NOPAD
        .encode(&bytes)
        .to_ascii_lowercase()
}

fn key_address(list: &ListKeys) -> String {
    let (local, domain) = list.parts();
    format!("{local}-{}@{domain}", list.policy.key_suffix)
}

fn reply_header(list: &ListKeys, to: &str, subject: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (_, domain) = list.parts();
    format!(
        "From: {from}\r\nTo: {to}\r\nSubject: {subject}\r\nDate: {date}\r\n\
         Message-ID: <{id}@{domain}>\r\nAuto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n",
        from = key_address(list),
        date = crate::outbound::rfc5322_date_utc(now),
        id = new_token(),
    )
}

/// A notice from the list's key address that only `cert` can read, signed by the list.
pub fn notice(
    list: &ListKeys,
    to: &str,
    cert: &Cert,
    subject: &str,
    body: &str,
) -> Result<OutMail, CommandError> {
    encrypted_reply(list, to, cert, subject, body)
}

/// A reply only `cert` can read, signed by the list (the challenge travels only in here).
fn encrypted_reply(
    list: &ListKeys,
    to: &str,
    cert: &Cert,
    subject: &str,
    body: &str,
) -> Result<OutMail, CommandError> {
    let inner = format!(
        "Content-Type: text/plain; charset=utf-8; protected-headers=\"v1\"\r\nSubject: {subject}\r\n\r\n{body}"
    );
    let recipients = [BatchRecipient {
        cert,
        show_key_id: true,
    }];
    let armored = pgp::encrypt_sign(inner.as_bytes(), &recipients, Some(&list.secret))
        .map_err(|e| CommandError::Crypto(e.to_string()))?;
    let (content_type, encrypted) = mime::multipart_encrypted(&armored);
    let mut message = reply_header(list, to, "[...]").into_bytes();
    message.extend_from_slice(
        format!(
            "Content-Type: {}\r\n\r\n",
            content_type.replace('\n', "\r\n")
        )
        .as_bytes(),
    );
    message.extend_from_slice(&encrypted);
    Ok(OutMail {
        to: to.to_string(),
        message,
    })
}

/// A public reply signed by the list (RFC 3156 multipart/signed), optionally with the list
/// key attached.
fn signed_reply(
    list: &ListKeys,
    to: &str,
    subject: &str,
    body: &str,
    key: Option<&[u8]>,
) -> Result<OutMail, CommandError> {
    let entity = match key {
        None => format!("Content-Type: text/plain; charset=utf-8\r\n\r\n{body}").into_bytes(),
        Some(key) => {
            let b = mime::new_boundary();
            let mut e = format!(
                "Content-Type: multipart/mixed; boundary=\"{b}\"\r\n\r\n--{b}\r\n\
                 Content-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n--{b}\r\n\
                 Content-Type: application/pgp-keys; name=\"list-key.asc\"\r\n\
                 Content-Disposition: attachment; filename=\"list-key.asc\"\r\n\r\n"
            )
            .into_bytes();
            e.extend_from_slice(&mime::to_crlf(key));
            e.extend_from_slice(format!("\r\n--{b}--\r\n").as_bytes());
            e
        }
    };
    let sig = pgp::sign_detached(&entity, &list.secret)
        .map_err(|e| CommandError::Crypto(e.to_string()))?;
    let b = mime::new_boundary();
    let mut message = reply_header(list, to, subject).into_bytes();
    message.extend_from_slice(
        format!(
            "Content-Type: multipart/signed; micalg=pgp-sha512; protocol=\"application/pgp-signature\";\r\n\
             \tboundary=\"{b}\"\r\n\r\n--{b}\r\n"
        )
        .as_bytes(),
    );
    message.extend_from_slice(&entity);
    message.extend_from_slice(
        format!(
            "\r\n--{b}\r\nContent-Type: application/pgp-signature; name=\"signature.asc\"\r\n\r\n"
        )
        .as_bytes(),
    );
    message.extend_from_slice(&mime::to_crlf(&sig));
    message.extend_from_slice(format!("\r\n--{b}--\r\n").as_bytes());
    Ok(OutMail {
        to: to.to_string(),
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quoted_token_line_yields_the_token() {
        let token = new_token();
        let text = format!("Thanks!\r\n\r\n> listcrypt-token: {token}\r\n> The token expires\r\n");
        assert_eq!(
            token_candidates(&text).collect::<Vec<_>>(),
            vec![token.as_str()]
        );
        let shouted = text.to_ascii_uppercase();
        assert_eq!(
            token_candidates(&shouted).count(),
            0,
            "tokens are lower-case"
        );
    }
}
