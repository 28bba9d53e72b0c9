use super::ListKeys;
use super::POLICY;
use openpgp::cert::amalgamation::ValidAmalgamation;
use openpgp::crypto::SessionKey;
use openpgp::packet::key::{SecretParts, UnspecifiedRole};
use openpgp::packet::Tag;
use openpgp::packet::{PKESK, SKESK};
use openpgp::parse::stream::{
    DecryptionHelper, DecryptorBuilder, MessageLayer, MessageStructure, VerificationError,
    VerificationHelper,
};
use openpgp::parse::{PacketParser, Parse};
use openpgp::serialize::SerializeInto;
use openpgp::types::SignatureType;
use openpgp::types::{HashAlgorithm, KeyFlags, RevocationStatus, SymmetricAlgorithm};
use openpgp::{Cert, Fingerprint, KeyHandle, Packet};
use sequoia_openpgp as openpgp;
use std::cell::Cell;
use std::io::Read;
use std::time::SystemTime;

/// Why an OpenPGP message could not be opened at all.
#[derive(Debug, PartialEq, Eq)]
pub enum Failure {
    /// No PKESK that a list key can decrypt.
    NotForList,
    /// Symmetrically encrypted data without an MDC (EFAIL-prone).
    NoIntegrity,
    /// A bad MDC or AEAD tag: the ciphertext was altered.
    Integrity,
    /// A cipher the policy forbids (CAST5, IDEA…).
    WeakCipher,
    Malformed(String),
    TooManyPackets(u32),
    TooMuchPlaintext(u64),
}

/// A signature that verified with a member's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoodSignature {
    /// Primary fingerprint of the signer's certificate.
    pub signer: Fingerprint,
    pub created: Option<SystemTime>,
    /// RFC 3156 `micalg` name without the `pgp-` prefix (e.g. `SHA256`).
    pub hash_name: String,
    pub intended_recipients: Vec<Fingerprint>,
    /// A text-mode (0x01) signature, valid over the CRLF-canonical text.
    pub text: bool,
    /// The signature packet, serialized.
    pub packet: Vec<u8>,
    /// What the signature binds, independent of its unhashed area: the signer, the hash
    /// algorithm and the digest computed over the signed data and the hashed area.
    pub bound: Vec<u8>,
    /// The same, armored as a detached signature.
    pub armored: Vec<u8>,
}

/// The verdict on one signature found inside the encryption.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SigCheck {
    Good(GoodSignature),
    UnknownSigner(String),
    Expired(Fingerprint),
    Revoked(Fingerprint),
    Weak(String),
    Bad(String),
}

pub struct Decrypted {
    pub plaintext: Vec<u8>,
    /// Signatures made inside the encryption layer.
    pub signatures: Vec<SigCheck>,
    /// Signatures found outside the encryption (they don't count as signing the post).
    pub outer_signatures: usize,
}

/// What the parser saw, kept outside the helper so that it survives an error that consumes
/// the helper.
#[derive(Default)]
struct Probe {
    packets: Cell<u32>,
    saw_sed: Cell<bool>,
    /// A PKESK or SKESK was offered (so this is an encrypted message at all).
    saw_esk: Cell<bool>,
    /// A list key unwrapped a session key; the symmetric algorithm if the PKESK names it.
    unwrapped: Cell<Option<Option<SymmetricAlgorithm>>>,
    decrypted: Cell<bool>,
}

struct Helper<'a> {
    list: &'a ListKeys,
    max_packets: u32,
    probe: &'a Probe,
    signatures: Vec<SigCheck>,
    outer_signatures: usize,
    detached: bool,
}

impl VerificationHelper for Helper<'_> {
    fn inspect(&mut self, pp: &PacketParser) -> openpgp::Result<()> {
        self.probe.packets.set(self.probe.packets.get() + 1);
        if self.probe.packets.get() > self.max_packets {
            return Err(anyhow::anyhow!("packet limit exceeded"));
        }
        if pp.packet.tag() == Tag::SED {
            self.probe.saw_sed.set(true);
        }
        Ok(())
    }

    fn get_certs(&mut self, ids: &[KeyHandle]) -> openpgp::Result<Vec<Cert>> {
        let mut certs: Vec<Cert> = Vec::new();
        for id in ids {
            for m in self.list.certs_for(id) {
                if !certs
                    .iter()
                    .any(|c| c.fingerprint() == m.cert.fingerprint())
                {
                    certs.push(m.cert.clone());
                }
            }
        }
        Ok(certs)
    }

    fn check(&mut self, structure: MessageStructure) -> openpgp::Result<()> {
        // A detached signature has no encryption layer around it: it is the signature.
        let mut inside = self.detached;
        for layer in structure.into_iter() {
            match layer {
                MessageLayer::Encryption { .. } => inside = true,
                MessageLayer::Compression { .. } => {}
                MessageLayer::SignatureGroup { results } => {
                    for r in results {
                        if !inside {
                            self.outer_signatures += 1;
                            continue;
                        }
                        self.signatures.push(classify(r));
                    }
                }
            }
        }
        Ok(())
    }
}

fn is_policy_violation(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<openpgp::Error>(),
            Some(openpgp::Error::PolicyViolation(..))
        )
    })
}

fn classify(
    r: Result<openpgp::parse::stream::GoodChecksum<'_>, VerificationError<'_>>,
) -> SigCheck {
    match r {
        Ok(good) => {
            // Set by sequoia during verification; without it nothing ties the replay record to
            // the signed data, so the signature is not taken as good.
            let Some(computed) = good.sig.computed_digest() else {
                return SigCheck::Bad("no computed digest".into());
            };
            let signer = good.ka.cert().fingerprint();
            let mut bound = signer.as_bytes().to_vec();
            bound.push(u8::from(good.sig.hash_algo()));
            bound.extend_from_slice(computed);
            let packet = Packet::from(good.sig.clone());
            let bytes = packet.to_vec().unwrap_or_default();
            let armored = armor_signature(&bytes);
            SigCheck::Good(GoodSignature {
                signer,
                created: good.sig.signature_creation_time(),
                hash_name: micalg_name(good.sig.hash_algo()),
                intended_recipients: good.sig.intended_recipients().cloned().collect(),
                text: good.sig.typ() == SignatureType::Text,
                packet: bytes,
                bound,
                armored,
            })
        }
        Err(VerificationError::MissingKey { sig }) => SigCheck::UnknownSigner(
            sig.get_issuers()
                .first()
                .map(|h| h.to_hex())
                .unwrap_or_else(|| "unknown".into()),
        ),
        Err(VerificationError::UnboundKey { cert, error, .. }) => revoked_or_expired(cert)
            .unwrap_or_else(|| SigCheck::Bad(format!("key not bound: {error}"))),
        Err(VerificationError::BadKey { ka, error, .. }) => {
            if let RevocationStatus::Revoked(_) = ka.revocation_status() {
                return SigCheck::Revoked(ka.cert().fingerprint());
            }
            if let Some(s) = revoked_or_expired(ka.cert()) {
                return s;
            }
            if ka.alive().is_err() {
                return SigCheck::Expired(ka.cert().fingerprint());
            }
            if is_policy_violation(&error) {
                SigCheck::Weak(error.to_string())
            } else {
                SigCheck::Bad(error.to_string())
            }
        }
        Err(VerificationError::BadSignature { error, .. }) => {
            if is_policy_violation(&error) {
                SigCheck::Weak(error.to_string())
            } else {
                SigCheck::Bad(error.to_string())
            }
        }
        Err(VerificationError::MalformedSignature { error, .. }) => {
            if is_policy_violation(&error) {
                SigCheck::Weak(error.to_string())
            } else {
                SigCheck::Bad(error.to_string())
            }
        }
        Err(VerificationError::UnknownSignature { .. }) => {
            SigCheck::Weak("unsupported signature algorithm".into())
        }
        Err(_) => SigCheck::Bad("unverifiable signature".into()),
    }
}

fn revoked_or_expired(cert: &Cert) -> Option<SigCheck> {
    // Look at the certificate as of now, under the same policy.
    match cert.with_policy(&POLICY, None) {
        Ok(vc) => {
            if let RevocationStatus::Revoked(_) = vc.revocation_status() {
                Some(SigCheck::Revoked(cert.fingerprint()))
            } else if vc.alive().is_err() {
                Some(SigCheck::Expired(cert.fingerprint()))
            } else {
                None
            }
        }
        Err(_) => None,
    }
}

impl DecryptionHelper for Helper<'_> {
    fn decrypt(
        &mut self,
        pkesks: &[PKESK],
        _skesks: &[SKESK],
        sym_algo: Option<SymmetricAlgorithm>,
        decrypt: &mut dyn FnMut(Option<SymmetricAlgorithm>, &SessionKey) -> bool,
    ) -> openpgp::Result<Option<Cert>> {
        self.probe
            .saw_esk
            .set(!pkesks.is_empty() || !_skesks.is_empty());
        let flags = KeyFlags::empty()
            .set_transport_encryption()
            .set_storage_encryption();
        // Try every list secret key on every PKESK addressed to it or to nobody (wildcard).
        let keys: Vec<_> = self
            .list
            .secret
            .keys()
            .with_policy(&POLICY, None)
            .secret()
            .key_flags(flags)
            .collect();
        for pkesk in pkesks {
            for ka in &keys {
                let addressed = match pkesk.recipient() {
                    None => true,
                    Some(h) => h.aliases(KeyHandle::from(ka.key().fingerprint())),
                };
                if !addressed {
                    continue;
                }
                if let Some((algo, sk)) = unwrap_session_key(pkesk, ka.key(), sym_algo) {
                    self.probe.unwrapped.set(Some(algo));
                    if decrypt(algo, &sk) {
                        self.probe.decrypted.set(true);
                        return Ok(Some(self.list.identity().clone()));
                    }
                }
            }
        }
        Err(anyhow::anyhow!("no list key can decrypt this message"))
    }
}

/// The session key in `pkesk` for the list's secret `key`: one X25519 operation for a v4
/// Cv25519 key (`ecdh::ListDecryptor`, OpenSSL build), sequoia's decryptor for anything else.
fn unwrap_session_key(
    pkesk: &PKESK,
    key: &openpgp::packet::Key<SecretParts, UnspecifiedRole>,
    sym_algo: Option<SymmetricAlgorithm>,
) -> Option<(Option<SymmetricAlgorithm>, SessionKey)> {
    #[cfg(feature = "crypto-openssl")]
    if let Some(mut decryptor) = super::ecdh::ListDecryptor::new(key) {
        return pkesk.decrypt(&mut decryptor, sym_algo);
    }
    let mut pair = key.clone().into_keypair().ok()?;
    pkesk.decrypt(&mut pair, sym_algo)
}

/// Decrypts `ciphertext` with the list's keys and checks the signatures inside, within the
/// packet and plaintext budgets. Acts only after the whole message was read without error.
pub fn decrypt_verify(
    ciphertext: &[u8],
    list: &ListKeys,
    max_packets: u32,
    max_plaintext: u64,
) -> Result<Decrypted, Failure> {
    let probe = Probe::default();
    let helper = Helper {
        list,
        max_packets,
        probe: &probe,
        signatures: Vec::new(),
        outer_signatures: 0,
        detached: false,
    };
    // Armor as clients write it is decoded in one pass; anything else goes to sequoia's
    // reader (which also reads binary messages).
    let binary = super::dearmor::message(ciphertext);
    let ciphertext = binary.as_deref().unwrap_or(ciphertext);
    let builder = DecryptorBuilder::from_bytes(ciphertext)
        .map_err(|e| Failure::Malformed(short(&e)))?
        // Memory follows buffer_size (reference/openpgp.md); we read everything anyway and
        // decide only after EOF. Sequoia's readers zero buffers of this size per message
        // (memset was 5% of the daemon's CPU on 15 KiB posts with 1 MiB).
        .buffer_size(read_ahead(ciphertext.len()));
    let mut decryptor = match builder.with_policy(&POLICY, None, helper) {
        Ok(d) => d,
        Err(e) => return Err(failure(&e, &probe, max_packets)),
    };
    let mut plaintext = Vec::new();
    let mut buf = vec![0u8; read_ahead(ciphertext.len()).min(64 * 1024)];
    loop {
        match decryptor.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if (plaintext.len() + n) as u64 > max_plaintext {
                    return Err(Failure::TooMuchPlaintext(max_plaintext));
                }
                plaintext.extend_from_slice(&buf[..n]);
            }
            Err(e) => {
                let e = anyhow::Error::from(e);
                return Err(failure(&e, &probe, max_packets));
            }
        }
    }
    if !decryptor.message_processed() {
        return Err(Failure::Malformed("truncated OpenPGP message".into()));
    }
    let helper = decryptor.into_helper();
    Ok(Decrypted {
        plaintext,
        signatures: helper.signatures,
        outer_signatures: helper.outer_signatures,
    })
}

/// How far the decryptor reads ahead: the message's size (an uncompressed plaintext is no
/// larger), at least 16 KiB, at most 1 MiB.
fn read_ahead(ciphertext: usize) -> usize {
    ciphertext.clamp(16 << 10, 1 << 20)
}

fn short(e: &anyhow::Error) -> String {
    let s = e.to_string();
    s.chars().take(120).collect()
}

fn failure(e: &anyhow::Error, probe: &Probe, max_packets: u32) -> Failure {
    // The why goes to debug (never message content: sequoia's errors name packets and algorithms).
    tracing::debug!(
        "OpenPGP failure: {e:#}; packets {}, decrypted {}",
        probe.packets.get(),
        probe.decrypted.get()
    );
    if probe.saw_sed.get() {
        return Failure::NoIntegrity;
    }
    if probe.packets.get() > max_packets {
        return Failure::TooManyPackets(max_packets);
    }
    for c in e.chain() {
        let oe = c.downcast_ref::<openpgp::Error>().or_else(|| {
            c.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<openpgp::Error>())
        });
        match oe {
            Some(openpgp::Error::ManipulatedMessage) => return Failure::Integrity,
            Some(openpgp::Error::PolicyViolation(what, _)) => {
                // The policy refuses SED (no MDC) and unknown packet types as packet types,
                // and weak algorithms by name.
                if what.contains("Symmetrically Encrypted Data") {
                    return Failure::NoIntegrity;
                }
                if what.contains("Packet") {
                    return Failure::Malformed(short(e));
                }
                return Failure::WeakCipher;
            }
            _ => {}
        }
    }
    if probe.decrypted.get() {
        // The session key was right, so an error in the decrypted stream means the
        // ciphertext was altered (a broken AEAD chunk, or garbage the MDC would refuse).
        return Failure::Integrity;
    }
    if let Some(algo) = probe.unwrapped.get() {
        // A list key unwrapped the session key but the data did not decrypt with it: an
        // obsolete cipher, or a first AEAD chunk that fails authentication.
        return match algo {
            Some(a) if weak_cipher(a) => Failure::WeakCipher,
            _ => Failure::Integrity,
        };
    }
    if !probe.saw_esk.get() {
        return Failure::Malformed(short(e));
    }
    Failure::NotForList
}

#[allow(deprecated)]
fn weak_cipher(a: SymmetricAlgorithm) -> bool {
    matches!(
        a,
        SymmetricAlgorithm::IDEA
            | SymmetricAlgorithm::TripleDES
            | SymmetricAlgorithm::CAST5
            | SymmetricAlgorithm::Blowfish
            | SymmetricAlgorithm::Unencrypted
    ) || !a.is_supported()
}

/// RFC 3156 §5 / RFC 4880 §9.4 hash names, as used in `micalg=pgp-…`.
fn micalg_name(h: HashAlgorithm) -> String {
    match h {
        HashAlgorithm::SHA1 => "SHA1".into(),
        HashAlgorithm::SHA224 => "SHA224".into(),
        HashAlgorithm::SHA256 => "SHA256".into(),
        HashAlgorithm::SHA384 => "SHA384".into(),
        HashAlgorithm::SHA512 => "SHA512".into(),
        HashAlgorithm::RipeMD => "RIPEMD160".into(),
        other => format!("{other:?}").to_ascii_uppercase(),
    }
}

/// Verifies a detached signature over `signed` (already CRLF-canonical) with the list's
/// member certificates.
pub fn verify_detached(signed: &[u8], signature: &[u8], list: &ListKeys) -> Vec<SigCheck> {
    use openpgp::parse::stream::DetachedVerifierBuilder;
    let probe = Probe::default();
    let helper = Helper {
        list,
        max_packets: 64,
        probe: &probe,
        signatures: Vec::new(),
        outer_signatures: 0,
        detached: true,
    };
    let verifier = DetachedVerifierBuilder::from_bytes(signature)
        .and_then(|b| b.with_policy(&POLICY, None, helper));
    let mut verifier = match verifier {
        Ok(v) => v,
        Err(e) => return vec![SigCheck::Bad(short(&e))],
    };
    if let Err(e) = verifier.verify_bytes(signed) {
        let mut sigs = std::mem::take(&mut verifier.helper_mut().signatures);
        if sigs.is_empty() {
            sigs.push(SigCheck::Bad(short(&e)));
        }
        return sigs;
    }
    std::mem::take(&mut verifier.helper_mut().signatures)
}

fn armor_signature(packet: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut out = Vec::new();
    let Ok(mut w) = openpgp::armor::Writer::new(&mut out, openpgp::armor::Kind::Signature) else {
        return Vec::new();
    };
    if w.write_all(packet).is_err() || w.finalize().is_err() {
        return Vec::new();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Policy;
    use crate::pgp::Member;
    use crate::store::Role;
    use openpgp::cert::CertBuilder;
    use openpgp::packet::signature::subpacket::{NotationData, Subpacket, SubpacketValue};

    /// What the decryptor is told decrypted a message: the list key's fingerprint (sequoia
    /// checks Intended Recipient subpackets against it), with no secret, user ID or subkey.
    #[test]
    fn the_decrypting_identity_is_the_list_primary_key_alone() {
        let (list_cert, _) = CertBuilder::general_purpose(Some("l@x.test"))
            .generate()
            .unwrap();
        assert!(list_cert.is_tsk());
        let list = ListKeys::new("l@x.test".into(), Policy::default(), list_cert, vec![]);
        let identity = list.identity();
        assert_eq!(identity.fingerprint(), list.secret.fingerprint());
        assert!(!identity.is_tsk(), "no secret key material");
        assert_eq!(identity.userids().count(), 0);
        assert_eq!(identity.keys().subkeys().count(), 0);
    }

    /// The replay attack: the same signature with one extra unhashed subpacket is a
    /// different packet but binds the same thing, so its replay record must be the same.
    #[test]
    fn an_extra_unhashed_subpacket_does_not_change_what_is_bound() {
        let (list_cert, _) = CertBuilder::general_purpose(Some("l@x.test"))
            .generate()
            .unwrap();
        let (alice, _) = CertBuilder::general_purpose(Some("a@x.test"))
            .generate()
            .unwrap();
        let list = ListKeys::new(
            "l@x.test".into(),
            Policy::default(),
            list_cert,
            vec![Member {
                address: "a@x.test".into(),
                cert: alice.clone(),
                role: Role::Member,
                show_key_id: false,
            }],
        );
        let data = b"Content-Type: text/plain\r\n\r\nhello\r\n";
        let sig = crate::pgp::testkit::signature(&alice, data);
        let mut rewrapped = sig.clone();
        rewrapped
            .unhashed_area_mut()
            .add(
                Subpacket::new(
                    SubpacketValue::NotationData(NotationData::new("x@attacker.test", b"y", None)),
                    false,
                )
                .unwrap(),
            )
            .unwrap();
        let good = |s: &openpgp::packet::Signature| {
            let bytes = Packet::from(s.clone()).to_vec().unwrap();
            match verify_detached(data, &bytes, &list).pop() {
                Some(SigCheck::Good(g)) => g,
                other => panic!("{other:?}"),
            }
        };
        let (a, b) = (good(&sig), good(&rewrapped));
        assert_ne!(a.packet, b.packet, "the packets differ");
        assert_eq!(a.bound, b.bound, "what the signature binds does not");
    }

    /// A post signed by a member and encrypted to the list opens and verifies through the
    /// armor fast path; the same armored text armored once more is refused as malformed, as
    /// sequoia's reader alone refuses it (it decodes one layer), never decoded twice.
    #[test]
    fn armor_inside_armor_is_refused_as_before() {
        use openpgp::armor::{Kind, Writer};
        use openpgp::serialize::stream::{Encryptor, LiteralWriter, Message, Signer};
        use std::io::Write;
        let list_cert = crate::pgp::testkit::general_purpose("l@x.test");
        let alice = crate::pgp::testkit::general_purpose("a@x.test");
        let list = ListKeys::new(
            "l@x.test".into(),
            Policy::default(),
            list_cert.clone(),
            vec![Member {
                address: "a@x.test".into(),
                cert: alice.clone(),
                role: Role::Member,
                show_key_id: false,
            }],
        );
        let armor = |data: &[u8]| {
            let mut w = Writer::new(Vec::new(), Kind::Message).unwrap();
            w.write_all(data).unwrap();
            w.finalize().unwrap()
        };
        let mut binary = Vec::new();
        {
            let recipients = list_cert
                .keys()
                .with_policy(&POLICY, None)
                .for_transport_encryption();
            let signer = crate::pgp::testkit::signing_keypair(&alice);
            let m = Encryptor::for_recipients(Message::new(&mut binary), recipients)
                .build()
                .unwrap();
            let m = Signer::new(m, signer).unwrap().build().unwrap();
            let mut w = LiteralWriter::new(m).build().unwrap();
            w.write_all(b"hello list").unwrap();
            w.finalize().unwrap();
        }
        let once = armor(&binary);
        let opened = decrypt_verify(&once, &list, 64, 1 << 20).expect("armored once opens");
        assert_eq!(opened.plaintext, b"hello list");
        assert!(matches!(opened.signatures[..], [SigCheck::Good(_)]));
        let twice = armor(&once);
        assert!(matches!(
            decrypt_verify(&twice, &list, 64, 1 << 20),
            Err(Failure::Malformed(_))
        ));
    }
}
