//! Every refusal listcrypt gives, and the one SMTP reply each maps to: DESIGN.md's decision
//! table in one place. Pipelines return a `Refusal`; only `reply()` chooses codes and text.

use crate::config::MissingKeyAction;
use crate::message::Reply;
use crate::mime::MimeError;

/// What a transaction says to one RCPT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RcptOutcome {
    Accept,
    Refuse(Refusal),
}

/// Why a message or a recipient is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    // Not encrypted, not signed, not a member: 550 5.7.1.
    NotEncrypted,
    CommandNotEncrypted,
    InlinePgp,
    Unsigned,
    UnknownSigner,
    SignerNotBound,
    NotIntendedForList,
    /// The signature carries no Intended Recipient, with `require_intended_recipient`.
    NoIntendedRecipient,
    /// The post wraps a multipart/signed whose signature is not the poster's.
    WrapsOtherSignature,
    /// The null envelope sender cannot be bound to a signer.
    NullSender,
    Duplicate,
    /// A duplicate of a post not yet seen with Mailman: maybe the sender's retry of a copy
    /// lost after listcrypt's yes, so 451 4.7.1 until the record is final or dropped.
    DuplicatePending,
    /// Outbound mail of no managed list, with `unmanaged_outbound = reject`.
    NotListMail,
    // Cannot decrypt to the list key; signer key expired or revoked: 550 5.7.5.
    NotForListKey,
    SignerExpired,
    SignerRevoked,
    // Weak algorithms: 550 5.7.6.
    WeakCipher,
    WeakSignature,
    // Integrity and signature failures: 550 5.7.7.
    NoIntegrity,
    IntegrityFailed,
    BadSignature,
    SignatureTime,
    // Malformed structure: 554 5.6.0.
    MalformedMime(&'static str),
    MalformedDecryptedMime(&'static str),
    DecryptedNotMime,
    /// A header field with NUL, a bare CR or LF, or another control character.
    MalformedHeader,
    MalformedInlinePgp,
    MalformedOpenPgp,
    // Over a limit: 552 5.3.4.
    MessageTooLarge,
    MimeTooDeep,
    TooManyParts,
    TooManyPackets,
    PlaintextTooLarge,
    /// The messages held by all sessions at once would pass `limits.max_inflight_bytes`.
    OverMemoryBudget,
    // At RCPT.
    MixedTransaction,
    /// In a domain of an encrypted list, but no address of a list: 550 5.1.1.
    NotAListAddress,
    RecipientKey(KeyRefusal, MissingKeyAction),
    // Ours: 451 4.3.0, one text per cause.
    Internal(Internal),
}

/// Why an outbound recipient has no usable key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRefusal {
    NotBound,
    Expired,
    Revoked,
    Unusable,
}

/// Our own failures: the MTA keeps the mail and retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Internal {
    /// Keys, bindings or the state store could not be read or written.
    State,
    /// A bug or a broken invariant (a milter callback out of order, a failed milter action).
    Failure,
    /// Our own `message_timeout` fired.
    Timeout,
}

impl Refusal {
    /// The SMTP reply: the same decision always gets the same reply.
    #[allow(clippy::too_many_lines)] // the decision table, one arm per refusal, reads best whole
    pub fn reply(self) -> Reply {
        use Refusal::*;
        fn r(code: &'static str, xcode: &'static str, reason: impl Into<String>) -> Reply {
            Reply::new(code, xcode, reason)
        }
        match self {
            NotEncrypted => r("550", "5.7.1", "post must be encrypted to the list key"),
            CommandNotEncrypted => r("550", "5.7.1", "commands to this list must be encrypted"),
            InlinePgp => r("550", "5.7.1", "inline PGP is not accepted, use PGP/MIME"),
            Unsigned => r("550", "5.7.1", "post must be signed inside the encryption"),
            UnknownSigner => r("550", "5.7.1", "signer is not a member of this list"),
            SignerNotBound => r(
                "550",
                "5.7.1",
                "signer key is not bound to the sender address on this list",
            ),
            NotIntendedForList => r("550", "5.7.1", "signature is intended for other recipients"),
            NoIntendedRecipient => r(
                "550",
                "5.7.1",
                "signature does not name its intended recipient",
            ),
            WrapsOtherSignature => r("550", "5.7.1", "post wraps a signature by someone else"),
            NullSender => r(
                "550",
                "5.7.1",
                "posts need a sender address bound to the signer",
            ),
            Duplicate => r(
                "550",
                "5.7.1",
                "duplicate post (this signature was already accepted)",
            ),
            DuplicatePending => r(
                "451",
                "4.7.1",
                "duplicate of a post not yet distributed, please retry later",
            ),
            NotListMail => r(
                "550",
                "5.7.1",
                "this listener only carries mail of encrypted lists",
            ),
            NotForListKey => r("550", "5.7.5", "post must be encrypted to the list key"),
            SignerExpired => r("550", "5.7.5", "signer key has expired"),
            SignerRevoked => r("550", "5.7.5", "signer key is revoked"),
            WeakCipher => r("550", "5.7.6", "weak or obsolete OpenPGP algorithm"),
            WeakSignature => r("550", "5.7.6", "signature uses a weak algorithm"),
            NoIntegrity => r("550", "5.7.7", "encrypted data is not integrity protected"),
            IntegrityFailed => r(
                "550",
                "5.7.7",
                "integrity check of the encrypted data failed",
            ),
            BadSignature => r("550", "5.7.7", "bad signature"),
            SignatureTime => r(
                "550",
                "5.7.7",
                "signature time is outside the accepted window",
            ),
            MalformedMime(why) => r("554", "5.6.0", format!("malformed MIME: {why}")),
            MalformedDecryptedMime(why) => r(
                "554",
                "5.6.0",
                format!("malformed MIME in the decrypted post: {why}"),
            ),
            DecryptedNotMime => r("554", "5.6.0", "decrypted content is not a MIME entity"),
            MalformedHeader => r(
                "554",
                "5.6.0",
                "header field holds a control character or a bare CR or LF",
            ),
            MalformedInlinePgp => r("554", "5.6.0", "malformed inline PGP message"),
            MalformedOpenPgp => r("554", "5.6.0", "malformed OpenPGP message"),
            MessageTooLarge => r("552", "5.3.4", "message exceeds the size limit"),
            MimeTooDeep => r("552", "5.3.4", "MIME nesting exceeds the limit"),
            TooManyParts => r("552", "5.3.4", "too many MIME parts"),
            TooManyPackets => r("552", "5.3.4", "too many OpenPGP packets"),
            PlaintextTooLarge => r("552", "5.3.4", "decrypted message exceeds the size limit"),
            OverMemoryBudget => r(
                "452",
                "4.3.1",
                "too much mail in progress, please retry later",
            ),
            MixedTransaction => r("452", "4.5.3", "one list per transaction, please retry"),
            NotAListAddress => r("550", "5.1.1", "no such address of an encrypted list"),
            RecipientKey(why, action) => {
                let reason = match why {
                    KeyRefusal::NotBound => "recipient has no key bound on this encrypted list",
                    KeyRefusal::Expired => "recipient key has expired",
                    KeyRefusal::Revoked => "recipient key is revoked",
                    KeyRefusal::Unusable => "recipient key is not usable for encryption",
                };
                match action {
                    MissingKeyAction::Reject => r("550", "5.7.1", reason),
                    MissingKeyAction::Tempfail => r("451", "4.7.1", reason),
                }
            }
            Internal(cause) => r(
                "451",
                "4.3.0",
                match cause {
                    self::Internal::State => "keys or state unavailable, please retry",
                    self::Internal::Failure => "temporary failure, please retry",
                    self::Internal::Timeout => "processing timed out, please retry",
                },
            ),
        }
    }

    /// A MIME structure or limit problem of the (outer) message.
    pub fn mime(e: &MimeError) -> Refusal {
        match e {
            MimeError::Malformed(why) => Refusal::MalformedMime(why),
            MimeError::TooDeep(_) => Refusal::MimeTooDeep,
            MimeError::TooManyParts(_) => Refusal::TooManyParts,
        }
    }

    /// A MIME problem found inside the decrypted post.
    pub fn decrypted_mime(e: &MimeError) -> Refusal {
        match e {
            MimeError::Malformed(why) => Refusal::MalformedDecryptedMime(why),
            other => Refusal::mime(other),
        }
    }
}

impl From<Internal> for Refusal {
    fn from(cause: Internal) -> Refusal {
        Refusal::Internal(cause)
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.reply().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// DESIGN.md's decision table: codes per class of decision.
    #[test]
    fn replies_follow_the_decision_table() {
        let cases: &[(Refusal, &str, &str)] = &[
            (Refusal::NotEncrypted, "550", "5.7.1"),
            (Refusal::Unsigned, "550", "5.7.1"),
            (Refusal::UnknownSigner, "550", "5.7.1"),
            (Refusal::Duplicate, "550", "5.7.1"),
            (Refusal::DuplicatePending, "451", "4.7.1"),
            (Refusal::NotForListKey, "550", "5.7.5"),
            (Refusal::SignerExpired, "550", "5.7.5"),
            (Refusal::SignerRevoked, "550", "5.7.5"),
            (Refusal::WeakCipher, "550", "5.7.6"),
            (Refusal::WeakSignature, "550", "5.7.6"),
            (Refusal::NoIntegrity, "550", "5.7.7"),
            (Refusal::IntegrityFailed, "550", "5.7.7"),
            (Refusal::BadSignature, "550", "5.7.7"),
            (Refusal::MalformedOpenPgp, "554", "5.6.0"),
            (Refusal::MalformedMime("x"), "554", "5.6.0"),
            (Refusal::MalformedHeader, "554", "5.6.0"),
            (Refusal::WrapsOtherSignature, "550", "5.7.1"),
            (Refusal::NullSender, "550", "5.7.1"),
            (Refusal::NoIntendedRecipient, "550", "5.7.1"),
            (Refusal::MessageTooLarge, "552", "5.3.4"),
            (Refusal::TooManyPackets, "552", "5.3.4"),
            (Refusal::PlaintextTooLarge, "552", "5.3.4"),
            (Refusal::MixedTransaction, "452", "4.5.3"),
            (Refusal::NotAListAddress, "550", "5.1.1"),
            (Refusal::OverMemoryBudget, "452", "4.3.1"),
            (
                Refusal::RecipientKey(KeyRefusal::NotBound, MissingKeyAction::Reject),
                "550",
                "5.7.1",
            ),
            (
                Refusal::RecipientKey(KeyRefusal::Expired, MissingKeyAction::Tempfail),
                "451",
                "4.7.1",
            ),
            (Refusal::Internal(Internal::State), "451", "4.3.0"),
            (Refusal::Internal(Internal::Timeout), "451", "4.3.0"),
        ];
        for (refusal, code, xcode) in cases {
            let r = refusal.reply();
            assert_eq!((r.code, r.xcode), (*code, *xcode), "{refusal:?}");
        }
    }

    #[test]
    fn each_internal_cause_has_its_own_text() {
        let texts: std::collections::HashSet<String> =
            [Internal::State, Internal::Failure, Internal::Timeout]
                .into_iter()
                .map(|c| Refusal::Internal(c).reply().reason)
                .collect();
        assert_eq!(texts.len(), 3);
    }
}
