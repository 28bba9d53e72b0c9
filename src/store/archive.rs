//! Which posts a list's archive already holds: Mailman sends one post in several outbound
//! transactions, and each would otherwise archive it again.

use rusqlite::{params, Connection, OptionalExtension, Transaction};

pub(super) fn seen(conn: &Connection, list: &str, digest: &[u8]) -> rusqlite::Result<bool> {
    conn.prepare_cached("SELECT 1 FROM archived WHERE list = ?1 AND digest = ?2")?
        .query_row(params![list, digest], |_| Ok(()))
        .optional()
        .map(|r| r.is_some())
}

/// Records an archived post; records older than `retain_secs` are dropped first.
pub(super) fn record(
    tx: &Transaction<'_>,
    list: &str,
    digest: &[u8],
    retain_secs: u64,
    now: i64,
) -> rusqlite::Result<()> {
    tx.execute(
        "DELETE FROM archived WHERE archived < ?1",
        params![now - retain_secs as i64],
    )?;
    tx.execute(
        "INSERT INTO archived (list, digest, archived) VALUES (?1, ?2, ?3)
         ON CONFLICT DO NOTHING",
        params![list, digest, now],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{SqliteStore, Store};

    #[test]
    fn a_post_is_archived_once_per_list() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path()).unwrap();
        assert!(!s.archived("l@x", b"d").unwrap());
        s.archive_record("l@x", b"d", 3600).unwrap();
        s.archive_record("l@x", b"d", 3600).unwrap();
        assert!(s.archived("l@x", b"d").unwrap());
        assert!(!s.archived("m@x", b"d").unwrap());
        assert!(!s.archived("l@x", b"e").unwrap());
    }
}
