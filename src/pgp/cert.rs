//! Member certificates: reading them, and whether one can be encrypted to now.

use super::KeyError;
use super::POLICY;
use openpgp::cert::prelude::*;
use openpgp::parse::Parse;
use openpgp::policy::Policy as _;
use openpgp::serialize::MarshalInto;
use openpgp::types::{PublicKeyAlgorithm, RevocationStatus};
use openpgp::{Cert, Fingerprint, KeyHandle, KeyID};
use sequoia_openpgp as openpgp;
use std::path::Path;
use std::time::SystemTime;

/// Why a member certificate cannot be used for encryption now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyProblem {
    #[error("certificate {0} is not valid: {1}")]
    Invalid(Fingerprint, String),
    #[error("certificate {0} is revoked")]
    Revoked(Fingerprint),
    #[error("certificate {0} has expired")]
    Expired(Fingerprint),
    #[error("certificate {0} has no valid user ID for {1}")]
    NoUserId(Fingerprint, String),
    #[error("{0}")]
    Weak(&'static str),
    #[error("certificate {0} has no usable encryption subkey")]
    NoEncryptionKey(Fingerprint),
}

/// Why a member certificate cannot be used for encryption now, or `Ok` if it can.
pub fn check_member_cert(cert: &Cert, address: &str) -> Result<(), KeyProblem> {
    check_member_cert_at(cert, address, SystemTime::now())
}

/// [`check_member_cert`] as of `time`.
fn check_member_cert_at(cert: &Cert, address: &str, time: SystemTime) -> Result<(), KeyProblem> {
    let fpr = cert.fingerprint();
    let vc = cert
        .with_policy(&POLICY, time)
        .map_err(|e| KeyProblem::Invalid(fpr.clone(), e.to_string()))?;
    if let RevocationStatus::Revoked(_) = vc.revocation_status() {
        return Err(KeyProblem::Revoked(fpr));
    }
    vc.alive().map_err(|_| KeyProblem::Expired(fpr.clone()))?;
    let has_uid = vc.userids().any(|u| {
        u.userid()
            .email_normalized()
            .ok()
            .flatten()
            .is_some_and(|e| e == address)
    });
    if !has_uid {
        return Err(KeyProblem::NoUserId(fpr, address.to_string()));
    }
    let mut usable = 0;
    for ka in vc.keys().for_transport_encryption().alive().revoked(false) {
        weak_key(ka.key().pk_algo(), ka.key().mpis().bits())?;
        usable += 1;
    }
    if usable == 0 {
        return Err(KeyProblem::NoEncryptionKey(fpr));
    }
    Ok(())
}

fn weak_key(algo: PublicKeyAlgorithm, bits: Option<usize>) -> Result<(), KeyProblem> {
    #[allow(deprecated)]
    match algo {
        PublicKeyAlgorithm::ElGamalEncrypt | PublicKeyAlgorithm::ElGamalEncryptSign => {
            Err(KeyProblem::Weak(
                "ElGamal encryption keys are too weak; please use a Curve25519 or RSA-3072 key",
            ))
        }
        PublicKeyAlgorithm::RSAEncryptSign | PublicKeyAlgorithm::RSAEncrypt
            if bits.unwrap_or(0) < 2048 =>
        {
            Err(KeyProblem::Weak("RSA keys under 2048 bits are too weak"))
        }
        _ => Ok(()),
    }
}

/// One of a member's encryption keys.
pub type EncryptionKey =
    openpgp::packet::Key<openpgp::packet::key::PublicParts, openpgp::packet::key::UnspecifiedRole>;

/// A member's usable encryption keys as of the snapshot.
#[derive(Clone)]
pub struct EncryptionKeys {
    /// What the certificate advertises (SEIPDv2 or not): decides the batch's packet version.
    pub features: openpgp::types::Features,
    pub keys: Vec<EncryptionKey>,
    /// When the first of those keys (or the certificate) expires.
    pub until: Option<std::time::SystemTime>,
}

impl EncryptionKeys {
    /// `cert`'s usable encryption keys for `address`, or why it has none.
    pub fn of(cert: &Cert, address: &str) -> Result<EncryptionKeys, KeyProblem> {
        EncryptionKeys::at(cert, address, SystemTime::now())
    }

    /// [`EncryptionKeys::of`] as of `time` (the certificate cache's validity windows).
    pub fn at(cert: &Cert, address: &str, time: SystemTime) -> Result<EncryptionKeys, KeyProblem> {
        use openpgp::cert::Preferences;
        check_member_cert_at(cert, address, time)?;
        let vc = cert
            .with_policy(&POLICY, time)
            .map_err(|e| KeyProblem::Invalid(cert.fingerprint(), e.to_string()))?;
        let features = vc
            .features()
            .unwrap_or_else(|| openpgp::types::Features::empty().set_seipdv1());
        let mut until = vc.primary_key().key_expiration_time();
        let mut keys = Vec::new();
        for ka in vc
            .keys()
            .for_transport_encryption()
            .alive()
            .revoked(false)
            .supported()
        {
            if let Some(t) = ka.key_expiration_time() {
                until = Some(until.map_or(t, |u| u.min(t)));
            }
            keys.push(ka.key().clone().role_into_unspecified());
        }
        Ok(EncryptionKeys {
            features,
            keys,
            until,
        })
    }

    /// Usable now (the snapshot may outlive an expiry).
    pub fn usable(&self) -> bool {
        !self.keys.is_empty() && self.until.is_none_or(|t| t > std::time::SystemTime::now())
    }
}

/// Reads a certificate file (armored or binary) that must hold exactly one certificate.
pub fn read_cert_file(path: &Path) -> Result<Cert, KeyError> {
    let bytes = std::fs::read(path).map_err(|source| KeyError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let parse_error = |reason: String| KeyError::Parse {
        path: path.display().to_string(),
        reason,
    };
    let parser = CertParser::from_bytes(&bytes).map_err(|e| parse_error(e.to_string()))?;
    let certs: Vec<Cert> = parser
        .collect::<Result<_, _>>()
        .map_err(|e| parse_error(e.to_string()))?;
    match certs.len() {
        1 => Ok(certs.into_iter().next().expect("one")),
        0 => Err(parse_error("no certificate found".into())),
        n => Err(parse_error(format!("{n} certificates found, expected one"))),
    }
}

/// The certificates in `bytes` (armored or binary) that parse; a bad one is skipped.
pub fn parse_certs(bytes: &[u8]) -> impl Iterator<Item = Cert> + '_ {
    CertParser::from_bytes(bytes)
        .into_iter()
        .flatten()
        .flatten()
}

/// Whether `cert` has a user ID (valid or not) whose address is `address`.
pub fn names_address(cert: &Cert, address: &str) -> bool {
    cert.userids().any(|u| {
        u.userid()
            .email_normalized()
            .ok()
            .flatten()
            .is_some_and(|e| e == address)
    })
}

/// The key ids of `cert`'s primary key and subkeys.
pub fn key_ids(cert: &Cert) -> impl Iterator<Item = KeyID> + '_ {
    cert.keys().map(|k| k.key().keyid())
}

/// Whether `cert` has a key (primary or subkey) that `handle` names.
pub fn has_key(cert: &Cert, handle: &KeyHandle) -> bool {
    cert.keys().any(|k| k.key().key_handle().aliases(handle))
}

/// Serialized size in bytes of a certificate or signature, for the size caps.
pub fn serialized_len(packets: &impl MarshalInto) -> usize {
    packets.serialized_len()
}

/// How many third-party certifications `cert`'s user IDs carry.
pub fn certification_count(cert: &Cert) -> usize {
    cert.userids().map(|u| u.certifications().count()).sum()
}

/// Whether the policy accepts `cert` at all (used by check-config).
pub fn cert_policy_ok(cert: &Cert) -> bool {
    cert.with_policy(&POLICY, None).is_ok()
        && POLICY
            .packet(&openpgp::Packet::from(cert.primary_key().key().clone()))
            .is_ok()
}

/// The primary key's expiry (`Some(None)`: none), or `None` if the policy rejects `cert`.
pub fn primary_expiry(cert: &Cert) -> Option<Option<SystemTime>> {
    let vc = cert.with_policy(&POLICY, None).ok()?;
    Some(vc.primary_key().key_expiration_time())
}

/// Until when a certificate can be encrypted to: the earlier of the primary key's expiry and
/// the latest expiry among its live encryption subkeys (`None`: no expiry).
pub fn usable_until(cert: &Cert) -> Option<Option<SystemTime>> {
    let vc = cert.with_policy(&POLICY, None).ok()?;
    let primary = vc.primary_key().key_expiration_time();
    let mut latest: Option<Option<SystemTime>> = None;
    for ka in vc.keys().for_transport_encryption().alive().revoked(false) {
        let e = ka.key_expiration_time();
        latest = Some(match (latest, e) {
            (None, e) => e,
            (Some(None), _) | (_, None) => None,
            (Some(Some(a)), Some(b)) => Some(a.max(b)),
        });
    }
    let subkeys = latest?;
    Some(match (primary, subkeys) {
        (None, s) => s,
        (p, None) => p,
        (Some(p), Some(s)) => Some(p.min(s)),
    })
}
