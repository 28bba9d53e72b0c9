//! A consistent copy of the state database, and putting one back, for `listcrypt backup` and
//! `restore`. Both go through SQLite itself, so a daemon running meanwhile is never torn.

use super::{bindings, schema, SqliteStore, Store, StoreError, DATABASE};
use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// The newest schema version this listcrypt knows (a backup may be older, never newer).
pub const SCHEMA_VERSION: i64 = schema::LATEST;

/// Tables whose rows make a state worth keeping: `restore` refuses to replace them unforced.
const STATE_TABLES: [&str; 4] = ["bindings", "pending", "replay", "journal"];

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.display().to_string();
    move |source| StoreError::Io { path, source }
}

impl SqliteStore {
    /// Writes a copy of the database to `dest` (a new file, mode 0600) and returns its schema
    /// version. `VACUUM INTO` reads in one transaction: a snapshot, whatever the daemon writes.
    pub fn snapshot_into(&self, dest: &Path) -> Result<i64, StoreError> {
        // Created 0600 and empty before SQLite fills it (VACUUM INTO accepts an empty file).
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dest)
            .map_err(io(dest))?;
        let name = dest.to_str().ok_or_else(|| {
            io(dest)(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "path is not UTF-8",
            ))
        })?;
        self.read(|c| c.execute("VACUUM INTO ?1", [name]))?;
        schema_version_of(dest)
    }

    /// Whether the database holds bindings, pending keys, replay records or journal entries.
    pub fn holds_state(&self) -> Result<bool, StoreError> {
        self.read(|c| {
            for table in STATE_TABLES {
                let sql = format!("SELECT 1 FROM {table} LIMIT 1");
                if c.query_row(&sql, [], |_| Ok(())).optional()?.is_some() {
                    return Ok(true);
                }
            }
            Ok(false)
        })
    }
}

/// The schema version recorded in a database copy, opened read-only; an error if it is no
/// SQLite database or fails SQLite's integrity check.
pub fn schema_version_of(path: &Path) -> Result<i64, StoreError> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let check: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
    if check != "ok" {
        return Err(StoreError::Sql(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
            Some(format!("{}: {check}", path.display())),
        )));
    }
    Ok(schema::current_version(&conn)?)
}

/// Replaces the database in `state_dir` with the copy at `src` in one SQLite write
/// transaction (the online backup API), then migrates it and moves the generation past both
/// old values, so a running daemon reloads rather than keep a snapshot of the same number.
pub fn restore_from(state_dir: &Path, src: &Path) -> Result<(), StoreError> {
    let before = SqliteStore::open(state_dir)?.generation()?;
    let source = Connection::open_with_flags(src, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let mut dest = Connection::open(state_dir.join(DATABASE))?;
    dest.busy_timeout(Duration::from_secs(5))?;
    {
        let backup = Backup::new(&source, &mut dest)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        // -1: every page in one step, so the destination changes in one transaction.
        loop {
            match backup.step(-1)? {
                StepResult::Done => break,
                StepResult::Busy | StepResult::Locked if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => {
                    return Err(StoreError::Busy(rusqlite::Error::SqliteFailure(
                        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
                        Some("restoring the state database".into()),
                    )))
                }
            }
        }
    }
    drop(dest);
    let store = SqliteStore::open(state_dir)?;
    store.write(|tx| {
        let restored = bindings::generation(tx)?;
        tx.execute(
            "UPDATE meta SET value = ?1 WHERE key = 'generation'",
            [before.max(restored) + 1],
        )
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Binding, BindingState, Role};

    fn binding(address: &str) -> Binding {
        Binding {
            list: "l@x".into(),
            address: address.into(),
            fingerprint: "AB".into(),
            role: Role::Member,
            state: BindingState::Active,
            show_key_id: false,
        }
    }

    #[test]
    fn a_snapshot_restores_its_rows_and_moves_the_generation_past_both() {
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (dir.path().join("old"), dir.path().join("new"));
        let s = SqliteStore::open(&old).unwrap();
        s.bind(&binding("a@y")).unwrap();
        let copy = dir.path().join("copy.sqlite");
        assert_eq!(s.snapshot_into(&copy).unwrap(), SCHEMA_VERSION);
        // Written after the snapshot: not in it.
        s.bind(&binding("b@y")).unwrap();
        assert_eq!(schema_version_of(&copy).unwrap(), SCHEMA_VERSION);

        let target = SqliteStore::open(&new).unwrap();
        for _ in 0..5 {
            target.touch().unwrap();
        }
        assert!(!target.holds_state().unwrap());
        restore_from(&new, &copy).unwrap();
        let addresses: Vec<_> = target
            .bindings("l@x")
            .unwrap()
            .into_iter()
            .map(|b| b.address)
            .collect();
        assert_eq!(
            addresses,
            ["a@y"],
            "an open connection sees the restored rows"
        );
        assert!(target.holds_state().unwrap());
        // Copy at generation 1, target at 5: a daemon holding either number reloads.
        assert_eq!(target.generation().unwrap(), 6);
    }

    #[test]
    fn a_file_that_is_no_database_has_no_schema_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.sqlite");
        std::fs::write(
            &path,
            b"not a database, but long enough to look at".repeat(200),
        )
        .unwrap();
        assert!(schema_version_of(&path).is_err());
    }
}
