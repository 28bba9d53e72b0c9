//! The outbound side, pure: a `Transaction` identifies the list from the envelope sender,
//! decides each recipient by key, and `finish` turns the message into a `Plan`: batches of
//! recipients, each with its encrypted copy. The milter and `process outbound` both drive it.

mod batch;
mod copy;

use crate::address;
use crate::keys::{normalize_address, KeyProblem, Keyring, ListKeys};
use crate::message::Rewrite;
use crate::pgp;
use crate::refusal::{KeyRefusal, RcptOutcome, Refusal};
use std::sync::Arc;

pub use batch::{encrypt_batches, encrypt_batches_until, plan_batches};
pub use copy::{
    encrypt_message, padme, prepare, rfc5322_date_utc, Budget, Prepared, MAX_FROM_VERIFICATIONS,
};

/// Identifies the list from the envelope sender alone (`LIST-bounces@D`, its VERP forms per
/// `verp_format`, or another address of the list): headers such as List-Id can be written by
/// anyone.
pub fn list_for_sender(keyring: &Keyring, sender: &str) -> Option<Arc<ListKeys>> {
    let sender = address::normalize(sender)?;
    address::classify_sender(&sender, keyring, &keyring.address).map(|(list, _)| list)
}

/// Which kind of recipients a transaction carries (they are never mixed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Outside recipients with usable keys: encrypted.
    Encrypt,
    /// The list's own addresses (Mailman talking to itself): passed untouched.
    Loopback,
}

/// One outbound SMTP transaction of one list.
pub struct Transaction {
    list: Arc<ListKeys>,
    keyring: Arc<Keyring>,
    sender: String,
    route: Option<Route>,
    /// As given at RCPT: Postfix's delete_recipient matches them verbatim.
    recipients: Vec<String>,
    /// Key encapsulations made while the MTA sends the rest of the envelope.
    prekeys: pgp::Prekeys,
}

impl Transaction {
    /// `None` when the sender is no managed list's bounces address.
    pub fn new(keyring: Arc<Keyring>, sender: &str) -> Option<Transaction> {
        let list = list_for_sender(&keyring, sender)?;
        Some(Transaction::for_list(keyring, list, sender))
    }

    /// A transaction of `list` whatever the sender says (`process outbound --list`).
    pub fn for_list(keyring: Arc<Keyring>, list: Arc<ListKeys>, sender: &str) -> Transaction {
        Transaction {
            list,
            keyring,
            sender: sender.to_string(),
            route: None,
            recipients: Vec::new(),
            prekeys: pgp::Prekeys::new(),
        }
    }

    pub fn list(&self) -> &Arc<ListKeys> {
        &self.list
    }

    pub fn sender(&self) -> &str {
        &self.sender
    }

    pub fn route(&self) -> Option<Route> {
        self.route
    }

    pub fn recipients(&self) -> &[String] {
        &self.recipients
    }

    /// Decides one recipient, `raw` as the MTA gave it (angle brackets included).
    pub fn rcpt(&mut self, raw: &str) -> RcptOutcome {
        // A list whose key could not be opened signs nothing: its mail waits.
        if self.list.locked().is_some() {
            return RcptOutcome::Refuse(crate::refusal::Internal::State.into());
        }
        let addr = normalize_address(raw);
        // Only an address Mailman files under this very list loops back in clear; any other
        // spelling, routed form or list goes the encrypted way (and needs a bound key).
        let own = address::normalize(raw)
            .and_then(|a| address::classify(&a, &*self.keyring, &self.keyring.address))
            .is_some_and(|(l, _)| l.address == self.list.address);
        let route = match own {
            true => Route::Loopback,
            false => Route::Encrypt,
        };
        if self.route.is_some_and(|r| r != route) {
            return RcptOutcome::Refuse(Refusal::MixedTransaction);
        }
        if route == Route::Encrypt {
            match usable_key(&self.list, &addr) {
                Ok(keys) => self.prekeys.offer(keys),
                Err(refusal) => return RcptOutcome::Refuse(refusal),
            }
        }
        self.route = Some(route);
        self.recipients.push(raw.to_string());
        RcptOutcome::Accept
    }

    /// The plan for the recipients not `already` served by an earlier attempt (normalised
    /// addresses from the journal): batches and their encrypted copies.
    pub fn finish(&self, message: &[u8], already: &[String]) -> Result<Plan, PlanError> {
        self.finish_until(message, already, &crate::deadline::Deadline::none())
    }

    /// [`Transaction::finish`] that stops with [`PlanError::Timeout`] once `deadline` passed.
    pub fn finish_until(
        &self,
        message: &[u8],
        already: &[String],
        deadline: &crate::deadline::Deadline,
    ) -> Result<Plan, PlanError> {
        let (done, todo): (Vec<String>, Vec<String>) = self
            .recipients
            .iter()
            .cloned()
            .partition(|r| already.contains(&normalize_address(r)));
        if todo.is_empty() {
            return Ok(Plan {
                done,
                batches: Vec::new(),
            });
        }
        let recipients = plan_batches(&self.list, &todo);
        // What the envelope's round trips left undone is made now, on every free core.
        self.prekeys.finish();
        let rewrites = batch::encrypt_batches_within(
            message,
            &self.list,
            &recipients,
            &mut Budget::new(),
            deadline,
            Some(&self.prekeys),
        )?;
        let batches = recipients
            .into_iter()
            .zip(rewrites)
            .map(|(recipients, rewrite)| Batch {
                recipients,
                rewrite,
            })
            .collect();
        Ok(Plan { done, batches })
    }
}

/// Whether an outside recipient has a usable bound key, or why it is refused at RCPT.
/// `addr`'s usable encryption keys, or the refusal.
fn usable_key<'a>(list: &'a ListKeys, addr: &str) -> Result<&'a [pgp::EncryptionKey], Refusal> {
    let refuse = |why| Err(Refusal::RecipientKey(why, list.policy.missing_key_action));
    // Worked out once per keyring snapshot: no certificate validation per RCPT.
    match list.recipient(addr) {
        None => refuse(KeyRefusal::NotBound),
        Some((_, Ok(keys))) if keys.usable() => Ok(&keys.keys),
        Some((_, Ok(_)) | (_, Err(KeyProblem::Expired(_)))) => refuse(KeyRefusal::Expired),
        Some((_, Err(KeyProblem::Revoked(_)))) => refuse(KeyRefusal::Revoked),
        Some((_, Err(_))) => refuse(KeyRefusal::Unusable),
    }
}

/// What end of message does with an outbound list transaction.
pub struct Plan {
    /// Recipients an earlier attempt already served (from the journal): removed, not sent.
    pub done: Vec<String>,
    /// Batch 1 stays in the transaction; the others are reinjected.
    pub batches: Vec<Batch>,
}

/// Recipients sharing one encrypted copy (one session key).
pub struct Batch {
    pub recipients: Vec<String>,
    pub rewrite: Rewrite,
}

/// Why no encrypted copy could be made: an internal failure (451), never a plaintext copy.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("{0}")]
    Encrypt(pgp::EncryptError),
    #[error("{0}")]
    Malformed(&'static str),
    #[error("no recipients")]
    NoRecipients,
    #[error("processing timed out")]
    Timeout,
}
