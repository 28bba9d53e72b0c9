//! The list key's life: created, read, certified by members, its encryption subkey rotated.

use super::KeyError;
use super::POLICY;
use openpgp::cert::prelude::*;
use openpgp::crypto::Password;
use openpgp::packet::key::{SecretKeyMaterial, SecretParts, UnspecifiedRole};
use openpgp::packet::{Key, Packet};
use openpgp::parse::Parse;
use openpgp::serialize::SerializeInto;
use openpgp::{Cert, Fingerprint};
use sequoia_openpgp as openpgp;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

fn crypto_error(e: anyhow::Error) -> KeyError {
    KeyError::Crypto(e.to_string())
}

/// A fresh list key (v4, Cv25519: GnuPG 2.2 reads it; reference/openpgp.md) for `list`.
pub fn generate_list_key(list: &str) -> Result<Cert, KeyError> {
    let (cert, _rev) = CertBuilder::new()
        .set_cipher_suite(CipherSuite::Cv25519)
        .set_profile(openpgp::Profile::RFC4880)
        .map_err(crypto_error)?
        .add_userid(format!("<{list}>"))
        .add_signing_subkey()
        .add_transport_encryption_subkey()
        .add_storage_encryption_subkey()
        .generate()
        .map_err(crypto_error)?;
    Ok(cert)
}

/// The list key with its secrets, armored, as `secret.pgp` holds it.
pub fn armored_secret(cert: &Cert) -> Result<Vec<u8>, KeyError> {
    cert.as_tsk().armored().to_vec().map_err(crypto_error)
}

/// Reads the list key from `path`; it must carry secret key material.
pub fn read_list_key(path: &Path) -> Result<Cert, KeyError> {
    let cert = Cert::from_file(path).map_err(|e| match e.downcast::<std::io::Error>() {
        Ok(source) => KeyError::Io {
            path: path.display().to_string(),
            source,
        },
        Err(e) => KeyError::Parse {
            path: path.display().to_string(),
            reason: e.to_string(),
        },
    })?;
    if !cert.is_tsk() {
        return Err(KeyError::Unusable(format!(
            "{}: has no secret key material",
            path.display()
        )));
    }
    Ok(cert)
}

/// Reads a list key from `bytes` (`what` names it in errors); it must carry secret key
/// material.
pub fn parse_list_key(bytes: &[u8], what: &str) -> Result<Cert, KeyError> {
    let cert = Cert::from_bytes(bytes).map_err(|e| KeyError::Parse {
        path: what.to_string(),
        reason: e.to_string(),
    })?;
    if !cert.is_tsk() {
        return Err(KeyError::Unusable(format!(
            "{what}: has no secret key material"
        )));
    }
    Ok(cert)
}

/// Secrets opened by an earlier keyring load, by the SHA-256 of their encrypted key packet
/// (public key and ciphertext): the same packet opened with the same passphrase again.
pub type OpenedSecrets = HashMap<[u8; 32], Key<SecretParts, UnspecifiedRole>>;

/// [`super::unlock`], taking each secret whose encrypted packet `before` opened already from
/// it (S2K derivation is slow on purpose, RFC 9580 §3.7.1.3), and putting every secret it
/// opened into `kept`. `before` must come from loads with the same passphrase.
pub fn unlock_reusing(
    cert: Cert,
    password: &Password,
    list: &str,
    before: &mut OpenedSecrets,
    kept: &mut OpenedSecrets,
) -> Result<Cert, KeyError> {
    super::protect::map_secrets(cert, |key| {
        if key.has_unencrypted_secret() {
            return Ok(key);
        }
        let packet = Packet::SecretSubkey(key.clone().role_into_subordinate()).to_vec()?;
        let digest: [u8; 32] = Sha256::digest(&packet).into();
        let open = match before.remove(&digest) {
            Some(open) => open,
            None => key.decrypt_secret(password)?,
        };
        kept.insert(digest, open.clone());
        Ok(open)
    })
    .map_err(|e| match e {
        KeyError::Crypto(_) => {
            KeyError::Passphrase(format!("{list}: the passphrase does not open the list key"))
        }
        other => other,
    })
}

/// Puts back the encrypted secrets `before` had into every key of `after` whose secret is in
/// the clear: a change that had to open the key (a rotation) then encrypts only what is new,
/// and the hosts that opened the other secrets before reuse them ([`unlock_reusing`]).
pub fn keep_encrypted_secrets(after: Cert, before: &Cert) -> Result<Cert, KeyError> {
    let encrypted: HashMap<Fingerprint, SecretKeyMaterial> = before
        .keys()
        .secret()
        .filter(|ka| !ka.key().has_unencrypted_secret())
        .map(|ka| (ka.key().fingerprint(), ka.key().secret().clone()))
        .collect();
    super::protect::map_secrets(after, |key| match encrypted.get(&key.fingerprint()) {
        Some(secret) if key.has_unencrypted_secret() => {
            Ok(key.take_secret().0.add_secret(secret.clone()).0)
        }
        _ => Ok(key),
    })
}

/// Merges members' certifications into the list key; returns it and how many were new.
pub fn insert_certifications(
    cert: Cert,
    sigs: Vec<openpgp::packet::Signature>,
) -> Result<(Cert, usize), KeyError> {
    let before = super::certification_count(&cert);
    let cert = cert.insert_packets(sigs).map_err(crypto_error)?.0;
    let after = super::certification_count(&cert);
    Ok((cert, after.saturating_sub(before)))
}

/// What `list rotate-subkey` did.
pub struct Rotation {
    /// `None` when only pruning.
    pub new_subkey: Option<Fingerprint>,
    /// Encryption subkeys that now expire at the end of the grace period.
    pub retiring: Vec<Fingerprint>,
    /// Encryption subkeys whose grace period had ended: secret material destroyed.
    pub destroyed: Vec<Fingerprint>,
}

/// What `rotate_subkey` does beyond destroying the secrets whose grace period has ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotateMode {
    /// Retire the current encryption subkeys and add a fresh one.
    NewSubkey,
    /// Only destroy retired secrets (a daily cron job), no new subkey.
    PruneOnly,
}

/// Adds a fresh Cv25519 encryption subkey to the list key `cert` of `list`; the current
/// encryption subkeys expire after `grace` (their secrets are kept, so mail already encrypted
/// to them still decrypts); secrets of encryption subkeys that expired before `now` are
/// destroyed.
pub fn rotate(
    cert: Cert,
    list: &str,
    grace: Duration,
    mode: RotateMode,
    now: SystemTime,
) -> Result<(Cert, Rotation), KeyError> {
    let (cert, destroyed) = destroy_expired_secrets(cert, now)?;
    if mode == RotateMode::PruneOnly {
        let rotation = Rotation {
            new_subkey: None,
            retiring: Vec::new(),
            destroyed,
        };
        return Ok((cert, rotation));
    }
    let mut primary = primary_signer(&cert, list)?;
    let (cert, retiring) = retire_encryption_subkeys(cert, &mut primary, now + grace)?;
    let (cert, new_subkey) = add_encryption_subkey(cert, primary)?;
    let rotation = Rotation {
        new_subkey: Some(new_subkey),
        retiring,
        destroyed,
    };
    Ok((cert, rotation))
}

fn encryption_flags() -> openpgp::types::KeyFlags {
    openpgp::types::KeyFlags::empty()
        .set_transport_encryption()
        .set_storage_encryption()
}

/// Strips the secrets of encryption subkeys past their (grace) expiry, keeping the public
/// halves; returns the stripped key and the subkeys whose secrets went.
fn destroy_expired_secrets(
    cert: Cert,
    now: SystemTime,
) -> Result<(Cert, Vec<Fingerprint>), KeyError> {
    // Judged as of now under the policy, so the binding signature in force decides.
    let expired: Vec<Fingerprint> = cert
        .with_policy(&POLICY, now)
        .map_err(crypto_error)?
        .keys()
        .subkeys()
        .key_flags(encryption_flags())
        .filter(|ka| ka.key().has_secret() && ka.alive().is_err())
        .map(|ka| ka.key().fingerprint())
        .collect();
    let mut destroyed = Vec::new();
    let mut packets: Vec<openpgp::Packet> = Vec::new();
    for p in cert.into_tsk().into_packets() {
        match p {
            openpgp::Packet::SecretSubkey(k) if expired.contains(&k.fingerprint()) => {
                destroyed.push(k.fingerprint());
                let (public, _) = k.take_secret();
                packets.push(openpgp::Packet::PublicSubkey(public));
            }
            other => packets.push(other),
        }
    }
    let cert = Cert::from_packets(packets.into_iter()).map_err(crypto_error)?;
    Ok((cert, destroyed))
}

/// The list key's primary secret, which signs the subkey bindings.
fn primary_signer(cert: &Cert, list: &str) -> Result<openpgp::crypto::KeyPair, KeyError> {
    let primary_fpr = cert.fingerprint();
    cert.keys()
        .secret()
        .find(|ka| ka.key().fingerprint() == primary_fpr)
        .ok_or_else(|| KeyError::Unusable(format!("{list}: the list key has no primary secret")))?
        .key()
        .clone()
        .into_keypair()
        .map_err(crypto_error)
}

/// Makes every live encryption subkey expire at `until` (unless it expires sooner already);
/// returns the updated key and the subkeys now retiring.
fn retire_encryption_subkeys(
    cert: Cert,
    primary: &mut openpgp::crypto::KeyPair,
    until: SystemTime,
) -> Result<(Cert, Vec<Fingerprint>), KeyError> {
    let vc = cert.with_policy(&POLICY, None).map_err(crypto_error)?;
    let mut retiring = Vec::new();
    let mut sigs = Vec::new();
    for ka in vc
        .keys()
        .subkeys()
        .key_flags(encryption_flags())
        .alive()
        .revoked(false)
    {
        if ka.key_expiration_time().is_none_or(|t| t > until) {
            sigs.extend(
                ka.set_expiration_time(primary, None, Some(until))
                    .map_err(crypto_error)?,
            );
            retiring.push(ka.key().fingerprint());
        }
    }
    let cert = cert.insert_packets(sigs).map_err(crypto_error)?.0;
    Ok((cert, retiring))
}

/// Binds a fresh Cv25519 encryption subkey without expiry; returns the key and its
/// fingerprint.
fn add_encryption_subkey(
    cert: Cert,
    primary: openpgp::crypto::KeyPair,
) -> Result<(Cert, Fingerprint), KeyError> {
    let vc = cert.with_policy(&POLICY, None).map_err(crypto_error)?;
    let before: Vec<Fingerprint> = cert
        .keys()
        .subkeys()
        .map(|ka| ka.key().fingerprint())
        .collect();
    let cert = openpgp::cert::prelude::KeyBuilder::new(encryption_flags())
        .set_cipher_suite(CipherSuite::Cv25519)
        .subkey(vc)
        .map_err(crypto_error)?
        .set_primary_key_signer(primary)
        // The new subkey does not inherit the retiring subkeys' expiry.
        .set_key_validity_period(None)
        .map_err(crypto_error)?
        .attach_cert()
        .map_err(crypto_error)?;
    let new_subkey = cert
        .keys()
        .subkeys()
        .map(|ka| ka.key().fingerprint())
        .find(|f| !before.contains(f))
        .ok_or_else(|| KeyError::Crypto("no subkey after rotation".into()))?;
    Ok((cert, new_subkey))
}
