//! The schema as an ordered list of migrations, recorded in `schema_migrations` so that every
//! backend (SQLite now, PostgreSQL later) can tell which ones a database has.
//!
//! The SQL is written to run on PostgreSQL too where a portable form exists (`ON CONFLICT`,
//! `BIGINT`, `ALTER TABLE … RENAME COLUMN`); the exceptions say so beside them. Both backends
//! apply the same list, record it in the same `schema_migrations` table, and refuse a database
//! that a newer listcrypt migrated further by a migration that is not additive (`min_reader`
//! in `meta`), so hosts can be upgraded one at a time.

use super::StoreError;
use rusqlite::{params, Connection, Transaction, TransactionBehavior};

struct Migration {
    version: i64,
    name: &'static str,
    sql: &'static str,
    /// Work SQL cannot do portably (SQLite has no SHA-256), run after `sql` in the same
    /// transaction.
    then: Option<fn(&Transaction<'_>) -> rusqlite::Result<()>>,
    /// PostgreSQL's form of `sql` plus `then`, where it differs beyond the spelling of BLOB.
    postgres: Option<&'static str>,
    /// Only adds tables (or nullable columns nothing older reads): a listcrypt that predates
    /// it can still use the database, so hosts can be upgraded one at a time.
    additive: bool,
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "initial schema",
        // IF NOT EXISTS throughout: a database made before schema_migrations existed has exactly
        // these tables, so applying this to it changes nothing and records it as version 1.
        // BLOB is SQLite's spelling; PostgreSQL's is BYTEA.
        sql: "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL);
INSERT INTO meta (key, value) VALUES ('generation', 0) ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS bindings (
    list TEXT NOT NULL,
    address TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    role TEXT NOT NULL,
    state TEXT NOT NULL,
    show_key_id INTEGER NOT NULL DEFAULT 0,
    created BIGINT NOT NULL,
    PRIMARY KEY (list, address)
);
CREATE TABLE IF NOT EXISTS replay (
    list TEXT NOT NULL,
    digest BLOB NOT NULL,
    seen BIGINT NOT NULL,
    PRIMARY KEY (list, digest)
);
CREATE INDEX IF NOT EXISTS replay_seen ON replay (seen);
CREATE TABLE IF NOT EXISTS journal (
    sender TEXT NOT NULL,
    digest BLOB NOT NULL,
    recipient TEXT NOT NULL,
    queue_id TEXT NOT NULL,
    sent BIGINT NOT NULL,
    PRIMARY KEY (sender, digest, recipient)
);
CREATE INDEX IF NOT EXISTS journal_sent ON journal (sent);
CREATE TABLE IF NOT EXISTS pending (
    list TEXT NOT NULL,
    address TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    token TEXT NOT NULL,
    expires BIGINT NOT NULL,
    PRIMARY KEY (list, address, fingerprint)
);
CREATE TABLE IF NOT EXISTS rate (
    list TEXT NOT NULL,
    sender TEXT NOT NULL,
    kind TEXT NOT NULL,
    last BIGINT NOT NULL,
    PRIMARY KEY (list, sender, kind)
);
",
        then: None,
        postgres: None,
        additive: false,
    },
    Migration {
        version: 2,
        name: "pending challenge tokens stored as SHA-256",
        sql: "ALTER TABLE pending RENAME COLUMN token TO token_sha256;",
        then: Some(hash_pending_tokens),
        // PostgreSQL has SHA-256 built in (since 11): the same hex digest as `hash_token`.
        postgres: Some(
            "ALTER TABLE pending RENAME COLUMN token TO token_sha256;
UPDATE pending SET token_sha256 = encode(sha256(convert_to(token_sha256, 'UTF8')), 'hex');",
        ),
        additive: false,
    },
    Migration {
        version: 3,
        name: "key-address replies per list (the list-wide hourly budget)",
        sql: "
CREATE TABLE IF NOT EXISTS replies (list TEXT NOT NULL, sent BIGINT NOT NULL);
CREATE INDEX IF NOT EXISTS replies_list_sent ON replies (list, sent);
",
        then: None,
        postgres: None,
        additive: false,
    },
    Migration {
        version: 4,
        name: "replay records tentative until Mailman is seen to have the post",
        // Records made before this were taken as final when made: they stay final. `seen`
        // now counts retention from the last confirmation, `created` the confirmation window.
        sql: "
ALTER TABLE replay ADD COLUMN state TEXT NOT NULL DEFAULT 'final';
ALTER TABLE replay ADD COLUMN message_id TEXT;
ALTER TABLE replay ADD COLUMN post_list TEXT;
ALTER TABLE replay ADD COLUMN created BIGINT NOT NULL DEFAULT 0;
UPDATE replay SET created = seen;
CREATE INDEX IF NOT EXISTS replay_post ON replay (post_list, message_id);
",
        then: None,
        postgres: None,
        additive: false,
    },
    Migration {
        version: 5,
        name: "member certificates, list keys and hosts' policy digests",
        // New tables only: a host still on the previous release keeps working beside one that
        // runs this. SQLite sites keep certificates and keys under keyring_dir (these stay empty).
        sql: "
CREATE TABLE IF NOT EXISTS certs (
    fingerprint TEXT PRIMARY KEY,
    cert BLOB NOT NULL,
    version BIGINT NOT NULL,
    updated BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS list_keys (
    list TEXT PRIMARY KEY,
    public BLOB NOT NULL,
    secret BLOB NOT NULL,
    version BIGINT NOT NULL,
    updated BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS hosts (
    host TEXT PRIMARY KEY,
    policy_sha256 TEXT NOT NULL,
    seen BIGINT NOT NULL
);
",
        then: None,
        postgres: None,
        additive: true,
    },
    // --- journal intents (in-doubt reinjections) ---
    Migration {
        version: 6,
        name: "reinjection intents, written before the final dot",
        // A new table only: a listcrypt that predates it neither writes nor reads intents,
        // and an intent counts only while the journal lacks its recipient, so min_reader stays.
        // `batch` is the batch's first recipient: it groups one batch's rows for the log.
        sql: "
CREATE TABLE IF NOT EXISTS journal_intent (
    sender TEXT NOT NULL,
    digest BLOB NOT NULL,
    recipient TEXT NOT NULL,
    batch TEXT NOT NULL,
    created BIGINT NOT NULL,
    PRIMARY KEY (sender, digest, recipient)
);
CREATE INDEX IF NOT EXISTS journal_intent_created ON journal_intent (created);
",
        then: None,
        postgres: None,
        additive: true,
    },
    // --- end of journal intents ---
    // --- admin API (tokens, audit log) ---
    Migration {
        version: 7,
        name: "admin API tokens and audit log",
        // New tables only. A token is kept as its id and the SHA-256 of the whole token.
        sql: "
CREATE TABLE IF NOT EXISTS api_tokens (
    id TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL,
    site_admin BIGINT NOT NULL,
    list TEXT NOT NULL,
    scopes TEXT NOT NULL,
    created BIGINT NOT NULL,
    expires BIGINT,
    revoked BIGINT
);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at BIGINT NOT NULL,
    token_id TEXT NOT NULL,
    list TEXT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_list ON audit (list, seq);
",
        then: None,
        // PostgreSQL spells SQLite's AUTOINCREMENT key as an identity column.
        postgres: Some(
            "
CREATE TABLE IF NOT EXISTS api_tokens (
    id TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL,
    site_admin BIGINT NOT NULL,
    list TEXT NOT NULL,
    scopes TEXT NOT NULL,
    created BIGINT NOT NULL,
    expires BIGINT,
    revoked BIGINT
);
CREATE TABLE IF NOT EXISTS audit (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at BIGINT NOT NULL,
    token_id TEXT NOT NULL,
    list TEXT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_list ON audit (list, seq);
",
        ),
        additive: true,
    },
    // --- end admin API ---
    // ---- certificate cache (issue 14) ----------------------------------------------------
    Migration {
        version: 8,
        name: "certificate cache: members' validated encryption keys",
        // A new table nothing older reads: additive, min_reader stays. Only a cache: rows are
        // checked against the certificate's digest and a tag before use, and may be deleted.
        sql: "
CREATE TABLE IF NOT EXISTS cert_cache (
    fingerprint TEXT NOT NULL,
    address TEXT NOT NULL,
    cert_sha256 BLOB NOT NULL,
    tag TEXT NOT NULL,
    valid_from BIGINT NOT NULL,
    valid_until BIGINT NOT NULL,
    expires BIGINT,
    features BLOB NOT NULL,
    keys BLOB NOT NULL,
    check_sha256 BLOB NOT NULL,
    PRIMARY KEY (fingerprint, address)
);
",
        then: None,
        postgres: None,
        additive: true,
    },
    // ---- end certificate cache -----------------------------------------------------------
    // --- encrypted archive (issue 15 item 5) ---
    Migration {
        version: 9,
        name: "posts archived per list, and archive keys in the database",
        // New tables only. `archived` makes a post's several outbound transactions archive it
        // once; SQLite sites keep archive keys under keyring_dir (archive_keys stays empty).
        sql: "
CREATE TABLE IF NOT EXISTS archived (
    list TEXT NOT NULL,
    digest BLOB NOT NULL,
    archived BIGINT NOT NULL,
    PRIMARY KEY (list, digest)
);
CREATE INDEX IF NOT EXISTS archived_at ON archived (archived);
CREATE TABLE IF NOT EXISTS archive_keys (
    list TEXT PRIMARY KEY,
    cert BLOB NOT NULL,
    updated BIGINT NOT NULL
);
",
        then: None,
        postgres: None,
        additive: true,
    },
    // --- end encrypted archive ---
];

/// The newest schema version this code knows.
pub(super) const LATEST: i64 = MIGRATIONS[MIGRATIONS.len() - 1].version;

/// The oldest schema a listcrypt must know to use a database this code migrated: the newest
/// migration that is not additive. Recorded in `meta` as `min_reader`, so that a listcrypt
/// that knows fewer migrations, but at least this many, uses the database as it is.
const MIN_READER: i64 = {
    let mut i = MIGRATIONS.len();
    let mut v = 0;
    while i > 0 {
        i -= 1;
        if !MIGRATIONS[i].additive {
            v = MIGRATIONS[i].version;
            break;
        }
    }
    v
};

/// A database migrated past `LATEST` is used as it is when every migration this code lacks
/// is additive (`min_reader` ≤ `LATEST`); otherwise it is refused.
fn check_newer(found: i64, min_reader: Option<i64>) -> Result<bool, StoreError> {
    if found <= LATEST {
        return Ok(false);
    }
    match min_reader {
        Some(m) if m <= LATEST => {
            tracing::warn!(
                "state store: database schema version {found} is newer than this listcrypt \
                 knows ({LATEST}), but only by additive migrations: using it as it is"
            );
            Ok(true)
        }
        _ => Err(StoreError::SchemaTooNew {
            found,
            known: LATEST,
        }),
    }
}

const RECORD_MIN_READER_SQLITE: &str = "INSERT INTO meta (key, value) VALUES ('min_reader', ?1)
     ON CONFLICT (key) DO UPDATE SET value = max(meta.value, excluded.value)";
const RECORD_MIN_READER_PG: &str = "INSERT INTO meta (key, value) VALUES ('min_reader', $1)
     ON CONFLICT (key) DO UPDATE SET value = GREATEST(meta.value, excluded.value)";

/// Challenges already out keep working: their clear tokens are replaced by their hashes.
fn hash_pending_tokens(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    let rows: Vec<(String, String, String, String)> = tx
        .prepare("SELECT list, address, fingerprint, token_sha256 FROM pending")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut update = tx.prepare(
        "UPDATE pending SET token_sha256 = ?1 WHERE list = ?2 AND address = ?3 AND fingerprint = ?4",
    )?;
    for (list, address, fingerprint, token) in rows {
        update.execute(params![
            super::pending::hash_token(&token),
            list,
            address,
            fingerprint
        ])?;
    }
    Ok(())
}

const CREATE_MIGRATIONS_TABLE: &str = "
CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    applied_at BIGINT NOT NULL
);";

pub(super) fn current_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
        [],
        |r| r.get(0),
    )
}

/// Applies every migration the database lacks, each in its own transaction, and refuses a
/// database that a newer listcrypt has migrated further than this one knows.
pub(super) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    conn.execute_batch(CREATE_MIGRATIONS_TABLE)?;
    let found = current_version(conn)?;
    if found > LATEST {
        let min_reader = conn
            .query_row("SELECT value FROM meta WHERE key = 'min_reader'", [], |r| {
                r.get(0)
            })
            .ok();
        check_newer(found, min_reader)?;
        return Ok(());
    }
    for m in MIGRATIONS.iter().filter(|m| m.version > found) {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        // The daemon and the CLI may open a new database at the same moment: the loser of
        // the write lock finds the migration done.
        if current_version(&tx)? >= m.version {
            continue;
        }
        tx.execute_batch(m.sql)?;
        if let Some(then) = m.then {
            then(&tx)?;
        }
        tx.execute(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?1, ?2, ?3)",
            params![m.version, m.name, super::now_secs()],
        )?;
        tx.commit()?;
    }
    conn.execute(RECORD_MIN_READER_SQLITE, params![MIN_READER])?;
    Ok(())
}

/// A migration's SQL for PostgreSQL: its own form if it has one, else the SQLite text with
/// BLOB spelled BYTEA (the one type the two spell differently in this schema).
fn postgres_sql(m: &Migration) -> String {
    match m.postgres {
        Some(sql) => sql.to_string(),
        None => m.sql.replace(" BLOB ", " BYTEA "),
    }
}

/// Any constant both hosts agree on: the advisory lock that serialises their migrations.
const PG_MIGRATION_LOCK: i64 = 0x6c69_7374_6372_7970;

/// PostgreSQL: applies every migration the database lacks in one transaction (its DDL is
/// transactional), under an advisory lock so that hosts starting together migrate once.
pub(super) async fn migrate_postgres(
    client: &mut tokio_postgres::Client,
) -> Result<(), StoreError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PG_MIGRATION_LOCK])
        .await?;
    tx.batch_execute(CREATE_MIGRATIONS_TABLE).await?;
    let found: i32 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            &[],
        )
        .await?
        .get(0);
    let found = i64::from(found);
    if found > LATEST {
        let min_reader: Option<i64> = tx
            .query_opt("SELECT value FROM meta WHERE key = 'min_reader'", &[])
            .await?
            .map(|r| r.get(0));
        check_newer(found, min_reader)?;
        tx.commit().await?;
        return Ok(());
    }
    for m in MIGRATIONS.iter().filter(|m| m.version > found) {
        tx.batch_execute(&postgres_sql(m)).await?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, applied_at)
             VALUES ($1, $2, extract(epoch from now())::bigint)",
            &[&(m.version as i32), &m.name],
        )
        .await?;
    }
    tx.execute(RECORD_MIN_READER_PG, &[&MIN_READER]).await?;
    tx.commit().await?;
    Ok(())
}

/// Every migration's version and name, in order (tests compare `schema_migrations` to it).
pub fn versions() -> Vec<(i64, String)> {
    MIGRATIONS
        .iter()
        .map(|m| (m.version, m.name.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::{BindingState, SqliteStore, Store};
    use super::*;

    /// The schema as `src/store.rs` created it before schema_migrations existed, verbatim.
    const OLD_SCHEMA: &str = "
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
CREATE TABLE IF NOT EXISTS rate (
    list TEXT NOT NULL,
    sender TEXT NOT NULL,
    kind TEXT NOT NULL,
    last INTEGER NOT NULL,
    PRIMARY KEY (list, sender, kind)
);
";

    fn recorded(s: &SqliteStore) -> Vec<(i64, String)> {
        s.conn()
            .prepare("SELECT version, name FROM schema_migrations ORDER BY version")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    fn all_versions() -> Vec<(i64, String)> {
        MIGRATIONS
            .iter()
            .map(|m| (m.version, m.name.to_string()))
            .collect()
    }

    #[test]
    fn migrations_are_numbered_one_up_in_order() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i64 + 1, "{}", m.name);
        }
    }

    #[test]
    fn an_empty_directory_gets_every_migration_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path()).unwrap();
        assert_eq!(recorded(&s), all_versions());
        assert_eq!(s.generation().unwrap(), 0);
        drop(s);
        let s = SqliteStore::open(dir.path()).unwrap();
        assert_eq!(
            recorded(&s),
            all_versions(),
            "reopening applies nothing twice"
        );
    }

    #[test]
    fn concurrent_opens_of_a_new_database_migrate_it_once() {
        let dir = tempfile::tempdir().unwrap();
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let path = dir.path().to_path_buf();
                std::thread::spawn(move || SqliteStore::open(&path).map(|_| ()))
            })
            .collect();
        for h in handles {
            h.join().unwrap().unwrap();
        }
        let s = SqliteStore::open(dir.path()).unwrap();
        assert_eq!(recorded(&s), all_versions());
    }

    #[test]
    fn a_database_made_by_the_old_code_opens_and_keeps_its_state() {
        let dir = tempfile::tempdir().unwrap();
        {
            let old = Connection::open(dir.path().join("state.sqlite")).unwrap();
            old.pragma_update(None, "journal_mode", "WAL").unwrap();
            old.execute_batch(OLD_SCHEMA).unwrap();
            old.execute_batch(
                "UPDATE meta SET value = 7 WHERE key = 'generation';
                 INSERT INTO bindings VALUES ('l@x', 'a@y', 'AB', 'owner', 'active', 1, 0);
                 INSERT INTO pending VALUES ('l@x', 'b@y', 'CD',
                     'mfrggzdfmztwq2lknnwg23tpobyxe43u', 4102444800);
                 INSERT INTO replay VALUES ('*', x'd1', 1700000000);",
            )
            .unwrap();
        }
        let s = SqliteStore::open(dir.path()).unwrap();
        assert_eq!(recorded(&s), all_versions());
        assert_eq!(s.generation().unwrap(), 7);
        let b = &s.bindings("l@x").unwrap()[0];
        assert_eq!((b.address.as_str(), b.state), ("a@y", BindingState::Active));
        assert!(b.show_key_id);
        // The challenge already out still confirms, by its hash now.
        let raw: String = s
            .conn()
            .query_row("SELECT token_sha256 FROM pending", [], |r| r.get(0))
            .unwrap();
        assert_eq!(
            raw,
            "3eb68f93ebf78ee569898a83fa9013c7fc151e05e44410db950097e33f8548d1"
        );
        assert!(s
            .pending_token_matches("l@x", "b@y", "CD", "mfrggzdfmztwq2lknnwg23tpobyxe43u")
            .unwrap());
        // A replay record from before tentative records existed was final when made.
        assert_eq!(
            s.replay_state("*", &[0xd1]).unwrap(),
            Some(super::super::ReplayState::Final)
        );
        let created: i64 = s
            .conn()
            .query_row("SELECT created FROM replay", [], |r| r.get(0))
            .unwrap();
        assert_eq!(created, 1_700_000_000);
    }

    #[test]
    fn a_database_from_a_newer_listcrypt_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path()).unwrap();
        s.conn()
            .execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?1, 'future', 0)",
                [LATEST + 1],
            )
            .unwrap();
        // The future migration is not additive: a reader must know it.
        s.conn()
            .execute(
                "UPDATE meta SET value = ?1 WHERE key = 'min_reader'",
                [LATEST + 1],
            )
            .unwrap();
        drop(s);
        match SqliteStore::open(dir.path()) {
            Err(e @ StoreError::SchemaTooNew { .. }) => {
                let text = e.to_string();
                assert!(
                    text.contains(&format!("version {} is newer", LATEST + 1)),
                    "{text}"
                );
            }
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("a newer schema was opened"),
        }
    }

    /// Upgrading host by host: a database a newer listcrypt migrated only by additive
    /// migrations is used as it is, and records what a reader must know.
    #[test]
    fn a_database_newer_only_by_additive_migrations_is_used() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path()).unwrap();
        let min_reader: i64 = s
            .conn()
            .query_row("SELECT value FROM meta WHERE key = 'min_reader'", [], |r| {
                r.get(0)
            })
            .unwrap();
        // Migration 4 changed what replay rows mean; 5 only added tables.
        assert_eq!(min_reader, 4);
        s.conn()
            .execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?1, 'future', 0)",
                [LATEST + 1],
            )
            .unwrap();
        drop(s);
        let s = SqliteStore::open(dir.path()).expect("an additive future schema is used");
        assert_eq!(current_version(&s.conn()).unwrap(), LATEST + 1);
    }
}
