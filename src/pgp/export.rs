//! The forms the list key is published in: armored (key replies, `export-key`), binary with
//! one user ID (WKD), minimal (Autocrypt).

use openpgp::serialize::{Serialize, SerializeInto};
use openpgp::types::HashAlgorithm;
use openpgp::{Cert, KeyHandle, Packet};
use sequoia_openpgp as openpgp;

/// The public parts of `cert`, armored.
pub fn armored_public(cert: &Cert) -> anyhow::Result<Vec<u8>> {
    cert.clone().strip_secret_key_material().armored().to_vec()
}

/// The public parts of `cert`, binary.
pub fn binary_public(cert: &Cert) -> anyhow::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    cert.serialize(&mut bytes)?;
    Ok(bytes)
}

/// The public parts of `cert` with only the user IDs whose address is `address`, and no
/// user attributes; `None` if no user ID is left.
pub fn only_userid_for(cert: &Cert, address: &str) -> Option<Cert> {
    let public = cert
        .clone()
        .strip_secret_key_material()
        .retain_userids(|ua| {
            ua.userid()
                .email_normalized()
                .ok()
                .flatten()
                .is_some_and(|e| e == address)
        })
        .retain_user_attributes(|_| false);
    public.userids().next().is_some().then_some(public)
}

/// A minimal key, binary: only the key's own signatures. Members' certifications are
/// published in WKD and key replies, never in every outbound copy.
pub fn autocrypt_keydata(cert: &Cert) -> Option<Vec<u8>> {
    let own = KeyHandle::from(cert.fingerprint());
    let packets = cert
        .clone()
        .strip_secret_key_material()
        .into_packets()
        .filter(|p| match p {
            Packet::Signature(sig) => sig.get_issuers().iter().any(|h| h.aliases(&own)),
            _ => true,
        });
    let mut bytes = Vec::new();
    for packet in packets {
        packet.serialize(&mut bytes).ok()?;
    }
    Some(bytes)
}

/// SHA-1 of `data` (WKD's hashed local part; draft-koch-openpgp-webkey-service §3.1).
pub fn sha1(data: &[u8]) -> Vec<u8> {
    let mut ctx = HashAlgorithm::SHA1
        .context()
        .expect("SHA-1 is always available")
        .for_digest();
    ctx.update(data);
    ctx.into_digest().expect("SHA-1 digest")
}
