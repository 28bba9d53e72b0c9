//! Which recipients a reinjected batch already reached, so a retried post is not sent twice.

use rusqlite::{params, Connection, Transaction};

pub(super) fn sent(
    conn: &Connection,
    sender: &str,
    digest: &[u8],
) -> rusqlite::Result<Vec<String>> {
    let mut stmt =
        conn.prepare_cached("SELECT recipient FROM journal WHERE sender = ?1 AND digest = ?2")?;
    let rows = stmt.query_map(params![sender, digest], |r| r.get(0))?;
    rows.collect()
}

/// Records a reinjected batch; entries older than `retain_secs` are dropped first.
pub(super) fn record(
    tx: &Transaction<'_>,
    sender: &str,
    digest: &[u8],
    recipients: &[String],
    queue_id: &str,
    retain_secs: u64,
    now: i64,
) -> rusqlite::Result<()> {
    tx.execute(
        "DELETE FROM journal WHERE sent < ?1",
        params![now - retain_secs as i64],
    )?;
    let mut stmt = tx.prepare_cached(
        "INSERT INTO journal (sender, digest, recipient, queue_id, sent)
         VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
    )?;
    for r in recipients {
        stmt.execute(params![sender, digest, r, queue_id, now])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{SqliteStore, Store};

    #[test]
    fn journal_remembers_reinjected_recipients() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path()).unwrap();
        assert!(s.journal_sent("l-bounces@x", b"d").unwrap().is_empty());
        s.journal_record(
            "l-bounces@x",
            b"d",
            &["a@y".into(), "b@y".into()],
            "Q1",
            3600,
        )
        .unwrap();
        let mut sent = s.journal_sent("l-bounces@x", b"d").unwrap();
        sent.sort();
        assert_eq!(sent, vec!["a@y".to_string(), "b@y".to_string()]);
        assert!(s.journal_sent("l-bounces@x", b"other").unwrap().is_empty());
    }

    #[test]
    fn journal_drops_entries_past_retention() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path()).unwrap();
        s.journal_record("l-bounces@x", b"d", &["a@y".into()], "Q1", 3600)
            .unwrap();
        s.conn()
            .execute("UPDATE journal SET sent = sent - 10", [])
            .unwrap();
        s.journal_record("l-bounces@x", b"e", &["a@y".into()], "Q2", 0)
            .unwrap();
        assert!(s.journal_sent("l-bounces@x", b"d").unwrap().is_empty());
        assert_eq!(s.journal_sent("l-bounces@x", b"e").unwrap(), vec!["a@y"]);
    }
}
