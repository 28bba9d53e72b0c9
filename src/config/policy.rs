//! Per-list policy files: `<policy_dir>/<list address>.toml`. Names follow mailman-pgp's.

use super::{syntax_error, ConfigError};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::Path;

/// What to do with a post that fails (or passes) one rule.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Reject,
    Discard,
    Hold,
    Accept,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Reject => "reject",
            Action::Discard => "discard",
            Action::Hold => "hold",
            Action::Accept => "accept",
        })
    }
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MissingKeyAction {
    Reject,
    Tempfail,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum HeaderProtection {
    HcpBaseline,
    HcpShy,
    HcpNoConfidentiality,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Padding {
    Padme,
    None,
}

/// Where every distributed post is archived, encrypted to the list's archive key.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Archive {
    Off,
    /// Appended to `<state_dir>/archive/<list>.mbox`.
    Mbox,
    /// Sent to `archive_address` through the reinjection listener.
    Address,
}

/// Client fingerprints and members' own Autocrypt headers: nothing Mailman needs, and they
/// would reach every member (and the wire, outside the encryption).
pub const DEFAULT_STRIP: &[&str] = &[
    "User-Agent",
    "X-Mailer",
    "X-Originating-IP",
    "X-Enigmail-Version",
    "Autocrypt",
    "Autocrypt-Gossip",
];

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    pub nonencrypted_action: Action,
    pub unsigned_action: Action,
    pub unknown_signer_action: Action,
    pub invalid_signature_action: Action,
    pub expired_signature_action: Action,
    pub revoked_signature_action: Action,
    pub inline_pgp_action: Action,
    pub duplicate_action: Action,
    /// Unencrypted mail to `-request`, `-join`, `-leave`, `-confirm`.
    pub command_nonencrypted_action: Action,
    /// A signature without an Intended Recipient subpacket (GnuPG 2.2 writes none) gets
    /// `invalid_signature_action`.
    pub require_intended_recipient: bool,
    /// Header fields removed from what Mailman receives (they would leak on the way out).
    pub strip_headers: Vec<String>,
    pub sign_outgoing: bool,
    pub hide_recipient_key_ids: bool,
    pub batch_size: u32,
    pub missing_key_action: MissingKeyAction,
    pub header_protection: HeaderProtection,
    pub padding: Padding,
    pub autocrypt: bool,
    /// Local-part suffix of listcrypt's key address: `LIST-<key_suffix>@DOMAIN`.
    pub key_suffix: String,
    pub archive: Archive,
    /// Where `archive = "address"` sends the encrypted posts.
    pub archive_address: Option<String>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            nonencrypted_action: Action::Reject,
            unsigned_action: Action::Reject,
            unknown_signer_action: Action::Reject,
            invalid_signature_action: Action::Reject,
            expired_signature_action: Action::Reject,
            revoked_signature_action: Action::Reject,
            inline_pgp_action: Action::Reject,
            // A sending MTA's benign retry of an accepted post must not bounce.
            duplicate_action: Action::Discard,
            // Subscription requests come from people without a bound key yet.
            command_nonencrypted_action: Action::Accept,
            // GnuPG 2.2 writes no Intended Recipient; such signatures are replay-checked
            // across all lists of the host instead.
            require_intended_recipient: false,
            strip_headers: DEFAULT_STRIP.iter().map(|s| s.to_string()).collect(),
            sign_outgoing: true,
            hide_recipient_key_ids: true,
            // GnuPG's trial decryption grows with a member's position among wildcard
            // PKESKs (reference/openpgp.md): 25–50 keeps the last member under ~0.1 s.
            batch_size: 50,
            missing_key_action: MissingKeyAction::Reject,
            header_protection: HeaderProtection::HcpBaseline,
            padding: Padding::Padme,
            autocrypt: true,
            key_suffix: "key".into(),
            archive: Archive::Off,
            archive_address: None,
        }
    }
}

impl Policy {
    pub fn load(path: &Path) -> Result<Policy, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: shown.clone(),
            source,
        })?;
        Policy::parse(&shown, &text)
    }

    pub fn parse(shown: &str, text: &str) -> Result<Policy, ConfigError> {
        let policy: Policy = toml::from_str(text).map_err(|e| syntax_error(shown, text, &e))?;
        let reserved = [
            "request",
            "join",
            "subscribe",
            "leave",
            "unsubscribe",
            "confirm",
            "owner",
            "bounces",
        ];
        if policy.key_suffix.is_empty()
            || reserved.contains(&policy.key_suffix.as_str())
            || !policy.key_suffix.chars().all(|c| c.is_ascii_alphanumeric())
        {
            return Err(ConfigError::Invalid {
                path: shown.to_string(),
                message: format!(
                    "key_suffix {:?} must be letters/digits and not one of Mailman's suffixes",
                    policy.key_suffix
                ),
            });
        }
        if !(1..=1000).contains(&policy.batch_size) {
            return Err(ConfigError::Invalid {
                path: shown.to_string(),
                message: format!("batch_size {} is outside 1..1000", policy.batch_size),
            });
        }
        check_archive(shown, &policy)?;
        Ok(policy)
    }

    /// The policy file `list create` writes: every key with its default, commented.
    pub fn default_file_text(list: &str) -> String {
        format!(
            r#"# listcrypt policy for {list}
# Actions: reject | discard | hold | accept. "hold" delivers to Mailman with an
# X-Listcrypt-Hold header that the list's header_matches rule holds for moderation.

nonencrypted_action = "reject"
unsigned_action = "reject"
unknown_signer_action = "reject"
invalid_signature_action = "reject"
expired_signature_action = "reject"
revoked_signature_action = "reject"
inline_pgp_action = "reject"
# A sending MTA's retry of an accepted post is discarded, not bounced.
duplicate_action = "discard"
# Unencrypted mail to LIST-request/-join/-leave/-confirm (encrypted commands are decrypted).
command_nonencrypted_action = "accept"
# true: a signature without an Intended Recipient subpacket (GnuPG 2.2 writes none) gets
# invalid_signature_action. Such a signature, once accepted on any list of this host, is a
# replay on every list.
require_intended_recipient = false
# Header fields removed before Mailman sees a post.
strip_headers = ["User-Agent", "X-Mailer", "X-Originating-IP", "X-Enigmail-Version", "Autocrypt", "Autocrypt-Gossip"]

sign_outgoing = true
hide_recipient_key_ids = true
batch_size = 50
# reject: 550 at RCPT for a member without a usable key; tempfail: 451 (Mailman retries).
missing_key_action = "reject"
header_protection = "hcp_baseline"
padding = "padme"
autocrypt = true
# Key requests and bindings by mail go to LIST-<key_suffix>@DOMAIN (answered by listcrypt).
key_suffix = "key"
# Every post distributed is also encrypted to the list's archive key (listcrypt list
# archive-key import) and kept: off | mbox (<state_dir>/archive/LIST.mbox) | address (sent to
# archive_address, e.g. archive_address = "enc-archive@archive.example.org").
archive = "off"
"#
        )
    }
}

/// `address` needs an address to send to, and an address is only for `address`.
fn check_archive(shown: &str, policy: &Policy) -> Result<(), ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        path: shown.to_string(),
        message,
    };
    match (&policy.archive, &policy.archive_address) {
        (Archive::Address, None) => Err(invalid(
            "archive = \"address\" needs archive_address".into(),
        )),
        (Archive::Address, Some(a)) if !crate::keys::valid_address(a) => Err(invalid(format!(
            "archive_address {a:?} is not an email address"
        ))),
        (Archive::Off | Archive::Mbox, Some(_)) => Err(invalid(
            "archive_address is set but archive is not \"address\"".into(),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_file_equals_defaults() {
        let p = Policy::parse("x", &Policy::default_file_text("a@b")).unwrap();
        assert_eq!(p, Policy::default());
    }

    #[test]
    fn bad_action_has_position() {
        let e = Policy::parse(
            "l.toml",
            "unsigned_action = \"reject\"\nnonencrypted_action = \"maybe\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("l.toml:2:"), "{e}");
    }

    #[test]
    fn batch_size_bounds() {
        assert!(Policy::parse("x", "batch_size = 0").is_err());
        assert!(Policy::parse("x", "batch_size = 1001").is_err());
        assert!(Policy::parse("x", "batch_size = 1000").is_ok());
    }

    #[test]
    fn archive_keys() {
        let p = Policy::parse("x", "archive = \"mbox\"").unwrap();
        assert_eq!(p.archive, Archive::Mbox);
        assert_eq!(Policy::default().archive, Archive::Off);
        let e = Policy::parse("x", "archive = \"address\"").unwrap_err();
        assert!(e.to_string().contains("archive_address"), "{e}");
        let e = Policy::parse("x", "archive = \"address\"\narchive_address = \"nope\"");
        assert!(e.is_err());
        let e = Policy::parse("x", "archive_address = \"a@b.example\"");
        assert!(
            e.is_err(),
            "an address without archive = address is a mistake"
        );
        let p = Policy::parse(
            "x",
            "archive = \"address\"\narchive_address = \"a@b.example\"",
        )
        .unwrap();
        assert_eq!(p.archive_address.as_deref(), Some("a@b.example"));
        let e = Policy::parse("l.toml", "archive = \"maildir\"").unwrap_err();
        assert!(e.to_string().starts_with("l.toml:1:"), "{e}");
    }
}
