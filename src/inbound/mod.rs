//! The inbound side, pure: a `Transaction` collects the recipients (which list, which of its
//! addresses) and `finish` turns the message into a `Verdict`. The milter and `process inbound`
//! both drive it; neither talks policy itself.

mod pipeline;
mod replay;
mod signature;

use crate::address::{self, ListAddress};
use crate::config::{Action, InboundEnvelopeSender, Limits, OtherRecipients};
use crate::keys::{Keyring, ListKeys};
use crate::message::Rewrite;
use crate::refusal::{Internal, RcptOutcome, Refusal};
use std::sync::Arc;
use std::time::SystemTime;

pub use pipeline::Rules;
pub use replay::{
    emitted_message_ids, message_id_key, replay_retention, Peeking, Recording, ReplayLedger,
};

/// Headers listcrypt itself sets toward Mailman: incoming copies are always removed, so a
/// poster cannot forge a verification result. Also Mailman's marks of an accepted post, which
/// Mailman adds itself: forged on owner mail they would put it into the encrypted archive.
pub const OWN_HEADERS: &[&str] = &[
    "X-Listcrypt-Hold",
    "X-Listcrypt-Signer",
    "X-Mailman-Rule-Hits",
    "X-Mailman-Rule-Misses",
];

/// What an inbound recipient is, read as Postfix routes it and Mailman files it.
pub enum Recipient {
    /// One of a managed list's addresses.
    List(Arc<ListKeys>, ListAddress),
    /// No list's address, and safe to pass as non-list mail.
    Other,
    /// In a list's domain (or routed there) but no list address: refused, since Postfix might
    /// still hand it to Mailman.
    Refused,
}

/// Maps a recipient, as the MTA gave it, to what it is for listcrypt (the fail-closed rule of
/// `list_domain_other_recipients`).
pub fn lookup(keyring: &Keyring, rcpt: &str) -> Recipient {
    let reject = keyring.other_recipients == OtherRecipients::Reject;
    let Some(addr) = address::normalize(rcpt) else {
        // RFC 5321 4.5.1: `<postmaster>` without a domain must be accepted. Anything else that
        // does not parse could still be qualified into a list domain by Postfix.
        let bare = rcpt.trim().trim_start_matches('<').trim_end_matches('>');
        return match bare.eq_ignore_ascii_case("postmaster") || !reject || keyring.lists.is_empty()
        {
            true => Recipient::Other,
            false => Recipient::Refused,
        };
    };
    if let Some((list, kind)) = address::classify(&addr, keyring, &keyring.address) {
        return Recipient::List(list, kind);
    }
    let refused = match reject {
        true => address::is_in_list_domain(&addr, keyring),
        // Ordinary mailboxes may share the list domain; a routed form of a list address may not.
        false => address::reaches_list(&addr, keyring, &keyring.address),
    };
    match refused {
        true => Recipient::Refused,
        false => Recipient::Other,
    }
}

/// What the recipients of a transaction add up to.
#[derive(Clone)]
pub enum Target {
    /// No recipient yet.
    Nobody,
    /// Only recipients that are no managed list's: passed untouched.
    Unmanaged,
    /// One list: the post rules when its posting address is among the recipients, the command
    /// rules when one of its command addresses is; else (owner, bounces) it passes as it is.
    List {
        list: Arc<ListKeys>,
        post: bool,
        command: bool,
    },
    /// A list's key address: answered by listcrypt, never passed on.
    KeyAddress(Arc<ListKeys>),
}

/// One inbound SMTP transaction.
pub struct Transaction {
    keyring: Arc<Keyring>,
    sender: String,
    target: Target,
}

impl Transaction {
    pub fn new(keyring: Arc<Keyring>, sender: &str) -> Transaction {
        Transaction {
            keyring,
            sender: sender.to_string(),
            target: Target::Nobody,
        }
    }

    pub fn sender(&self) -> &str {
        &self.sender
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Decides one recipient. Decrypted text must reach nobody but one list, and the key
    /// address is answered by listcrypt alone: anything else is split off with `452 4.5.3`.
    pub fn rcpt(&mut self, rcpt: &str) -> RcptOutcome {
        let found = match lookup(&self.keyring, rcpt) {
            Recipient::List(list, kind) => Some((list, kind)),
            Recipient::Other => None,
            Recipient::Refused => return RcptOutcome::Refuse(Refusal::NotAListAddress),
        };
        // A list whose key could not be opened: its mail waits, it never passes.
        if found.as_ref().is_some_and(|(l, _)| l.locked().is_some()) {
            return RcptOutcome::Refuse(Internal::State.into());
        }
        let next = match (&self.target, found) {
            (Target::Nobody, Some((list, ListAddress::Key))) => Target::KeyAddress(list),
            (_, Some((_, ListAddress::Key))) | (Target::KeyAddress(_), _) => {
                return RcptOutcome::Refuse(Refusal::MixedTransaction)
            }
            (Target::Nobody, Some((list, kind))) => Target::List {
                list,
                post: kind.enforced(),
                command: kind.is_command(),
            },
            (Target::Nobody | Target::Unmanaged, None) => Target::Unmanaged,
            (
                Target::List {
                    list,
                    post,
                    command,
                },
                Some((other, kind)),
            ) if other.address == list.address => Target::List {
                list: list.clone(),
                post: *post || kind.enforced(),
                command: *command || kind.is_command(),
            },
            _ => return RcptOutcome::Refuse(Refusal::MixedTransaction),
        };
        self.target = next;
        RcptOutcome::Accept
    }

    /// Whether `finish` reads the body: owner mail and bounces pass as they are.
    pub fn needs_body(&self) -> bool {
        matches!(self.target, Target::List { post, command, .. } if post || command)
    }

    /// The envelope sender Mailman gets with `verdict` in place of the author's, if any: the
    /// list's bounces address for a post or command that goes on, so that a DSN the MTA
    /// writes about it (quoting what listcrypt decrypted) goes back into Mailman.
    pub fn envelope_sender(
        &self,
        setting: InboundEnvelopeSender,
        verdict: &Verdict,
    ) -> Option<String> {
        let Target::List {
            list,
            post,
            command,
        } = &self.target
        else {
            return None;
        };
        let goes_on = matches!(verdict, Verdict::Deliver { .. }) && (*post || *command);
        match (setting, goes_on) {
            (InboundEnvelopeSender::ListBounces, true) => Some(bounces_address(&list.address)),
            _ => None,
        }
    }

    /// The verdict on the whole message, for a transaction to one list.
    pub fn finish(
        &self,
        message: &[u8],
        limits: &Limits,
        replay: &dyn ReplayLedger,
        now: SystemTime,
    ) -> Verdict {
        self.finish_until(
            message,
            limits,
            replay,
            now,
            &crate::deadline::Deadline::none(),
        )
    }

    /// [`Transaction::finish`] that tempfails (timeout) once `deadline` passed, checked
    /// between the pipeline's phases; a timed-out message records no replay.
    pub fn finish_until(
        &self,
        message: &[u8],
        limits: &Limits,
        replay: &dyn ReplayLedger,
        now: SystemTime,
        deadline: &crate::deadline::Deadline,
    ) -> Verdict {
        let verdict = self.decide_until(message, limits, now, deadline);
        self.record(verdict, message, limits, replay, now)
    }

    /// The verdict before the replay rule: decryption, verification and policy, CPU work
    /// only (no store access). [`Transaction::record`] applies the replay rule to it.
    pub fn decide_until(
        &self,
        message: &[u8],
        limits: &Limits,
        now: SystemTime,
        deadline: &crate::deadline::Deadline,
    ) -> Verdict {
        let Target::List {
            list,
            post,
            command,
        } = &self.target
        else {
            return Verdict::Tempfail(Internal::Failure.into());
        };
        let rules = match (post, command) {
            (true, _) => Rules::Post,
            (false, true) => Rules::Command,
            (false, false) => return pass_unchanged(),
        };
        let env = Envelope {
            sender: &self.sender,
        };
        // The crypto permit covers decryption and verification only: the replay record's
        // durable write waits on the disk, and other posts' crypto can use the core.
        let verdict = crate::crypto_pool::global()
            .run(|| pipeline::run_until(&env, message, list, limits, rules, now, deadline));
        if deadline.expired() {
            // Our waiter answered 451 already: the sender retries, so record nothing.
            return Verdict::Tempfail(Internal::Timeout.into());
        }
        verdict
    }

    /// The replay rule applied to [`Transaction::decide_until`]'s verdict: an accepted post's
    /// signature is claimed in the record (a durable write); anything else passes unchanged.
    pub fn record(
        &self,
        verdict: Verdict,
        message: &[u8],
        limits: &Limits,
        replay: &dyn ReplayLedger,
        now: SystemTime,
    ) -> Verdict {
        match &self.target {
            Target::List { list, .. } => replay::apply(verdict, list, limits, replay, message, now),
            _ => verdict,
        }
    }
}

/// `LIST-bounces@DOMAIN`, which Mailman's LMTP takes for the list's bounce processor.
fn bounces_address(list: &str) -> String {
    match list.rsplit_once('@') {
        Some((local, domain)) => format!("{local}-bounces@{domain}"),
        None => format!("{list}-bounces"),
    }
}

/// Owner mail and bounces reach Mailman as they are, minus any forged copy of the header
/// fields listcrypt sets.
fn pass_unchanged() -> Verdict {
    Verdict::Deliver {
        rewrite: strip_own_headers(),
        hold: None,
        summary: "owner or bounce mail passed".into(),
        replay: None,
        signer: None,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Hand Mailman the rewritten message. `hold` is set when the policy said hold.
    Deliver {
        rewrite: Rewrite,
        hold: Option<String>,
        summary: String,
        /// Digest of the accepted author signature, for the replay record.
        replay: Option<[u8; 32]>,
        /// The member whose bound key made the accepted signature (`None` when no good
        /// signature was found): only they may refresh that key (`crate::refresh`).
        signer: Option<Signer>,
    },
    Reject(Refusal),
    Discard(String),
    Tempfail(Refusal),
}

impl Verdict {
    /// The first line `process inbound` prints for a message that is not processed.
    pub fn decision_line(&self) -> String {
        match self {
            Verdict::Deliver { hold: Some(r), .. } => format!("hold {r}"),
            Verdict::Deliver { .. } => "accept".into(),
            Verdict::Reject(r) => format!("reject {r}"),
            Verdict::Discard(r) => format!("discard {r}"),
            Verdict::Tempfail(r) => format!("tempfail {r}"),
        }
    }
}

/// A verified author: the bound address and the bound key's primary fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signer {
    pub address: String,
    pub fingerprint: crate::pgp::Fingerprint,
}

pub struct Envelope<'a> {
    pub sender: &'a str,
}

/// Applies a policy action to a finding. `refusal` is the reply when the action is reject.
fn act(
    action: Action,
    refusal: Refusal,
    deliver: impl FnOnce(Option<String>) -> Verdict,
) -> Verdict {
    match action {
        Action::Reject => Verdict::Reject(refusal),
        Action::Discard => Verdict::Discard(refusal.reply().reason),
        Action::Hold => deliver(Some(refusal.reply().reason)),
        Action::Accept => deliver(None),
    }
}

/// The rewrite for mail that passes to Mailman as it is (owner mail, bounces): only forged
/// copies of listcrypt's own header fields go.
pub fn strip_own_headers() -> Rewrite {
    Rewrite {
        remove: OWN_HEADERS.iter().map(|s| s.to_string()).collect(),
        ..Rewrite::default()
    }
}

/// Runs the post rules on one message, without a replay record: for benchmarks and fuzzing.
pub fn process(env: &Envelope<'_>, message: &[u8], list: &ListKeys, limits: &Limits) -> Verdict {
    pipeline::run(env, message, list, limits, Rules::Post, SystemTime::now())
}
