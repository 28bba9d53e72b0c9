//! Digests of accepted signatures per list, so a replayed post or command is recognised.
//!
//! A post's record starts tentative (listcrypt said yes, but the message may still be lost
//! behind it) and becomes final once Mailman is seen to have it; key-address commands are
//! final at once.

use super::StoreError;
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use std::sync::{Arc, Mutex};

/// How sure the ledger is that the recorded message reached Mailman.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayState {
    /// Accepted by listcrypt, not yet seen leaving Mailman: a duplicate may be the sender's
    /// retry of a message lost after listcrypt's yes.
    Tentative,
    /// Known to be with Mailman (or a key-address command): a duplicate is a replay.
    Final,
}

impl ReplayState {
    pub(super) fn parse(s: &str) -> ReplayState {
        // Anything but the tentative marker is final: an unknown state never weakens a record.
        if s == "tentative" {
            ReplayState::Tentative
        } else {
            ReplayState::Final
        }
    }
}

/// A post's claim on the ledger: its digest under `scope`, and how to find it again when
/// Mailman emits it (`list` and the `message_id` Mailman keeps).
#[derive(Debug, Clone, Copy)]
pub struct ReplayClaim<'a> {
    pub scope: &'a str,
    pub digest: &'a [u8],
    pub list: &'a str,
    pub message_id: Option<&'a str>,
    /// Seconds any record is kept after it was last confirmed.
    pub retain_secs: u64,
    /// Seconds a tentative record waits for evidence before it is dropped.
    pub confirm_secs: u64,
}

/// Records `digest` for `list` as final; returns `true` if it was already there (a replay).
/// Records older than `retain_secs` are dropped first.
pub(super) fn record(
    tx: &Transaction<'_>,
    list: &str,
    digest: &[u8],
    retain_secs: u64,
    now: i64,
) -> rusqlite::Result<bool> {
    expire(tx, retain_secs, now)?;
    let n = tx.execute(
        "INSERT INTO replay (list, digest, seen, state, created) VALUES (?1, ?2, ?3, 'final', ?3)
         ON CONFLICT DO NOTHING",
        params![list, digest, now],
    )?;
    Ok(n == 0)
}

/// Records the claim as tentative when its digest has no record, or only a tentative one past
/// its confirmation window (lapsed: the retry counts as new and takes the record over);
/// the same statement on both backends.
pub(super) const CLAIM_SQL: &str =
    "INSERT INTO replay (list, digest, seen, state, message_id, post_list, created)
     VALUES ($1, $2, $3, 'tentative', $4, $5, $3)
     ON CONFLICT (list, digest) DO UPDATE
       SET seen = excluded.seen, message_id = excluded.message_id,
           post_list = excluded.post_list, created = excluded.created
       WHERE replay.state = 'tentative' AND replay.created < $6";

/// The state of an existing record, or `None` after recording the claim as tentative.
pub(super) fn claim(
    tx: &Transaction<'_>,
    c: &ReplayClaim<'_>,
    now: i64,
) -> rusqlite::Result<Option<ReplayState>> {
    expire(tx, c.retain_secs, now)?;
    let lapsed = now.saturating_sub(c.confirm_secs as i64);
    let changed = tx.prepare_cached(CLAIM_SQL)?.execute(params![
        c.scope,
        c.digest,
        now,
        c.message_id,
        c.list,
        lapsed
    ])?;
    if changed == 1 {
        return Ok(None);
    }
    state(tx, c.scope, c.digest)
}

type Answer = Arc<Mutex<Option<Result<Option<ReplayState>, StoreError>>>>;

/// A claim waiting for the SQLite connection (group commit), with the slot for its answer.
pub(super) struct Queued {
    scope: String,
    digest: Vec<u8>,
    list: String,
    message_id: Option<String>,
    retain_secs: u64,
    confirm_secs: u64,
    now: i64,
    pub(super) answer: Answer,
}

impl Queued {
    pub(super) fn new(c: &ReplayClaim<'_>, now: i64) -> Queued {
        Queued {
            scope: c.scope.to_string(),
            digest: c.digest.to_vec(),
            list: c.list.to_string(),
            message_id: c.message_id.map(str::to_string),
            retain_secs: c.retain_secs,
            confirm_secs: c.confirm_secs,
            now,
            answer: Answer::default(),
        }
    }

    fn claim(&self) -> ReplayClaim<'_> {
        ReplayClaim {
            scope: &self.scope,
            digest: &self.digest,
            list: &self.list,
            message_id: self.message_id.as_deref(),
            retain_secs: self.retain_secs,
            confirm_secs: self.confirm_secs,
        }
    }
}

pub(super) fn take_answer(answer: &Answer) -> Option<Result<Option<ReplayState>, StoreError>> {
    answer.lock().unwrap_or_else(|e| e.into_inner()).take()
}

/// Claims every queued record in one IMMEDIATE transaction, in order (each sees the ones
/// before it), and answers each after the commit. Any failure rolls the whole batch back and
/// answers every claim with an error: none of them was recorded, all of them are retried.
pub(super) fn claim_all(conn: &mut Connection, batch: Vec<Queued>) {
    let run = |conn: &mut Connection| -> rusqlite::Result<Vec<Option<ReplayState>>> {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let states = batch
            .iter()
            .map(|q| claim(&tx, &q.claim(), q.now))
            .collect::<rusqlite::Result<Vec<_>>>()?;
        tx.commit()?;
        Ok(states)
    };
    let answers: Vec<Result<Option<ReplayState>, StoreError>> = match run(conn) {
        Ok(states) => states.into_iter().map(Ok).collect(),
        Err(e) => {
            let first = StoreError::from(e);
            let text = first.to_string();
            let busy = matches!(first, StoreError::Busy(_));
            std::iter::once(first)
                .chain((1..batch.len()).map(|_| {
                    if busy {
                        StoreError::Unavailable(format!("{text} (busy)"))
                    } else {
                        StoreError::Unavailable(text.clone())
                    }
                }))
                .map(Err)
                .collect()
        }
    };
    for (q, a) in batch.iter().zip(answers) {
        *q.answer.lock().unwrap_or_else(|e| e.into_inner()) = Some(a);
    }
}

/// Makes final every tentative record of a post to `list` with one of `message_ids`, lapsed
/// ones included (Mailman or Postfix may have been down for longer than the window); its
/// retention starts again now. Returns how many records changed.
pub(super) fn confirm(
    tx: &Transaction<'_>,
    list: &str,
    message_ids: &[String],
    now: i64,
) -> rusqlite::Result<usize> {
    let mut n = 0;
    for id in message_ids {
        n += tx.execute(
            "UPDATE replay SET state = 'final', seen = ?1
             WHERE state = 'tentative' AND post_list = ?2 AND message_id = ?3",
            params![now, list, id],
        )?;
    }
    Ok(n)
}

/// Drops records past their retention. A tentative record past its confirmation window is
/// kept (a claim takes it over), so that evidence arriving late still makes it final.
fn expire(tx: &Transaction<'_>, retain_secs: u64, now: i64) -> rusqlite::Result<()> {
    tx.prepare_cached("DELETE FROM replay WHERE seen < ?1")?
        .execute(params![now.saturating_sub(retain_secs as i64)])?;
    Ok(())
}

pub(super) fn seen(conn: &Connection, list: &str, digest: &[u8]) -> rusqlite::Result<bool> {
    Ok(state(conn, list, digest)?.is_some())
}

/// The record's state, whatever its age (a dry run does not expire anything).
pub(super) fn state(
    conn: &Connection,
    list: &str,
    digest: &[u8],
) -> rusqlite::Result<Option<ReplayState>> {
    let s: Option<String> = conn
        .prepare_cached("SELECT state FROM replay WHERE list = ?1 AND digest = ?2")?
        .query_row(params![list, digest], |r| r.get(0))
        .optional()?;
    Ok(s.as_deref().map(ReplayState::parse))
}

#[cfg(test)]
mod tests {
    use super::super::{SqliteStore, Store};
    use super::{ReplayClaim, ReplayState};
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

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

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn post<'a>(digest: &'a [u8], id: &'a str) -> ReplayClaim<'a> {
        ReplayClaim {
            scope: "*",
            digest,
            list: "l@x",
            message_id: Some(id),
            retain_secs: 14 * 86_400,
            confirm_secs: 3600,
        }
    }

    #[test]
    fn a_post_is_tentative_until_its_message_id_leaves_for_its_list() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path()).unwrap();
        let t0 = 1_800_000_000;
        assert_eq!(s.replay_claim(&post(b"d1", "<a@y>"), at(t0)).unwrap(), None);
        assert_eq!(
            s.replay_claim(&post(b"d1", "<a@y>"), at(t0 + 60)).unwrap(),
            Some(ReplayState::Tentative)
        );
        // Another list emitting the same Message-ID is no evidence for this one.
        let ids = ["<a@y>".to_string()];
        assert_eq!(s.replay_confirm("m@x", &ids, at(t0 + 70)).unwrap(), 0);
        assert_eq!(s.replay_confirm("l@x", &ids, at(t0 + 80)).unwrap(), 1);
        // Final outlives the confirmation window.
        assert_eq!(
            s.replay_claim(&post(b"d1", "<a@y>"), at(t0 + 7200))
                .unwrap(),
            Some(ReplayState::Final)
        );
        assert_eq!(
            s.replay_state("*", b"d1").unwrap(),
            Some(ReplayState::Final)
        );
    }

    #[test]
    fn a_tentative_post_without_evidence_lapses_after_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path()).unwrap();
        let t0 = 1_800_000_000;
        assert_eq!(s.replay_claim(&post(b"d1", "<a@y>"), at(t0)).unwrap(), None);
        assert_eq!(
            s.replay_claim(&post(b"d1", "<a@y>"), at(t0 + 3600))
                .unwrap(),
            Some(ReplayState::Tentative),
            "still inside the window"
        );
        assert_eq!(
            s.replay_claim(&post(b"d1", "<a@y>"), at(t0 + 3601))
                .unwrap(),
            None,
            "past the window the retry is new, and takes the record over"
        );
        assert_eq!(
            s.replay_state("*", b"d1").unwrap(),
            Some(ReplayState::Tentative)
        );
        // Evidence after the record was dropped finds nothing to confirm.
        s.conn().execute("DELETE FROM replay", []).unwrap();
        let ids = ["<a@y>".to_string()];
        assert_eq!(s.replay_confirm("l@x", &ids, at(t0 + 9000)).unwrap(), 0);
    }

    #[test]
    fn key_address_records_are_final_and_a_dry_run_sees_them() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path()).unwrap();
        assert!(!s.replay_record("l@x", b"k1", 3600).unwrap());
        assert_eq!(
            s.replay_state("l@x", b"k1").unwrap(),
            Some(ReplayState::Final)
        );
        assert_eq!(s.replay_state("l@x", b"k2").unwrap(), None);
    }
}
