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
    // --- journal intents ---
    // The batch is queued: its intents are settled, in the same transaction as the record.
    tx.execute(
        "DELETE FROM journal_intent WHERE created < ?1",
        params![now - retain_secs as i64],
    )?;
    let mut settle = tx.prepare_cached(
        "DELETE FROM journal_intent WHERE sender = ?1 AND digest = ?2 AND recipient = ?3",
    )?;
    for r in recipients {
        settle.execute(params![sender, digest, r])?;
    }
    // --- end of journal intents ---
    Ok(())
}

// --- journal intents (in-doubt reinjections) ---

/// Records that a batch's final dot is about to go out: until `record` settles them, its
/// recipients are in doubt. The batch is named by its first recipient.
pub(super) fn intend(
    tx: &Transaction<'_>,
    sender: &str,
    digest: &[u8],
    recipients: &[String],
    retain_secs: u64,
    now: i64,
) -> rusqlite::Result<()> {
    tx.execute(
        "DELETE FROM journal_intent WHERE created < ?1",
        params![now - retain_secs as i64],
    )?;
    let Some(batch) = recipients.first() else {
        return Ok(());
    };
    let mut stmt = tx.prepare_cached(
        "INSERT INTO journal_intent (sender, digest, recipient, batch, created)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (sender, digest, recipient)
         DO UPDATE SET batch = excluded.batch, created = excluded.created",
    )?;
    for r in recipients {
        stmt.execute(params![sender, digest, r, batch, now])?;
    }
    Ok(())
}

/// The intents the journal has no record for, grouped by the batch that wrote them.
pub(super) fn in_doubt(
    conn: &Connection,
    sender: &str,
    digest: &[u8],
) -> rusqlite::Result<Vec<Vec<String>>> {
    let mut stmt = conn.prepare_cached(
        "SELECT i.batch, i.recipient FROM journal_intent i
         WHERE i.sender = ?1 AND i.digest = ?2 AND NOT EXISTS (
             SELECT 1 FROM journal j
             WHERE j.sender = i.sender AND j.digest = i.digest AND j.recipient = i.recipient)
         ORDER BY i.batch, i.recipient",
    )?;
    let rows = stmt.query_map(params![sender, digest], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
    })?;
    Ok(group_by_batch(rows.collect::<rusqlite::Result<Vec<_>>>()?))
}

/// `(batch, recipient)` rows sorted by batch, as one recipient list per batch.
pub(super) fn group_by_batch(rows: Vec<(String, String)>) -> Vec<Vec<String>> {
    let mut batches: Vec<(String, Vec<String>)> = Vec::new();
    for (batch, recipient) in rows {
        match batches.last_mut() {
            Some((b, rs)) if *b == batch => rs.push(recipient),
            _ => batches.push((batch, vec![recipient])),
        }
    }
    batches.into_iter().map(|(_, rs)| rs).collect()
}

// --- end of journal intents ---

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
