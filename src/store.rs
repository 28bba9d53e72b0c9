//! Durable state behind a small trait: SQLite in WAL mode, shared safely by the CLI and the
//! running daemon. Every change bumps a generation counter that the daemon checks per message,
//! so `member add` takes effect without a restart.

use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store is busy")]
    Busy(#[source] rusqlite::Error),
    #[error("state store: {0}")]
    Sql(#[source] rusqlite::Error),
    #[error("state store: cannot create {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseBusy) | Some(rusqlite::ErrorCode::DatabaseLocked) => {
                StoreError::Busy(e)
            }
            _ => StoreError::Sql(e),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Member,
    Owner,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Member => "member",
            Role::Owner => "owner",
        }
    }

    fn parse(s: &str) -> Role {
        if s == "owner" {
            Role::Owner
        } else {
            Role::Member
        }
    }
}

/// One address bound to one certificate on one list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    pub list: String,
    pub address: String,
    /// Upper-case hex fingerprint of the bound certificate.
    pub fingerprint: String,
    pub role: Role,
    /// `active` once bound (proven bindings by email will add `pending`).
    pub state: String,
    /// This member gets copies with their key id visible (clients that cannot try keys).
    pub show_key_id: bool,
}

pub trait Store: Send + Sync {
    /// Changes whenever bindings change; cheap enough to call per message.
    fn generation(&self) -> Result<i64, StoreError>;
    /// Bumps the generation (a change the daemon must reload for, e.g. a new list).
    fn touch(&self) -> Result<(), StoreError>;
    fn bindings(&self, list: &str) -> Result<Vec<Binding>, StoreError>;
    fn bind(&self, binding: &Binding) -> Result<(), StoreError>;
    /// Removes a binding and any pending one; returns whether either existed.
    fn unbind(&self, list: &str, address: &str) -> Result<bool, StoreError>;
    /// Records an accepted signature digest; returns `true` if it was already recorded
    /// (a replay). Records older than `retain_secs` are dropped on the way.
    fn replay_record(
        &self,
        list: &str,
        digest: &[u8],
        retain_secs: u64,
    ) -> Result<bool, StoreError>;
    /// Whether a digest is recorded (read-only, for dry runs).
    fn replay_seen(&self, list: &str, digest: &[u8]) -> Result<bool, StoreError>;
    /// Records a pending binding: `address` on `list` to `fingerprint`, proven by `token`.
    fn pending_put(
        &self,
        list: &str,
        address: &str,
        fingerprint: &str,
        token: &str,
        ttl_secs: u64,
    ) -> Result<(), StoreError>;
    /// Fingerprints of unexpired pending bindings for `address` on `list`, with their tokens.
    fn pending_for(&self, list: &str, address: &str) -> Result<Vec<(String, String)>, StoreError>;
    /// Every unexpired pending binding of `list`: (address, fingerprint).
    fn pending_list(&self, list: &str) -> Result<Vec<(String, String)>, StoreError>;
    /// Removes a pending binding once used.
    fn pending_remove(
        &self,
        list: &str,
        address: &str,
        fingerprint: &str,
    ) -> Result<(), StoreError>;
    /// Whether `sender` may get another automatic reply of `kind` from `list` now; records
    /// the reply when allowed (at most one per `interval_secs`).
    /// Forgets a recorded automatic reply (it could not be sent after all).
    fn rate_forget(&self, list: &str, sender: &str, kind: &str) -> Result<(), StoreError>;
    fn rate_allow(
        &self,
        list: &str,
        sender: &str,
        kind: &str,
        interval_secs: u64,
    ) -> Result<bool, StoreError>;
    /// When `sender` last got an automatic reply of `kind` from `list` (read-only: the key
    /// address marks a reply only once it was sent).
    fn rate_last(
        &self,
        list: &str,
        sender: &str,
        kind: &str,
    ) -> Result<Option<SystemTime>, StoreError>;
    /// Records an automatic reply of `kind` to `sender` at `at`.
    fn rate_mark(
        &self,
        list: &str,
        sender: &str,
        kind: &str,
        at: SystemTime,
    ) -> Result<(), StoreError>;
    /// How many key-address replies `list` sent at `since` or later (its hourly budget).
    fn list_replies_since(&self, list: &str, since: SystemTime) -> Result<u64, StoreError>;
    /// Records a key-address reply sent by `list` at `at`.
    fn list_reply_record(&self, list: &str, at: SystemTime) -> Result<(), StoreError>;
    /// Recipients to whom a reinjected batch of this (sender, body digest) already went.
    fn journal_sent(&self, sender: &str, digest: &[u8]) -> Result<Vec<String>, StoreError>;
    /// Records a reinjected batch; entries older than `retain_secs` are dropped on the way.
    fn journal_record(
        &self,
        sender: &str,
        digest: &[u8],
        recipients: &[String],
        queue_id: &str,
        retain_secs: u64,
    ) -> Result<(), StoreError>;
}

fn secs(t: SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub struct SqliteStore {
    conn: Mutex<Connection>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('generation', 0);
CREATE TABLE IF NOT EXISTS bindings (
    list TEXT NOT NULL,
    address TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    role TEXT NOT NULL,
    state TEXT NOT NULL,
    show_key_id INTEGER NOT NULL DEFAULT 0,
    created INTEGER NOT NULL,
    PRIMARY KEY (list, address)
);
CREATE TABLE IF NOT EXISTS replay (
    list TEXT NOT NULL,
    digest BLOB NOT NULL,
    seen INTEGER NOT NULL,
    PRIMARY KEY (list, digest)
);
CREATE INDEX IF NOT EXISTS replay_seen ON replay (seen);
CREATE TABLE IF NOT EXISTS journal (
    sender TEXT NOT NULL,
    digest BLOB NOT NULL,
    recipient TEXT NOT NULL,
    queue_id TEXT NOT NULL,
    sent INTEGER NOT NULL,
    PRIMARY KEY (sender, digest, recipient)
);
CREATE INDEX IF NOT EXISTS journal_sent ON journal (sent);
CREATE TABLE IF NOT EXISTS pending (
    list TEXT NOT NULL,
    address TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    token TEXT NOT NULL,
    expires INTEGER NOT NULL,
    PRIMARY KEY (list, address, fingerprint)
);
CREATE TABLE IF NOT EXISTS replies (list TEXT NOT NULL, sent INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS replies_list_sent ON replies (list, sent);
CREATE TABLE IF NOT EXISTS rate (
    list TEXT NOT NULL,
    sender TEXT NOT NULL,
    kind TEXT NOT NULL,
    last INTEGER NOT NULL,
    PRIMARY KEY (list, sender, kind)
);
";

impl SqliteStore {
    pub fn open(state_dir: &Path) -> Result<SqliteStore, StoreError> {
        std::fs::create_dir_all(state_dir).map_err(|source| StoreError::Io {
            path: state_dir.display().to_string(),
            source,
        })?;
        let conn = Connection::open(state_dir.join("state.sqlite"))?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(SCHEMA)?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (transactions roll back).
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn bump(tx: &rusqlite::Transaction<'_>) -> Result<(), rusqlite::Error> {
    tx.execute(
        "UPDATE meta SET value = value + 1 WHERE key = 'generation'",
        [],
    )?;
    Ok(())
}

impl Store for SqliteStore {
    fn generation(&self) -> Result<i64, StoreError> {
        let conn = self.conn();
        let g: Option<i64> = conn
            .query_row("SELECT value FROM meta WHERE key = 'generation'", [], |r| {
                r.get(0)
            })
            .optional()?;
        Ok(g.unwrap_or(0))
    }

    fn touch(&self) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        bump(&tx)?;
        tx.commit()?;
        Ok(())
    }

    fn bindings(&self, list: &str) -> Result<Vec<Binding>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT list, address, fingerprint, role, state, show_key_id FROM bindings
             WHERE list = ?1 ORDER BY address",
        )?;
        let rows = stmt.query_map(params![list], |r| {
            Ok(Binding {
                list: r.get(0)?,
                address: r.get(1)?,
                fingerprint: r.get(2)?,
                role: Role::parse(&r.get::<_, String>(3)?),
                state: r.get(4)?,
                show_key_id: r.get::<_, i64>(5)? != 0,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    fn bind(&self, b: &Binding) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let now = now_secs();
        tx.execute(
            "INSERT INTO bindings (list, address, fingerprint, role, state, show_key_id, created)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (list, address) DO UPDATE SET fingerprint = excluded.fingerprint,
               role = excluded.role, state = excluded.state, show_key_id = excluded.show_key_id",
            params![
                b.list,
                b.address,
                b.fingerprint,
                b.role.as_str(),
                b.state,
                b.show_key_id as i64,
                now
            ],
        )?;
        bump(&tx)?;
        tx.commit()?;
        Ok(())
    }

    fn unbind(&self, list: &str, address: &str) -> Result<bool, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let n = tx.execute(
            "DELETE FROM bindings WHERE list = ?1 AND address = ?2",
            params![list, address],
        )?;
        // Outstanding challenges go too: a removed member cannot be re-bound by them.
        let p = tx.execute(
            "DELETE FROM pending WHERE list = ?1 AND address = ?2",
            params![list, address],
        )?;
        bump(&tx)?;
        tx.commit()?;
        Ok(n + p > 0)
    }

    fn replay_record(
        &self,
        list: &str,
        digest: &[u8],
        retain_secs: u64,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let now = now_secs();
        tx.execute(
            "DELETE FROM replay WHERE seen < ?1",
            params![now - retain_secs as i64],
        )?;
        let n = tx.execute(
            "INSERT OR IGNORE INTO replay (list, digest, seen) VALUES (?1, ?2, ?3)",
            params![list, digest, now],
        )?;
        tx.commit()?;
        Ok(n == 0)
    }

    fn replay_seen(&self, list: &str, digest: &[u8]) -> Result<bool, StoreError> {
        let conn = self.conn();
        let n: i64 = conn.query_row(
            "SELECT COUNT(*) FROM replay WHERE list = ?1 AND digest = ?2",
            params![list, digest],
            |r| r.get(0),
        )?;
        Ok(n > 0)
    }

    fn journal_sent(&self, sender: &str, digest: &[u8]) -> Result<Vec<String>, StoreError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare_cached("SELECT recipient FROM journal WHERE sender = ?1 AND digest = ?2")?;
        let rows = stmt.query_map(params![sender, digest], |r| r.get(0))?;
        Ok(rows.collect::<Result<Vec<String>, _>>()?)
    }

    fn journal_record(
        &self,
        sender: &str,
        digest: &[u8],
        recipients: &[String],
        queue_id: &str,
        retain_secs: u64,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let now = now_secs();
        tx.execute(
            "DELETE FROM journal WHERE sent < ?1",
            params![now - retain_secs as i64],
        )?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT OR IGNORE INTO journal (sender, digest, recipient, queue_id, sent)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for r in recipients {
                stmt.execute(params![sender, digest, r, queue_id, now])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn pending_put(
        &self,
        list: &str,
        address: &str,
        fingerprint: &str,
        token: &str,
        ttl_secs: u64,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let now = now_secs();
        tx.execute("DELETE FROM pending WHERE expires < ?1", params![now])?;
        tx.execute(
            "INSERT INTO pending (list, address, fingerprint, token, expires) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (list, address, fingerprint) DO UPDATE SET token = excluded.token, expires = excluded.expires",
            params![list, address, fingerprint, token, now + ttl_secs as i64],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn pending_for(&self, list: &str, address: &str) -> Result<Vec<(String, String)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT fingerprint, token FROM pending WHERE list = ?1 AND address = ?2 AND expires >= ?3",
        )?;
        let rows = stmt.query_map(params![list, address, now_secs()], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    fn pending_list(&self, list: &str) -> Result<Vec<(String, String)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT address, fingerprint FROM pending WHERE list = ?1 AND expires >= ?2 ORDER BY address",
        )?;
        let rows = stmt.query_map(params![list, now_secs()], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    fn pending_remove(
        &self,
        list: &str,
        address: &str,
        fingerprint: &str,
    ) -> Result<(), StoreError> {
        let conn = self.conn();
        conn.execute(
            "DELETE FROM pending WHERE list = ?1 AND address = ?2 AND fingerprint = ?3",
            params![list, address, fingerprint],
        )?;
        Ok(())
    }

    fn rate_forget(&self, list: &str, sender: &str, kind: &str) -> Result<(), StoreError> {
        let conn = self.conn();
        conn.execute(
            "DELETE FROM rate WHERE list = ?1 AND sender = ?2 AND kind = ?3",
            params![list, sender, kind],
        )?;
        Ok(())
    }

    fn rate_last(
        &self,
        list: &str,
        sender: &str,
        kind: &str,
    ) -> Result<Option<SystemTime>, StoreError> {
        let conn = self.conn();
        let last: Option<i64> = conn
            .query_row(
                "SELECT last FROM rate WHERE list = ?1 AND sender = ?2 AND kind = ?3",
                params![list, sender, kind],
                |r| r.get(0),
            )
            .optional()?;
        Ok(last.map(|t| std::time::UNIX_EPOCH + Duration::from_secs(t.max(0) as u64)))
    }

    fn rate_mark(
        &self,
        list: &str,
        sender: &str,
        kind: &str,
        at: SystemTime,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let at = secs(at);
        tx.execute("DELETE FROM rate WHERE last < ?1", params![at - 86_400 * 7])?;
        tx.execute(
            "INSERT INTO rate (list, sender, kind, last) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (list, sender, kind) DO UPDATE SET last = excluded.last",
            params![list, sender, kind, at],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn list_replies_since(&self, list: &str, since: SystemTime) -> Result<u64, StoreError> {
        let conn = self.conn();
        let n: i64 = conn.query_row(
            "SELECT COUNT(*) FROM replies WHERE list = ?1 AND sent >= ?2",
            params![list, secs(since)],
            |r| r.get(0),
        )?;
        Ok(n as u64)
    }

    fn list_reply_record(&self, list: &str, at: SystemTime) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let at = secs(at);
        // Only the last hour counts; a day's rows are kept for the admin's eyes.
        tx.execute("DELETE FROM replies WHERE sent < ?1", params![at - 86_400])?;
        tx.execute(
            "INSERT INTO replies (list, sent) VALUES (?1, ?2)",
            params![list, at],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn rate_allow(
        &self,
        list: &str,
        sender: &str,
        kind: &str,
        interval_secs: u64,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let now = now_secs();
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
            params![now - 86_400 * 7],
        )?;
        tx.execute(
            "INSERT INTO rate (list, sender, kind, last) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (list, sender, kind) DO UPDATE SET last = excluded.last",
            params![list, sender, kind, now],
        )?;
        tx.commit()?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_unbind_bumps_generation_and_is_shared_between_handles() {
        let dir = tempfile::tempdir().unwrap();
        let a = SqliteStore::open(dir.path()).unwrap();
        let b = SqliteStore::open(dir.path()).unwrap();
        let g0 = b.generation().unwrap();
        let binding = Binding {
            list: "l@x".into(),
            address: "a@y".into(),
            fingerprint: "AB".into(),
            role: Role::Owner,
            state: "active".into(),
            show_key_id: true,
        };
        a.bind(&binding).unwrap();
        assert!(b.generation().unwrap() > g0);
        assert_eq!(b.bindings("l@x").unwrap(), vec![binding]);
        assert!(a.unbind("l@x", "a@y").unwrap());
        assert!(!a.unbind("l@x", "a@y").unwrap());
        assert!(b.bindings("l@x").unwrap().is_empty());
    }

    #[test]
    fn pending_bindings_and_rate_limits() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path()).unwrap();
        s.pending_put("l@x", "a@y", "FPR", "tok", 3600).unwrap();
        assert_eq!(
            s.pending_for("l@x", "a@y").unwrap(),
            vec![("FPR".into(), "tok".into())]
        );
        assert!(s.pending_for("l@x", "b@y").unwrap().is_empty());
        s.pending_remove("l@x", "a@y", "FPR").unwrap();
        assert!(s.pending_for("l@x", "a@y").unwrap().is_empty());
        s.pending_put("l@x", "a@y", "FPR", "tok", 0).unwrap();
        s.conn()
            .execute("UPDATE pending SET expires = expires - 10", [])
            .unwrap();
        assert!(s.pending_for("l@x", "a@y").unwrap().is_empty(), "expired");

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
    }

    #[test]
    fn rate_marks_are_read_without_writing() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path()).unwrap();
        let t = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(s.rate_last("l@x", "a@y", "key").unwrap(), None);
        assert_eq!(
            s.rate_last("l@x", "a@y", "key").unwrap(),
            None,
            "reading marks nothing"
        );
        s.rate_mark("l@x", "a@y", "key", t).unwrap();
        assert_eq!(s.rate_last("l@x", "a@y", "key").unwrap(), Some(t));
        assert_eq!(s.rate_last("l@x", "a@y", "challenge").unwrap(), None);

        assert_eq!(s.list_replies_since("l@x", t).unwrap(), 0);
        s.list_reply_record("l@x", t).unwrap();
        s.list_reply_record("l@x", t + Duration::from_secs(10))
            .unwrap();
        s.list_reply_record("m@x", t).unwrap();
        assert_eq!(s.list_replies_since("l@x", t).unwrap(), 2);
        assert_eq!(
            s.list_replies_since("l@x", t + Duration::from_secs(5))
                .unwrap(),
            1
        );
    }

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
