//! The certificate cache (issue 14): each member's validated encryption keys, so a restart,
//! a reload or a `process` run need not validate every certificate again. Only a cache:
//! `pgp::certcache` checks every row against the certificate's digest, a tag and a checksum
//! before it trusts one, and writing a row never bumps the generation.

use super::CachedCert;
use rusqlite::{params, Connection, Transaction};

/// The rows of every fingerprint in `fingerprints` (upper-case hex), in one statement.
pub(super) fn get(conn: &Connection, fingerprints: &[String]) -> rusqlite::Result<Vec<CachedCert>> {
    let wanted = serde_json::to_string(fingerprints)
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    let mut select = conn.prepare_cached(
        "SELECT fingerprint, address, cert_sha256, tag, valid_from, valid_until, expires,
                features, keys, check_sha256
         FROM cert_cache WHERE fingerprint IN (SELECT value FROM json_each(?1))",
    )?;
    let rows = select.query_map(params![wanted], |r| {
        Ok(CachedCert {
            fingerprint: r.get(0)?,
            address: r.get(1)?,
            cert_sha256: r.get(2)?,
            tag: r.get(3)?,
            valid_from: r.get(4)?,
            valid_until: r.get(5)?,
            expires: r.get(6)?,
            features: r.get(7)?,
            keys: r.get(8)?,
            check_sha256: r.get(9)?,
        })
    })?;
    rows.collect()
}

/// Stores `entries`, each replacing the row of its fingerprint and address, and drops rows
/// whose window ended before `now` (never used again: the table stays bounded).
pub(super) fn put(tx: &Transaction<'_>, entries: &[CachedCert], now: i64) -> rusqlite::Result<()> {
    tx.execute(
        "DELETE FROM cert_cache WHERE valid_until < ?1",
        params![now],
    )?;
    let mut insert = tx.prepare_cached(
        "INSERT INTO cert_cache (fingerprint, address, cert_sha256, tag, valid_from,
                                 valid_until, expires, features, keys, check_sha256)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
         ON CONFLICT (fingerprint, address) DO UPDATE SET cert_sha256 = excluded.cert_sha256,
           tag = excluded.tag, valid_from = excluded.valid_from,
           valid_until = excluded.valid_until, expires = excluded.expires,
           features = excluded.features, keys = excluded.keys,
           check_sha256 = excluded.check_sha256",
    )?;
    for e in entries {
        insert.execute(params![
            e.fingerprint,
            e.address,
            e.cert_sha256,
            e.tag,
            e.valid_from,
            e.valid_until,
            e.expires,
            e.features,
            e.keys,
            e.check_sha256
        ])?;
    }
    Ok(())
}
