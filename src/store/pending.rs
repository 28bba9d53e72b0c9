//! Keys offered by email and not yet proven: each waits for a signed reply carrying its
//! challenge token. Only the token's SHA-256 is stored, so a copy of the database cannot
//! confirm a binding.

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use sha2::{Digest, Sha256};

/// Lower-case hex SHA-256 of a token. Tokens are 160 random bits, so an unsalted hash leaves
/// nothing to guess.
pub(super) fn hash_token(token: &str) -> String {
    data_encoding::HEXLOWER.encode(&Sha256::digest(token.as_bytes()))
}

/// Records (or renews) a pending binding; expired ones are dropped first.
pub(super) fn put(
    tx: &Transaction<'_>,
    list: &str,
    address: &str,
    fingerprint: &str,
    token: &str,
    ttl_secs: u64,
    now: i64,
) -> rusqlite::Result<()> {
    tx.execute("DELETE FROM pending WHERE expires < ?1", params![now])?;
    tx.execute(
        "INSERT INTO pending (list, address, fingerprint, token_sha256, expires)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (list, address, fingerprint)
         DO UPDATE SET token_sha256 = excluded.token_sha256, expires = excluded.expires",
        params![
            list,
            address,
            fingerprint,
            hash_token(token),
            now + ttl_secs as i64
        ],
    )?;
    Ok(())
}

/// Fingerprints of the unexpired pending bindings of `address` on `list`.
pub(super) fn fingerprints(
    conn: &Connection,
    list: &str,
    address: &str,
    now: i64,
) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT fingerprint FROM pending WHERE list = ?1 AND address = ?2 AND expires >= ?3",
    )?;
    let rows = stmt.query_map(params![list, address, now], |r| r.get(0))?;
    rows.collect()
}

/// Whether `token` hashes to the one recorded for this unexpired pending binding.
pub(super) fn token_matches(
    conn: &Connection,
    list: &str,
    address: &str,
    fingerprint: &str,
    token: &str,
    now: i64,
) -> rusqlite::Result<bool> {
    let found = conn
        .prepare_cached(
            "SELECT 1 FROM pending WHERE list = ?1 AND address = ?2 AND fingerprint = ?3
             AND token_sha256 = ?4 AND expires >= ?5",
        )?
        .query_row(
            params![list, address, fingerprint, hash_token(token), now],
            |_| Ok(()),
        )
        .optional()?;
    Ok(found.is_some())
}

/// Every unexpired pending binding of `list`: (address, fingerprint).
pub(super) fn of_list(
    conn: &Connection,
    list: &str,
    now: i64,
) -> rusqlite::Result<Vec<(String, String)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT address, fingerprint FROM pending WHERE list = ?1 AND expires >= ?2
         ORDER BY address",
    )?;
    let rows = stmt.query_map(params![list, now], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect()
}

pub(super) fn remove(
    tx: &Transaction<'_>,
    list: &str,
    address: &str,
    fingerprint: &str,
) -> rusqlite::Result<()> {
    tx.execute(
        "DELETE FROM pending WHERE list = ?1 AND address = ?2 AND fingerprint = ?3",
        params![list, address, fingerprint],
    )?;
    Ok(())
}

/// Removes every pending binding of `address` on `list`; returns how many went.
pub(super) fn remove_address(
    tx: &Transaction<'_>,
    list: &str,
    address: &str,
) -> rusqlite::Result<usize> {
    tx.execute(
        "DELETE FROM pending WHERE list = ?1 AND address = ?2",
        params![list, address],
    )
}

#[cfg(test)]
mod tests {
    use super::super::{SqliteStore, Store};

    const TOKEN: &str = "mfrggzdfmztwq2lknnwg23tpobyxe43u";

    #[test]
    fn pending_bindings_are_found_until_used_or_expired() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path()).unwrap();
        s.pending_put("l@x", "a@y", "FPR", TOKEN, 3600).unwrap();
        assert_eq!(s.pending_for("l@x", "a@y").unwrap(), vec!["FPR"]);
        assert_eq!(
            s.pending_list("l@x").unwrap(),
            vec![("a@y".to_string(), "FPR".to_string())]
        );
        assert!(s.pending_for("l@x", "b@y").unwrap().is_empty());
        s.pending_remove("l@x", "a@y", "FPR").unwrap();
        assert!(s.pending_for("l@x", "a@y").unwrap().is_empty());
        s.pending_put("l@x", "a@y", "FPR", TOKEN, 0).unwrap();
        s.conn()
            .execute("UPDATE pending SET expires = expires - 10", [])
            .unwrap();
        assert!(s.pending_for("l@x", "a@y").unwrap().is_empty(), "expired");
        assert!(
            !s.pending_token_matches("l@x", "a@y", "FPR", TOKEN).unwrap(),
            "an expired token proves nothing"
        );
    }

    #[test]
    fn token_is_stored_hashed_and_matched_by_hash() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path()).unwrap();
        s.pending_put("l@x", "a@y", "FPR", TOKEN, 3600).unwrap();
        let raw: String = s
            .conn()
            .query_row("SELECT token_sha256 FROM pending", [], |r| r.get(0))
            .unwrap();
        assert!(!raw.contains(TOKEN), "clear token stored: {raw}");
        // SHA-256 per FIPS 180-4, as `printf %s TOKEN | sha256sum` prints it.
        assert_eq!(
            raw,
            "3eb68f93ebf78ee569898a83fa9013c7fc151e05e44410db950097e33f8548d1"
        );
        assert!(s.pending_token_matches("l@x", "a@y", "FPR", TOKEN).unwrap());
        assert!(!s
            .pending_token_matches("l@x", "a@y", "FPR", "mfrggzdfmztwq2lknnwg23tpobyxe43v")
            .unwrap());
        assert!(
            !s.pending_token_matches("l@x", "a@y", "OTHER", TOKEN)
                .unwrap(),
            "a token binds only its own key"
        );
        assert!(!s.pending_token_matches("l@x", "b@y", "FPR", TOKEN).unwrap());
    }
}
