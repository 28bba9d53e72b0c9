//! The list key's secrets at rest: encrypted with a passphrase (RFC 9580 §3.7 S2K), and
//! decrypted in memory only (sequoia keeps unencrypted secrets in its encrypted memory).

use super::KeyError;
use openpgp::crypto::{Password, S2K};
use openpgp::packet::key::{SecretParts, UnspecifiedRole};
use openpgp::packet::{Key, Packet};
use openpgp::types::SymmetricAlgorithm;
use openpgp::Cert;
use sequoia_openpgp as openpgp;

/// How a list key's secret key material is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protection {
    /// Every secret is encrypted with a passphrase.
    Protected,
    /// Every secret is in the clear.
    Unprotected,
    /// Some are encrypted, some are not.
    Partial,
}

/// Whether `cert`'s secrets are encrypted at rest.
pub fn protection(cert: &Cert) -> Protection {
    let (mut clear, mut encrypted) = (0, 0);
    for ka in cert.keys().secret() {
        match ka.key().has_unencrypted_secret() {
            true => clear += 1,
            false => encrypted += 1,
        }
    }
    match (clear, encrypted) {
        (0, _) => Protection::Protected,
        (_, 0) => Protection::Unprotected,
        _ => Protection::Partial,
    }
}

/// Encrypts every secret still in the clear with `password`: Iterated and Salted S2K over
/// SHA-256 (the largest count), AES-256 in CFB with the SHA-1 check (usage 254), which GnuPG
/// 2.2, sq and RNP all read on v4 keys; RFC 9580's Argon2 and AEAD (usage 253) they do not.
pub fn protect(cert: Cert, password: &Password) -> Result<Cert, KeyError> {
    map_secrets(cert, |key| {
        if !key.has_unencrypted_secret() {
            return Ok(key);
        }
        let (public, mut secret) = key.take_secret();
        secret.encrypt_in_place_with(
            &public,
            S2K::default(),
            SymmetricAlgorithm::AES256,
            None,
            password,
        )?;
        Ok(public.add_secret(secret).0)
    })
}

/// Decrypts every encrypted secret with `password`, in memory; `list` names the key in the
/// error a wrong passphrase gives.
pub fn unlock(cert: Cert, password: &Password, list: &str) -> Result<Cert, KeyError> {
    map_secrets(cert, |key| match key.has_unencrypted_secret() {
        true => Ok(key),
        false => key.decrypt_secret(password),
    })
    .map_err(|e| match e {
        KeyError::Crypto(_) => {
            KeyError::Passphrase(format!("{list}: the passphrase does not open the list key"))
        }
        other => other,
    })
}

/// Applies `f` to every secret key packet of `cert`, keeping everything else as it is.
pub(super) fn map_secrets(
    cert: Cert,
    mut f: impl FnMut(
        Key<SecretParts, UnspecifiedRole>,
    ) -> openpgp::Result<Key<SecretParts, UnspecifiedRole>>,
) -> Result<Cert, KeyError> {
    let crypto = |e: anyhow::Error| KeyError::Crypto(e.to_string());
    let mut packets = Vec::new();
    for p in cert.into_tsk().into_packets() {
        packets.push(match p {
            Packet::SecretKey(k) => Packet::SecretKey(
                f(k.role_into_unspecified())
                    .map_err(crypto)?
                    .role_into_primary(),
            ),
            Packet::SecretSubkey(k) => Packet::SecretSubkey(
                f(k.role_into_unspecified())
                    .map_err(crypto)?
                    .role_into_subordinate(),
            ),
            other => other,
        });
    }
    Cert::from_packets(packets.into_iter()).map_err(crypto)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Cert {
        super::super::generate_list_key("enc@lists.example.test").unwrap()
    }

    #[test]
    fn protect_then_unlock_gives_the_same_secrets() {
        let clear = key();
        assert_eq!(protection(&clear), Protection::Unprotected);
        let pw = Password::from("correct horse battery staple");
        let locked = protect(clear.clone(), &pw).unwrap();
        assert_eq!(protection(&locked), Protection::Protected);
        assert_eq!(locked.fingerprint(), clear.fingerprint());
        // Locked secrets sign nothing (RFC 9580 §5.5.3: the material is ciphertext).
        let primary = locked
            .primary_key()
            .key()
            .clone()
            .parts_into_secret()
            .unwrap();
        assert!(primary.into_keypair().is_err());
        let opened = unlock(locked, &pw, "enc").unwrap();
        assert_eq!(protection(&opened), Protection::Unprotected);
        assert_eq!(opened, clear, "the same key, secrets included");
    }

    #[test]
    fn a_wrong_passphrase_says_so() {
        let locked = protect(key(), &Password::from("right")).unwrap();
        let err = unlock(locked, &Password::from("wrong"), "enc@x.test").unwrap_err();
        assert!(matches!(err, KeyError::Passphrase(_)), "{err}");
        assert!(err.to_string().contains("enc@x.test"), "{err}");
    }

    /// What gpg 2.2 reads: usage 254 (CFB with the SHA-1 check), AES-256, iterated and salted
    /// S2K (RFC 9580 §3.7.1.3, §5.5.3), on every secret, each with its own salt.
    #[test]
    fn the_protection_is_what_gnupg_2_2_reads() {
        use openpgp::packet::key::SecretKeyMaterial;
        let locked = protect(key(), &Password::from("pw")).unwrap();
        let mut salts = Vec::new();
        for ka in locked.keys().secret() {
            let SecretKeyMaterial::Encrypted(e) = ka.key().optional_secret().unwrap() else {
                panic!("not encrypted");
            };
            assert_eq!(e.algo(), SymmetricAlgorithm::AES256);
            assert_eq!(
                e.checksum(),
                Some(openpgp::crypto::mpi::SecretKeyChecksum::SHA1)
            );
            match e.s2k() {
                S2K::Iterated { salt, .. } => salts.push(*salt),
                other => panic!("S2K {other:?}"),
            }
        }
        assert_eq!(salts.len(), 4);
        salts.sort();
        salts.dedup();
        assert_eq!(salts.len(), 4, "one salt per key");
    }
}
