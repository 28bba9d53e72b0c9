//! `token create | list | revoke`: admin API tokens. A token is shown once, when made; the
//! store keeps its SHA-256 only. Creating and revoking are in the audit log as `cli`.

use super::{exit, list_address, open_store, CommandError, Result};
use crate::api::auth::{self, Scope};
use crate::config::Config;
use crate::store::{AuditRecord, TokenRecord};
use std::io::Write;
use std::time::{Duration, SystemTime};

/// Who a token is for.
pub enum TokenFor {
    SiteAdmin,
    List { list: String, scopes: Vec<String> },
}

fn cli_audit(list: &str, action: &str, detail: String) -> AuditRecord {
    AuditRecord {
        seq: 0,
        at: SystemTime::now(),
        token_id: "cli".into(),
        list: list.into(),
        action: action.into(),
        detail,
    }
}

/// `token create (--site-admin | --list L --scope S…) [--expires DAYS]`: prints the token.
pub fn create(
    config: &Config,
    who: TokenFor,
    expires_days: Option<u32>,
    out: &mut dyn Write,
) -> Result<()> {
    let now = SystemTime::now();
    let expires = expires_days.map(|d| now + Duration::from_secs(u64::from(d) * 86_400));
    let (site_admin, list, scopes) = match who {
        TokenFor::SiteAdmin => (true, String::new(), Vec::new()),
        TokenFor::List { list, scopes } => {
            let list = list_address(&list)?;
            super::existing_list(config, &list)?;
            let scopes = scopes
                .iter()
                .map(|s| {
                    Scope::parse(s).ok_or_else(|| {
                        CommandError::new(
                            exit::USAGE,
                            "scope",
                            format!("{s:?} is not one of read, members, keys, policy"),
                        )
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            (false, list, scopes)
        }
    };
    let new = auth::generate(site_admin, &list, &scopes, expires, now);
    let store = open_store(config)?;
    let what = describe(&new.record);
    store.token_create(&new.record, &cli_audit(&list, "token.create", what))?;
    writeln!(out, "{}", new.token).ok();
    Ok(())
}

/// `ID site-admin|LIST:SCOPES expires …`.
fn describe(t: &TokenRecord) -> String {
    let whom = if t.site_admin {
        "site-admin".to_string()
    } else {
        format!("{}:{}", t.list, t.scopes.replace(' ', ","))
    };
    let expires = match t.expires {
        Some(e) => format!("expires {}", date(e)),
        None => "never expires".into(),
    };
    format!("{} {whom} {expires}", t.id)
}

fn date(t: SystemTime) -> String {
    crate::keys::format_date(
        t.duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    )
}

/// `token list`: one line per token: `ID WHOM expires DATE|never expires [revoked DATE]`.
pub fn list(config: &Config, out: &mut dyn Write) -> Result<()> {
    let store = open_store(config)?;
    for t in store.tokens()? {
        let revoked = t
            .revoked
            .map(|r| format!(" revoked {}", date(r)))
            .unwrap_or_default();
        writeln!(out, "{}{revoked}", describe(&t)).ok();
    }
    Ok(())
}

/// `token revoke ID`: refused at once by every host (they look tokens up per request).
pub fn revoke(config: &Config, id: &str, out: &mut dyn Write) -> Result<()> {
    // A whole token pasted instead of its id names the same record.
    let id = auth::token_id(id).unwrap_or(id);
    let store = open_store(config)?;
    let list = store.token_get(id)?.map(|t| t.list).unwrap_or_default();
    if !store.token_revoke(id, &cli_audit(&list, "token.revoke", id.to_string()))? {
        return Err(CommandError::new(
            exit::DATA,
            id,
            "no such token, or revoked already",
        ));
    }
    writeln!(out, "revoked {id}").ok();
    Ok(())
}
