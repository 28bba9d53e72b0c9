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
    tx.execute(
        "DELETE FROM rate WHERE last < ?1",
        params![now - RETAIN_SECS],
    )?;
    tx.execute(
        "INSERT INTO rate (list, sender, kind, last) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (list, sender, kind) DO UPDATE SET last = excluded.last",
        params![list, sender, kind, now],
    )?;
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
