//! listcrypt's own key address (`LIST-key@DOMAIN`): list key requests and proven key binding
//! by email. Nothing sent here reaches Mailman; replies go out through the reinjection
//! listener with a null envelope sender (RFC 3834 automatic replies).
//!
//! Binding proves both halves of a key: the challenge token travels only inside a message
//! encrypted to the offered key (proving decryption), and the binding becomes active only
//! when a reply signed by that key carries the token back (proving signing).
//!
//! The processor only reads the store. It returns an [`Outcome`]: the reply to send and the
//! [`Effect`]s to make once that reply has been handed to the MTA ([`Outcome::commit`]), so a
//! reply that could not be sent leaves nothing behind and the sender's retry is answered
//! again. A dry run prints the outcome and commits nothing.

use crate::config::Limits;
use crate::keys::{
    check_member_cert, normalize_address, CertStore, KeyError, KeyHome, ListKeys, Member,
};
use crate::message::first_address;
use crate::mime::{self, Entity, Shape};
use crate::pgp::{
    self, member_certifications, own_signatures_only, BatchRecipient, Cert, EncryptError,
    GoodSignature, SigCheck, Signature,
};
use crate::store::{Binding, Role, Store, StoreError};
use std::fmt;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// A challenge is valid this long.
pub const TOKEN_TTL_SECS: u64 = 3 * 24 * 3600;
/// At most one list-key reply per sender per hour, one challenge per ten minutes.
const KEY_REPLY_INTERVAL: Duration = Duration::from_secs(3600);
const CHALLENGE_INTERVAL: Duration = Duration::from_secs(600);
/// At most this many replies per list and hour, whoever asks: the per-sender limits are keyed
/// by an address the sender chooses, so only a budget per list bounds the signing and
/// encryption work (and the mail) that outsiders can make the list do.
pub const LIST_REPLIES_PER_HOUR: u64 = 60;
const LIST_REPLY_WINDOW: Duration = Duration::from_secs(3600);
/// Certifications of the list key are published in WKD and key replies: each bound key
/// (member) may have one there, at most this many in all, each no larger than this (a
/// certification is about 120 bytes for Ed25519 and 600 for RSA-4096; the rest is notations).
pub const MAX_CERTIFICATIONS_PER_MEMBER: usize = 1;
pub const MAX_LIST_CERTIFICATIONS: usize = 200;
pub const MAX_CERTIFICATION_BYTES: usize = 2048;
/// Unproven key offers leave bounded state: at most this many unexpired pending challenges per
/// list (senders choose their addresses, so only this bounds the total) and per sender, and
/// no stored certificate larger than this (a key with a few user IDs and subkeys is under
/// 10 KiB). Over a cap, nothing is recorded and the log line says which.
pub const MAX_PENDING_PER_LIST: usize = 1000;
pub const MAX_PENDING_PER_SENDER: usize = 3;
pub const MAX_OFFERED_CERT_BYTES: usize = 64 * 1024;

/// A reply to send: recipient and the whole message.
#[derive(Debug, Clone)]
pub struct OutMail {
    pub to: String,
    pub message: Vec<u8>,
}

/// The automatic replies limited per sender, each with its own interval (the `rate` kinds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyKind {
    /// The list's public key.
    ListKey,
    /// A challenge for a key offered by an unbound address.
    Challenge,
    /// A challenge for a new key announced by the bound one.
    KeyChange,
    /// A key offer refused, with the reason.
    Refusal,
}

impl ReplyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ReplyKind::ListKey => "key",
            ReplyKind::Challenge => "challenge",
            ReplyKind::KeyChange => "change",
            ReplyKind::Refusal => "refusal",
        }
    }

    fn interval(self) -> Duration {
        match self {
            ReplyKind::ListKey => KEY_REPLY_INTERVAL,
            _ => CHALLENGE_INTERVAL,
        }
    }
}

/// A store write the processor wants, made by [`Outcome::commit`] once the reply is out.
#[derive(Debug, Clone)]
pub enum Effect {
    /// A command's signature, so that a replay of it counts for nothing.
    RecordCommand { digest: Vec<u8>, retain_secs: u64 },
    /// An automatic reply of `kind` to `sender` (the per-sender limit).
    MarkSenderReply {
        sender: String,
        kind: ReplyKind,
        at: SystemTime,
    },
    /// A reply counted against the list's hourly budget.
    MarkListReply { at: SystemTime },
    /// A certificate offered for binding (its owner's signatures only), kept for the
    /// challenge; no binding uses it yet, so the daemon does not reload.
    StoreOfferedCert(Cert),
    /// The bound key with new self-signatures; the daemon reloads only if it changed.
    RefreshBoundCert(Cert),
    /// A challenge out for `fingerprint`, proven by `token`.
    PendingChallenge {
        address: String,
        fingerprint: String,
        token: String,
    },
    /// A proven binding; the pending challenge it answered goes.
    Bind(Binding),
    /// Members' certifications of the list key, published with it.
    AddListCertifications(Vec<Signature>),
}

impl fmt::Display for Effect {
    // For dry runs: what would be written, never the token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Effect::RecordCommand { .. } => f.write_str("record the command's signature"),
            Effect::MarkSenderReply { sender, kind, .. } => {
                write!(f, "count a {} reply to {sender}", kind.as_str())
            }
            Effect::MarkListReply { .. } => f.write_str("count a reply against the list's budget"),
            Effect::StoreOfferedCert(c) => write!(f, "store the offered key {}", c.fingerprint()),
            Effect::RefreshBoundCert(c) => write!(f, "refresh the bound key {}", c.fingerprint()),
            Effect::PendingChallenge {
                address,
                fingerprint,
                ..
            } => write!(f, "record a pending binding of {address} to {fingerprint}"),
            Effect::Bind(b) => write!(f, "bind {} to {}", b.address, b.fingerprint),
            Effect::AddListCertifications(s) => {
                write!(f, "publish {} certification(s) of the list key", s.len())
            }
        }
    }
}

/// What happened (for the log line), the reply (if any), and the writes to make once the
/// reply has been handed to the MTA.
#[derive(Debug)]
pub struct Outcome {
    /// The list's posting address.
    pub list: String,
    pub summary: String,
    pub reply: Option<OutMail>,
    pub effects: Vec<Effect>,
}

impl Outcome {
    fn quiet(list: &ListKeys, summary: impl Into<String>) -> Outcome {
        Outcome {
            list: list.address.clone(),
            summary: summary.into(),
            reply: None,
            effects: Vec::new(),
        }
    }

    /// Makes the effects. Command records come last: if a write fails half-way, the
    /// sender's retry is not a replay and does the rest.
    pub fn commit(&self, store: &dyn Store, keyring_dir: &Path) -> Result<(), KeyAddressError> {
        let (records, writes): (Vec<&Effect>, Vec<&Effect>) = self
            .effects
            .iter()
            .partition(|e| matches!(e, Effect::RecordCommand { .. }));
        for effect in writes.into_iter().chain(records) {
            self.apply(effect, store, keyring_dir)?;
        }
        Ok(())
    }

    fn apply(
        &self,
        effect: &Effect,
        store: &dyn Store,
        keyring_dir: &Path,
    ) -> Result<(), KeyAddressError> {
        let list = self.list.as_str();
        match effect {
            Effect::RecordCommand {
                digest,
                retain_secs,
            } => {
                // Already there means a concurrent copy was answered too: nothing to undo.
                store.replay_record(list, digest, *retain_secs)?;
            }
            Effect::MarkSenderReply { sender, kind, at } => {
                store.rate_mark(list, sender, kind.as_str(), *at)?
            }
            Effect::MarkListReply { at } => store.list_reply_record(list, *at)?,
            Effect::StoreOfferedCert(cert) => CertStore::of(keyring_dir, store).insert(cert)?,
            Effect::RefreshBoundCert(cert) => {
                let certs = CertStore::of(keyring_dir, store);
                let before = certs.get(&cert.fingerprint())?;
                certs.insert(cert)?;
                // Only a real change of a bound key makes the daemon reload every list.
                if certs.get(&cert.fingerprint())? != before {
                    store.touch()?;
                }
            }
            Effect::PendingChallenge {
                address,
                fingerprint,
                token,
            } => store.pending_put(list, address, fingerprint, token, TOKEN_TTL_SECS)?,
            Effect::Bind(binding) => {
                store.bind(binding)?;
                store.pending_remove(list, &binding.address, &binding.fingerprint)?;
            }
            Effect::AddListCertifications(sigs) => {
                let home = KeyHome::of(keyring_dir, store);
                let new = crate::keys::add_list_certifications(home, list, sigs.clone())?;
                if new > 0 {
                    store.touch()?;
                }
            }
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyAddressError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error("cannot make the reply: {0}")]
    Reply(#[from] EncryptError),
    #[error("cannot export the list key: {0}")]
    Export(String),
}

/// Why a phase stops the request: it has its outcome, or it failed.
enum Stop {
    Answered(Outcome),
    Failed(KeyAddressError),
}

impl From<KeyAddressError> for Stop {
    fn from(e: KeyAddressError) -> Stop {
        Stop::Failed(e)
    }
}

impl From<StoreError> for Stop {
    fn from(e: StoreError) -> Stop {
        Stop::Failed(e.into())
    }
}

impl From<KeyError> for Stop {
    fn from(e: KeyError) -> Stop {
        Stop::Failed(e.into())
    }
}

/// A phase's result: its product for the next phase, or the end of the request.
type Step<T> = Result<T, Stop>;

fn answered<T>(outcome: Outcome) -> Step<T> {
    Err(Stop::Answered(outcome))
}

/// What the sender asked, once read: the content that counts and its fresh, unreplayed
/// signatures.
struct Request {
    sender: String,
    /// The decrypted content, or what a signature covers, or the message itself.
    content: Vec<u8>,
    good: Vec<GoodSignature>,
    /// The sender's offered, unproven certificates (the store keeps only their tokens' hashes).
    pending: Vec<Cert>,
    /// The key the sender's address is bound to now.
    current: Option<Cert>,
    /// The replay records of `good`, made with any outcome that acts on the request.
    commands: Vec<Effect>,
}

impl Request {
    fn signed_by(&self, cert: &Cert) -> bool {
        self.good.iter().any(|g| g.signer == cert.fingerprint())
    }
}

/// The sender's per-address limit for a reply, if it has one.
enum Limit {
    Sender(ReplyKind),
    /// Answers to proven commands: only the list's budget applies.
    ListOnly,
}

/// The key-address processor of one list; it reads the store and the cert directory only.
pub struct Processor<'a> {
    pub list: &'a ListKeys,
    pub store: &'a dyn Store,
    pub keyring_dir: &'a Path,
    pub limits: &'a Limits,
}

impl Processor<'_> {
    /// Handles one message to the list's key address as of `now`, writing nothing.
    pub fn process(
        &self,
        envelope_sender: &str,
        message: &[u8],
        now: SystemTime,
    ) -> Result<Outcome, KeyAddressError> {
        match self.phases(envelope_sender, message, now) {
            Ok(outcome) | Err(Stop::Answered(outcome)) => Ok(outcome),
            Err(Stop::Failed(e)) => Err(e),
        }
    }

    fn phases(&self, envelope_sender: &str, message: &[u8], now: SystemTime) -> Step<Outcome> {
        let (sender, entity) = self.screen(envelope_sender, message)?;
        let request = self.read_request(sender, &entity, message, now)?;
        self.confirm_binding(&request, now)?;
        self.merge_certifications(&request, now)?;
        self.offer_key(&request, now)?;
        self.send_list_key(&request, now)
    }

    /// Never answer bounces or other automatic mail (RFC 3834 §2), nor a From that is not
    /// the envelope sender (we would reflect replies at a third party).
    fn screen<'m>(&self, envelope_sender: &str, message: &'m [u8]) -> Step<(String, Entity<'m>)> {
        let sender = normalize_address(envelope_sender);
        let Ok(entity) = Entity::parse(message) else {
            return answered(self.quiet("unparseable key request ignored"));
        };
        if sender.is_empty() {
            return answered(self.quiet("key request with a null sender ignored"));
        }
        if entity
            .get("Auto-Submitted")
            .is_some_and(|h| !mime::header_text(h).eq_ignore_ascii_case("no"))
        {
            return answered(self.quiet("automatic mail to the key address ignored"));
        }
        let from = entity.get("From").and_then(first_address);
        if from.as_deref() != Some(sender.as_str()) {
            return answered(
                self.quiet("key request whose From is not the envelope sender ignored"),
            );
        }
        Ok((sender, entity))
    }

    /// Opens the message and keeps the signatures that count: made by a key the sender
    /// offered or is bound to, within the time window, and never seen before.
    fn read_request(
        &self,
        sender: String,
        entity: &Entity<'_>,
        message: &[u8],
        now: SystemTime,
    ) -> Step<Request> {
        let certs = CertStore::of(self.keyring_dir, self.store);
        let mut pending = Vec::new();
        for fpr in self.store.pending_for(&self.list.address, &sender)? {
            if let Some(cert) = fpr.parse().ok().and_then(|f| certs.get(&f).ok().flatten()) {
                pending.push(cert);
            }
        }
        // The key this address is bound to now, if any: a key change must be announced with it.
        let current = self.list.member(&sender).map(|m| m.cert.clone());
        let known = pending.iter().chain(current.as_ref());
        let verifier = ListKeys::new(
            self.list.address.clone(),
            self.list.policy.clone(),
            self.list.secret.clone(),
            known.map(|cert| as_member(&sender, cert)).collect(),
        );
        let (content, signatures) = match self.open(entity, message, &verifier) {
            Ok(opened) => opened,
            Err(why) => return answered(self.quiet(why)),
        };
        let window = Duration::from_secs(self.limits.signature_time_window);
        let mut good = Vec::new();
        let mut commands = Vec::new();
        for sig in signatures {
            let SigCheck::Good(g) = sig else { continue };
            if !fresh(g.created, now, window) {
                continue;
            }
            let digest = command_digest(&self.list.address, &g.packet);
            if self.store.replay_seen(&self.list.address, &digest)? {
                return answered(self.quiet(format!("replayed command from {sender} ignored")));
            }
            commands.push(Effect::RecordCommand {
                digest,
                retain_secs: self.limits.signature_time_window.saturating_mul(2),
            });
            good.push(g);
        }
        Ok(Request {
            sender,
            content,
            good,
            pending,
            current,
            commands,
        })
    }

    /// What the sender wrote (decrypted if it was encrypted to the list) and the checks of
    /// its signatures; otherwise why it cannot be read.
    fn open(
        &self,
        entity: &Entity<'_>,
        message: &[u8],
        verifier: &ListKeys,
    ) -> Result<(Vec<u8>, Vec<SigCheck>), &'static str> {
        let limits = self.limits;
        let shape = mime::classify(message, limits.max_mime_depth, limits.max_mime_parts)
            .map_err(|_| "malformed mail to the key address ignored")?;
        if let Shape::PgpMime { ciphertext } = shape {
            let d = pgp::decrypt_verify(
                &ciphertext,
                verifier,
                limits.max_packets,
                limits.max_plaintext_bytes,
            )
            .map_err(|_| "undecryptable mail to the key address ignored")?;
            return Ok((d.plaintext, d.signatures));
        }
        // In a multipart/signed, only what the signature covers counts (the token, an
        // announced key): nothing from the unsigned rest of the message.
        let ct = entity.content_type();
        Ok(match (ct.mimetype.as_str(), ct.params.get("boundary")) {
            ("multipart/signed", Some(b)) => {
                signed_part_checks(entity.body, b, verifier).unwrap_or_default()
            }
            _ => (message.to_vec(), Vec::new()),
        })
    }

    /// A signed confirmation carrying the token of a pending binding activates it.
    fn confirm_binding(&self, req: &Request, now: SystemTime) -> Step<()> {
        let text = String::from_utf8_lossy(&req.content);
        let mut proven = None;
        for cert in req.pending.iter().filter(|c| req.signed_by(c)) {
            let fingerprint = cert.fingerprint().to_hex();
            // The store keeps only the token's hash: offer it each token-shaped word.
            for candidate in token_candidates(&text) {
                if self.store.pending_token_matches(
                    &self.list.address,
                    &req.sender,
                    &fingerprint,
                    candidate,
                )? {
                    proven = Some(cert);
                    break;
                }
            }
        }
        let Some(cert) = proven else {
            return Ok(());
        };
        check_member_cert(cert, &req.sender).map_err(|p| KeyError::Unusable(p.to_string()))?;
        let sender = &req.sender;
        let fingerprint = cert.fingerprint().to_hex();
        // A member's existing role and key-id preference survive a key change.
        let old = self
            .store
            .bindings(&self.list.address)?
            .into_iter()
            .find(|b| &b.address == sender);
        let binding = Binding {
            list: self.list.address.clone(),
            address: sender.clone(),
            fingerprint: fingerprint.clone(),
            role: old.as_ref().map(|b| b.role).unwrap_or(Role::Member),
            state: crate::store::BindingState::Active,
            show_key_id: old.as_ref().is_some_and(|b| b.show_key_id),
        };
        let body = format!(
            "Your key {fingerprint} is now bound to {sender} on {}.\r\n\
             Posts to the list must be encrypted to the list key and signed with this key.\r\n",
            self.list.address
        );
        let summary = format!("binding of {sender} to 0x{fingerprint} proven and activated");
        answered(self.answer(
            req,
            Limit::ListOnly,
            now,
            (summary, "binding confirmation"),
            vec![Effect::Bind(binding)],
            || encrypted_reply(self.list, sender, cert, "Your key is bound", &body, now),
        )?)
    }

    /// A member returns the list key certified by their bound key, in a message signed with
    /// it (that is the opt-in): one certification per member is published with the list key
    /// (key requests, WKD, export-key).
    fn merge_certifications(&self, req: &Request, now: SystemTime) -> Step<()> {
        let Some(bound) = req.current.as_ref().filter(|b| req.signed_by(b)) else {
            return Ok(());
        };
        let list_fpr = self.list.secret.fingerprint();
        let Some(returned) = find_cert(&req.content, self.limits, |c| c.fingerprint() == list_fpr)
        else {
            return Ok(());
        };
        let offered = member_certifications(&returned, bound);
        if offered.is_empty() {
            return Ok(());
        }
        let sender = &req.sender;
        let Some(sig) = self.certification_to_publish(offered, bound) else {
            let mut outcome = self.quiet(format!(
                "certification of the list key by {sender} not merged: \
                 one per member, {MAX_LIST_CERTIFICATIONS} in all, \
                 {MAX_CERTIFICATION_BYTES} bytes each"
            ));
            outcome.effects = req.commands.clone();
            return answered(outcome);
        };
        let body = format!(
            "Your certification of the list key of {} is published with it.\r\n",
            self.list.address
        );
        let summary = format!("certification of the list key by {sender} merged and published");
        answered(self.answer(
            req,
            Limit::ListOnly,
            now,
            (summary, "certification"),
            vec![Effect::AddListCertifications(vec![sig])],
            || {
                let subject = "Your certification is published";
                encrypted_reply(self.list, sender, bound, subject, &body, now)
            },
        )?)
    }

    /// The newest of `offered` that fits, unless the member or the list has its share.
    fn certification_to_publish(&self, offered: Vec<Signature>, bound: &Cert) -> Option<Signature> {
        let secret = &self.list.secret;
        let published = member_certifications(secret, bound).len();
        let total = pgp::certification_count(secret);
        if published >= MAX_CERTIFICATIONS_PER_MEMBER || total >= MAX_LIST_CERTIFICATIONS {
            return None;
        }
        offered
            .into_iter()
            .filter(|s| pgp::serialized_len(s) <= MAX_CERTIFICATION_BYTES)
            .max_by_key(|s| s.signature_creation_time())
    }

    /// A certificate offered for binding: refused with the reason, merged (the bound key
    /// itself), or challenged.
    fn offer_key(&self, req: &Request, now: SystemTime) -> Step<()> {
        let Some(cert) = offered_cert(&req.content, &req.sender, self.limits) else {
            return Ok(());
        };
        // Only what the key's owner signed is kept: nobody floods a key with certifications.
        let cert = own_signatures_only(&cert)
            .ok_or_else(|| KeyError::Crypto("offered certificate cannot be rebuilt".into()))?;
        let sender = &req.sender;
        let size = pgp::serialized_len(&cert);
        if size > MAX_OFFERED_CERT_BYTES {
            return answered(self.quiet(format!(
                "key offered by {sender} not stored: {size} bytes, \
                 over {MAX_OFFERED_CERT_BYTES}"
            )));
        }
        if let Err(why) = check_member_cert(&cert, sender) {
            let body = format!(
                "The key you sent cannot be bound to {sender} on {}:\r\n  {why}\r\n\
                 Please send a key with a user ID for {sender} and a usable encryption subkey\r\n\
                 (Curve25519, or RSA of at least 2048 bits).\r\n",
                self.list.address
            );
            return answered(self.answer(
                req,
                Limit::Sender(ReplyKind::Refusal),
                now,
                (
                    format!("key offered by {sender} refused: {why}"),
                    "refused key offer",
                ),
                Vec::new(),
                || {
                    signed_reply(
                        self.list,
                        sender,
                        "Your key cannot be bound",
                        &body,
                        None,
                        now,
                    )
                },
            )?);
        }
        if let Some(bound) = &req.current {
            self.keep_bound_key(req, bound, cert.clone(), now)?;
        }
        self.challenge(req, cert, now)
    }

    /// A proven binding started for `address` by one of the list's owners (the admin API):
    /// the same challenge, caps and rate limits as a key `address` offered by mail. The
    /// certificate must be usable for `address`; the binding is made only once the challenge
    /// comes back signed by that key, as for a key offered by mail.
    pub fn offer_for(
        &self,
        address: &str,
        cert: &Cert,
        now: SystemTime,
    ) -> Result<Outcome, KeyAddressError> {
        let sender = normalize_address(address);
        let cert = own_signatures_only(cert)
            .ok_or_else(|| KeyError::Crypto("offered certificate cannot be rebuilt".into()))?;
        let size = pgp::serialized_len(&cert);
        if size > MAX_OFFERED_CERT_BYTES {
            return Err(KeyError::Unusable(format!(
                "certificate of {size} bytes, over {MAX_OFFERED_CERT_BYTES}"
            ))
            .into());
        }
        check_member_cert(&cert, &sender).map_err(|why| KeyError::Unusable(why.to_string()))?;
        let req = Request {
            current: self.list.member(&sender).map(|m| m.cert.clone()),
            sender,
            content: Vec::new(),
            good: Vec::new(),
            pending: Vec::new(),
            commands: Vec::new(),
        };
        match self.challenge(&req, cert, now) {
            Ok(()) => Ok(self.quiet("no challenge made")),
            Err(Stop::Answered(outcome)) => Ok(outcome),
            Err(Stop::Failed(e)) => Err(e),
        }
    }

    /// Replacing a bound key takes an announcement signed by the bound key: otherwise whoever
    /// can read the member's mail on the wire could swap in a key of their own. The bound key
    /// itself (e.g. with an extended expiry) merges its owner's new self-signatures.
    fn keep_bound_key(&self, req: &Request, bound: &Cert, cert: Cert, now: SystemTime) -> Step<()> {
        let sender = &req.sender;
        if bound.fingerprint() == cert.fingerprint() {
            let mut outcome = self.quiet(format!("{sender} refreshed the bound key"));
            outcome.effects.push(Effect::RefreshBoundCert(cert));
            outcome.effects.extend(req.commands.iter().cloned());
            return answered(outcome);
        }
        if req.signed_by(bound) {
            return Ok(());
        }
        let body = format!(
            "{sender} is already bound on {} to the key {}.\r\n\
             To change keys, send the new key in a message signed with the current one.\r\n\
             If you lost the current key, ask the list owner.\r\n",
            self.list.address,
            bound.fingerprint()
        );
        let summary = format!("key change for {sender} refused: not signed by the bound key");
        answered(self.answer(
            req,
            Limit::Sender(ReplyKind::Refusal),
            now,
            (summary, "unannounced key change"),
            Vec::new(),
            || encrypted_reply(self.list, sender, bound, "Key change refused", &body, now),
        )?)
    }

    /// A challenge only the offered key can read; the binding stays pending until proven.
    fn challenge(&self, req: &Request, cert: Cert, now: SystemTime) -> Step<()> {
        let kind = match req.current {
            Some(_) => ReplyKind::KeyChange,
            None => ReplyKind::Challenge,
        };
        let sender = &req.sender;
        let fingerprint = cert.fingerprint().to_hex();
        if let Some(full) = self.pending_full(sender, &fingerprint)? {
            return answered(self.quiet(format!(
                "key 0x{fingerprint} offered by {sender} not recorded: {full}"
            )));
        }
        let token = new_token();
        let body = format!(
            "Someone asked to bind this key ({fingerprint}) to {sender} on the encrypted\r\n\
             list {list}. If it was you, reply to this message, signed with this key (and\r\n\
             preferably encrypted to the list key), keeping this line:\r\n\
             \r\n\
             listcrypt-token: {token}\r\n\
             \r\n\
             The token expires in {days} days. If it was not you, ignore this message.\r\n",
            list = self.list.address,
            days = TOKEN_TTL_SECS / 86_400
        );
        let summary = format!("challenge sent to {sender} for key 0x{fingerprint}");
        let effects = vec![
            Effect::StoreOfferedCert(cert.clone()),
            Effect::PendingChallenge {
                address: sender.clone(),
                fingerprint,
                token,
            },
        ];
        answered(self.answer(
            req,
            Limit::Sender(kind),
            now,
            (summary, "key offer"),
            effects,
            || {
                let subject = "Confirm your key for the list";
                encrypted_reply(self.list, sender, &cert, subject, &body, now)
            },
        )?)
    }

    /// Which cap a new pending challenge of `sender` for `fingerprint` would exceed, if any.
    /// Renewing one already pending adds no row.
    fn pending_full(&self, sender: &str, fingerprint: &str) -> Result<Option<String>, StoreError> {
        let list = &self.list.address;
        let own = self.store.pending_for(list, sender)?;
        if own.iter().any(|f| f.eq_ignore_ascii_case(fingerprint)) {
            return Ok(None);
        }
        if own.len() >= MAX_PENDING_PER_SENDER {
            return Ok(Some(format!(
                "{MAX_PENDING_PER_SENDER} pending challenges for this sender"
            )));
        }
        if self.store.pending_list(list)?.len() >= MAX_PENDING_PER_LIST {
            return Ok(Some(format!(
                "{MAX_PENDING_PER_LIST} pending challenges on the list"
            )));
        }
        Ok(None)
    }

    /// Anything else: the list's public key.
    fn send_list_key(&self, req: &Request, now: SystemTime) -> Step<Outcome> {
        let public = pgp::armored_public(&self.list.secret)
            .map_err(|e: anyhow::Error| KeyAddressError::Export(e.to_string()))?;
        let body = format!(
            "This is the OpenPGP key of the encrypted list {list} ({fpr}).\r\n\
             Encrypt posts to it and sign them with your own key. To bind your key to your\r\n\
             address, send your public key (attached) to this address.\r\n",
            list = self.list.address,
            fpr = self.list.secret.fingerprint()
        );
        let sender = &req.sender;
        let subject = "The list's OpenPGP key";
        Ok(self.answer(
            req,
            Limit::Sender(ReplyKind::ListKey),
            now,
            (format!("list key sent to {sender}"), "list key request"),
            Vec::new(),
            || signed_reply(self.list, sender, subject, &body, Some(&public), now),
        )?)
    }

    /// An outcome with a reply, if the sender's limit (`limit`) and the list's hourly budget
    /// allow one; otherwise a quiet outcome that records nothing, so a later retry counts.
    /// `summary` is (the log line when answered, what was asked).
    fn answer(
        &self,
        req: &Request,
        limit: Limit,
        now: SystemTime,
        (summary, what): (String, &str),
        mut effects: Vec<Effect>,
        reply: impl FnOnce() -> Result<OutMail, KeyAddressError>,
    ) -> Result<Outcome, KeyAddressError> {
        let list = &self.list.address;
        if let Limit::Sender(kind) = limit {
            let last = self.store.rate_last(list, &req.sender, kind.as_str())?;
            if last.is_some_and(|t| !elapsed(t, now, kind.interval())) {
                return Ok(self.quiet(format!("{what} not answered again yet (rate limit)")));
            }
            effects.push(Effect::MarkSenderReply {
                sender: req.sender.clone(),
                kind,
                at: now,
            });
        }
        let since = now
            .checked_sub(LIST_REPLY_WINDOW)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        if self.store.list_replies_since(list, since)? >= LIST_REPLIES_PER_HOUR {
            return Ok(self.quiet(format!(
                "{what} not answered: {LIST_REPLIES_PER_HOUR} replies in the last hour (rate limit)"
            )));
        }
        effects.push(Effect::MarkListReply { at: now });
        effects.extend(req.commands.iter().cloned());
        Ok(Outcome {
            list: list.clone(),
            summary,
            reply: Some(reply()?),
            effects,
        })
    }

    fn quiet(&self, summary: impl Into<String>) -> Outcome {
        Outcome::quiet(self.list, summary)
    }
}

/// Whether at least `interval` has passed from `then` to `now` (a clock that went back
/// counts as not yet).
fn elapsed(then: SystemTime, now: SystemTime, interval: Duration) -> bool {
    now.duration_since(then).is_ok_and(|d| d >= interval)
}

/// A command counts only with a signature made within `window` of `now`, either side.
fn fresh(created: Option<SystemTime>, now: SystemTime, window: Duration) -> bool {
    created.is_some_and(|t| match now.duration_since(t) {
        Ok(age) => age <= window,
        Err(ahead) => ahead.duration() <= window,
    })
}

fn as_member(address: &str, cert: &Cert) -> Member {
    Member {
        address: address.to_string(),
        cert: cert.clone(),
        role: Role::Member,
        show_key_id: false,
    }
}

/// The signed part of a top-level multipart/signed (CRLF) and the checks of its detached
/// signature.
fn signed_part_checks(
    body: &[u8],
    boundary: &str,
    verifier: &ListKeys,
) -> Option<(Vec<u8>, Vec<SigCheck>)> {
    let parts = mime::split_multipart(body, boundary).ok()?;
    if parts.len() != 2 {
        return None;
    }
    let sig = mailparse::parse_mail(parts[1])
        .and_then(|p| p.get_body_raw())
        .ok()?;
    let signed = mime::to_crlf(parts[0]);
    let checks = pgp::verify_detached(&signed, &sig, verifier);
    Some((signed, checks))
}

/// The first certificate in the message (an application/pgp-keys part, or an armored block in
/// any text part, whatever its transfer encoding) with a user ID for `address`.
fn offered_cert(content: &[u8], address: &str, limits: &Limits) -> Option<Cert> {
    find_cert(content, limits, |cert| pgp::names_address(cert, address))
}

/// The first certificate in the message's key parts (application/pgp-keys, or an armored
/// block in any part, whatever its transfer encoding) that `wanted` accepts.
fn find_cert(content: &[u8], limits: &Limits, wanted: impl Fn(&Cert) -> bool) -> Option<Cert> {
    let mut stack = vec![(content, 0u32)];
    let mut seen = 0u32;
    while let Some((part, depth)) = stack.pop() {
        seen += 1;
        if seen > limits.max_mime_parts || depth > limits.max_mime_depth {
            return None;
        }
        let entity = Entity::parse(part).ok()?;
        let ct = entity.content_type();
        if ct.mimetype.starts_with("multipart/") {
            let b = ct.params.get("boundary")?;
            for sub in mime::split_multipart(entity.body, b).ok()? {
                stack.push((sub, depth + 1));
            }
            continue;
        }
        let Some(decoded) = key_block(part, &ct.mimetype) else {
            continue;
        };
        let found = pgp::parse_certs(&decoded).find(&wanted);
        if let Some(cert) = found {
            return Some(cert.strip_secret_key_material());
        }
    }
    None
}

/// The decoded body of a leaf part that holds a key.
fn key_block(part: &[u8], mimetype: &str) -> Option<Vec<u8>> {
    let decoded = mailparse::parse_mail(part)
        .and_then(|p| p.get_body_raw())
        .ok()?;
    let looks_like_key = mimetype == "application/pgp-keys"
        || crate::mime::contains(&decoded, b"-----BEGIN PGP PUBLIC KEY BLOCK-----");
    looks_like_key.then_some(decoded)
}

/// The replay record of a key-address command: its signature, apart from posts' records.
fn command_digest(list: &str, packet: &[u8]) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"key-address\0");
    h.update(list.as_bytes());
    h.update([0]);
    h.update(packet);
    h.finalize().to_vec()
}

/// Letters in a token from `new_token`: 160 bits in base32.
const TOKEN_CHARS: usize = 32;

/// At most this many token-shaped words are tried: a reply quotes one token, and each try
/// costs a hash and a lookup.
const TOKEN_CANDIDATES: usize = 64;

/// The words of `text` shaped like a token from `new_token` (lower-case base32, 32 letters).
fn token_candidates(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !matches!(c, 'a'..='z' | '2'..='7'))
        .filter(|w| w.len() == TOKEN_CHARS)
        .take(TOKEN_CANDIDATES)
}

/// 160 random bits, base32.
fn new_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 20];
    rand::thread_rng().fill_bytes(&mut bytes);
    data_encoding::BASE32_NOPAD
        .encode(&bytes)
        .to_ascii_lowercase()
}

pub fn key_address(list: &ListKeys) -> String {
    let (local, domain) = list.parts();
    format!("{local}-{}@{domain}", list.policy.key_suffix)
}

fn reply_header(list: &ListKeys, to: &str, subject: &str, now: SystemTime) -> String {
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (_, domain) = list.parts();
    format!(
        "From: {from}\r\nTo: {to}\r\nSubject: {subject}\r\nDate: {date}\r\n\
         Message-ID: <{id}@{domain}>\r\nAuto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n",
        from = key_address(list),
        date = crate::outbound::rfc5322_date_utc(secs),
        id = new_token(),
    )
}

/// A notice from the list's key address that only `cert` can read, signed by the list,
/// dated now (for the CLI's notices).
pub fn notice(
    list: &ListKeys,
    to: &str,
    cert: &Cert,
    subject: &str,
    body: &str,
) -> Result<OutMail, KeyAddressError> {
    encrypted_reply(list, to, cert, subject, body, SystemTime::now())
}

/// A reply only `cert` can read, signed by the list (the challenge travels only in here).
fn encrypted_reply(
    list: &ListKeys,
    to: &str,
    cert: &Cert,
    subject: &str,
    body: &str,
    now: SystemTime,
) -> Result<OutMail, KeyAddressError> {
    let inner = format!(
        "Content-Type: text/plain; charset=utf-8; protected-headers=\"v1\"\r\nSubject: {subject}\r\n\r\n{body}"
    );
    let recipients = [BatchRecipient {
        cert,
        show_key_id: true,
    }];
    let armored = pgp::encrypt_sign(inner.as_bytes(), &recipients, Some(&list.secret))?;
    let (content_type, encrypted) = mime::multipart_encrypted(&armored);
    let mut message = reply_header(list, to, "[...]", now).into_bytes();
    message.extend_from_slice(
        format!(
            "Content-Type: {}\r\n\r\n",
            content_type.replace('\n', "\r\n")
        )
        .as_bytes(),
    );
    message.extend_from_slice(&encrypted);
    Ok(OutMail {
        to: to.to_string(),
        message,
    })
}

/// A public reply signed by the list (RFC 3156 multipart/signed), optionally with the list
/// key attached.
fn signed_reply(
    list: &ListKeys,
    to: &str,
    subject: &str,
    body: &str,
    key: Option<&[u8]>,
    now: SystemTime,
) -> Result<OutMail, KeyAddressError> {
    let entity = match key {
        None => format!("Content-Type: text/plain; charset=utf-8\r\n\r\n{body}").into_bytes(),
        Some(key) => {
            let b = mime::new_boundary();
            let mut e = format!(
                "Content-Type: multipart/mixed; boundary=\"{b}\"\r\n\r\n--{b}\r\n\
                 Content-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n--{b}\r\n\
                 Content-Type: application/pgp-keys; name=\"list-key.asc\"\r\n\
                 Content-Disposition: attachment; filename=\"list-key.asc\"\r\n\r\n"
            )
            .into_bytes();
            e.extend_from_slice(&mime::to_crlf(key));
            e.extend_from_slice(format!("\r\n--{b}--\r\n").as_bytes());
            e
        }
    };
    let sig = pgp::sign_detached(&entity, &list.secret)?;
    let b = mime::new_boundary();
    let mut message = reply_header(list, to, subject, now).into_bytes();
    message.extend_from_slice(
        format!(
            "Content-Type: multipart/signed; micalg=pgp-sha512; protocol=\"application/pgp-signature\";\r\n\
             \tboundary=\"{b}\"\r\n\r\n--{b}\r\n"
        )
        .as_bytes(),
    );
    message.extend_from_slice(&entity);
    message.extend_from_slice(
        format!(
            "\r\n--{b}\r\nContent-Type: application/pgp-signature; name=\"signature.asc\"\r\n\r\n"
        )
        .as_bytes(),
    );
    message.extend_from_slice(&mime::to_crlf(&sig));
    message.extend_from_slice(format!("\r\n--{b}--\r\n").as_bytes());
    Ok(OutMail {
        to: to.to_string(),
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Policy;
    use crate::pgp::testkit::{certification, general_purpose, with_self_signed_userids};
    use crate::store::SqliteStore;
    use std::time::UNIX_EPOCH;

    const T0: u64 = 1_700_000_000;
    const LIST: &str = "l@example.org";

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn the_time_window_includes_its_edges_on_both_sides() {
        let w = Duration::from_secs(600);
        assert!(fresh(Some(at(T0)), at(T0), w));
        assert!(fresh(Some(at(T0 - 600)), at(T0), w));
        assert!(!fresh(Some(at(T0 - 601)), at(T0), w));
        assert!(fresh(Some(at(T0 + 600)), at(T0), w), "clock skew");
        assert!(!fresh(Some(at(T0 + 601)), at(T0), w));
        assert!(!fresh(None, at(T0), w), "no creation time, no command");
    }

    #[test]
    fn an_interval_ends_at_its_length_and_a_clock_going_back_does_not_end_it() {
        let i = Duration::from_secs(3600);
        assert!(elapsed(at(T0), at(T0 + 3600), i));
        assert!(!elapsed(at(T0), at(T0 + 3599), i));
        assert!(!elapsed(at(T0), at(T0 - 10), i));
    }

    struct Fixture {
        dir: tempfile::TempDir,
        store: SqliteStore,
        list: ListKeys,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let secret = crate::keys::create_list_key(&dir.path().join("keyrings"), LIST).unwrap();
        let store = SqliteStore::open(&dir.path().join("state")).unwrap();
        let list = ListKeys::new(LIST.into(), Policy::default(), secret, Vec::new());
        Fixture { dir, store, list }
    }

    /// An outcome that answers nothing and writes nothing, with `why` in its log summary.
    fn assert_quiet(out: &Outcome, why: &str) {
        assert!(
            out.reply.is_none() && out.effects.is_empty(),
            "{}",
            out.summary
        );
        assert!(out.summary.contains(why), "{}", out.summary);
    }

    impl Fixture {
        fn process(&self, sender: &str, now: SystemTime) -> Outcome {
            let keyring_dir = self.dir.path().join("keyrings");
            let processor = Processor {
                list: &self.list,
                store: &self.store,
                keyring_dir: &keyring_dir,
                limits: &Limits::default(),
            };
            let message = format!("From: {sender}\r\nSubject: key?\r\n\r\nhi\r\n");
            processor.process(sender, message.as_bytes(), now).unwrap()
        }
    }

    impl Fixture {
        /// `sender` offers `cert` in an unsigned message, as an armored block in the body.
        fn offer(&self, sender: &str, cert: &Cert) -> Outcome {
            let keyring_dir = self.dir.path().join("keyrings");
            let processor = Processor {
                list: &self.list,
                store: &self.store,
                keyring_dir: &keyring_dir,
                limits: &Limits::default(),
            };
            let armored = pgp::armored_public(cert).unwrap();
            let mut message = format!("From: {sender}\r\nSubject: my key\r\n\r\n").into_bytes();
            message.extend_from_slice(&armored);
            processor.process(sender, &message, at(T0)).unwrap()
        }

        fn is_challenge(outcome: &Outcome) -> bool {
            outcome.reply.is_some()
                && outcome
                    .effects
                    .iter()
                    .any(|e| matches!(e, Effect::PendingChallenge { .. }))
        }
    }

    fn key_of(address: &str) -> Cert {
        general_purpose(address).strip_secret_key_material()
    }

    /// A fingerprint-shaped string for filler pending rows.
    fn filler(i: usize) -> String {
        format!("{i:040X}")
    }

    #[test]
    fn a_sender_has_at_most_three_pending_offers_and_expired_ones_do_not_count() {
        let f = fixture();
        let sender = "a@example.org";
        let cert = key_of(sender);
        assert!(
            Fixture::is_challenge(&f.offer(sender, &cert)),
            "none pending"
        );
        for i in 0..MAX_PENDING_PER_SENDER {
            f.store
                .pending_put(LIST, sender, &filler(i), "t", if i == 0 { 0 } else { 3600 })
                .unwrap();
        }
        let full = f.offer(sender, &cert);
        assert_quiet(&full, "pending challenges for this sender");
        // Another sender is not held up by this one.
        let other = "b@example.org";
        assert!(Fixture::is_challenge(&f.offer(other, &key_of(other))));
        // Renewing an offer already pending adds no row.
        f.store.pending_remove(LIST, sender, &filler(2)).unwrap();
        f.store
            .pending_put(LIST, sender, &cert.fingerprint().to_hex(), "t", 3600)
            .unwrap();
        assert!(Fixture::is_challenge(&f.offer(sender, &cert)), "renewal");
        f.store
            .pending_remove(LIST, sender, &cert.fingerprint().to_hex())
            .unwrap();
        f.store
            .pending_put(LIST, sender, &filler(2), "t", 3600)
            .unwrap();
        assert!(f.offer(sender, &cert).reply.is_none(), "full again");
        // The row put with no time to live expires within a second; then it no longer counts.
        std::thread::sleep(Duration::from_millis(1100));
        assert!(
            Fixture::is_challenge(&f.offer(sender, &cert)),
            "one expired"
        );
    }

    #[test]
    fn a_list_has_at_most_a_thousand_pending_offers() {
        let f = fixture();
        for i in 0..MAX_PENDING_PER_LIST {
            let sender = format!("s{i}@example.org");
            f.store
                .pending_put(LIST, &sender, &filler(i), "t", 3600)
                .unwrap();
        }
        let sender = "new@example.org";
        let full = f.offer(sender, &key_of(sender));
        assert_quiet(&full, "pending challenges on the list");
        f.store
            .pending_remove(LIST, "s0@example.org", &filler(0))
            .unwrap();
        assert!(Fixture::is_challenge(&f.offer(sender, &key_of(sender))));
    }

    #[test]
    fn an_oversized_offered_key_is_not_stored() {
        let f = fixture();
        let sender = "a@example.org";
        let cert = general_purpose(sender);
        // 500 more self-signed user IDs: the owner's own, so they are all kept.
        let aliases = (0..500).map(|i| format!("Alias {i} <{sender}>"));
        let big = with_self_signed_userids(cert, aliases).strip_secret_key_material();
        let kept = own_signatures_only(&big).unwrap();
        assert!(pgp::serialized_len(&kept) > MAX_OFFERED_CERT_BYTES);
        let out = f.offer(sender, &big);
        assert_quiet(&out, "not stored");
        assert!(
            Fixture::is_challenge(&f.offer(sender, &key_of(sender))),
            "a normal key is"
        );
    }

    #[test]
    fn a_request_writes_nothing_until_its_outcome_is_committed() {
        let f = fixture();
        let sender = "a@example.org";
        let first = f.process(sender, at(T0));
        assert!(first.reply.is_some(), "{}", first.summary);
        assert_eq!(f.store.rate_last(LIST, sender, "key").unwrap(), None);
        assert_eq!(f.store.list_replies_since(LIST, at(0)).unwrap(), 0);
        let again = f.process(sender, at(T0 + 1));
        assert!(again.reply.is_some(), "nothing recorded: {}", again.summary);

        first
            .commit(&f.store, &f.dir.path().join("keyrings"))
            .unwrap();
        assert_eq!(
            f.store.rate_last(LIST, sender, "key").unwrap(),
            Some(at(T0))
        );
        assert_eq!(f.store.list_replies_since(LIST, at(T0)).unwrap(), 1);
        let limited = f.process(sender, at(T0 + 3599));
        assert!(limited.reply.is_none() && limited.effects.is_empty());
        assert!(f.process(sender, at(T0 + 3600)).reply.is_some());
    }

    #[test]
    fn the_list_budget_counts_replies_to_every_sender_within_the_hour() {
        let f = fixture();
        for i in 0..LIST_REPLIES_PER_HOUR {
            f.store.list_reply_record(LIST, at(T0 + i)).unwrap();
        }
        let spent = f.process("new@example.org", at(T0 + 3600));
        assert!(spent.reply.is_none(), "{}", spent.summary);
        assert!(
            spent.effects.is_empty(),
            "a refused request records nothing"
        );
        // The oldest reply leaves the hour one second later.
        assert!(f.process("new@example.org", at(T0 + 3601)).reply.is_some());
    }

    #[test]
    fn only_a_changed_bound_key_makes_the_daemon_reload() {
        let f = fixture();
        let keyring_dir = f.dir.path().join("keyrings");
        let carol = general_purpose("carol@example.org");
        let commit = |effect: Effect| {
            let mut outcome = Outcome::quiet(&f.list, "test");
            outcome.effects.push(effect);
            outcome.commit(&f.store, &keyring_dir).unwrap();
            f.store.generation().unwrap()
        };
        let public = carol.clone().strip_secret_key_material();
        let g0 = f.store.generation().unwrap();
        assert_eq!(
            commit(Effect::StoreOfferedCert(public.clone())),
            g0,
            "offer"
        );
        assert_eq!(commit(Effect::RefreshBoundCert(public)), g0, "same key");
        // Carol's own new user ID: new self-signed material for the bound key.
        let extended = with_self_signed_userids(carol, ["Carol <carol@example.org>".to_string()])
            .strip_secret_key_material();
        let g1 = commit(Effect::RefreshBoundCert(extended.clone()));
        assert!(g1 > g0, "new material");
        assert_eq!(
            commit(Effect::RefreshBoundCert(extended)),
            g1,
            "then unchanged"
        );
    }

    #[test]
    fn a_member_publishes_one_certification_of_the_list_key() {
        let f = fixture();
        let bob = general_purpose("bob@example.org");
        let keyring_dir = f.dir.path().join("keyrings");
        let processor = Processor {
            list: &f.list,
            store: &f.store,
            keyring_dir: &keyring_dir,
            limits: &Limits::default(),
        };
        let first = certification(&bob, &f.list.secret, true);
        let offered = vec![first.clone()];
        assert_eq!(
            processor.certification_to_publish(offered.clone(), &bob),
            Some(first.clone())
        );
        let certified = f.list.secret.clone().insert_packets([first]).unwrap().0;
        let list = ListKeys::new(LIST.into(), Policy::default(), certified, Vec::new());
        let processor = Processor {
            list: &list,
            ..processor
        };
        let second = certification(&bob, &f.list.secret, true);
        assert_eq!(processor.certification_to_publish(vec![second], &bob), None);
    }
}
