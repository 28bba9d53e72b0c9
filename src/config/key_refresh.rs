//! The `[key_refresh]` table: how members' bound certificates are kept fresh in the
//! background (src/refresh/), never on the SMTP path.

use serde::{Deserialize, Serialize};

/// Where a network refresh looks for a member's certificate.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The member's own domain's Web Key Directory (draft-koch-openpgp-webkey-service).
    Wkd,
    /// A Verifying Key Server (`vks_url`, by fingerprint).
    Vks,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KeyRefresh {
    /// Apply new subkeys, expiry extensions and revocations of a member's bound key from the
    /// `Autocrypt` header of that member's verified posts.
    pub autocrypt: bool,
    /// Seconds between network refreshes of every bound key; 0 = no network refresh.
    pub interval: u64,
    /// Where a network refresh looks, in order.
    pub sources: Vec<Source>,
    /// The VKS keyserver (`/vks/v1/by-fingerprint/` is appended).
    pub vks_url: String,
    /// For tests only: a base URL (e.g. `http://127.0.0.1:8080`) that replaces
    /// `https://DOMAIN` for WKD's direct method; empty = the real WKD of each domain.
    pub wkd_base_url: String,
}

impl Default for KeyRefresh {
    fn default() -> Self {
        KeyRefresh {
            autocrypt: true,
            interval: 0,
            sources: vec![Source::Wkd],
            vks_url: "https://keys.openpgp.org".into(),
            wkd_base_url: String::new(),
        }
    }
}

impl KeyRefresh {
    /// Both URLs must be `http://` or `https://` with a host (the test base may be empty).
    pub fn validate(&self) -> Result<(), String> {
        crate::refresh::fetch::Url::parse(&self.vks_url)
            .map_err(|e| format!("key_refresh.vks_url: {e}"))?;
        if !self.wkd_base_url.is_empty() {
            crate::refresh::fetch::Url::parse(&self.wkd_base_url)
                .map_err(|e| format!("key_refresh.wkd_base_url: {e}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_http_or_https_with_a_host() {
        assert_eq!(KeyRefresh::default().validate(), Ok(()));
        let bad = KeyRefresh {
            vks_url: "hkp://keys.example".into(),
            ..KeyRefresh::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .starts_with("key_refresh.vks_url:"));
        let bad = KeyRefresh {
            wkd_base_url: "http://".into(),
            ..KeyRefresh::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .starts_with("key_refresh.wkd_base_url:"));
        let toml = "interval = 86400\nsources = [\"wkd\", \"vks\"]\n";
        let parsed: KeyRefresh = toml::from_str(toml).unwrap();
        assert_eq!(parsed.sources, [Source::Wkd, Source::Vks]);
        assert!(toml::from_str::<KeyRefresh>("sources = [\"ldap\"]").is_err());
    }
}
