//! When each automatic reply last went to each sender, so the key address cannot be used to
//! flood anyone.

use rusqlite::{params, OptionalExtension, Transaction};

/// Records older than this are dropped on every allowed reply: no interval is longer.
const RETAIN_SECS: i64 = 86_400 * 7;

/// Whether `sender` may get another reply of `kind` from `list` now; records it when allowed.
pub(super) fn allow(
    tx: &Transaction<'_>,
    list: &str,
    sender: &str,
    kind: &str,
    interval_secs: u64,
    now: i64,
) -> rusqlite::Result<bool> {
    let last: Option<i64> = tx
        .query_row(
            "SELECT last FROM rate WHERE list = ?1 AND sender = ?2 AND kind = ?3",
            params![list, sender, kind],
            |r| r.get(0),
        )
        .optional()?;
    if last.is_some_and(|t| now - t < interval_secs as i64) {
        return Ok(false);
    }
    mark(tx, list, sender, kind, now)?;
    Ok(true)
}

pub(super) fn forget(
    tx: &Transaction<'_>,
    list: &str,
    sender: &str,
    kind: &str,
) -> rusqlite::Result<()> {
    tx.execute(
        "DELETE FROM rate WHERE list = ?1 AND sender = ?2 AND kind = ?3",
        params![list, sender, kind],
    )?;
    Ok(())
}

/// When `sender` last got a reply of `kind` from `list`, in seconds since the epoch.
pub(super) fn last(
    conn: &rusqlite::Connection,
    list: &str,
    sender: &str,
    kind: &str,
) -> rusqlite::Result<Option<i64>> {
    conn.query_row(
        "SELECT last FROM rate WHERE list = ?1 AND sender = ?2 AND kind = ?3",
        params![list, sender, kind],
        |r| r.get(0),
    )
    .optional()
}

/// Records a reply of `kind` to `sender` at `at` (the key address marks it once sent).
pub(super) fn mark(
    tx: &Transaction<'_>,
    list: &str,
    sender: &str,
    kind: &str,
    at: i64,
) -> rusqlite::Result<()> {
    tx.execute(
        "DELETE FROM rate WHERE last < ?1",
        params![at - RETAIN_SECS],
    )?;
    tx.execute(
        "INSERT INTO rate (list, sender, kind, last) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (list, sender, kind) DO UPDATE SET last = excluded.last",
        params![list, sender, kind, at],
    )?;
    Ok(())
}

/// Key-address replies `list` sent at `since` or later (its hourly budget).
pub(super) fn list_replies_since(
    conn: &rusqlite::Connection,
    list: &str,
    since: i64,
) -> rusqlite::Result<u64> {
    let n: i64 = conn.query_row(
        "SELECT COUNT(*) FROM replies WHERE list = ?1 AND sent >= ?2",
        params![list, since],
        |r| r.get(0),
    )?;
    Ok(n.max(0) as u64)
}

/// Records a key-address reply of `list` at `at`; only the last day is kept.
pub(super) fn list_reply_record(tx: &Transaction<'_>, list: &str, at: i64) -> rusqlite::Result<()> {
    tx.execute("DELETE FROM replies WHERE sent < ?1", params![at - 86_400])?;
    tx.execute(
        "INSERT INTO replies (list, sent) VALUES (?1, ?2)",
        params![list, at],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{SqliteStore, Store};

    #[test]
    fn one_reply_per_interval_per_sender_and_kind() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path()).unwrap();
        assert!(s.rate_allow("l@x", "a@y", "key", 3600).unwrap());
        assert!(!s.rate_allow("l@x", "a@y", "key", 3600).unwrap());
        assert!(
            s.rate_allow("l@x", "a@y", "challenge", 3600).unwrap(),
            "per kind"
        );
        assert!(
            s.rate_allow("l@x", "b@y", "key", 3600).unwrap(),
            "per sender"
        );
        s.rate_forget("l@x", "a@y", "key").unwrap();
        assert!(
            s.rate_allow("l@x", "a@y", "key", 3600).unwrap(),
            "forgotten"
        );
        s.conn()
            .execute("UPDATE rate SET last = last - 3600", [])
            .unwrap();
        assert!(
            s.rate_allow("l@x", "a@y", "key", 3600).unwrap(),
            "interval over"
        );
    }
}
