use super::POLICY;
use openpgp::armor;
use openpgp::cert::Preferences;
use openpgp::crypto::SessionKey;
use openpgp::serialize::stream::{Armorer, Encryptor, LiteralWriter, Message, Signer};
use openpgp::types::{AEADAlgorithm, Features, SymmetricAlgorithm};
use openpgp::Cert;
use sequoia_openpgp as openpgp;
use std::io::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

#[derive(Debug, thiserror::Error)]
pub enum EncryptError {
    #[error("certificate {0} has no usable encryption key")]
    NoEncryptionKey(String),
    #[error("list key has no usable signing key")]
    NoSigningKey,
    #[error("OpenPGP: {0}")]
    Crypto(String),
}

fn crypto(e: anyhow::Error) -> EncryptError {
    EncryptError::Crypto(e.to_string())
}

fn io(e: std::io::Error) -> EncryptError {
    EncryptError::Crypto(e.to_string())
}

/// One recipient of a batch.
pub struct BatchRecipient<'a> {
    pub cert: &'a Cert,
    /// Write this recipient's key id into its PKESK instead of the wildcard.
    pub show_key_id: bool,
}

/// Encrypts `plaintext` once (one session key) to every recipient — one PKESK per encryption
/// key, wildcard key ids unless asked — and signs it inside the encryption with the list key.
/// SEIPDv2 is used only when every recipient advertises it (sequoia's `Encryptor` decides
/// from the `Features` we pass; `None` would mean v2 for all, which GnuPG 2.2 cannot read).
pub fn encrypt_sign(
    plaintext: &[u8],
    recipients: &[BatchRecipient<'_>],
    signer: Option<&Cert>,
) -> Result<Vec<u8>, EncryptError> {
    let mut prepared = Vec::with_capacity(recipients.len());
    for r in recipients {
        let vc = r
            .cert
            .with_policy(&POLICY, None)
            .map_err(|_| EncryptError::NoEncryptionKey(r.cert.fingerprint().to_hex()))?;
        let features = vc
            .features()
            .unwrap_or_else(|| Features::empty().set_seipdv1());
        let keys: Vec<_> = vc
            .keys()
            .for_transport_encryption()
            .alive()
            .revoked(false)
            .supported()
            .map(|ka| ka.key().clone().role_into_unspecified())
            .collect();
        if keys.is_empty() {
            return Err(EncryptError::NoEncryptionKey(r.cert.fingerprint().to_hex()));
        }
        prepared.push((features, keys, r.show_key_id));
    }
    let keyed: Vec<KeyedRecipient<'_>> = prepared
        .iter()
        .map(|(features, keys, show_key_id)| KeyedRecipient {
            features,
            keys,
            show_key_id: *show_key_id,
        })
        .collect();
    encrypt_sign_keys(plaintext, &keyed, signer)
}

/// A recipient whose encryption keys were worked out beforehand (once per keyring snapshot).
pub struct KeyedRecipient<'a> {
    pub features: &'a Features,
    pub keys: &'a [openpgp::packet::Key<
        openpgp::packet::key::PublicParts,
        openpgp::packet::key::UnspecifiedRole,
    >],
    pub show_key_id: bool,
}

/// [`encrypt_sign`] with the recipients' keys already selected: one session key, one PKESK
/// per key, wildcard key ids unless asked, signed inside by the list key.
pub fn encrypt_sign_keys(
    plaintext: &[u8],
    recipients: &[KeyedRecipient<'_>],
    signer: Option<&Cert>,
) -> Result<Vec<u8>, EncryptError> {
    encrypt_signed(&sign_content(plaintext, signer)?, recipients)
}

/// The content of every batch's encryption container, made once per message: one-pass
/// signature, literal data and the list's signature (or the literal data alone, unsigned).
/// The signed entity is the same for every batch, so one signature serves them all.
pub struct SignedContent {
    packets: Vec<u8>,
    /// Signed by a v6 key: sequoia's `Signer` would ask the armor for RFC 9580's form (no
    /// CRC24), so the copies made from this content do too.
    v6_signer: bool,
}

/// Signs `plaintext` (as binary literal data) with the list key, for [`encrypt_signed`].
pub fn sign_content(
    plaintext: &[u8],
    signer: Option<&Cert>,
) -> Result<SignedContent, EncryptError> {
    let keypair = signer.map(signing_keypair).transpose()?;
    let v6_signer = keypair.as_ref().is_some_and(|k| k.public().version() > 4);
    let mut packets = Vec::with_capacity(plaintext.len() + 1024);
    {
        let message = Message::new(&mut packets);
        let message = match keypair {
            Some(kp) => Signer::new(message, kp)
                .map_err(crypto)?
                .build()
                .map_err(crypto)?,
            None => message,
        };
        let mut literal = LiteralWriter::new(message).build().map_err(crypto)?;
        literal.write_all(plaintext).map_err(io)?;
        literal.finalize().map_err(crypto)?;
    }
    Ok(SignedContent { packets, v6_signer })
}

/// Encrypts `content` once (one session key) to every recipient: one PKESK per key, wildcard
/// key ids unless asked, SEIPDv2 only when every recipient advertises it.
pub fn encrypt_signed(
    content: &SignedContent,
    recipients: &[KeyedRecipient<'_>],
) -> Result<Vec<u8>, EncryptError> {
    encrypt_signed_ahead(content, recipients, None)
}

/// [`encrypt_signed`] taking the key encapsulations made ahead in `prekeys` where there are.
pub fn encrypt_signed_ahead(
    content: &SignedContent,
    recipients: &[KeyedRecipient<'_>],
    prekeys: Option<&super::Prekeys>,
) -> Result<Vec<u8>, EncryptError> {
    let mut jobs = Vec::new();
    for r in recipients {
        if r.keys.is_empty() {
            return Err(EncryptError::NoEncryptionKey("recipient".into()));
        }
        for key in r.keys {
            jobs.push((key, r.show_key_id));
        }
    }
    // SEIPDv2 only when every recipient advertises it (GnuPG 2.2 cannot read it).
    let v2 = !recipients.is_empty() && recipients.iter().all(|r| r.features.supports_seipdv2());
    let sym = SymmetricAlgorithm::AES256;
    let session_key = SessionKey::new(sym.key_size().map_err(crypto)?).map_err(crypto)?;
    // One PKESK per key: independent of each other, so they are made on the free cores.
    let pkesks = make_pkesks(&jobs, sym, &session_key, v2, prekeys)?;

    let mut out = Vec::with_capacity(content.packets.len() * 4 / 3 + 1024 + 200 * recipients.len());
    {
        // The armor is this writer rather than a stream `Armorer`, so the RFC 9580 form that
        // sequoia's Encryptor (SEIPDv2) or Signer (v6 key) would ask for is chosen here.
        let mut armor = armor::Writer::new(&mut out, armor::Kind::Message).map_err(io)?;
        if v2 || content.v6_signer {
            armor.set_profile(openpgp::Profile::RFC9580).map_err(io)?;
        }
        let mut message = Message::new(&mut armor);
        for p in &pkesks {
            message.write_all(p).map_err(io)?;
        }
        let encryptor = Encryptor::with_session_key(message, sym, session_key).map_err(crypto)?;
        let encryptor = if v2 {
            encryptor.aead_algo(AEADAlgorithm::default())
        } else {
            encryptor
        };
        let mut message = encryptor.build().map_err(crypto)?;
        message.write_all(&content.packets).map_err(io)?;
        message.finalize().map_err(crypto)?;
        armor.finalize().map_err(io)?;
    }
    Ok(out)
}

/// A detached, armored signature over `data` (CRLF-canonical MIME) by the list key, for
/// RFC 3156 multipart/signed replies.
pub fn sign_detached(data: &[u8], signer: &Cert) -> Result<Vec<u8>, EncryptError> {
    let keypair = signing_keypair(signer)?;
    let mut out = Vec::new();
    {
        let message = Message::new(&mut out);
        let message = Armorer::new(message)
            .kind(armor::Kind::Signature)
            .build()
            .map_err(crypto)?;
        let mut signer = Signer::new(message, keypair)
            .map_err(crypto)?
            .detached()
            .build()
            .map_err(crypto)?;
        signer.write_all(data).map_err(io)?;
        signer.finalize().map_err(crypto)?;
    }
    Ok(out)
}

/// The list key's live signing key, ready to sign.
fn signing_keypair(cert: &Cert) -> Result<openpgp::crypto::KeyPair, EncryptError> {
    let ka = cert
        .keys()
        .with_policy(&POLICY, None)
        .secret()
        .for_signing()
        .alive()
        .revoked(false)
        .next()
        .ok_or(EncryptError::NoSigningKey)?;
    ka.key().clone().into_keypair().map_err(crypto)
}

/// PKESKs made by [`super::ecdh`] (v4 Cv25519 keys, OpenSSL builds) and by sequoia's own path.
static PKESKS_FAST: AtomicU64 = AtomicU64::new(0);
static PKESKS_SEQUOIA: AtomicU64 = AtomicU64::new(0);
/// Of the fast ones, those whose key encapsulation was made ahead ([`super::Prekeys`]).
static PKESKS_AHEAD: AtomicU64 = AtomicU64::new(0);

/// How many of this process's fast-path PKESKs used an encapsulation made ahead.
pub fn pkesks_ahead() -> u64 {
    PKESKS_AHEAD.load(Ordering::Relaxed)
}

/// How many PKESKs this process made on each path, for benchmarks: (fast, sequoia's).
pub fn pkesk_paths() -> (u64, u64) {
    (
        PKESKS_FAST.load(Ordering::Relaxed),
        PKESKS_SEQUOIA.load(Ordering::Relaxed),
    )
}

/// A PKESK for a v4 Cv25519 key at two X25519 operations (made `ahead` or now), framed as
/// sequoia frames it
/// (RFC 9580 §5.1: v3 carries the cipher octet inside the encryption, v6 does not).
#[cfg(feature = "crypto-openssl")]
fn fast_pkesk(
    to: &super::ecdh::Recipient,
    ahead: Option<super::ecdh::Encapsulation>,
    key: &PublicKey,
    show: bool,
    sym: SymmetricAlgorithm,
    session_key: &SessionKey,
    v2: bool,
) -> Result<openpgp::Packet, EncryptError> {
    use openpgp::packet::pkesk::{PKESK3, PKESK6};
    use openpgp::types::PublicKeyAlgorithm;
    // RFC 4880 §5.1: the two-octet sum of the key's octets, modulo 65536.
    let checksum = session_key
        .iter()
        .map(|&b| u16::from(b))
        .fold(0u16, u16::wrapping_add);
    let mut framed: Vec<u8> = Vec::with_capacity(1 + session_key.len() + 2);
    if !v2 {
        framed.push(sym.into());
    }
    framed.extend_from_slice(session_key);
    framed.extend_from_slice(&checksum.to_be_bytes());
    // Cleared on drop.
    let framed = SessionKey::from(framed);
    let esk = match ahead {
        Some(encapsulation) => {
            PKESKS_AHEAD.fetch_add(1, Ordering::Relaxed);
            super::ecdh::wrap(to, encapsulation, &framed)?
        }
        None => super::ecdh::encrypt(to, &framed)?,
    };
    Ok(if v2 {
        let p = PKESK6::new(
            show.then(|| key.fingerprint()),
            PublicKeyAlgorithm::ECDH,
            esk,
        )
        .map_err(crypto)?;
        openpgp::Packet::from(p)
    } else {
        let p = PKESK3::new(show.then(|| key.keyid()), PublicKeyAlgorithm::ECDH, esk)
            .map_err(crypto)?;
        openpgp::Packet::PKESK(p.into())
    })
}

/// Recipients below which threads cost more than they save.
const PARALLEL_PKESKS: usize = 16;

pub(super) type PublicKey =
    openpgp::packet::Key<openpgp::packet::key::PublicParts, openpgp::packet::key::UnspecifiedRole>;

/// The serialized PKESK packets, in recipient order: key id (or fingerprint) only where the
/// recipient asked for it, the wildcard otherwise.
pub(super) fn make_pkesks(
    jobs: &[(&PublicKey, bool)],
    sym: SymmetricAlgorithm,
    session_key: &SessionKey,
    v2: bool,
    prekeys: Option<&super::Prekeys>,
) -> Result<Vec<Vec<u8>>, EncryptError> {
    use openpgp::packet::pkesk::{PKESK3, PKESK6};
    use openpgp::serialize::SerializeInto;
    let one = |(key, show): &(&PublicKey, bool)| -> Result<Vec<u8>, EncryptError> {
        #[cfg(not(feature = "crypto-openssl"))]
        let _ = prekeys;
        #[cfg(feature = "crypto-openssl")]
        if let Some(to) = super::ecdh::recipient(key) {
            let ahead = prekeys.and_then(|p| p.take(key, &to));
            let packet = fast_pkesk(&to, ahead, key, *show, sym, session_key, v2)?;
            PKESKS_FAST.fetch_add(1, Ordering::Relaxed);
            return packet.to_vec().map_err(crypto);
        }
        PKESKS_SEQUOIA.fetch_add(1, Ordering::Relaxed);
        let packet = if v2 {
            let mut p = PKESK6::for_recipient(session_key, *key).map_err(crypto)?;
            p.set_recipient(show.then(|| key.fingerprint()));
            openpgp::Packet::from(p)
        } else {
            let mut p = PKESK3::for_recipient(sym, session_key, *key).map_err(crypto)?;
            p.set_recipient(show.then(|| key.keyid()));
            openpgp::Packet::PKESK(p.into())
        };
        packet.to_vec().map_err(crypto)
    };
    if jobs.len() < PARALLEL_PKESKS {
        return jobs.iter().map(one).collect();
    }
    // This thread's core (its own permit, or the caller's) plus the permits free now, never
    // more threads than cores: other messages' crypto keeps its cores.
    let pool = crate::crypto_pool::global();
    let spare = pool.spare((jobs.len() - 1).min(pool.size().saturating_sub(1)));
    let threads = 1 + spare.count();
    if threads < 2 {
        return jobs.iter().map(one).collect();
    }
    // Threads take the next few jobs as they go: the keys whose encapsulation was made ahead
    // cost almost nothing, the others (the envelope's last recipients, together) the most.
    const GRAB: usize = 8;
    let next = AtomicUsize::new(0);
    let run = || -> Result<Vec<(usize, Vec<u8>)>, EncryptError> {
        let mut done = Vec::new();
        loop {
            let start = next.fetch_add(GRAB, Ordering::Relaxed);
            if start >= jobs.len() {
                return Ok(done);
            }
            for (i, job) in jobs.iter().enumerate().skip(start).take(GRAB) {
                done.push((i, one(job)?));
            }
        }
    };
    let parts = std::thread::scope(|scope| {
        let handles: Vec<_> = (1..threads).map(|_| scope.spawn(run)).collect();
        let mut parts = vec![run()];
        for h in handles {
            parts.push(
                h.join()
                    .map_err(|_| EncryptError::Crypto("PKESK worker panicked".into()))?,
            );
        }
        Ok::<_, EncryptError>(parts)
    })?;
    let mut out: Vec<Vec<u8>> = vec![Vec::new(); jobs.len()];
    for part in parts {
        for (i, packet) in part? {
            out[i] = packet;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Policy;
    use crate::pgp::testkit::general_purpose;
    use crate::pgp::{decrypt_verify, ListKeys, Member, SigCheck};
    use crate::store::Role;

    fn encryption_keys(cert: &Cert) -> Vec<PublicKey> {
        cert.keys()
            .with_policy(&POLICY, None)
            .for_transport_encryption()
            .map(|ka| ka.key().clone().role_into_unspecified())
            .collect()
    }

    /// One signature, two batches (SEIPDv1 and SEIPDv2): both decrypt to the plaintext and carry
    /// the very same valid signature packet.
    #[test]
    fn one_signature_serves_every_batch() {
        let list = general_purpose("<l@x.test>");
        let alice = general_purpose("<alice@x.test>");
        let keys = ListKeys::new(
            "l@x.test".into(),
            Policy::default(),
            list.clone(),
            vec![Member {
                address: "alice@x.test".into(),
                cert: alice.clone(),
                role: Role::Member,
                show_key_id: false,
            }],
        );
        let plaintext = b"Content-Type: text/plain\r\n\r\nthe plans\r\n".repeat(500);
        let content = sign_content(&plaintext, Some(&alice)).unwrap();
        let to = encryption_keys(&list);
        let v1 = Features::empty().set_seipdv1();
        let v2 = Features::empty().set_seipdv1().set_seipdv2();
        let mut packets = Vec::new();
        for features in [&v1, &v2] {
            let r = [KeyedRecipient {
                features,
                keys: &to,
                show_key_id: false,
            }];
            let armored = encrypt_signed(&content, &r).unwrap();
            // RFC 9580 §6.2.2.3: no CRC24 with SEIPDv2; sequoia keeps it for v1 (GnuPG 2.2).
            let crc = armored
                .split(|&b| b == b'\n')
                .any(|l| l.first() == Some(&b'='));
            assert_eq!(crc, !features.supports_seipdv2());
            let d = decrypt_verify(&armored, &keys, 10_000, 1 << 20).unwrap();
            assert_eq!(d.plaintext, plaintext);
            let [SigCheck::Good(g)] = &d.signatures[..] else {
                panic!("one good signature expected");
            };
            assert_eq!(g.signer, alice.fingerprint());
            packets.push(g.packet.clone());
        }
        assert_eq!(packets[0], packets[1]);
    }

    /// The fast path's PKESKs, opened by sequoia's own decryptor (`PKESK::decrypt` with the
    /// recipient's key pair): v3 and v6 packets, wildcard and shown key ids, keys with every
    /// KDF the fast path takes: 1,000 of them.
    #[cfg(feature = "crypto-openssl")]
    #[test]
    fn sequoia_decrypts_fast_pkesks() {
        use super::super::ecdh::tests::cv25519_key;
        use openpgp::crypto::mpi::Ciphertext;
        use openpgp::parse::Parse;
        use openpgp::types::HashAlgorithm::*;
        use SymmetricAlgorithm::*;
        const N: usize = 1000;
        let secrets: Vec<_> = [
            (SHA256, AES128),
            (SHA256, AES256),
            (SHA384, AES192),
            (SHA512, AES256),
        ]
        .into_iter()
        .map(|(h, s)| cv25519_key(h, s))
        .collect();
        let publics: Vec<PublicKey> = secrets
            .iter()
            .map(|k| k.clone().parts_into_public())
            .collect();
        let mut ephemeral = std::collections::HashSet::new();
        let (fast_before, _) = pkesk_paths();
        for v2 in [false, true] {
            let jobs: Vec<(&PublicKey, bool)> = (0..N / 2)
                .map(|i| (&publics[i % publics.len()], i % 3 == 0))
                .collect();
            let session_key = SessionKey::new(32).unwrap();
            let pkesks = make_pkesks(&jobs, AES256, &session_key, v2, None).unwrap();
            for (i, bytes) in pkesks.iter().enumerate() {
                let k = i % publics.len();
                let openpgp::Packet::PKESK(p) = openpgp::Packet::from_bytes(bytes).unwrap() else {
                    panic!("not a PKESK");
                };
                let Ciphertext::ECDH { e, .. } = p.esk() else {
                    panic!("not ECDH");
                };
                assert!(ephemeral.insert(e.value().to_vec()), "ephemeral key reused");
                assert_eq!(
                    p.recipient().is_some(),
                    i % 3 == 0,
                    "key id only where asked"
                );
                let mut pair = secrets[k].clone().into_keypair().unwrap();
                let (algo, sk) = p.decrypt(&mut pair, None).expect("sequoia decrypts it");
                assert_eq!(&sk[..], &session_key[..]);
                assert_eq!(algo, (!v2).then_some(AES256));
            }
        }
        let (fast_after, _) = pkesk_paths();
        assert!(fast_after - fast_before >= N as u64);
    }
}
