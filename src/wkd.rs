//! Web Key Directory (draft-koch-openpgp-webkey-service): the hashed names, the URL paths of
//! both layouts, the published form of a list key, and `wkd export DIR`.
//!
//! Only list keys are published, each with the one user ID of its list address and no secret
//! material. `http.rs` serves the same bytes live.

use crate::atomic_file;
use crate::config::Config;
use crate::keys::{self, KeyError};
use crate::pgp::{self, Cert};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Where WKD paths start (draft §3.1).
pub const WELL_KNOWN: &str = "/.well-known/openpgpkey";
/// The content of the `policy` files: empty, i.e. no policy flags (draft §4.5).
pub const POLICY: &[u8] = b"";

#[derive(Debug, thiserror::Error)]
pub enum WkdError {
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("list key of {0} has no user ID <{0}>; not publishing it")]
    NoUserId(String),
    #[error("OpenPGP: {0}")]
    Crypto(String),
}

/// The two URL layouts of draft §3.1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `https://openpgpkey.DOMAIN/.well-known/openpgpkey/DOMAIN/hu/HASH?l=LOCAL`
    Advanced,
    /// `https://DOMAIN/.well-known/openpgpkey/hu/HASH?l=LOCAL`
    Direct,
}

impl Layout {
    /// The host name a client connects to for `domain`.
    pub fn host(self, domain: &str) -> String {
        match self {
            Layout::Advanced => format!("openpgpkey.{domain}"),
            Layout::Direct => domain.to_string(),
        }
    }

    /// The directory of `domain`'s WKD under that host's document root.
    pub fn base(self, domain: &str) -> String {
        match self {
            Layout::Advanced => format!("{WELL_KNOWN}/{domain}"),
            Layout::Direct => WELL_KNOWN.to_string(),
        }
    }

    /// The URL path (without the `?l=` query) of the key for `local@domain`.
    pub fn key_path(self, local: &str, domain: &str) -> String {
        format!("{}/hu/{}", self.base(domain), hash_local(local))
    }

    pub fn policy_path(self, domain: &str) -> String {
        format!("{}/policy", self.base(domain))
    }

    /// The full URL a client asks for `address` (for docs, logs and tests).
    pub fn url(self, address: &str) -> Option<String> {
        let (local, domain) = address.rsplit_once('@')?;
        let domain = domain.to_ascii_lowercase();
        Some(format!(
            "https://{}{}?l={}",
            self.host(&domain),
            self.key_path(local, &domain),
            percent_encode(local)
        ))
    }
}

/// z-base-32 (draft §3.1 refers to RFC 6189 §5.1.6; here without padding, 5 bits a symbol).
pub fn zbase32(data: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ybndrfg8ejkmcpqxot1uwisza345h769";
    let mut out = String::with_capacity(data.len().div_ceil(5) * 8);
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for &b in data {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buffer >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// The hashed local part: z-base-32 of the SHA-1 of the local part mapped to lower case
/// (ASCII only, as GnuPG does; draft §3.1).
pub fn hash_local(local: &str) -> String {
    zbase32(&pgp::sha1(local.to_ascii_lowercase().as_bytes()))
}

/// What a WKD request asks for, from its URL path and `Host`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resource {
    /// The key whose hashed local part is `hash`, on `domain`.
    Key { domain: String, hash: String },
    /// The policy file of `domain`.
    Policy { domain: String },
}

/// Maps a request path (query already removed) and the `Host` header (port removed) to a
/// resource. The advanced layout names the domain in the path; the direct one takes it
/// from `Host`.
pub fn resolve(path: &str, host: Option<&str>) -> Option<Resource> {
    let rest = path.strip_prefix(WELL_KNOWN)?.strip_prefix('/')?;
    let segments: Vec<&str> = rest.split('/').collect();
    let host = host.map(|h| h.trim_end_matches('.').to_ascii_lowercase());
    let (domain, tail) = match segments.as_slice() {
        ["hu", _] | ["policy"] => (host?, &segments[..]),
        [domain, "hu", _] | [domain, "policy"] => (domain.to_ascii_lowercase(), &segments[1..]),
        _ => return None,
    };
    let label_ok =
        |l: &str| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !domain.split('.').all(label_ok) {
        return None;
    }
    match tail {
        ["policy"] => Some(Resource::Policy { domain }),
        ["hu", hash] if hash.len() == 32 && hash.bytes().all(|b| b.is_ascii_alphanumeric()) => {
            Some(Resource::Key {
                domain,
                hash: hash.to_string(),
            })
        }
        _ => None,
    }
}

/// The list in `lists` (normalised addresses) that `resource` names, if any; for a policy
/// file, whether `domain` has a list at all.
pub fn find<'a>(lists: impl IntoIterator<Item = &'a str>, resource: &Resource) -> Option<&'a str> {
    lists.into_iter().find(|list| {
        let Some((local, domain)) = list.rsplit_once('@') else {
            return false;
        };
        match resource {
            Resource::Key { domain: d, hash } => domain == d && hash_local(local) == *hash,
            Resource::Policy { domain: d } => domain == d,
        }
    })
}

/// The published form of a list key: public parts only, with just the list address's user
/// ID (draft §3.1: the key must carry the address), binary as WKD wants.
pub fn public_key(cert: &Cert, list: &str) -> Result<Vec<u8>, WkdError> {
    let public =
        pgp::only_userid_for(cert, list).ok_or_else(|| WkdError::NoUserId(list.to_string()))?;
    pgp::binary_public(&public).map_err(|e| WkdError::Crypto(e.to_string()))
}

/// `wkd export DIR`: for every list, one document root per host name under `dir`:
/// `DIR/openpgpkey.DOMAIN/.well-known/openpgpkey/DOMAIN/{hu/HASH,policy}` (advanced) and
/// `DIR/DOMAIN/.well-known/openpgpkey/{hu/HASH,policy}` (direct). Files are replaced
/// atomically; files of lists that no longer exist are left alone. Returns the paths written.
pub fn export(config: &Config, dir: &Path) -> Result<Vec<PathBuf>, WkdError> {
    let mut written = Vec::new();
    // List keys are in the database on a PostgreSQL site; a SQLite site needs no store here.
    let store = match config.database_url.is_empty() {
        true => None,
        false => Some(crate::store::open(config).map_err(KeyError::from)?),
    };
    let home = match &store {
        Some(store) => keys::KeyHome::of(&config.keyring_dir, &**store),
        None => keys::KeyHome::Files(&config.keyring_dir),
    };
    for list in keys::list_names(config)? {
        let Some((local, domain)) = list.rsplit_once('@') else {
            continue;
        };
        let cert = keys::load_list_key(home, &list)?;
        let key = public_key(&cert, &list)?;
        for layout in [Layout::Advanced, Layout::Direct] {
            let root = dir.join(layout.host(domain));
            for (path, bytes) in [
                (layout.key_path(local, domain), &key[..]),
                (layout.policy_path(domain), POLICY),
            ] {
                let file = root.join(path.trim_start_matches('/'));
                write_atomic(&file, bytes)?;
                written.push(file);
            }
        }
    }
    Ok(written)
}

/// The `wkd export DIR` command: exports, then prints each path written, one a line.
pub fn export_command(config: &Config, dir: &Path, out: &mut dyn Write) -> Result<(), WkdError> {
    for path in export(config, dir)? {
        writeln!(out, "{}", path.display()).map_err(|source| WkdError::Io {
            path: "stdout".into(),
            source,
        })?;
    }
    Ok(())
}

/// Writes world-readable `bytes` to `path` atomically, so a web server never serves half a key.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), WkdError> {
    atomic_file::write(path, bytes, atomic_file::PUBLIC).map_err(|source| WkdError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Percent-encodes a local part for the `l=` parameter (RFC 3986 unreserved stays).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_matches_the_draft_vector() {
        // draft-koch-openpgp-webkey-service §3.1.
        assert_eq!(hash_local("Joe.Doe"), "iy9q119eutrkn8s1mk4r39qejnbu3n5q");
    }

    #[test]
    fn published_key_has_only_the_list_user_id_and_no_secrets() {
        use crate::pgp::testkit::{parse, with_encryption_subkey};
        let cert =
            with_encryption_subkey(&["<enc@lists.example.org>", "Someone Else <else@example.net>"]);
        assert!(cert.is_tsk());
        let published = parse(&public_key(&cert, "enc@lists.example.org").unwrap());
        assert!(!published.is_tsk());
        assert_eq!(published.fingerprint(), cert.fingerprint());
        assert_eq!(published.keys().subkeys().count(), 1);
        let uids: Vec<_> = published
            .userids()
            .map(|u| String::from_utf8_lossy(u.userid().value()).into_owned())
            .collect();
        assert_eq!(uids, ["<enc@lists.example.org>"]);
        assert!(matches!(
            public_key(&cert, "other@lists.example.org"),
            Err(WkdError::NoUserId(_))
        ));
    }

    #[test]
    fn zbase32_bits() {
        assert_eq!(zbase32(b""), "");
        assert_eq!(zbase32(&[0]), "yy");
        assert_eq!(zbase32(&[0xff]), "9h");
        assert_eq!(zbase32(&[0xff; 5]), "99999999");
    }

    #[test]
    fn urls_of_both_layouts() {
        let a = "Joe.Doe@Example.ORG";
        assert_eq!(
            Layout::Advanced.url(a).unwrap(),
            "https://openpgpkey.example.org/.well-known/openpgpkey/example.org/hu/\
             iy9q119eutrkn8s1mk4r39qejnbu3n5q?l=Joe.Doe"
        );
        assert_eq!(
            Layout::Direct.url(a).unwrap(),
            "https://example.org/.well-known/openpgpkey/hu/iy9q119eutrkn8s1mk4r39qejnbu3n5q?l=Joe.Doe"
        );
        assert_eq!(
            Layout::Advanced.policy_path("example.org"),
            "/.well-known/openpgpkey/example.org/policy"
        );
        assert_eq!(
            Layout::Direct.policy_path("example.org"),
            "/.well-known/openpgpkey/policy"
        );
        assert_eq!(percent_encode("a+b c"), "a%2Bb%20c");
    }

    #[test]
    fn requests_resolve_for_both_layouts() {
        let hash = "iy9q119eutrkn8s1mk4r39qejnbu3n5q";
        let key = Resource::Key {
            domain: "example.org".into(),
            hash: hash.into(),
        };
        let path = format!("/.well-known/openpgpkey/example.org/hu/{hash}");
        assert_eq!(resolve(&path, None), Some(key.clone()));
        let path = format!("/.well-known/openpgpkey/hu/{hash}");
        assert_eq!(resolve(&path, Some("Example.ORG.")), Some(key.clone()));
        assert_eq!(resolve(&path, None), None, "direct layout needs a Host");
        let policy = Resource::Policy {
            domain: "example.org".into(),
        };
        assert_eq!(
            resolve("/.well-known/openpgpkey/example.org/policy", None),
            Some(policy.clone())
        );
        assert_eq!(
            resolve("/.well-known/openpgpkey/policy", Some("example.org")),
            Some(policy)
        );
        for bad in [
            "/",
            "/.well-known/openpgpkey/",
            "/.well-known/openpgpkey/hu/short",
            "/.well-known/openpgpkey/../etc/hu/iy9q119eutrkn8s1mk4r39qejnbu3n5q",
            "/.well-known/openpgpkey/example.org/hu/iy9q119eutrkn8s1mk4r39qejnbu3n5q/x",
            "/.well-known/openpgpkey/example.org/submission-address",
        ] {
            assert_eq!(resolve(bad, Some("example.org")), None, "{bad}");
        }
        let lists = ["joe.doe@example.org", "other@example.net"];
        assert_eq!(find(lists, &key), Some("joe.doe@example.org"));
        let elsewhere = Resource::Key {
            domain: "example.net".into(),
            hash: hash.into(),
        };
        assert_eq!(find(lists, &elsewhere), None);
    }
}
