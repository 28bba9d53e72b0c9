//! Durable state behind a small trait: SQLite in WAL mode, shared safely by the CLI and the
//! running daemon. Every change to bindings bumps a generation counter that the daemon checks
//! per message, so `member add` takes effect without a restart.
//!
//! One file per concern (bindings, replay, pending, rate, journal), each a set of functions
//! over a `rusqlite` connection or transaction; `schema` holds the versioned migrations. The
//! `Store` impl here only opens transactions and delegates. Several MX hosts share one
//! PostgreSQL instead (`database_url`): see `postgres` for that backend, which also keeps the
//! member certificates and list keys (`keeps_keys`) that SQLite sites keep in `keyring_dir`.

mod archive;
mod backup;
mod bindings;
mod certcache;
mod journal;
mod pending;
mod postgres;
mod tokens;
pub use tokens::{AuditRecord, TokenRecord, MAX_AUDIT_PAGE};
mod rate;
mod replay;
mod schema;

pub use backup::{restore_from, schema_version_of, SCHEMA_VERSION};
pub use postgres::{PgStore, Timeouts};
pub use replay::{ReplayClaim, ReplayState};

pub use schema::versions as schema_versions;

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use rusqlite::{Connection, Transaction, TransactionBehavior};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
    #[error(
        "state store: database schema version {found} is newer than this listcrypt knows \
         ({known}); run the listcrypt that wrote it, or restore a backup"
    )]
    SchemaTooNew { found: i64, known: i64 },
    /// The database cannot be reached, or did not answer in time: mail waits (451) and the
    /// store reconnects by itself.
    #[error("state store: database unavailable: {0}")]
    Unavailable(String),
    /// The database answered with an error.
    #[error("state store: {0}")]
    Postgres(#[source] tokio_postgres::Error),
    #[error("state store: {0}")]
    Config(#[from] crate::config::ConfigError),
    /// A record the code cannot read (an unknown binding state, say): never used on a guess.
    #[error("state store: unreadable record: {0}")]
    Corrupt(String),
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        if postgres::is_outage(&e) {
            StoreError::Unavailable(postgres::describe(&e))
        } else {
            StoreError::Postgres(e)
        }
    }
}

/// Opens the store the configuration names: PostgreSQL with `database_url`, else SQLite in
/// `state_dir`. Either way the schema is brought up to date first.
pub fn open(config: &crate::config::Config) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    if config.database_url.is_empty() {
        return Ok(std::sync::Arc::new(SqliteStore::open(&config.state_dir)?));
    }
    let mut settings =
        crate::config::database_settings(&config.database_url).map_err(|message| {
            crate::config::ConfigError::Invalid {
                path: "configuration".into(),
                message,
            }
        })?;
    if let Some(password) = config.database_password()? {
        settings.password(password);
    }
    let limits = postgres::Timeouts::within(Duration::from_secs(config.limits.message_timeout));
    Ok(std::sync::Arc::new(PgStore::connect(settings, limits)?))
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

/// Where a binding stands. Keys offered by email and not yet proven live in the pending table;
/// `Pending` is the state for a binding row that must not be used yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BindingState {
    Active,
    Pending,
}

impl BindingState {
    pub fn as_str(self) -> &'static str {
        match self {
            BindingState::Active => "active",
            BindingState::Pending => "pending",
        }
    }
}

impl std::fmt::Display for BindingState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown binding state {0:?}")]
pub struct UnknownBindingState(pub String);

impl std::str::FromStr for BindingState {
    type Err = UnknownBindingState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "active" => Ok(BindingState::Active),
            "pending" => Ok(BindingState::Pending),
            _ => Err(UnknownBindingState(s.to_string())),
        }
    }
}

impl ToSql for BindingState {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

impl FromSql for BindingState {
    // An unknown state is an error, not a default: a binding is never used on a guess.
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        value
            .as_str()?
            .parse()
            .map_err(|e| FromSqlError::Other(Box::new(e)))
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
    pub state: BindingState,
    /// This member gets copies with their key id visible (clients that cannot try keys).
    pub show_key_id: bool,
}

/// A certificate or list key as the database holds it, with the version a change must name
/// (compare-and-set: two hosts changing it at once never lose one change).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    pub bytes: Vec<u8>,
    pub version: i64,
}

/// What one host recorded of its policy files at its last start or reload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostRecord {
    pub host: String,
    /// Hex SHA-256 over the host's policy files (`config::policy_digest`).
    pub policy_sha256: String,
    pub seen: SystemTime,
}

// ---- certificate cache (issue 14) ----------------------------------------------------------

/// One row of the certificate cache: a member's encryption keys as validated for `address`,
/// trusted only while its certificate's digest, the tag and the checksum match and now is in
/// `valid_from..valid_until` (`pgp::certcache` decides; the store only keeps rows).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedCert {
    /// Upper-case hex fingerprint of the certificate.
    pub fingerprint: String,
    pub address: String,
    /// SHA-256 of the certificate as stored.
    pub cert_sha256: Vec<u8>,
    /// The OpenPGP policy and the versions that validated it.
    pub tag: String,
    /// Seconds since the epoch.
    pub valid_from: i64,
    pub valid_until: i64,
    /// When the keys expire (`EncryptionKeys::until`), if ever.
    pub expires: Option<i64>,
    /// The certificate's Features subpacket body.
    pub features: Vec<u8>,
    /// The usable encryption keys, as OpenPGP public key packets.
    pub keys: Vec<u8>,
    /// SHA-256 over every other field: a damaged row is never used.
    pub check_sha256: Vec<u8>,
}

// ---- end certificate cache ------------------------------------------------------------------

fn not_kept(what: &str) -> StoreError {
    StoreError::Corrupt(format!(
        "{what} are kept under keyring_dir with SQLite, not in the state database"
    ))
}

pub trait Store: Send + Sync {
    /// Whether member certificates and list keys live in this store, where every host reads
    /// them (PostgreSQL), rather than under `keyring_dir` (SQLite).
    fn keeps_keys(&self) -> bool {
        false
    }
    /// The certificate (binary OpenPGP) stored under an upper-case hex fingerprint.
    fn cert_get(&self, fingerprint: &str) -> Result<Option<Stored>, StoreError> {
        let _ = fingerprint;
        Err(not_kept("certificates"))
    }
    /// The certificates stored under any of `fingerprints` (one round trip for a keyring).
    fn certs_get(&self, fingerprints: &[String]) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let _ = fingerprints;
        Err(not_kept("certificates"))
    }
    /// Every stored certificate's fingerprint.
    fn cert_fingerprints(&self) -> Result<Vec<String>, StoreError> {
        Err(not_kept("certificates"))
    }
    /// Stores `bytes` as the certificate if its version is still `expected` (`None`: absent);
    /// `false` means another writer came first: read it again and merge.
    fn cert_put(
        &self,
        fingerprint: &str,
        bytes: &[u8],
        expected: Option<i64>,
    ) -> Result<bool, StoreError> {
        let _ = (fingerprint, bytes, expected);
        Err(not_kept("certificates"))
    }
    /// `list`'s key as stored: armored, its secrets passphrase-protected.
    fn list_key_get(&self, list: &str) -> Result<Option<Stored>, StoreError> {
        let _ = list;
        Err(not_kept("list keys"))
    }
    /// Stores `list`'s key (and its public half) if its version is still `expected`
    /// (`None`: absent), and bumps the generation so every host reloads it; `false` means
    /// another writer came first.
    fn list_key_put(
        &self,
        list: &str,
        public: &[u8],
        secret: &[u8],
        expected: Option<i64>,
    ) -> Result<bool, StoreError> {
        let _ = (list, public, secret, expected);
        Err(not_kept("list keys"))
    }
    // ---- certificate cache (issue 14) ----
    /// The certificate-cache rows of `fingerprints` (upper-case hex), any address.
    fn cert_cache_get(&self, fingerprints: &[String]) -> Result<Vec<CachedCert>, StoreError>;
    /// Stores `entries` (replacing each fingerprint and address's row) in one transaction,
    /// without bumping the generation: the cache changes no binding. Rows whose window
    /// ended are dropped on the way.
    fn cert_cache_put(&self, entries: &[CachedCert]) -> Result<(), StoreError>;
    // ---- end certificate cache ----

    /// `list`'s archive certificate (binary, public only). SQLite sites keep it under
    /// `keyring_dir` instead.
    fn archive_key_get(&self, list: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let _ = list;
        Err(not_kept("archive keys"))
    }
    /// Stores (`Some`) or removes (`None`) `list`'s archive certificate (read per post, so
    /// no generation bump).
    fn archive_key_put(&self, list: &str, cert: Option<&[u8]>) -> Result<(), StoreError> {
        let _ = (list, cert);
        Err(not_kept("archive keys"))
    }
    /// Records this host's policy digest (at start and reload).
    fn host_record(&self, host: &str, policy_sha256: &str) -> Result<(), StoreError>;
    /// Every host's last recorded policy digest, by host name.
    fn hosts(&self) -> Result<Vec<HostRecord>, StoreError>;

    /// Changes whenever bindings change; cheap enough to call per message.
    fn generation(&self) -> Result<i64, StoreError>;
    /// The clock time windows are measured with: the database's where several hosts share
    /// one (their clocks may differ), else this host's.
    fn now(&self) -> Result<SystemTime, StoreError> {
        Ok(SystemTime::now())
    }
    /// The store's clock when it is this host's, read without any I/O (so callable on an
    /// async worker); `None` when reading it takes the database, as [`Store::now`] does with
    /// PostgreSQL.
    fn local_now(&self) -> Option<SystemTime> {
        None
    }
    /// Calls `wake` whenever another process bumps the generation, where the backend can
    /// tell at once (PostgreSQL's NOTIFY); the daemon's poll covers the others. `wake` runs
    /// on the store's own thread: it must hand work off, never call the store itself.
    fn on_change(&self, wake: std::sync::Arc<dyn Fn() + Send + Sync>) {
        let _ = wake;
    }
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
    /// A post's replay check: the state of an existing record for its digest, or `None` after
    /// recording it as tentative. Records past retention are dropped first; a tentative record
    /// past its confirmation window (lapsed) counts as absent and is taken over.
    fn replay_claim(
        &self,
        claim: &ReplayClaim<'_>,
        now: SystemTime,
    ) -> Result<Option<ReplayState>, StoreError>;
    /// The state of a digest's record (read-only, for dry runs).
    fn replay_state(&self, list: &str, digest: &[u8]) -> Result<Option<ReplayState>, StoreError>;
    /// Makes final the tentative records of posts to `list` with one of `message_ids` (Mailman
    /// was seen emitting them), lapsed ones included; returns how many changed.
    fn replay_confirm(
        &self,
        list: &str,
        message_ids: &[String],
        now: SystemTime,
    ) -> Result<usize, StoreError>;
    /// Records a pending binding: `address` on `list` to `fingerprint`, proven by `token`
    /// (only its hash is stored).
    fn pending_put(
        &self,
        list: &str,
        address: &str,
        fingerprint: &str,
        token: &str,
        ttl_secs: u64,
    ) -> Result<(), StoreError>;
    /// Fingerprints of unexpired pending bindings for `address` on `list`.
    fn pending_for(&self, list: &str, address: &str) -> Result<Vec<String>, StoreError>;
    /// Whether `token` is the one recorded for this unexpired pending binding.
    fn pending_token_matches(
        &self,
        list: &str,
        address: &str,
        fingerprint: &str,
        token: &str,
    ) -> Result<bool, StoreError>;
    /// Every unexpired pending binding of `list`: (address, fingerprint).
    fn pending_list(&self, list: &str) -> Result<Vec<(String, String)>, StoreError>;
    /// Removes a pending binding once used.
    fn pending_remove(
        &self,
        list: &str,
        address: &str,
        fingerprint: &str,
    ) -> Result<(), StoreError>;
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
    /// Forgets a recorded automatic reply (it could not be sent after all).
    fn rate_forget(&self, list: &str, sender: &str, kind: &str) -> Result<(), StoreError>;
    /// Whether `sender` may get another automatic reply of `kind` from `list` now; records
    /// the reply when allowed (at most one per `interval_secs`).
    fn rate_allow(
        &self,
        list: &str,
        sender: &str,
        kind: &str,
        interval_secs: u64,
    ) -> Result<bool, StoreError>;
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

    // --- journal intents (in-doubt reinjections) ---
    /// Records, before a reinjected batch's final dot, that it may reach these recipients;
    /// `journal_record` settles them once the listener answers 250. Intents older than
    /// `retain_secs` are dropped on the way.
    fn journal_intent(
        &self,
        sender: &str,
        digest: &[u8],
        recipients: &[String],
        retain_secs: u64,
    ) -> Result<(), StoreError>;
    /// The recipients of this (sender, body digest) whose batch may have been queued without
    /// being journaled (an intent, no record), one list per batch that wrote the intent.
    fn journal_in_doubt(&self, sender: &str, digest: &[u8])
        -> Result<Vec<Vec<String>>, StoreError>;
    // --- end of journal intents ---

    // --- admin API: tokens and the audit log (tokens.rs) ---
    /// Stores a new token (its digest only), with the audit record of its creation.
    fn token_create(&self, token: &TokenRecord, audit: &AuditRecord) -> Result<(), StoreError>;
    /// The token with this id, revoked or expired ones included.
    fn token_get(&self, id: &str) -> Result<Option<TokenRecord>, StoreError>;
    /// Every token, oldest first.
    fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError>;
    /// Revokes a token, with the audit record; `false` if none such was in force.
    fn token_revoke(&self, id: &str, audit: &AuditRecord) -> Result<bool, StoreError>;
    /// Appends one record to the audit log.
    fn audit_record(&self, record: &AuditRecord) -> Result<(), StoreError>;
    /// The newest `limit` audit records (of `list` only, if given), newest first.
    fn audit(&self, list: Option<&str>, limit: usize) -> Result<Vec<AuditRecord>, StoreError>;
    // --- end admin API ---
    // --- encrypted archive (issue 15 item 5) ---
    /// Whether the post with this digest is already in `list`'s archive.
    fn archived(&self, list: &str, digest: &[u8]) -> Result<bool, StoreError>;
    /// Records the post as archived; records older than `retain_secs` are dropped on the way.
    fn archive_record(&self, list: &str, digest: &[u8], retain_secs: u64)
        -> Result<(), StoreError>;
    // --- end encrypted archive ---
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub struct SqliteStore {
    conn: Mutex<Connection>,
    /// Replay claims waiting for the connection: whoever gets it next commits them all in one
    /// transaction (one disk sync for concurrent posts; see `replay_claim`).
    claims: Mutex<Vec<replay::Queued>>,
}

/// The database file inside the state directory.
const DATABASE: &str = "state.sqlite";

impl SqliteStore {
    /// Opens (creating if needed) `state_dir/state.sqlite`, brings its schema up to date, and
    /// makes the directory 0700 and the database files 0600: they hold tokens and bindings.
    pub fn open(state_dir: &Path) -> Result<SqliteStore, StoreError> {
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| StoreError::Io { path, source }
        };
        std::fs::create_dir_all(state_dir).map_err(io(state_dir))?;
        restrict(state_dir, 0o700).map_err(io(state_dir))?;
        let path = state_dir.join(DATABASE);
        // Created 0600 before SQLite sees it: SQLite gives -wal and -shm the same mode.
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io(&path))?;
        restrict(&path, 0o600).map_err(io(&path))?;
        let mut conn = Connection::open(&path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        wal_mode(&conn)?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        // Files left by older versions may be 0644.
        for suffix in ["-wal", "-shm"] {
            let side = state_dir.join(format!("{DATABASE}{suffix}"));
            match restrict(&side, 0o600) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&side)(e)),
                _ => {}
            }
        }
        schema::migrate(&mut conn)?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
            claims: Mutex::new(Vec::new()),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (transactions roll back).
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the connection, outside any explicit transaction (one statement or reads).
    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        Ok(f(&self.conn())?)
    }

    /// Runs `f` in one write transaction, committed when `f` succeeds. IMMEDIATE takes the
    /// write lock up front, so a busy database shows here (after the busy timeout) rather than
    /// as a failed upgrade half-way.
    fn write<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let value = f(&tx)?;
        tx.commit()?;
        Ok(value)
    }
}

/// Switches to WAL. Two processes opening a new database at once can make this pragma fail
/// with SQLITE_BUSY without the busy handler being called (it needs an exclusive lock), so it
/// is retried for as long as the busy timeout.
fn wal_mode(conn: &Connection) -> rusqlite::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match conn.pragma_update(None, "journal_mode", "WAL") {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Seconds since the epoch (0 before it).
fn epoch_secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Sets `path`'s permission bits to `mode` unless they already are.
fn restrict(path: &Path, mode: u32) -> std::io::Result<()> {
    let meta = std::fs::metadata(path)?;
    if meta.permissions().mode() & 0o777 != mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

impl Store for SqliteStore {
    /// SQLite's clock is this host's: [`Store::now`]'s default.
    fn local_now(&self) -> Option<SystemTime> {
        self.now().ok()
    }

    // ---- certificate cache (issue 14) ----
    fn cert_cache_get(&self, fingerprints: &[String]) -> Result<Vec<CachedCert>, StoreError> {
        self.read(|c| certcache::get(c, fingerprints))
    }

    fn cert_cache_put(&self, entries: &[CachedCert]) -> Result<(), StoreError> {
        self.write(|tx| certcache::put(tx, entries, now_secs()))
    }
    // ---- end certificate cache ----

    fn host_record(&self, host: &str, policy_sha256: &str) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO hosts (host, policy_sha256, seen) VALUES (?1, ?2, ?3)
                 ON CONFLICT (host) DO UPDATE SET policy_sha256 = excluded.policy_sha256,
                   seen = excluded.seen",
                rusqlite::params![host, policy_sha256, now_secs()],
            )
            .map(|_| ())
        })
    }

    fn hosts(&self) -> Result<Vec<HostRecord>, StoreError> {
        self.read(|c| {
            c.prepare("SELECT host, policy_sha256, seen FROM hosts ORDER BY host")?
                .query_map([], |r| {
                    Ok(HostRecord {
                        host: r.get(0)?,
                        policy_sha256: r.get(1)?,
                        seen: UNIX_EPOCH + Duration::from_secs(r.get::<_, i64>(2)?.max(0) as u64),
                    })
                })?
                .collect()
        })
    }

    fn generation(&self) -> Result<i64, StoreError> {
        self.read(bindings::generation)
    }

    fn touch(&self) -> Result<(), StoreError> {
        self.write(bindings::bump)
    }

    fn bindings(&self, list: &str) -> Result<Vec<Binding>, StoreError> {
        self.read(|c| bindings::of_list(c, list))
    }

    fn bind(&self, b: &Binding) -> Result<(), StoreError> {
        self.write(|tx| {
            bindings::put(tx, b, now_secs())?;
            bindings::bump(tx)
        })
    }

    fn unbind(&self, list: &str, address: &str) -> Result<bool, StoreError> {
        self.write(|tx| {
            let n = bindings::remove(tx, list, address)?;
            // Outstanding challenges go too: a removed member cannot be re-bound by them.
            let p = pending::remove_address(tx, list, address)?;
            bindings::bump(tx)?;
            Ok(n + p > 0)
        })
    }

    fn replay_record(
        &self,
        list: &str,
        digest: &[u8],
        retain_secs: u64,
    ) -> Result<bool, StoreError> {
        self.write(|tx| replay::record(tx, list, digest, retain_secs, now_secs()))
    }

    fn replay_seen(&self, list: &str, digest: &[u8]) -> Result<bool, StoreError> {
        self.read(|c| replay::seen(c, list, digest))
    }

    /// Group commit: the claim joins the queue, and whoever holds the connection next (this
    /// caller, or one that was waiting before it) claims everything queued in one transaction,
    /// in queue order, and answers each once the commit is on disk. A caller that finds its
    /// answer already there when it gets the connection was served by that commit.
    fn replay_claim(
        &self,
        claim: &ReplayClaim<'_>,
        now: SystemTime,
    ) -> Result<Option<ReplayState>, StoreError> {
        let queued = replay::Queued::new(claim, epoch_secs(now));
        let answer = queued.answer.clone();
        lock(&self.claims).push(queued);
        let mut conn = self.conn();
        if let Some(done) = replay::take_answer(&answer) {
            return done;
        }
        let batch = std::mem::take(&mut *lock(&self.claims));
        replay::claim_all(&mut conn, batch);
        drop(conn);
        replay::take_answer(&answer)
            .unwrap_or_else(|| Err(StoreError::Unavailable("replay claim not answered".into())))
    }

    fn replay_state(&self, list: &str, digest: &[u8]) -> Result<Option<ReplayState>, StoreError> {
        self.read(|c| replay::state(c, list, digest))
    }

    fn replay_confirm(
        &self,
        list: &str,
        message_ids: &[String],
        now: SystemTime,
    ) -> Result<usize, StoreError> {
        if message_ids.is_empty() {
            return Ok(0);
        }
        self.write(|tx| replay::confirm(tx, list, message_ids, epoch_secs(now)))
    }

    fn pending_put(
        &self,
        list: &str,
        address: &str,
        fingerprint: &str,
        token: &str,
        ttl_secs: u64,
    ) -> Result<(), StoreError> {
        self.write(|tx| pending::put(tx, list, address, fingerprint, token, ttl_secs, now_secs()))
    }

    fn pending_for(&self, list: &str, address: &str) -> Result<Vec<String>, StoreError> {
        self.read(|c| pending::fingerprints(c, list, address, now_secs()))
    }

    fn pending_token_matches(
        &self,
        list: &str,
        address: &str,
        fingerprint: &str,
        token: &str,
    ) -> Result<bool, StoreError> {
        self.read(|c| pending::token_matches(c, list, address, fingerprint, token, now_secs()))
    }

    fn pending_list(&self, list: &str) -> Result<Vec<(String, String)>, StoreError> {
        self.read(|c| pending::of_list(c, list, now_secs()))
    }

    fn pending_remove(
        &self,
        list: &str,
        address: &str,
        fingerprint: &str,
    ) -> Result<(), StoreError> {
        self.write(|tx| pending::remove(tx, list, address, fingerprint))
    }

    fn rate_forget(&self, list: &str, sender: &str, kind: &str) -> Result<(), StoreError> {
        self.write(|tx| rate::forget(tx, list, sender, kind))
    }

    fn rate_last(
        &self,
        list: &str,
        sender: &str,
        kind: &str,
    ) -> Result<Option<SystemTime>, StoreError> {
        let last = self.read(|c| rate::last(c, list, sender, kind))?;
        Ok(last.map(|t| UNIX_EPOCH + Duration::from_secs(t.max(0) as u64)))
    }

    fn rate_mark(
        &self,
        list: &str,
        sender: &str,
        kind: &str,
        at: SystemTime,
    ) -> Result<(), StoreError> {
        self.write(|tx| rate::mark(tx, list, sender, kind, epoch_secs(at)))
    }

    fn list_replies_since(&self, list: &str, since: SystemTime) -> Result<u64, StoreError> {
        self.read(|c| rate::list_replies_since(c, list, epoch_secs(since)))
    }

    fn list_reply_record(&self, list: &str, at: SystemTime) -> Result<(), StoreError> {
        self.write(|tx| rate::list_reply_record(tx, list, epoch_secs(at)))
    }

    fn rate_allow(
        &self,
        list: &str,
        sender: &str,
        kind: &str,
        interval_secs: u64,
    ) -> Result<bool, StoreError> {
        self.write(|tx| rate::allow(tx, list, sender, kind, interval_secs, now_secs()))
    }

    fn journal_sent(&self, sender: &str, digest: &[u8]) -> Result<Vec<String>, StoreError> {
        self.read(|c| journal::sent(c, sender, digest))
    }

    fn journal_record(
        &self,
        sender: &str,
        digest: &[u8],
        recipients: &[String],
        queue_id: &str,
        retain_secs: u64,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            journal::record(
                tx,
                sender,
                digest,
                recipients,
                queue_id,
                retain_secs,
                now_secs(),
            )
        })
    }

    // --- journal intents (in-doubt reinjections) ---
    fn journal_intent(
        &self,
        sender: &str,
        digest: &[u8],
        recipients: &[String],
        retain_secs: u64,
    ) -> Result<(), StoreError> {
        self.write(|tx| journal::intend(tx, sender, digest, recipients, retain_secs, now_secs()))
    }

    fn journal_in_doubt(
        &self,
        sender: &str,
        digest: &[u8],
    ) -> Result<Vec<Vec<String>>, StoreError> {
        self.read(|c| journal::in_doubt(c, sender, digest))
    }
    // --- end of journal intents ---

    // --- admin API: tokens and the audit log ---
    fn token_create(&self, token: &TokenRecord, audit: &AuditRecord) -> Result<(), StoreError> {
        self.write(|tx| {
            tokens::put(tx, token)?;
            tokens::audit_put(tx, audit)
        })
    }

    fn token_get(&self, id: &str) -> Result<Option<TokenRecord>, StoreError> {
        self.read(|c| tokens::get(c, id))
    }

    fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.read(tokens::all)
    }

    fn token_revoke(&self, id: &str, audit: &AuditRecord) -> Result<bool, StoreError> {
        self.write(|tx| {
            let revoked = tokens::revoke(tx, id, audit.at)?;
            if revoked {
                tokens::audit_put(tx, audit)?;
            }
            Ok(revoked)
        })
    }

    fn audit_record(&self, record: &AuditRecord) -> Result<(), StoreError> {
        self.write(|tx| tokens::audit_put(tx, record))
    }

    fn audit(&self, list: Option<&str>, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        self.read(|c| tokens::audit_get(c, list, limit))
    }
    // --- end admin API ---
    // --- encrypted archive (issue 15 item 5) ---
    fn archived(&self, list: &str, digest: &[u8]) -> Result<bool, StoreError> {
        self.read(|c| archive::seen(c, list, digest))
    }

    fn archive_record(
        &self,
        list: &str,
        digest: &[u8],
        retain_secs: u64,
    ) -> Result<(), StoreError> {
        self.write(|tx| archive::record(tx, list, digest, retain_secs, now_secs()))
    }
    // --- end encrypted archive ---
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Group commit: 32 claims at once on one handle, eight per post, are answered as if one
    /// after the other: one new per post, the rest see its tentative record; the batches
    /// (however they formed) left exactly four records, and a leader's claims answer its
    /// followers, who never wait for ever.
    #[test]
    fn concurrent_claims_commit_together_and_each_is_answered() {
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(SqliteStore::open(dir.path()).unwrap());
        let now = SystemTime::now();
        let barrier = Arc::new(std::sync::Barrier::new(32));
        let handles: Vec<_> = (0..32u8)
            .map(|i| {
                let (s, barrier) = (s.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let digest = [i % 4];
                    let id = format!("<p{}@example.org>", i % 4);
                    let claim = ReplayClaim {
                        scope: "*",
                        digest: &digest,
                        list: "enc@lists.example.org",
                        message_id: Some(&id),
                        retain_secs: 86_400,
                        confirm_secs: 3600,
                    };
                    barrier.wait();
                    (i % 4, s.replay_claim(&claim, now).unwrap())
                })
            })
            .collect();
        let answers: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        for post in 0..4u8 {
            let mine: Vec<_> = answers.iter().filter(|(p, _)| *p == post).collect();
            assert_eq!(mine.len(), 8);
            let new = mine.iter().filter(|(_, a)| a.is_none()).count();
            assert_eq!(new, 1, "post {post}: {mine:?}");
            assert!(mine
                .iter()
                .all(|(_, a)| matches!(a, None | Some(ReplayState::Tentative))));
            assert_eq!(
                s.replay_state("*", &[post]).unwrap(),
                Some(ReplayState::Tentative)
            );
        }
        let rows: i64 = s
            .conn()
            .query_row("SELECT count(*) FROM replay", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 4);
        assert!(lock(&s.claims).is_empty(), "nothing left waiting");
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn state_directory_is_0700_and_database_files_0600() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let s = SqliteStore::open(&state).unwrap();
        s.touch().unwrap();
        assert_eq!(mode(&state), 0o700);
        for name in ["state.sqlite", "state.sqlite-wal", "state.sqlite-shm"] {
            assert_eq!(mode(&state.join(name)), 0o600, "{name}");
        }
    }

    #[test]
    fn open_tightens_modes_left_by_older_versions() {
        let dir = tempfile::tempdir().unwrap();
        // An open handle keeps -wal and -shm in place, as a running daemon does.
        let old = SqliteStore::open(dir.path()).unwrap();
        old.touch().unwrap();
        let files = ["state.sqlite", "state.sqlite-wal", "state.sqlite-shm"];
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        for name in files {
            let loose = std::fs::Permissions::from_mode(0o644);
            std::fs::set_permissions(dir.path().join(name), loose).unwrap();
        }
        let _new = SqliteStore::open(dir.path()).unwrap();
        assert_eq!(mode(dir.path()), 0o700);
        for name in files {
            assert_eq!(mode(&dir.path().join(name)), 0o600, "{name}");
        }
    }

    #[test]
    fn each_host_has_one_policy_digest_record_the_latest() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path()).unwrap();
        s.host_record("mx-b", "bb").unwrap();
        s.host_record("mx-a", "a1").unwrap();
        s.host_record("mx-a", "a2").unwrap();
        let hosts: Vec<(String, String)> = s
            .hosts()
            .unwrap()
            .into_iter()
            .map(|h| (h.host, h.policy_sha256))
            .collect();
        let want = [("mx-a", "a2"), ("mx-b", "bb")].map(|(h, d)| (h.into(), d.into()));
        assert_eq!(hosts, want);
    }

    #[test]
    fn a_failed_write_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path()).unwrap();
        let g0 = s.generation().unwrap();
        let r: Result<(), StoreError> = s.write(|tx| {
            bindings::bump(tx)?;
            tx.execute("INSERT INTO no_such_table VALUES (1)", [])?;
            Ok(())
        });
        assert!(matches!(r, Err(StoreError::Sql(_))));
        assert_eq!(s.generation().unwrap(), g0, "the bump rolled back");
    }
}
