//! PKESKs for v4 ECDH keys on Curve25519 at two X25519 operations each: OpenSSL generates the
//! ephemeral key and computes the shared secret; the KEK derivation (RFC 6637 §7) and the
//! padded, wrapped session key (§8) are done here. Sequoia's own path spends a third X25519
//! operation (it re-imports the ephemeral secret, which derives its public key again).

use super::encrypt::EncryptError;
use openpgp::crypto::ecdh::aes_key_wrap;
use openpgp::crypto::mem::Protected;
use openpgp::crypto::mpi::{self, MPI};
use openpgp::types::{Curve, HashAlgorithm, PublicKeyAlgorithm, SymmetricAlgorithm};
use openssl::derive::Deriver;
use openssl::hash::{Hasher, MessageDigest};
use openssl::pkey::{Id, PKey};
use sequoia_openpgp as openpgp;
use zeroize::Zeroize;

pub(super) type PublicKey =
    openpgp::packet::Key<openpgp::packet::key::PublicParts, openpgp::packet::key::UnspecifiedRole>;

/// What a recipient's key says about its PKESKs: the X25519 point and the KDF parameters.
pub(super) struct Recipient {
    point: [u8; 32],
    hash: HashAlgorithm,
    sym: SymmetricAlgorithm,
    /// The RFC 6637 §7 parameter block, the same for every PKESK to this key.
    param: Vec<u8>,
}

/// The fast path's view of `key`, or `None` when sequoia's path must make its PKESK: anything
/// but a v4 ECDH key on Cv25519 whose KDF uses SHA-2 and AES key wrap (RFC 6637 §9).
pub(super) fn recipient(key: &PublicKey) -> Option<Recipient> {
    let mpi::PublicKey::ECDH {
        curve: Curve::Cv25519,
        q,
        hash,
        sym,
    } = key.mpis()
    else {
        return None;
    };
    if key.version() != 4 || key.pk_algo() != PublicKeyAlgorithm::ECDH {
        return None;
    }
    let digest = match hash {
        HashAlgorithm::SHA256 => 32,
        HashAlgorithm::SHA384 => 48,
        HashAlgorithm::SHA512 => 64,
        _ => return None,
    };
    let kek = match sym {
        SymmetricAlgorithm::AES128 => 16,
        SymmetricAlgorithm::AES192 => 24,
        SymmetricAlgorithm::AES256 => 32,
        _ => return None,
    };
    // RFC 6637 §7: the KDF output is cut to the KEK size; a shorter digest cannot give it.
    if kek > digest {
        return None;
    }
    // The native X25519 point behind the 0x40 prefix (RFC 9580 §5.5.5.6).
    let point: [u8; 32] = match q.value() {
        [0x40, rest @ ..] => rest.try_into().ok()?,
        _ => return None,
    };
    Some(Recipient {
        point,
        hash: *hash,
        sym: *sym,
        param: kdf_param(key, *hash, *sym),
    })
}

/// RFC 6637 §7: curve OID (with its length), public-key algorithm 18, the KDF parameters
/// (`03 01 hash sym`), "Anonymous Sender    " and the recipient key's v4 fingerprint.
fn kdf_param(key: &PublicKey, hash: HashAlgorithm, sym: SymmetricAlgorithm) -> Vec<u8> {
    let oid = Curve::Cv25519.oid();
    let fingerprint = key.fingerprint();
    let mut param = Vec::with_capacity(1 + oid.len() + 1 + 4 + 20 + 20);
    param.push(oid.len() as u8);
    param.extend_from_slice(oid);
    param.push(PublicKeyAlgorithm::ECDH.into());
    param.extend_from_slice(&[3, 1, hash.into(), sym.into()]);
    param.extend_from_slice(b"Anonymous Sender    ");
    param.extend_from_slice(fingerprint.as_bytes());
    param
}

fn ossl(e: openssl::error::ErrorStack) -> EncryptError {
    EncryptError::Crypto(e.to_string())
}

fn seq(e: anyhow::Error) -> EncryptError {
    EncryptError::Crypto(e.to_string())
}

/// The ECDH ciphertext of `session_key` (as RFC 9580 §5.1 frames it for the PKESK version:
/// cipher octet, key, checksum) for `to`, with a fresh ephemeral key.
pub(super) fn encrypt(to: &Recipient, session_key: &[u8]) -> Result<mpi::Ciphertext, EncryptError> {
    let peer = PKey::public_key_from_raw_bytes(&to.point, Id::X25519).map_err(ossl)?;
    // One scalar multiplication: OpenSSL computes the public key once, at generation.
    let ephemeral = PKey::generate_x25519().map_err(ossl)?;
    let public = ephemeral.raw_public_key().map_err(ossl)?;
    let mut shared = Protected::from(vec![0u8; 32]);
    {
        // The second one. OpenSSL refuses an all-zero result (a low-order point).
        let mut deriver = Deriver::new(&ephemeral).map_err(ossl)?;
        deriver.set_peer(&peer).map_err(ossl)?;
        if deriver.derive(&mut shared).map_err(ossl)? != 32 {
            return Err(EncryptError::Crypto("X25519: short shared secret".into()));
        }
    }
    // EVP_PKEY_free clears the ephemeral secret; `Protected` clears the rest on drop.
    drop(ephemeral);
    let kek = kdf(&shared, to)?;
    drop(shared);
    let wrapped = aes_key_wrap(to.sym, &kek, &pad(session_key)).map_err(seq)?;
    Ok(mpi::Ciphertext::ECDH {
        e: MPI::new_compressed_point(&public),
        key: wrapped.into_boxed_slice(),
    })
}

/// RFC 6637 §7: KEK = Hash(00 00 00 01 || shared secret || param), cut to the KEK's size.
fn kdf(shared: &Protected, to: &Recipient) -> Result<Protected, EncryptError> {
    let md = match to.hash {
        HashAlgorithm::SHA256 => MessageDigest::sha256(),
        HashAlgorithm::SHA384 => MessageDigest::sha384(),
        HashAlgorithm::SHA512 => MessageDigest::sha512(),
        _ => return Err(EncryptError::Crypto("ECDH: unexpected KDF hash".into())),
    };
    let size = to.sym.key_size().map_err(seq)?;
    // EVP_MD_CTX_free clears the hash state on drop.
    let mut hasher = Hasher::new(md).map_err(ossl)?;
    hasher.update(&[0, 0, 0, 1]).map_err(ossl)?;
    hasher.update(shared).map_err(ossl)?;
    hasher.update(&to.param).map_err(ossl)?;
    let mut digest = hasher.finish().map_err(ossl)?;
    let kek = Protected::from(&digest[..size]);
    digest[..].zeroize();
    Ok(kek)
}

/// RFC 6637 §8 PKCS#5 padding to a multiple of 8, and to 40 bytes at least: the length of
/// the session key stays hidden, as GnuPG and sequoia do it.
fn pad(session_key: &[u8]) -> Protected {
    let len = if session_key.len() < 40 {
        40
    } else {
        (session_key.len() / 8 + 1) * 8
    };
    let fill = (len - session_key.len()) as u8;
    let mut m = Protected::from(vec![fill; len]);
    m[..session_key.len()].copy_from_slice(session_key);
    m
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use openpgp::cert::prelude::*;
    use openpgp::crypto::ecdh::decrypt_unwrap;
    use openpgp::crypto::mpi::SecretKeyMaterial;
    use openpgp::packet::key::{Key4, SecretParts, UnspecifiedRole};
    use openpgp::packet::Key;

    /// A v4 Cv25519 encryption key (with its secret) whose KDF uses `hash` and `sym`.
    pub(in crate::pgp) fn cv25519_key(
        hash: HashAlgorithm,
        sym: SymmetricAlgorithm,
    ) -> Key<SecretParts, UnspecifiedRole> {
        let (cert, _) = CertBuilder::new()
            .set_cipher_suite(CipherSuite::Cv25519)
            .set_profile(openpgp::Profile::RFC4880)
            .unwrap()
            .add_transport_encryption_subkey()
            .generate()
            .unwrap();
        let key = cert
            .keys()
            .subkeys()
            .secret()
            .next()
            .unwrap()
            .key()
            .clone()
            .role_into_unspecified();
        let mpi::PublicKey::ECDH { curve, q, .. } = key.mpis().clone() else {
            panic!("not ECDH");
        };
        let (public, secret) = key.take_secret();
        let k4 = Key4::<_, UnspecifiedRole>::new(
            public.creation_time(),
            PublicKeyAlgorithm::ECDH,
            mpi::PublicKey::ECDH {
                curve,
                q,
                hash,
                sym,
            },
        )
        .unwrap();
        Key::V4(k4.add_secret(secret).0)
    }

    /// The recipient's side of X25519 (its secret scalar and the ephemeral point), with
    /// OpenSSL: OpenPGP stores the Cv25519 scalar big-endian, X25519 takes it little-endian.
    fn recipient_shared(key: &Key<SecretParts, UnspecifiedRole>, e: &MPI) -> Protected {
        let mut scalar = match key.secret() {
            openpgp::packet::key::SecretKeyMaterial::Unencrypted(u) => u.map(|m| match m {
                SecretKeyMaterial::ECDH { scalar } => scalar.value().to_vec(),
                _ => panic!("not ECDH"),
            }),
            _ => panic!("encrypted secret"),
        };
        scalar.reverse();
        let secret = PKey::private_key_from_raw_bytes(&scalar, Id::X25519).unwrap();
        scalar.zeroize();
        let peer = PKey::public_key_from_raw_bytes(&e.value()[1..], Id::X25519).unwrap();
        let mut d = Deriver::new(&secret).unwrap();
        d.set_peer(&peer).unwrap();
        Protected::from(d.derive_to_vec().unwrap())
    }

    #[test]
    fn param_block_follows_rfc6637() {
        let key = cv25519_key(HashAlgorithm::SHA256, SymmetricAlgorithm::AES128);
        let key = key.parts_into_public();
        let r = recipient(&key).unwrap();
        // RFC 6637 §11: OID 1.3.6.1.4.1.3029.1.5.1 (RFC 9580 §9.2); §7's layout; SHA2-256 = 8,
        // AES-128 = 7.
        let mut want = vec![
            0x0a, 0x2b, 0x06, 0x01, 0x04, 0x01, 0x97, 0x55, 0x01, 0x05, 0x01, 18, 3, 1, 8, 7,
        ];
        want.extend_from_slice(b"Anonymous Sender    ");
        want.extend_from_slice(key.fingerprint().as_bytes());
        assert_eq!(r.param, want);
        assert_eq!(r.param.len(), 56);
    }

    #[test]
    fn pkcs5_padding() {
        // 1 + 32 + 2 bytes (v3, AES-256): five bytes of 05; 34 (v6): six of 06.
        let m = pad(&[0xaa; 35]);
        assert_eq!(&m[..], &[&[0xaa; 35][..], &[5; 5][..]].concat()[..]);
        let m = pad(&[0xaa; 34]);
        assert_eq!(&m[..], &[&[0xaa; 34][..], &[6; 6][..]].concat()[..]);
        // Longer than 40: a whole block of padding after a multiple of 8 (RFC 8018 §6.1.1).
        assert_eq!(pad(&[0; 40]).len(), 48);
        assert_eq!(pad(&[0; 41]).len(), 48);
    }

    /// What sequoia's `decrypt_unwrap` (its own KDF and unwrapping) makes of our ciphertext,
    /// with the shared secret computed on the recipient's side, for every KDF the fast path
    /// takes.
    #[test]
    fn kdf_and_wrap_match_sequoias_unwrap() {
        use HashAlgorithm::*;
        use SymmetricAlgorithm::*;
        for (hash, sym) in [
            (SHA256, AES128),
            (SHA256, AES256),
            (SHA384, AES192),
            (SHA512, AES256),
        ] {
            let key = cv25519_key(hash, sym);
            let public = key.clone().parts_into_public();
            let to = recipient(&public).unwrap();
            let mut plain = vec![u8::from(AES256)];
            plain.extend((0..32).map(|i| i as u8 * 7));
            plain.extend_from_slice(&[0x0d, 0x90]);
            let ct = encrypt(&to, &plain).unwrap();
            let mpi::Ciphertext::ECDH { e, key: wrapped } = &ct else {
                panic!("not ECDH");
            };
            // RFC 3394: one more 64-bit block than the 40-byte padded input.
            assert_eq!(wrapped.len(), 48);
            let shared = recipient_shared(&key, e);
            let back = decrypt_unwrap(&public, &shared, &ct, None).unwrap();
            assert_eq!(&back[..], &plain[..], "{hash:?}/{sym:?}");
            // A different recipient's secret does not unwrap it.
            let other = cv25519_key(hash, sym);
            let wrong = recipient_shared(&other, e);
            assert!(decrypt_unwrap(&public, &wrong, &ct, None).is_err());
        }
    }

    #[test]
    fn other_keys_take_sequoias_path() {
        let (cert, _) = CertBuilder::new()
            .set_cipher_suite(CipherSuite::Cv25519)
            .set_profile(openpgp::Profile::RFC9580)
            .unwrap()
            .add_transport_encryption_subkey()
            .generate()
            .unwrap();
        let v6 = cert.keys().subkeys().next().unwrap().key().clone();
        assert!(recipient(&v6.role_into_unspecified()).is_none());
        let (cert, _) = CertBuilder::new()
            .set_cipher_suite(CipherSuite::P256)
            .add_transport_encryption_subkey()
            .generate()
            .unwrap();
        let p256 = cert.keys().subkeys().next().unwrap().key().clone();
        assert!(recipient(&p256.role_into_unspecified()).is_none());
        let sha1 = cv25519_key(HashAlgorithm::SHA1, SymmetricAlgorithm::AES128);
        assert!(recipient(&sha1.parts_into_public()).is_none());
    }
}
