//! Policy changes through the API: validation exactly as `check-config` does it, what a
//! change loosens, and what changed (for the owners' notice and the audit log).
//!
//! "Loosening" means any change after which a post the old policy refused, held or discarded
//! could be distributed, or copies carry less protection. Per key of `config::Policy`:
//! - every `*_action`: towards `accept` (reject and discard < hold < accept);
//! - `require_intended_recipient`, `sign_outgoing`, `hide_recipient_key_ids`: true to false;
//! - `strip_headers`: any header name no longer stripped;
//! - `header_protection`: towards less confidentiality (hcp_shy > hcp_baseline >
//!   hcp_no_confidentiality); `padding`: padme to none.
//!
//! `batch_size`, `missing_key_action` (neither ever sends plaintext), `autocrypt` and
//! `key_suffix` never loosen.

use crate::config::{Action, HeaderProtection, Padding};
use crate::config::{ConfigError, Policy};

/// A policy text that `check-config` would refuse, as it prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// `FILE:LINE:COLUMN: message`, or `FILE: message` for rules past the syntax.
    pub text: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
}

/// Parses `text` as the policy file at `shown` with `check-config`'s own rules.
pub fn validate(shown: &str, text: &str) -> Result<Policy, Diagnostic> {
    Policy::parse(shown, text).map_err(|e| {
        let (line, column) = match &e {
            ConfigError::Syntax { line, column, .. } => (Some(*line), Some(*column)),
            _ => (None, None),
        };
        Diagnostic {
            text: e.to_string(),
            line,
            column,
        }
    })
}

fn action_rank(a: Action) -> u8 {
    match a {
        Action::Reject | Action::Discard => 0,
        Action::Hold => 1,
        Action::Accept => 2,
    }
}

fn protection_rank(h: HeaderProtection) -> u8 {
    match h {
        HeaderProtection::HcpNoConfidentiality => 0,
        HeaderProtection::HcpBaseline => 1,
        HeaderProtection::HcpShy => 2,
    }
}

/// The keys whose change from `old` to `new` loosens the policy (empty: it does not).
pub fn loosenings(old: &Policy, new: &Policy) -> Vec<&'static str> {
    // Every key named: a new policy key does not compile until it is classified here (the
    // `*_action`s in `loosened_actions`, the flags and headers in `weaker_copies`).
    let Policy {
        nonencrypted_action: _,
        unsigned_action: _,
        unknown_signer_action: _,
        invalid_signature_action: _,
        expired_signature_action: _,
        revoked_signature_action: _,
        inline_pgp_action: _,
        duplicate_action: _,
        command_nonencrypted_action: _,
        require_intended_recipient: _,
        strip_headers: _,
        sign_outgoing: _,
        hide_recipient_key_ids: _,
        header_protection: _,
        padding: _,
        batch_size: _,
        missing_key_action: _,
        autocrypt: _,
        key_suffix: _,
        archive: _,
        archive_address: _,
    } = new;
    let mut out = loosened_actions(old, new);
    out.extend(weaker_copies(old, new));
    out
}

fn loosened_actions(old: &Policy, new: &Policy) -> Vec<&'static str> {
    let actions = [
        (
            "nonencrypted_action",
            old.nonencrypted_action,
            new.nonencrypted_action,
        ),
        ("unsigned_action", old.unsigned_action, new.unsigned_action),
        (
            "unknown_signer_action",
            old.unknown_signer_action,
            new.unknown_signer_action,
        ),
        (
            "invalid_signature_action",
            old.invalid_signature_action,
            new.invalid_signature_action,
        ),
        (
            "expired_signature_action",
            old.expired_signature_action,
            new.expired_signature_action,
        ),
        (
            "revoked_signature_action",
            old.revoked_signature_action,
            new.revoked_signature_action,
        ),
        (
            "inline_pgp_action",
            old.inline_pgp_action,
            new.inline_pgp_action,
        ),
        (
            "duplicate_action",
            old.duplicate_action,
            new.duplicate_action,
        ),
        (
            "command_nonencrypted_action",
            old.command_nonencrypted_action,
            new.command_nonencrypted_action,
        ),
    ];
    actions
        .into_iter()
        .filter(|(_, was, now)| action_rank(*now) > action_rank(*was))
        .map(|(key, _, _)| key)
        .collect()
}

/// Checks made less strict, or copies with less protection.
fn weaker_copies(old: &Policy, new: &Policy) -> Vec<&'static str> {
    let mut out = Vec::new();
    let flags = [
        (
            "require_intended_recipient",
            old.require_intended_recipient,
            new.require_intended_recipient,
        ),
        ("sign_outgoing", old.sign_outgoing, new.sign_outgoing),
        (
            "hide_recipient_key_ids",
            old.hide_recipient_key_ids,
            new.hide_recipient_key_ids,
        ),
    ];
    for (key, was, now) in flags {
        if was && !now {
            out.push(key);
        }
    }
    let stripped = |name: &String| {
        new.strip_headers
            .iter()
            .any(|h| h.eq_ignore_ascii_case(name))
    };
    if !old.strip_headers.iter().all(stripped) {
        out.push("strip_headers");
    }
    if protection_rank(new.header_protection) < protection_rank(old.header_protection) {
        out.push("header_protection");
    }
    if old.padding == Padding::Padme && new.padding == Padding::None {
        out.push("padding");
    }
    // A new archive address receives a copy of every post: only the site chooses where.
    if new.archive_address.is_some() && new.archive_address != old.archive_address {
        out.push("archive_address");
    }
    out
}

/// `key: old -> new` for every top-level key whose value differs.
pub fn changes(old: &Policy, new: &Policy) -> Vec<String> {
    let table = |p: &Policy| match toml::Value::try_from(p) {
        Ok(toml::Value::Table(t)) => t,
        _ => toml::map::Map::new(),
    };
    let (old, new) = (table(old), table(new));
    new.iter()
        .filter(|(k, v)| old.get(*k) != Some(*v))
        .map(|(k, v)| {
            let was = old.get(k).map(|o| o.to_string()).unwrap_or_default();
            format!("{k}: {was} -> {v}")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(text: &str) -> Policy {
        Policy::parse("t.toml", text).unwrap()
    }

    #[test]
    fn accepting_what_was_refused_loosens() {
        let old = Policy::default();
        // The example: any *_action set to accept.
        for key in [
            "nonencrypted_action",
            "unsigned_action",
            "unknown_signer_action",
            "invalid_signature_action",
            "expired_signature_action",
            "revoked_signature_action",
            "inline_pgp_action",
            "duplicate_action",
        ] {
            let new = with(&format!("{key} = \"accept\""));
            assert_eq!(loosenings(&old, &new), vec![key]);
        }
        // Holding a refused post hands it to a moderator who may let it through.
        assert_eq!(
            loosenings(&old, &with("unsigned_action = \"hold\"")),
            vec!["unsigned_action"]
        );
    }

    #[test]
    fn tightening_or_neutral_changes_do_not_loosen() {
        let old = Policy::default();
        for text in [
            "",
            "nonencrypted_action = \"discard\"",
            "command_nonencrypted_action = \"reject\"",
            "duplicate_action = \"reject\"",
            "require_intended_recipient = true",
            "batch_size = 10",
            "missing_key_action = \"tempfail\"",
            "header_protection = \"hcp_shy\"",
            "autocrypt = false",
            "key_suffix = \"keys\"",
            "strip_headers = [\"user-agent\", \"X-Mailer\", \"X-Originating-IP\", \
             \"X-Enigmail-Version\", \"Autocrypt\", \"Autocrypt-Gossip\", \"X-Extra\"]",
        ] {
            assert!(loosenings(&old, &with(text)).is_empty(), "{text}");
        }
        // Back from accept to reject tightens.
        let loose = with("unsigned_action = \"accept\"");
        assert!(loosenings(&loose, &old).is_empty());
    }

    #[test]
    fn weaker_protection_of_copies_loosens() {
        let old = Policy::default();
        for (text, key) in [
            ("sign_outgoing = false", "sign_outgoing"),
            ("hide_recipient_key_ids = false", "hide_recipient_key_ids"),
            (
                "header_protection = \"hcp_no_confidentiality\"",
                "header_protection",
            ),
            ("padding = \"none\"", "padding"),
            ("strip_headers = []", "strip_headers"),
        ] {
            assert_eq!(loosenings(&old, &with(text)), vec![key], "{text}");
        }
        let strict = with("require_intended_recipient = true");
        assert_eq!(
            loosenings(&strict, &old),
            vec!["require_intended_recipient"]
        );
    }

    #[test]
    fn validation_is_check_configs_with_line_and_column() {
        let d = validate(
            "lists.d/a@l.toml",
            "batch_size = 5\nunsigned_action = \"maybe\"\n",
        )
        .unwrap_err();
        assert_eq!((d.line, d.column), (Some(2), Some(19)));
        assert!(d.text.starts_with("lists.d/a@l.toml:2:19: "), "{}", d.text);
        let d = validate("p", "batch_size = 0").unwrap_err();
        assert_eq!((d.line, d.column), (None, None));
        assert!(d.text.contains("batch_size"));
        assert!(validate("p", "bogus = 1").is_err());
    }

    #[test]
    fn changes_name_each_changed_key() {
        let c = changes(
            &Policy::default(),
            &with("batch_size = 10\npadding = \"none\""),
        );
        assert_eq!(
            c,
            vec!["batch_size: 50 -> 10", "padding: \"padme\" -> \"none\""]
        );
    }
}
