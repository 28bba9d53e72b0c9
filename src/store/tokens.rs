//! The admin API's tokens and its audit log. A token is stored by its public id with the
//! SHA-256 of the whole token: the secret itself is never kept, and a lookup by id costs one
//! indexed read and one digest, so unauthenticated requests cannot make the host hash slowly.

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One API token as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRecord {
    /// The public part of the token (`lct_<id>_…`), unique.
    pub id: String,
    /// Hex SHA-256 of the whole token string.
    pub sha256: String,
    /// May act on every list, and loosen policies.
    pub site_admin: bool,
    /// The one list a list token acts on; empty for site-admin tokens.
    pub list: String,
    /// Space-separated scopes of a list token (`read members keys policy`).
    pub scopes: String,
    pub created: SystemTime,
    pub expires: Option<SystemTime>,
    pub revoked: Option<SystemTime>,
}

/// One audit record: who (token id, or `cli`), what, on which list, when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditRecord {
    /// Increasing with time; 0 for a record not yet stored.
    pub seq: i64,
    pub at: SystemTime,
    pub token_id: String,
    pub list: String,
    /// A short verb such as `member.unbind`.
    pub action: String,
    /// What changed, without secrets (no token, no policy text).
    pub detail: String,
}

/// Audit records returned at most per request.
pub const MAX_AUDIT_PAGE: usize = 1000;

pub(super) fn secs(t: SystemTime) -> i64 {
    super::epoch_secs(t)
}

pub(super) fn time(secs: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64)
}

pub(super) fn put(tx: &Transaction<'_>, t: &TokenRecord) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO api_tokens (id, sha256, site_admin, list, scopes, created, expires, revoked)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            t.id,
            t.sha256,
            i64::from(t.site_admin),
            t.list,
            t.scopes,
            secs(t.created),
            t.expires.map(secs),
            t.revoked.map(secs)
        ],
    )?;
    Ok(())
}

const COLUMNS: &str = "id, sha256, site_admin, list, scopes, created, expires, revoked";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TokenRecord> {
    Ok(TokenRecord {
        id: r.get(0)?,
        sha256: r.get(1)?,
        site_admin: r.get::<_, i64>(2)? != 0,
        list: r.get(3)?,
        scopes: r.get(4)?,
        created: time(r.get(5)?),
        expires: r.get::<_, Option<i64>>(6)?.map(time),
        revoked: r.get::<_, Option<i64>>(7)?.map(time),
    })
}

pub(super) fn get(c: &Connection, id: &str) -> rusqlite::Result<Option<TokenRecord>> {
    c.query_row(
        &format!("SELECT {COLUMNS} FROM api_tokens WHERE id = ?1"),
        params![id],
        row,
    )
    .optional()
}

pub(super) fn all(c: &Connection) -> rusqlite::Result<Vec<TokenRecord>> {
    c.prepare(&format!(
        "SELECT {COLUMNS} FROM api_tokens ORDER BY created, id"
    ))?
    .query_map([], row)?
    .collect()
}

/// Marks a token revoked at `at`; `false` if there is no such token or it was revoked already.
pub(super) fn revoke(tx: &Transaction<'_>, id: &str, at: SystemTime) -> rusqlite::Result<bool> {
    let n = tx.execute(
        "UPDATE api_tokens SET revoked = ?2 WHERE id = ?1 AND revoked IS NULL",
        params![id, secs(at)],
    )?;
    Ok(n == 1)
}

pub(super) fn audit_put(tx: &Transaction<'_>, a: &AuditRecord) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO audit (at, token_id, list, action, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![secs(a.at), a.token_id, a.list, a.action, a.detail],
    )?;
    Ok(())
}

/// The newest `limit` records (of `list` only, if given), newest first.
pub(super) fn audit_get(
    c: &Connection,
    list: Option<&str>,
    limit: usize,
) -> rusqlite::Result<Vec<AuditRecord>> {
    let limit = limit.min(MAX_AUDIT_PAGE) as i64;
    c.prepare(
        "SELECT seq, at, token_id, list, action, detail FROM audit
         WHERE ?1 IS NULL OR list = ?1 ORDER BY seq DESC LIMIT ?2",
    )?
    .query_map(params![list, limit], |r| {
        Ok(AuditRecord {
            seq: r.get(0)?,
            at: time(r.get(1)?),
            token_id: r.get(2)?,
            list: r.get(3)?,
            action: r.get(4)?,
            detail: r.get(5)?,
        })
    })?
    .collect()
}
