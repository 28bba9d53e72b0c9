//! What of an offered certificate may update a member's bound one: the `Autocrypt` header of
//! a verified post, parsed within bounds, and the merge that accepts only what the bound
//! primary key signed itself (new subkeys, new self-signatures such as a later expiry, and
//! revocations).

use crate::keys::normalize_address;
use crate::mime::Entity;
use crate::pgp::Cert;
use sequoia_openpgp::parse::Parse;
use std::collections::BTreeSet;

/// Autocrypt Level 1 §2.3: MUAs "SHOULD treat such headers as invalid" above 10 KiB,
/// counting the `Autocrypt:` prefix and folding whitespace.
pub const MAX_FIELD_BYTES: usize = 10 * 1024;

/// The one valid `Autocrypt` field of a message, as captured on the SMTP path: its address
/// and its decoded key data, not yet parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Captured {
    pub addr: String,
    pub keydata: Vec<u8>,
}

/// The outer header's `Autocrypt` field, if there is exactly one and it is valid. Several
/// fields are all discarded, as Autocrypt Level 1 §2.4 says. Cheap: header bytes only.
pub fn capture(message: &[u8]) -> Option<Captured> {
    let entity = Entity::parse(message).ok()?;
    let mut fields = entity.headers.iter().filter(|h| h.is("Autocrypt"));
    let field = fields.next()?;
    if fields.next().is_some() {
        return None;
    }
    parse_field(&field.value)
}

/// `addr=…; [prefer-encrypt=mutual;] [_other=…;] keydata=BASE64` (Autocrypt Level 1 §2.3):
/// an unknown attribute without a leading `_` is critical and makes the field invalid.
pub fn parse_field(value: &[u8]) -> Option<Captured> {
    if value.len() + "Autocrypt: ".len() > MAX_FIELD_BYTES {
        return None;
    }
    let value = std::str::from_utf8(value).ok()?;
    let mut addr = None;
    let mut keydata = None;
    for attribute in value.split(';') {
        if keydata.is_some() {
            return None; // keydata must be the last attribute
        }
        let (name, v) = attribute.split_once('=')?;
        match name.trim() {
            "addr" => addr = Some(normalize_address(v)),
            "prefer-encrypt" => {}
            "keydata" => {
                let b64: Vec<u8> = v.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
                keydata = Some(data_encoding::BASE64.decode(&b64).ok()?);
            }
            other if other.starts_with('_') => {}
            _ => return None,
        }
    }
    Some(Captured {
        addr: addr?,
        keydata: keydata?,
    })
}

/// Why an offered certificate was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("not an OpenPGP certificate")]
    Unparseable,
    #[error("a different primary key")]
    OtherPrimary,
    #[error("it carries secret key material")]
    Secret,
    #[error("it adds a user ID or user attribute")]
    NewUserId,
    #[error("it adds a signature that is not a valid self-signature of the bound key")]
    NotSelfSigned,
    #[error("it adds a subkey without a valid binding signature")]
    UnboundSubkey,
}

/// What an accepted update changed, for the log and the owners' notice.
#[derive(Debug, Clone)]
pub struct Update {
    pub cert: Cert,
    pub new_subkeys: usize,
    pub new_signatures: usize,
}

/// Parses `keydata` and merges it into `bound` with [`accept`].
pub fn accept_bytes(bound: &Cert, keydata: &[u8]) -> Result<Option<Update>, Refused> {
    let offered = Cert::from_bytes(keydata).map_err(|_| Refused::Unparseable)?;
    accept(bound, offered)
}

/// `bound` merged with `offered` (sequoia's `Cert::merge_public`, which verifies
/// self-signatures and moves the bad ones aside), if the merge added nothing but the bound
/// primary key's own valid self-signatures and the subkeys they bind. The outer Autocrypt
/// header is unsigned: this check is what makes it safe. `None`: nothing new.
pub fn accept(bound: &Cert, offered: Cert) -> Result<Option<Update>, Refused> {
    if offered.fingerprint() != bound.fingerprint() {
        return Err(Refused::OtherPrimary);
    }
    if offered.is_tsk() {
        return Err(Refused::Secret);
    }
    let merged = bound
        .clone()
        .merge_public(offered)
        .map_err(|_| Refused::Unparseable)?;
    if userids(&merged) != userids(bound)
        || merged.user_attributes().count() != bound.user_attributes().count()
    {
        return Err(Refused::NewUserId);
    }
    if foreign(&merged) != foreign(bound) {
        return Err(Refused::NotSelfSigned);
    }
    let old_subkeys: BTreeSet<_> = bound
        .keys()
        .subkeys()
        .map(|k| k.key().fingerprint())
        .collect();
    let mut new_subkeys = 0;
    for sk in merged.keys().subkeys() {
        if old_subkeys.contains(&sk.key().fingerprint()) {
            continue;
        }
        if sk.self_signatures().next().is_none() && sk.self_revocations().next().is_none() {
            return Err(Refused::UnboundSubkey);
        }
        new_subkeys += 1;
    }
    let new_signatures = own(&merged).saturating_sub(own(bound));
    if new_subkeys == 0 && new_signatures == 0 {
        return Ok(None);
    }
    Ok(Some(Update {
        cert: merged,
        new_subkeys,
        new_signatures,
    }))
}

fn userids(cert: &Cert) -> BTreeSet<Vec<u8>> {
    cert.userids()
        .map(|u| u.userid().value().to_vec())
        .collect()
}

/// Signatures that are not valid self-signatures: third-party certifications and
/// revocations, and whatever failed to verify, on every component.
fn foreign(cert: &Cert) -> usize {
    let primary = cert.primary_key();
    let mut n = primary.certifications().count() + primary.other_revocations().count();
    for u in cert.userids() {
        n += u.certifications().count() + u.other_revocations().count();
    }
    for a in cert.user_attributes() {
        n += a.certifications().count() + a.other_revocations().count();
    }
    for k in cert.keys().subkeys() {
        n += k.certifications().count() + k.other_revocations().count();
    }
    n + cert.bad_signatures().count() + cert.unknowns().count()
}

/// Valid self-signatures and self-revocations on every component.
fn own(cert: &Cert) -> usize {
    let primary = cert.primary_key();
    let mut n = primary.self_signatures().count() + primary.self_revocations().count();
    for u in cert.userids() {
        n += u.self_signatures().count() + u.self_revocations().count();
    }
    for k in cert.keys().subkeys() {
        n += k.self_signatures().count() + k.self_revocations().count();
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pgp::testkit::{certification, general_purpose, with_self_signed_userids};
    use crate::pgp::{check_member_cert, primary_expiry, POLICY};
    use openpgp::cert::prelude::*;
    use openpgp::packet::signature::SignatureBuilder;
    use openpgp::serialize::SerializeInto;
    use openpgp::types::{KeyFlags, ReasonForRevocation, SignatureType};
    use sequoia_openpgp as openpgp;
    use std::time::{Duration, SystemTime};

    fn alice() -> (Cert, Cert) {
        let (secret, _) = CertBuilder::general_purpose(Some("alice <alice@example.org>"))
            .set_validity_period(Duration::from_secs(30 * 86_400))
            .generate()
            .unwrap();
        let public = secret.clone().strip_secret_key_material();
        (secret, public)
    }

    fn primary_signer(secret: &Cert) -> openpgp::crypto::KeyPair {
        secret
            .primary_key()
            .key()
            .clone()
            .parts_into_secret()
            .unwrap()
            .into_keypair()
            .unwrap()
    }

    /// The public certificate with one more encryption subkey bound by the primary key.
    fn with_new_subkey(secret: &Cert) -> Cert {
        let vc = secret.with_policy(&POLICY, None).unwrap();
        let key = KeyBuilder::new(KeyFlags::empty().set_transport_encryption())
            .subkey(vc)
            .unwrap()
            .attach_cert()
            .unwrap();
        key.strip_secret_key_material()
    }

    /// The public certificate with its expiry moved to a year from now (new self-signatures).
    fn extended(secret: &Cert) -> Cert {
        let mut signer = primary_signer(secret);
        let later = SystemTime::now() + Duration::from_secs(365 * 86_400);
        let sigs = secret
            .set_expiration_time(&POLICY, None, &mut signer, Some(later))
            .unwrap();
        let (cert, _) = secret.clone().insert_packets(sigs).unwrap();
        cert.strip_secret_key_material()
    }

    fn revoked(secret: &Cert) -> Cert {
        let mut signer = primary_signer(secret);
        let rev = secret
            .revoke(&mut signer, ReasonForRevocation::KeyCompromised, b"lost")
            .unwrap();
        let (cert, _) = secret.clone().insert_packets([rev]).unwrap();
        cert.strip_secret_key_material()
    }

    #[test]
    fn an_autocrypt_field_is_parsed_within_bounds() {
        let key = general_purpose("a@example.org");
        let b64 = data_encoding::BASE64.encode(&key.to_vec().unwrap());
        let folded: String = b64
            .as_bytes()
            .chunks(70)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join("\r\n ");
        let field = format!("addr=A@Example.org; prefer-encrypt=mutual; keydata=\r\n {folded}");
        let got = parse_field(field.as_bytes()).expect("valid field");
        assert_eq!(got.addr, "a@example.org");
        assert_eq!(Cert::from_bytes(&got.keydata).unwrap(), key);
        let critical = format!("addr=a@example.org; type=1; keydata={b64}");
        assert_eq!(
            parse_field(critical.as_bytes()),
            None,
            "unknown critical attribute"
        );
        let noncritical = format!("addr=a@example.org; _x=y; keydata={b64}");
        assert!(parse_field(noncritical.as_bytes()).is_some());
        let big = format!(
            "addr=a@example.org; keydata={}",
            "A".repeat(MAX_FIELD_BYTES)
        );
        assert_eq!(parse_field(big.as_bytes()), None, "over 10 KiB");
        let message = format!(
            "From: a@example.org\r\nAutocrypt: addr=a@example.org; keydata={b64}\r\n\
             Autocrypt: addr=a@example.org; keydata={b64}\r\n\r\nbody\r\n"
        );
        assert_eq!(
            capture(message.as_bytes()),
            None,
            "two fields: both discarded"
        );
    }

    #[test]
    fn new_subkeys_extensions_and_revocations_of_the_bound_key_are_applied() {
        let (secret, bound) = alice();
        let update = accept(&bound, with_new_subkey(&secret))
            .unwrap()
            .expect("changed");
        assert_eq!(update.new_subkeys, 1);
        let before = bound.keys().subkeys().count();
        assert_eq!(update.cert.keys().subkeys().count(), before + 1);

        // The primary key's expiry (sequoia's `set_expiration_time` leaves subkeys alone).
        let before = primary_expiry(&bound).flatten().unwrap();
        let update = accept(&bound, extended(&secret)).unwrap().expect("changed");
        let after = primary_expiry(&update.cert).flatten().unwrap();
        assert!(
            after > before + Duration::from_secs(300 * 86_400),
            "expiry extended"
        );

        assert!(check_member_cert(&bound, "alice@example.org").is_ok());
        let update = accept(&bound, revoked(&secret)).unwrap().expect("changed");
        assert!(
            check_member_cert(&update.cert, "alice@example.org").is_err(),
            "revoked"
        );
        assert!(
            accept(&bound, bound.clone()).unwrap().is_none(),
            "nothing new"
        );
    }

    #[test]
    fn other_primaries_foreign_signatures_new_user_ids_and_secrets_are_refused() {
        let (secret, bound) = alice();
        let (_, mallory) = alice();
        assert_eq!(accept(&bound, mallory).unwrap_err(), Refused::OtherPrimary);

        let (other, _) = alice();
        let certified = bound
            .clone()
            .insert_packets([certification(&other, &bound, true)])
            .unwrap()
            .0;
        assert_eq!(
            accept(&bound, certified).unwrap_err(),
            Refused::NotSelfSigned
        );

        let uid = with_self_signed_userids(secret.clone(), ["alice <alice@evil.example>".into()]);
        let uid = uid.strip_secret_key_material();
        assert_eq!(accept(&bound, uid).unwrap_err(), Refused::NewUserId);

        assert_eq!(accept(&bound, secret.clone()).unwrap_err(), Refused::Secret);

        // A binding signature made by another key is not a self-signature.
        let forged = {
            let mut signer = primary_signer(&other);
            use openpgp::packet::key::{Key4, SubordinateRole};
            let sub =
                Key4::<_, SubordinateRole>::generate_ecc(false, openpgp::types::Curve::Cv25519)
                    .unwrap();
            let sub = openpgp::packet::Key::from(sub).parts_into_public();
            let sig = sub
                .bind(
                    &mut signer,
                    &bound,
                    SignatureBuilder::new(SignatureType::SubkeyBinding)
                        .set_key_flags(KeyFlags::empty().set_transport_encryption())
                        .unwrap(),
                )
                .unwrap();
            bound
                .clone()
                .insert_packets([openpgp::Packet::from(sub), sig.into()])
                .unwrap()
                .0
        };
        assert!(
            accept(&bound, forged).is_err(),
            "subkey bound by another key"
        );
    }
}
