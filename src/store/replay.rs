//! Digests of accepted signatures per list, so a replayed post or command is recognised.

use rusqlite::{params, Connection, Transaction};

/// Records `digest` for `list`; returns `true` if it was already there (a replay). Records
/// older than `retain_secs` are dropped first.
pub(super) fn record(
    tx: &Transaction<'_>,
    list: &str,
    digest: &[u8],
    retain_secs: u64,
    now: i64,
) -> rusqlite::Result<bool> {
    tx.execute(
        "DELETE FROM replay WHERE seen < ?1",
        params![now - retain_secs as i64],
    )?;
    let n = tx.execute(
        "INSERT INTO replay (list, digest, seen) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
        params![list, digest, now],
    )?;
    Ok(n == 0)
}

pub(super) fn seen(conn: &Connection, list: &str, digest: &[u8]) -> rusqlite::Result<bool> {
    let n: i64 = conn.query_row(
        "SELECT COUNT(*) FROM replay WHERE list = ?1 AND digest = ?2",
        params![list, digest],
        |r| r.get(0),
    )?;
    Ok(n > 0)
}

#[cfg(test)]
mod tests {
    use super::super::{SqliteStore, Store};

    #[test]
    fn replay_records_once_and_expires() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path()).unwrap();
        assert!(!s.replay_record("l@x", b"d1", 3600).unwrap());
        assert!(s.replay_record("l@x", b"d1", 3600).unwrap());
        assert!(!s.replay_record("m@x", b"d1", 3600).unwrap(), "per list");
        assert!(s.replay_seen("l@x", b"d1").unwrap());
        // A retention of zero drops everything older than now.
        s.conn()
            .execute("UPDATE replay SET seen = seen - 10", [])
            .unwrap();
        assert!(!s.replay_record("l@x", b"d2", 0).unwrap());
        assert!(!s.replay_seen("l@x", b"d1").unwrap());
    }
}
