//! Admin API tokens and who may do what: the decisions, as plain functions.
//!
//! A token reads `lct_<id>_<secret>`: the id names its record (and is safe to print and
//! log), the secret is 256 random bits. Only the SHA-256 of the whole token is stored, so a
//! request costs one indexed read and one digest however wrong its token is, and the digests
//! are compared in constant time.

use crate::store::TokenRecord;
use sha2::{Digest, Sha256};
use std::time::SystemTime;

/// What every token starts with (a secret scanner can find leaked ones by it).
pub const PREFIX: &str = "lct_";
/// Random bytes of the id and the secret.
const ID_BYTES: usize = 10;
const SECRET_BYTES: usize = 32;

/// What a list token may do on its list. Every scope includes reading its list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// Read the list, its members, key, policy and audit log.
    Read,
    /// Start proven bindings and unbind members.
    Members,
    /// Rotate the list key's encryption subkey.
    Keys,
    /// Replace the policy (never loosen it: that takes a site-admin token).
    Policy,
}

impl Scope {
    pub const ALL: [Scope; 4] = [Scope::Read, Scope::Members, Scope::Keys, Scope::Policy];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Members => "members",
            Scope::Keys => "keys",
            Scope::Policy => "policy",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

/// What a valid token grants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Grant {
    /// Every list, every scope, and loosening policies.
    SiteAdmin { id: String },
    /// One list, some scopes.
    List {
        id: String,
        list: String,
        scopes: Vec<Scope>,
    },
}

impl Grant {
    /// The token's id, for the audit log.
    pub fn id(&self) -> &str {
        match self {
            Grant::SiteAdmin { id } | Grant::List { id, .. } => id,
        }
    }

    pub fn is_site_admin(&self) -> bool {
        matches!(self, Grant::SiteAdmin { .. })
    }

    /// Whether this token may see `list` at all.
    pub fn sees(&self, list: &str) -> bool {
        match self {
            Grant::SiteAdmin { .. } => true,
            Grant::List { list: own, .. } => own == list,
        }
    }
}

/// What a request needs on a list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    Read,
    Change(Scope),
}

/// Why a request is refused although its token is valid (403).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("this token is not for this list")]
    OtherList,
    #[error("this token lacks the {0} scope")]
    Scope(&'static str),
}

/// Whether `grant` allows `need` on `list`. A token for another list learns nothing about
/// this one: not even whether it exists (callers check this before looking the list up).
pub fn authorize(grant: &Grant, list: &str, need: Need) -> Result<(), Denied> {
    let scopes = match grant {
        Grant::SiteAdmin { .. } => return Ok(()),
        Grant::List {
            list: own, scopes, ..
        } if own == list => scopes,
        Grant::List { .. } => return Err(Denied::OtherList),
    };
    match need {
        Need::Read if !scopes.is_empty() => Ok(()),
        Need::Read => Err(Denied::Scope("read")),
        Need::Change(scope) if scopes.contains(&scope) => Ok(()),
        Need::Change(scope) => Err(Denied::Scope(scope.as_str())),
    }
}

/// A newly made token: the string shown once, and its record.
pub struct NewToken {
    pub token: String,
    pub record: TokenRecord,
}

/// Makes a token; `list` and `scopes` are ignored for a site-admin token.
pub fn generate(
    site_admin: bool,
    list: &str,
    scopes: &[Scope],
    expires: Option<SystemTime>,
    now: SystemTime,
) -> NewToken {
    use rand::RngCore;
    let mut id = [0u8; ID_BYTES];
    let mut secret = [0u8; SECRET_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut id);
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let b32 = |b: &[u8]| data_encoding::BASE32_NOPAD.encode(b).to_ascii_lowercase();
    let id = b32(&id);
    let token = format!("{PREFIX}{id}_{}", b32(&secret));
    let mut scopes: Vec<Scope> = scopes.to_vec();
    scopes.sort();
    scopes.dedup();
    NewToken {
        record: TokenRecord {
            id,
            sha256: digest(&token),
            site_admin,
            list: if site_admin {
                String::new()
            } else {
                list.into()
            },
            scopes: if site_admin {
                String::new()
            } else {
                scopes
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            },
            created: now,
            expires,
            revoked: None,
        },
        token,
    }
}

/// Hex SHA-256 of a whole token.
pub fn digest(token: &str) -> String {
    data_encoding::HEXLOWER.encode(&Sha256::digest(token.as_bytes()))
}

/// The id of a token shaped like ours, or `None`; bounded work for any input.
pub fn token_id(token: &str) -> Option<&str> {
    let rest = token.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let b32 = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|c| c.is_ascii_lowercase() || (b'2'..=b'7').contains(&c))
    };
    // 10 bytes are 16 base32 letters, 32 bytes 52.
    (b32(id, 16) && b32(secret, 52)).then_some(id)
}

/// Why a token is refused (401). The client is told only that it is refused; the log says why.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("no bearer token")]
    Missing,
    #[error("not a listcrypt token")]
    Malformed,
    #[error("unknown token or wrong secret")]
    Unknown,
    #[error("token revoked")]
    Revoked,
    #[error("token expired")]
    Expired,
    #[error("token record unreadable")]
    Corrupt,
}

/// Checks a presented token against the record stored under its id.
pub fn verify(
    token: &str,
    record: Option<&TokenRecord>,
    now: SystemTime,
) -> Result<Grant, Refused> {
    let Some(record) = record else {
        return Err(Refused::Unknown);
    };
    if !constant_time_eq(digest(token).as_bytes(), record.sha256.as_bytes()) {
        return Err(Refused::Unknown);
    }
    if record.revoked.is_some() {
        return Err(Refused::Revoked);
    }
    if record.expires.is_some_and(|e| e <= now) {
        return Err(Refused::Expired);
    }
    grant_of(record).ok_or(Refused::Corrupt)
}

/// The grant a stored record stands for; `None` for a record no code wrote.
pub fn grant_of(record: &TokenRecord) -> Option<Grant> {
    if record.site_admin {
        return Some(Grant::SiteAdmin {
            id: record.id.clone(),
        });
    }
    let scopes = record
        .scopes
        .split_whitespace()
        .map(Scope::parse)
        .collect::<Option<Vec<_>>>()?;
    (!record.list.is_empty() && !scopes.is_empty()).then(|| Grant::List {
        id: record.id.clone(),
        list: record.list.clone(),
        scopes,
    })
}

/// Compares without an early exit, so the time taken says nothing about where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn list_grant(list: &str, scopes: &[Scope]) -> Grant {
        Grant::List {
            id: "x".into(),
            list: list.into(),
            scopes: scopes.to_vec(),
        }
    }

    #[test]
    fn a_list_token_acts_on_its_list_only_and_within_its_scopes() {
        let read = list_grant("a@l", &[Scope::Read]);
        assert_eq!(authorize(&read, "a@l", Need::Read), Ok(()));
        assert_eq!(authorize(&read, "b@l", Need::Read), Err(Denied::OtherList));
        assert_eq!(
            authorize(&read, "a@l", Need::Change(Scope::Members)),
            Err(Denied::Scope("members"))
        );
        let members = list_grant("a@l", &[Scope::Members]);
        assert_eq!(authorize(&members, "a@l", Need::Read), Ok(()));
        assert_eq!(
            authorize(&members, "a@l", Need::Change(Scope::Members)),
            Ok(())
        );
        assert_eq!(
            authorize(&members, "a@l", Need::Change(Scope::Policy)),
            Err(Denied::Scope("policy"))
        );
        assert_eq!(
            authorize(&members, "b@l", Need::Change(Scope::Members)),
            Err(Denied::OtherList)
        );
        let admin = Grant::SiteAdmin { id: "y".into() };
        for scope in Scope::ALL {
            assert_eq!(authorize(&admin, "any@l", Need::Change(scope)), Ok(()));
        }
    }

    #[test]
    fn tokens_verify_only_whole_unexpired_unrevoked() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let day = Duration::from_secs(86_400);
        let t = generate(false, "a@l", &[Scope::Read], Some(now + day), now);
        assert_eq!(token_id(&t.token), Some(t.record.id.as_str()));
        assert!(t.token.starts_with("lct_"));
        let grant = verify(&t.token, Some(&t.record), now).unwrap();
        assert_eq!(
            grant,
            list_grant("a@l", &[Scope::Read]).with_id(&t.record.id)
        );
        // One letter of the secret changed.
        let mut wrong = t.token.clone().into_bytes();
        let last = wrong.len() - 1;
        wrong[last] = if wrong[last] == b'a' { b'b' } else { b'a' };
        let wrong = String::from_utf8(wrong).unwrap();
        assert_eq!(verify(&wrong, Some(&t.record), now), Err(Refused::Unknown));
        assert_eq!(verify(&t.token, None, now), Err(Refused::Unknown));
        assert_eq!(
            verify(&t.token, Some(&t.record), now + day),
            Err(Refused::Expired)
        );
        let revoked = TokenRecord {
            revoked: Some(now),
            ..t.record.clone()
        };
        assert_eq!(verify(&t.token, Some(&revoked), now), Err(Refused::Revoked));
        // The secret is never stored.
        assert!(!t
            .record
            .sha256
            .contains(t.token.rsplit('_').next().unwrap()));
    }

    #[test]
    fn only_our_token_shape_has_an_id() {
        assert_eq!(token_id(""), None);
        assert_eq!(token_id("lct_"), None);
        assert_eq!(token_id("Bearer lct_x_y"), None);
        let t = generate(true, "", &[], None, SystemTime::now());
        assert!(token_id(&t.token).is_some());
        assert_eq!(token_id(&t.token.to_uppercase()), None);
        assert_eq!(token_id(&format!("{}a", t.token)), None);
        assert!(grant_of(&t.record).unwrap().is_site_admin());
    }

    impl Grant {
        fn with_id(self, id: &str) -> Grant {
            match self {
                Grant::List { list, scopes, .. } => Grant::List {
                    id: id.into(),
                    list,
                    scopes,
                },
                g => g,
            }
        }
    }
}
