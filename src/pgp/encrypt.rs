use super::POLICY;
use openpgp::armor;
use openpgp::cert::Preferences;
use openpgp::crypto::SessionKey;
use openpgp::serialize::stream::{Armorer, Encryptor, LiteralWriter, Message, Signer};
use openpgp::types::{AEADAlgorithm, Features, SymmetricAlgorithm};
use openpgp::Cert;
use sequoia_openpgp as openpgp;
use std::io::Write;

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
    // One PKESK per key: independent of each other, so they are made on the free cores. Each is
    // sequoia's own PKESK3/PKESK6::for_recipient; we only choose the threads.
    let pkesks = make_pkesks(&jobs, sym, &session_key, v2)?;
    let keypair = signer.map(signing_keypair).transpose()?;

    let mut out = Vec::with_capacity(plaintext.len() * 4 / 3 + 1024 + 200 * recipients.len());
    {
        let message = Message::new(&mut out);
        let message = Armorer::new(message)
            .kind(armor::Kind::Message)
            .build()
            .map_err(crypto)?;
        let mut message = message;
        for p in &pkesks {
            message
                .write_all(p)
                .map_err(|e| EncryptError::Crypto(e.to_string()))?;
        }
        let encryptor = Encryptor::with_session_key(message, sym, session_key).map_err(crypto)?;
        let encryptor = if v2 {
            encryptor.aead_algo(AEADAlgorithm::default())
        } else {
            encryptor
        };
        let message = encryptor.build().map_err(crypto)?;
        let message = match keypair {
            Some(kp) => Signer::new(message, kp)
                .map_err(crypto)?
                .build()
                .map_err(crypto)?,
            None => message,
        };
        let mut literal = LiteralWriter::new(message).build().map_err(crypto)?;
        literal
            .write_all(plaintext)
            .map_err(|e| EncryptError::Crypto(e.to_string()))?;
        literal.finalize().map_err(crypto)?;
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
        signer
            .write_all(data)
            .map_err(|e| EncryptError::Crypto(e.to_string()))?;
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

/// Recipients below which threads cost more than they save.
const PARALLEL_PKESKS: usize = 16;

type PublicKey =
    openpgp::packet::Key<openpgp::packet::key::PublicParts, openpgp::packet::key::UnspecifiedRole>;

/// The serialized PKESK packets, in recipient order: key id (or fingerprint) only where the
/// recipient asked for it, the wildcard otherwise.
fn make_pkesks(
    jobs: &[(&PublicKey, bool)],
    sym: SymmetricAlgorithm,
    session_key: &SessionKey,
    v2: bool,
) -> Result<Vec<Vec<u8>>, EncryptError> {
    use openpgp::packet::pkesk::{PKESK3, PKESK6};
    use openpgp::serialize::SerializeInto;
    let one = |(key, show): &(&PublicKey, bool)| -> Result<Vec<u8>, EncryptError> {
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
    let chunk = jobs.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = jobs
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(one).collect::<Result<Vec<_>, _>>()))
            .collect();
        let mut out = Vec::with_capacity(jobs.len());
        for h in handles {
            let part = h
                .join()
                .map_err(|_| EncryptError::Crypto("PKESK worker panicked".into()))??;
            out.extend(part);
        }
        Ok(out)
    })
}
