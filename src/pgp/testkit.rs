//! Certificates and signatures the unit tests build, so test modules outside `pgp/` do not
//! reach into sequoia themselves.

use super::POLICY;
use openpgp::cert::CertBuilder;
use openpgp::packet::signature::subpacket::{Subpacket, SubpacketTag, SubpacketValue};
use openpgp::packet::signature::SignatureBuilder;
use openpgp::packet::{Signature, UserID};
use openpgp::serialize::Serialize;
use openpgp::types::SignatureType;
use openpgp::{Cert, KeyHandle, Packet};
use sequoia_openpgp as openpgp;

/// A general-purpose key (with secrets) for `userid`.
pub fn general_purpose(userid: &str) -> Cert {
    CertBuilder::general_purpose(Some(userid))
        .generate()
        .unwrap()
        .0
}

/// A key with `userids` and no subkeys (with secrets).
pub fn primary_only(userids: &[&str]) -> Cert {
    userids
        .iter()
        .fold(CertBuilder::new(), |b, u| b.add_userid(*u))
        .generate()
        .unwrap()
        .0
}

/// A key with `userids` and one transport encryption subkey (with secrets).
pub fn with_encryption_subkey(userids: &[&str]) -> Cert {
    userids
        .iter()
        .fold(CertBuilder::new(), |b, u| b.add_userid(*u))
        .add_transport_encryption_subkey()
        .generate()
        .unwrap()
        .0
}

/// Parses one certificate.
pub fn parse(bytes: &[u8]) -> Cert {
    use openpgp::parse::Parse;
    Cert::from_bytes(bytes).unwrap()
}

fn keypair(cert: &Cert) -> openpgp::crypto::KeyPair {
    cert.primary_key()
        .key()
        .clone()
        .parts_into_secret()
        .unwrap()
        .into_keypair()
        .unwrap()
}

/// `cert` (with secrets) with `userids` more user IDs, each self-signed by its primary key.
pub fn with_self_signed_userids(cert: Cert, userids: impl IntoIterator<Item = String>) -> Cert {
    let mut packets = Vec::new();
    for u in userids {
        let uid = UserID::from(u);
        let binding = uid
            .bind(
                &mut keypair(&cert),
                &cert,
                SignatureBuilder::new(SignatureType::PositiveCertification),
            )
            .unwrap();
        packets.push(Packet::from(uid));
        packets.push(binding.into());
    }
    cert.insert_packets(packets).unwrap().0
}

/// `signer`'s certification of `cert`'s first user ID; with `issuer` false it carries no
/// Issuer or Issuer Fingerprint subpacket.
pub fn certification(signer: &Cert, cert: &Cert, issuer: bool) -> Signature {
    let uid = cert.userids().next().unwrap().userid().clone();
    let mut builder = SignatureBuilder::new(SignatureType::GenericCertification);
    if !issuer {
        // An unhashed Issuer keeps the builder from adding hashed ones; then it goes.
        let keyid = SubpacketValue::Issuer(signer.keyid());
        let area = builder.unhashed_area_mut();
        area.add(Subpacket::new(keyid, false).unwrap()).unwrap();
    }
    let mut sig = builder
        .sign_userid_binding(&mut keypair(signer), cert.primary_key().key(), &uid)
        .unwrap();
    sig.unhashed_area_mut().remove_all(SubpacketTag::Issuer);
    sig
}

/// How many signatures on `cert` name no issuer of its own.
pub fn foreign(cert: &Cert) -> usize {
    let own = KeyHandle::from(cert.fingerprint());
    cert.clone()
        .into_packets()
        .filter(|p| match p {
            Packet::Signature(s) => !s.get_issuers().iter().any(|h| h.aliases(&own)),
            _ => false,
        })
        .count()
}

/// `cert`'s signing subkey, ready to sign.
pub fn signing_keypair(cert: &Cert) -> sequoia_openpgp::crypto::KeyPair {
    cert.keys()
        .with_policy(&POLICY, None)
        .secret()
        .for_signing()
        .next()
        .unwrap()
        .key()
        .clone()
        .into_keypair()
        .unwrap()
}

/// `signer`'s binary-mode signature of `data`, by its signing subkey.
pub fn signature(signer: &Cert, data: &[u8]) -> Signature {
    let mut keypair = signing_keypair(signer);
    SignatureBuilder::new(SignatureType::Binary)
        .sign_message(&mut keypair, data)
        .unwrap()
}

/// `signer`'s armored detached signature of `data` (RFC 3156 §5), by its signing subkey.
pub fn detached(signer: &Cert, data: &[u8]) -> Vec<u8> {
    let sig = signature(signer, data);
    let mut out = Vec::new();
    let mut w = openpgp::armor::Writer::new(&mut out, openpgp::armor::Kind::Signature).unwrap();
    Packet::from(sig).serialize(&mut w).unwrap();
    w.finalize().unwrap();
    out
}
