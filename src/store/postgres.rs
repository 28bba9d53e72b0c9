//! The PostgreSQL backend, for several MX hosts sharing one state: the same `Store` as SQLite,
//! with the same semantics, made safe across hosts by the database itself (`INSERT … ON
//! CONFLICT` for insert-if-absent, row locks on the generation counter, the database's clock).
//! It also holds what SQLite sites keep in `keyring_dir`: member certificates and the list
//! keys (secrets only passphrase-protected, checked by `keys`), changed by compare-and-set on
//! a version so two hosts never lose each other's change.
//!
//! Design: the `Store` trait is synchronous and the daemon calls it from the blocking pool
//! (`Daemon::blocking`, `block_in_place`), the CLI from plain threads. `PgStore` therefore owns
//! a small tokio runtime of its own that drives `tokio-postgres` connections from a
//! `deadpool-postgres` pool; each call is spawned there and its caller waits on a channel. No
//! worker of the daemon's runtime ever runs database I/O, a caller in any context (blocking
//! pool, `block_in_place`, no runtime at all) can use it without nesting runtimes, and the
//! pool and the NOTIFY listener live as long as the store.
//!
//! The journal needs no claim (`FOR UPDATE SKIP LOCKED`) here: as in SQLite it records, per
//! recipient, what the reinjection listener already took, with insert-if-absent, and only the
//! host that runs the outbound side writes it.
//!
//! Outages: every call is bounded ([`Timeouts`]); a refused connection, a lost one or no
//! answer in time is `StoreError::Unavailable`, which the milter answers with 451 4.3.0. The
//! pool makes new connections on demand, so service resumes by itself when the database
//! returns. The first failure and the recovery are logged once each.

use super::{
    epoch_secs, AuditRecord, Binding, CachedCert, HostRecord, ReplayClaim, ReplayState, Role,
    StoreError, Stored, TokenRecord,
};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_postgres::{Client, Transaction};

/// The NOTIFY channel of generation bumps.
const CHANNEL: &str = "listcrypt_generation";

/// Connections each host keeps at most: sessions wait for one rather than flood the server.
const POOL_SIZE: usize = 16;

/// How long a store call may take, in parts.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// Establishing a connection (TCP, TLS, authentication).
    pub connect: Duration,
    /// One statement on the server (`statement_timeout`, also lock waits).
    pub statement: Duration,
    /// One whole call, waiting for a pooled connection included.
    pub call: Duration,
}

impl Timeouts {
    /// Bounds that leave a message's work inside `message_timeout`: a call gets at most a
    /// third of it, and never more than 15 s (a healthy database answers in milliseconds).
    pub fn within(message_timeout: Duration) -> Timeouts {
        let call = (message_timeout / 3).clamp(Duration::from_secs(1), Duration::from_secs(15));
        Timeouts {
            connect: call.min(Duration::from_secs(5)),
            statement: call,
            call,
        }
    }
}

type Fut<'a, T> = Pin<Box<dyn Future<Output = Result<T, tokio_postgres::Error>> + Send + 'a>>;

pub struct PgStore {
    pool: Pool,
    settings: tokio_postgres::Config,
    runtime: Option<tokio::runtime::Runtime>,
    timeouts: Timeouts,
    /// The database was unreachable at the last call: log its return once.
    down: Arc<AtomicBool>,
}

impl PgStore {
    /// Connects, checks the server answers, and brings the schema up to date (refusing one a
    /// newer listcrypt wrote). `settings` carries the password already.
    pub fn connect(
        mut settings: tokio_postgres::Config,
        timeouts: Timeouts,
    ) -> Result<PgStore, StoreError> {
        settings.connect_timeout(timeouts.connect);
        // The server ends a statement (or a lock wait) that runs past the call's bound.
        settings.options(format!(
            "-c statement_timeout={} -c lock_timeout={}",
            timeouts.statement.as_millis(),
            timeouts.statement.as_millis()
        ));
        if settings.get_application_name().is_none() {
            settings.application_name("listcrypt");
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("listcrypt-pg")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Unavailable(format!("cannot start its runtime: {e}")))?;
        let manager = Manager::from_config(
            settings.clone(),
            tls()?,
            ManagerConfig {
                // A connection that died while idle is found before a call gets it.
                recycling_method: RecyclingMethod::Verified,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(timeouts.call))
            .create_timeout(Some(timeouts.call))
            .recycle_timeout(Some(timeouts.call))
            .build()
            .map_err(|e| StoreError::Unavailable(format!("cannot make a pool: {e}")))?;
        let store = PgStore {
            pool,
            settings,
            runtime: Some(runtime),
            timeouts,
            down: Arc::new(AtomicBool::new(false)),
        };
        let pool = store.pool.clone();
        store.run(async move {
            let mut conn = pool.get().await.map_err(pool_error)?;
            super::schema::migrate_postgres(&mut conn).await
        })?;
        Ok(store)
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        // Only `drop` takes the runtime.
        self.runtime
            .as_ref()
            .expect("runtime lives as long as the store")
            .handle()
    }

    /// Runs `work` on the store's runtime within the call bound, and waits for it.
    fn run<T: Send + 'static>(
        &self,
        work: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let limit = self.timeouts.call;
        self.handle().spawn(async move {
            let result = match tokio::time::timeout(limit, work).await {
                Ok(r) => r,
                Err(_) => Err(StoreError::Unavailable(format!(
                    "no answer within {} ms",
                    limit.as_millis()
                ))),
            };
            let _ = tx.send(result);
        });
        let result = rx
            .recv()
            .unwrap_or_else(|_| Err(StoreError::Unavailable("its runtime stopped".into())));
        self.observe(&result);
        result
    }

    /// Logs the first failure of an outage and the first success after it.
    fn observe<T>(&self, result: &Result<T, StoreError>) {
        match result {
            Err(StoreError::Unavailable(why)) => {
                if !self.down.swap(true, Ordering::AcqRel) {
                    tracing::error!(
                        "PostgreSQL unavailable ({why}); mail is deferred with 451 until it returns"
                    );
                }
            }
            Ok(_) | Err(_) => {
                if result.is_ok() && self.down.swap(false, Ordering::AcqRel) {
                    tracing::info!("PostgreSQL reachable again; service resumed");
                }
            }
        }
    }

    /// Runs `f` on a pooled connection, outside any explicit transaction.
    fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c Client) -> Fut<'c, T> + Send + 'static,
    {
        let pool = self.pool.clone();
        self.run(async move {
            let conn = pool.get().await.map_err(pool_error)?;
            Ok(f(&conn).await?)
        })
    }

    /// Runs `f` in one transaction, committed when `f` succeeds.
    fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: for<'t> FnOnce(&'t Transaction<'t>) -> Fut<'t, T> + Send + 'static,
    {
        let pool = self.pool.clone();
        self.run(async move {
            let mut conn = pool.get().await.map_err(pool_error)?;
            let tx = conn.transaction().await?;
            let value = f(&tx).await?;
            tx.commit().await?;
            Ok(value)
        })
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        // Dropping a runtime may block; the store can be dropped inside async code.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// TLS as `sslmode` asks: `disable` never uses it, `prefer` tries it, `require` insists.
/// Certificates are checked against the system's roots and the host name.
fn tls() -> Result<postgres_native_tls::MakeTlsConnector, StoreError> {
    let connector = native_tls::TlsConnector::new()
        .map_err(|e| StoreError::Unavailable(format!("cannot set up TLS: {e}")))?;
    Ok(postgres_native_tls::MakeTlsConnector::new(connector))
}

fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => StoreError::from(e),
        deadpool_postgres::PoolError::Timeout(_) => {
            StoreError::Unavailable("no connection in time".into())
        }
        other => StoreError::Unavailable(other.to_string()),
    }
}

/// Whether `e` means the database cannot be reached (as opposed to an answer that is an
/// error): a lost connection, an I/O error, SQLSTATE class 08 (connection exception) or
/// 57P (the server is shutting down or starting).
pub(super) fn is_outage(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    if let Some(code) = e.code() {
        let code = code.code();
        return code.starts_with("08") || code.starts_with("57P");
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<std::io::Error>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// An error and its causes in one line (tokio-postgres puts the reason in the source).
pub(super) fn describe(e: &tokio_postgres::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The database's clock as seconds since the epoch (constant within a transaction).
const DB_NOW: &str = "SELECT extract(epoch from now())::bigint";

async fn db_now(tx: &Transaction<'_>) -> Result<i64, tokio_postgres::Error> {
    Ok(tx.query_one(DB_NOW, &[]).await?.get(0))
}

/// Bumps the generation and tells every listening host, both at commit.
async fn bump(tx: &Transaction<'_>) -> Result<(), tokio_postgres::Error> {
    tx.execute(
        "UPDATE meta SET value = value + 1 WHERE key = 'generation'",
        &[],
    )
    .await?;
    tx.execute("SELECT pg_notify($1, '')", &[&CHANNEL]).await?;
    Ok(())
}

/// Drops replay records past retention; a lapsed tentative record stays (as `replay::expire`).
async fn replay_expire(
    tx: &Transaction<'_>,
    retain_secs: u64,
    now: i64,
) -> Result<(), tokio_postgres::Error> {
    tx.execute(
        "DELETE FROM replay WHERE seen < $1",
        &[&now.saturating_sub(retain_secs as i64)],
    )
    .await?;
    Ok(())
}

async fn replay_state_of(
    c: &(impl tokio_postgres::GenericClient + Sync),
    list: &str,
    digest: &[u8],
) -> Result<Option<ReplayState>, tokio_postgres::Error> {
    let row = c
        .query_opt(
            "SELECT state FROM replay WHERE list = $1 AND digest = $2",
            &[&list, &digest],
        )
        .await?;
    Ok(row.map(|r| ReplayState::parse(r.get(0))))
}

const RATE_RETAIN_SECS: i64 = 86_400 * 7;

/// Owned copies of a call's arguments, moved into the work spawned on the store's runtime.
macro_rules! owned {
    ($($name:ident),*) => { $(let $name = $name.to_owned();)* };
}

impl super::Store for PgStore {
    fn keeps_keys(&self) -> bool {
        true
    }

    fn cert_get(&self, fingerprint: &str) -> Result<Option<Stored>, StoreError> {
        owned!(fingerprint);
        self.read(move |c| {
            Box::pin(async move {
                let row = c
                    .query_opt(
                        "SELECT cert, version FROM certs WHERE fingerprint = $1",
                        &[&fingerprint],
                    )
                    .await?;
                Ok(row.map(|r| Stored {
                    bytes: r.get(0),
                    version: r.get(1),
                }))
            })
        })
    }

    fn certs_get(&self, fingerprints: &[String]) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        owned!(fingerprints);
        let rows = self.read(move |c| {
            Box::pin(async move {
                c.query(
                    "SELECT fingerprint, cert FROM certs WHERE fingerprint = ANY($1)",
                    &[&fingerprints],
                )
                .await
            })
        })?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    fn cert_fingerprints(&self) -> Result<Vec<String>, StoreError> {
        let rows = self.read(|c| {
            Box::pin(async move {
                c.query("SELECT fingerprint FROM certs ORDER BY fingerprint", &[])
                    .await
            })
        })?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    fn cert_put(
        &self,
        fingerprint: &str,
        bytes: &[u8],
        expected: Option<i64>,
    ) -> Result<bool, StoreError> {
        owned!(fingerprint, bytes);
        self.write(move |tx| {
            Box::pin(async move {
                let n = match expected {
                    None => {
                        tx.execute(
                            "INSERT INTO certs (fingerprint, cert, version, updated)
                             VALUES ($1, $2, 1, extract(epoch from now())::bigint)
                             ON CONFLICT DO NOTHING",
                            &[&fingerprint, &bytes],
                        )
                        .await?
                    }
                    Some(v) => {
                        tx.execute(
                            "UPDATE certs SET cert = $2, version = version + 1,
                               updated = extract(epoch from now())::bigint
                             WHERE fingerprint = $1 AND version = $3",
                            &[&fingerprint, &bytes, &v],
                        )
                        .await?
                    }
                };
                Ok(n == 1)
            })
        })
    }

    fn list_key_get(&self, list: &str) -> Result<Option<Stored>, StoreError> {
        owned!(list);
        self.read(move |c| {
            Box::pin(async move {
                let row = c
                    .query_opt(
                        "SELECT secret, version FROM list_keys WHERE list = $1",
                        &[&list],
                    )
                    .await?;
                Ok(row.map(|r| Stored {
                    bytes: r.get(0),
                    version: r.get(1),
                }))
            })
        })
    }

    fn list_key_put(
        &self,
        list: &str,
        public: &[u8],
        secret: &[u8],
        expected: Option<i64>,
    ) -> Result<bool, StoreError> {
        owned!(list, public, secret);
        self.write(move |tx| {
            Box::pin(async move {
                let n = match expected {
                    None => {
                        tx.execute(
                            "INSERT INTO list_keys (list, public, secret, version, updated)
                             VALUES ($1, $2, $3, 1, extract(epoch from now())::bigint)
                             ON CONFLICT DO NOTHING",
                            &[&list, &public, &secret],
                        )
                        .await?
                    }
                    Some(v) => {
                        tx.execute(
                            "UPDATE list_keys SET public = $2, secret = $3, version = version + 1,
                               updated = extract(epoch from now())::bigint
                             WHERE list = $1 AND version = $4",
                            &[&list, &public, &secret, &v],
                        )
                        .await?
                    }
                };
                // Every host reloads the key at commit (NOTIFY).
                if n == 1 {
                    bump(tx).await?;
                }
                Ok(n == 1)
            })
        })
    }

    // --- encrypted archive (issue 15 item 5) ---
    fn archive_key_get(&self, list: &str) -> Result<Option<Vec<u8>>, StoreError> {
        owned!(list);
        self.read(move |c| {
            Box::pin(async move {
                let row = c
                    .query_opt("SELECT cert FROM archive_keys WHERE list = $1", &[&list])
                    .await?;
                Ok(row.map(|r| r.get(0)))
            })
        })
    }

    fn archive_key_put(&self, list: &str, cert: Option<&[u8]>) -> Result<(), StoreError> {
        owned!(list);
        let cert = cert.map(<[u8]>::to_vec);
        self.write(move |tx| {
            Box::pin(async move {
                match cert {
                    Some(cert) => {
                        tx.execute(
                            "INSERT INTO archive_keys (list, cert, updated)
                             VALUES ($1, $2, extract(epoch from now())::bigint)
                             ON CONFLICT (list) DO UPDATE SET cert = excluded.cert,
                               updated = excluded.updated",
                            &[&list, &cert],
                        )
                        .await?
                    }
                    None => {
                        tx.execute("DELETE FROM archive_keys WHERE list = $1", &[&list])
                            .await?
                    }
                };
                Ok(())
            })
        })
    }
    // --- end encrypted archive ---

    fn host_record(&self, host: &str, policy_sha256: &str) -> Result<(), StoreError> {
        owned!(host, policy_sha256);
        self.write(move |tx| {
            Box::pin(async move {
                tx.execute(
                    "INSERT INTO hosts (host, policy_sha256, seen)
                     VALUES ($1, $2, extract(epoch from now())::bigint)
                     ON CONFLICT (host) DO UPDATE SET policy_sha256 = excluded.policy_sha256,
                       seen = excluded.seen",
                    &[&host, &policy_sha256],
                )
                .await?;
                Ok(())
            })
        })
    }

    fn hosts(&self) -> Result<Vec<HostRecord>, StoreError> {
        let rows = self.read(|c| {
            Box::pin(async move {
                c.query(
                    "SELECT host, policy_sha256, seen FROM hosts ORDER BY host",
                    &[],
                )
                .await
            })
        })?;
        Ok(rows
            .iter()
            .map(|r| HostRecord {
                host: r.get(0),
                policy_sha256: r.get(1),
                seen: UNIX_EPOCH + Duration::from_secs(r.get::<_, i64>(2).max(0) as u64),
            })
            .collect())
    }

    fn generation(&self) -> Result<i64, StoreError> {
        self.read(|c| {
            Box::pin(async move {
                let row = c
                    .query_opt("SELECT value FROM meta WHERE key = 'generation'", &[])
                    .await?;
                Ok(row.map(|r| r.get(0)).unwrap_or(0))
            })
        })
    }

    fn now(&self) -> Result<SystemTime, StoreError> {
        let secs: f64 = self.read(|c| {
            Box::pin(async move {
                let row = c
                    .query_one("SELECT extract(epoch from clock_timestamp())::float8", &[])
                    .await?;
                Ok(row.get(0))
            })
        })?;
        Ok(UNIX_EPOCH + Duration::from_secs_f64(secs.max(0.0)))
    }

    fn on_change(&self, wake: Arc<dyn Fn() + Send + Sync>) {
        let settings = self.settings.clone();
        let down = self.down.clone();
        self.handle().spawn(listen(settings, wake, down));
    }

    fn touch(&self) -> Result<(), StoreError> {
        self.write(|tx| Box::pin(bump(tx)))
    }

    fn bindings(&self, list: &str) -> Result<Vec<Binding>, StoreError> {
        owned!(list);
        let rows = self.read(move |c| {
            Box::pin(async move {
                c.query(
                    "SELECT list, address, fingerprint, role, state, show_key_id FROM bindings
                     WHERE list = $1 ORDER BY address",
                    &[&list],
                )
                .await
            })
        })?;
        rows.iter()
            .map(|r| {
                let state: String = r.get(4);
                Ok(Binding {
                    list: r.get(0),
                    address: r.get(1),
                    fingerprint: r.get(2),
                    role: Role::parse(r.get(3)),
                    // An unknown state is an error, not a default (as in SQLite).
                    state: state.parse().map_err(|e: super::UnknownBindingState| {
                        StoreError::Corrupt(e.to_string())
                    })?,
                    show_key_id: r.get::<_, i32>(5) != 0,
                })
            })
            .collect()
    }

    fn bind(&self, b: &Binding) -> Result<(), StoreError> {
        let b = b.clone();
        self.write(move |tx| {
            Box::pin(async move {
                tx.execute(
                    "INSERT INTO bindings (list, address, fingerprint, role, state, show_key_id, created)
                     VALUES ($1, $2, $3, $4, $5, $6, extract(epoch from now())::bigint)
                     ON CONFLICT (list, address) DO UPDATE SET fingerprint = excluded.fingerprint,
                       role = excluded.role, state = excluded.state,
                       show_key_id = excluded.show_key_id",
                    &[
                        &b.list,
                        &b.address,
                        &b.fingerprint,
                        &b.role.as_str(),
                        &b.state.as_str(),
                        &(b.show_key_id as i32),
                    ],
                )
                .await?;
                bump(tx).await
            })
        })
    }

    fn unbind(&self, list: &str, address: &str) -> Result<bool, StoreError> {
        owned!(list, address);
        self.write(move |tx| {
            Box::pin(async move {
                let n = tx
                    .execute(
                        "DELETE FROM bindings WHERE list = $1 AND address = $2",
                        &[&list, &address],
                    )
                    .await?;
                // Outstanding challenges go too: a removed member cannot be re-bound by them.
                let p = tx
                    .execute(
                        "DELETE FROM pending WHERE list = $1 AND address = $2",
                        &[&list, &address],
                    )
                    .await?;
                bump(tx).await?;
                Ok(n + p > 0)
            })
        })
    }

    fn replay_record(
        &self,
        list: &str,
        digest: &[u8],
        retain_secs: u64,
    ) -> Result<bool, StoreError> {
        owned!(list, digest);
        self.write(move |tx| {
            Box::pin(async move {
                let now = db_now(tx).await?;
                replay_expire(tx, retain_secs, now).await?;
                // The insert waits for a concurrent one of the same digest and then does
                // nothing: exactly one host records it first.
                let n = tx
                    .execute(
                        "INSERT INTO replay (list, digest, seen, state, created)
                         VALUES ($1, $2, $3, 'final', $3) ON CONFLICT DO NOTHING",
                        &[&list, &digest, &now],
                    )
                    .await?;
                Ok(n == 0)
            })
        })
    }

    fn replay_seen(&self, list: &str, digest: &[u8]) -> Result<bool, StoreError> {
        Ok(self.replay_state(list, digest)?.is_some())
    }

    fn replay_claim(
        &self,
        claim: &ReplayClaim<'_>,
        now: SystemTime,
    ) -> Result<Option<ReplayState>, StoreError> {
        let (scope, digest, list) = (claim.scope, claim.digest, claim.list);
        owned!(scope, digest, list);
        let message_id = claim.message_id.map(str::to_owned);
        let (retain, confirm) = (claim.retain_secs, claim.confirm_secs);
        let now = epoch_secs(now);
        self.write(move |tx| {
            Box::pin(async move {
                replay_expire(tx, retain, now).await?;
                let lapsed = now.saturating_sub(confirm as i64);
                // Insert-if-absent (or take over a lapsed record) first, so two hosts claiming
                // the same post at once cannot both see it new; a record kept is reported.
                loop {
                    let changed = tx
                        .execute(
                            super::replay::CLAIM_SQL,
                            &[&scope, &digest, &now, &message_id, &list, &lapsed],
                        )
                        .await?;
                    if changed == 1 {
                        return Ok(None);
                    }
                    // Gone between the two statements (another host expired it): try again.
                    if let Some(state) = replay_state_of(tx, &scope, &digest).await? {
                        return Ok(Some(state));
                    }
                }
            })
        })
    }

    fn replay_state(&self, list: &str, digest: &[u8]) -> Result<Option<ReplayState>, StoreError> {
        owned!(list, digest);
        self.read(move |c| Box::pin(async move { replay_state_of(c, &list, &digest).await }))
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
        owned!(list, message_ids);
        let now = epoch_secs(now);
        self.write(move |tx| {
            Box::pin(async move {
                let n = tx
                    .execute(
                        "UPDATE replay SET state = 'final', seen = $1
                         WHERE state = 'tentative' AND post_list = $2 AND message_id = ANY($3)",
                        &[&now, &list, &message_ids],
                    )
                    .await?;
                Ok(n as usize)
            })
        })
    }

    fn pending_put(
        &self,
        list: &str,
        address: &str,
        fingerprint: &str,
        token: &str,
        ttl_secs: u64,
    ) -> Result<(), StoreError> {
        owned!(list, address, fingerprint);
        let hash = super::pending::hash_token(token);
        self.write(move |tx| {
            Box::pin(async move {
                let now = db_now(tx).await?;
                tx.execute("DELETE FROM pending WHERE expires < $1", &[&now])
                    .await?;
                tx.execute(
                    "INSERT INTO pending (list, address, fingerprint, token_sha256, expires)
                     VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (list, address, fingerprint)
                     DO UPDATE SET token_sha256 = excluded.token_sha256, expires = excluded.expires",
                    &[&list, &address, &fingerprint, &hash, &(now + ttl_secs as i64)],
                )
                .await?;
                Ok(())
            })
        })
    }

    fn pending_for(&self, list: &str, address: &str) -> Result<Vec<String>, StoreError> {
        owned!(list, address);
        let rows = self.read(move |c| {
            Box::pin(async move {
                c.query(
                    "SELECT fingerprint FROM pending WHERE list = $1 AND address = $2
                     AND expires >= extract(epoch from now())::bigint",
                    &[&list, &address],
                )
                .await
            })
        })?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    fn pending_token_matches(
        &self,
        list: &str,
        address: &str,
        fingerprint: &str,
        token: &str,
    ) -> Result<bool, StoreError> {
        owned!(list, address, fingerprint);
        let hash = super::pending::hash_token(token);
        self.read(move |c| {
            Box::pin(async move {
                let row = c
                    .query_opt(
                        "SELECT 1 FROM pending WHERE list = $1 AND address = $2
                         AND fingerprint = $3 AND token_sha256 = $4
                         AND expires >= extract(epoch from now())::bigint",
                        &[&list, &address, &fingerprint, &hash],
                    )
                    .await?;
                Ok(row.is_some())
            })
        })
    }

    fn pending_list(&self, list: &str) -> Result<Vec<(String, String)>, StoreError> {
        owned!(list);
        let rows = self.read(move |c| {
            Box::pin(async move {
                c.query(
                    "SELECT address, fingerprint FROM pending WHERE list = $1
                     AND expires >= extract(epoch from now())::bigint ORDER BY address",
                    &[&list],
                )
                .await
            })
        })?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    fn pending_remove(
        &self,
        list: &str,
        address: &str,
        fingerprint: &str,
    ) -> Result<(), StoreError> {
        owned!(list, address, fingerprint);
        self.write(move |tx| {
            Box::pin(async move {
                tx.execute(
                    "DELETE FROM pending WHERE list = $1 AND address = $2 AND fingerprint = $3",
                    &[&list, &address, &fingerprint],
                )
                .await?;
                Ok(())
            })
        })
    }

    fn rate_last(
        &self,
        list: &str,
        sender: &str,
        kind: &str,
    ) -> Result<Option<SystemTime>, StoreError> {
        owned!(list, sender, kind);
        let last: Option<i64> = self.read(move |c| {
            Box::pin(async move {
                let row = c
                    .query_opt(
                        "SELECT last FROM rate WHERE list = $1 AND sender = $2 AND kind = $3",
                        &[&list, &sender, &kind],
                    )
                    .await?;
                Ok(row.map(|r| r.get(0)))
            })
        })?;
        Ok(last.map(|t| UNIX_EPOCH + Duration::from_secs(t.max(0) as u64)))
    }

    fn rate_mark(
        &self,
        list: &str,
        sender: &str,
        kind: &str,
        at: SystemTime,
    ) -> Result<(), StoreError> {
        owned!(list, sender, kind);
        let at = epoch_secs(at);
        self.write(move |tx| {
            Box::pin(async move {
                tx.execute(
                    "DELETE FROM rate WHERE last < $1",
                    &[&(at - RATE_RETAIN_SECS)],
                )
                .await?;
                tx.execute(
                    "INSERT INTO rate (list, sender, kind, last) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (list, sender, kind) DO UPDATE SET last = excluded.last",
                    &[&list, &sender, &kind, &at],
                )
                .await?;
                Ok(())
            })
        })
    }

    fn list_replies_since(&self, list: &str, since: SystemTime) -> Result<u64, StoreError> {
        owned!(list);
        let since = epoch_secs(since);
        let n: i64 = self.read(move |c| {
            Box::pin(async move {
                let row = c
                    .query_one(
                        "SELECT COUNT(*) FROM replies WHERE list = $1 AND sent >= $2",
                        &[&list, &since],
                    )
                    .await?;
                Ok(row.get(0))
            })
        })?;
        Ok(n.max(0) as u64)
    }

    fn list_reply_record(&self, list: &str, at: SystemTime) -> Result<(), StoreError> {
        owned!(list);
        let at = epoch_secs(at);
        self.write(move |tx| {
            Box::pin(async move {
                tx.execute("DELETE FROM replies WHERE sent < $1", &[&(at - 86_400)])
                    .await?;
                tx.execute(
                    "INSERT INTO replies (list, sent) VALUES ($1, $2)",
                    &[&list, &at],
                )
                .await?;
                Ok(())
            })
        })
    }

    fn rate_forget(&self, list: &str, sender: &str, kind: &str) -> Result<(), StoreError> {
        owned!(list, sender, kind);
        self.write(move |tx| {
            Box::pin(async move {
                tx.execute(
                    "DELETE FROM rate WHERE list = $1 AND sender = $2 AND kind = $3",
                    &[&list, &sender, &kind],
                )
                .await?;
                Ok(())
            })
        })
    }

    fn rate_allow(
        &self,
        list: &str,
        sender: &str,
        kind: &str,
        interval_secs: u64,
    ) -> Result<bool, StoreError> {
        owned!(list, sender, kind);
        let interval = interval_secs as i64;
        self.write(move |tx| {
            Box::pin(async move {
                let now = db_now(tx).await?;
                tx.execute(
                    "DELETE FROM rate WHERE last < $1",
                    &[&(now - RATE_RETAIN_SECS)],
                )
                .await?;
                // One statement decides and records: two hosts asked at once allow one reply.
                let allowed = tx
                    .execute(
                        "INSERT INTO rate (list, sender, kind, last) VALUES ($1, $2, $3, $4)
                         ON CONFLICT (list, sender, kind) DO UPDATE SET last = excluded.last
                         WHERE excluded.last - rate.last >= $5",
                        &[&list, &sender, &kind, &now, &interval],
                    )
                    .await?;
                Ok(allowed == 1)
            })
        })
    }

    fn journal_sent(&self, sender: &str, digest: &[u8]) -> Result<Vec<String>, StoreError> {
        owned!(sender, digest);
        let rows = self.read(move |c| {
            Box::pin(async move {
                c.query(
                    "SELECT recipient FROM journal WHERE sender = $1 AND digest = $2",
                    &[&sender, &digest],
                )
                .await
            })
        })?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    fn journal_record(
        &self,
        sender: &str,
        digest: &[u8],
        recipients: &[String],
        queue_id: &str,
        retain_secs: u64,
    ) -> Result<(), StoreError> {
        owned!(sender, digest, recipients, queue_id);
        self.write(move |tx| {
            Box::pin(async move {
                let now = db_now(tx).await?;
                tx.execute(
                    "DELETE FROM journal WHERE sent < $1",
                    &[&(now - retain_secs as i64)],
                )
                .await?;
                tx.execute(
                    "INSERT INTO journal (sender, digest, recipient, queue_id, sent)
                     SELECT $1, $2, r, $3, $4 FROM unnest($5::text[]) AS r
                     ON CONFLICT DO NOTHING",
                    &[&sender, &digest, &queue_id, &now, &recipients],
                )
                .await?;
                // --- journal intents ---
                // The batch is queued: its intents are settled in the same transaction.
                tx.execute(
                    "DELETE FROM journal_intent WHERE created < $1",
                    &[&(now - retain_secs as i64)],
                )
                .await?;
                tx.execute(
                    "DELETE FROM journal_intent
                     WHERE sender = $1 AND digest = $2 AND recipient = ANY($3::text[])",
                    &[&sender, &digest, &recipients],
                )
                .await?;
                // --- end of journal intents ---

                Ok(())
            })
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
        let Some(batch) = recipients.first() else {
            return Ok(());
        };
        owned!(sender, digest, recipients, batch);
        self.write(move |tx| {
            Box::pin(async move {
                let now = db_now(tx).await?;
                tx.execute(
                    "DELETE FROM journal_intent WHERE created < $1",
                    &[&(now - retain_secs as i64)],
                )
                .await?;
                tx.execute(
                    "INSERT INTO journal_intent (sender, digest, recipient, batch, created)
                     SELECT $1, $2, r, $3, $4 FROM unnest($5::text[]) AS r
                     ON CONFLICT (sender, digest, recipient)
                     DO UPDATE SET batch = excluded.batch, created = excluded.created",
                    &[&sender, &digest, &batch, &now, &recipients],
                )
                .await?;
                Ok(())
            })
        })
    }

    fn journal_in_doubt(
        &self,
        sender: &str,
        digest: &[u8],
    ) -> Result<Vec<Vec<String>>, StoreError> {
        owned!(sender, digest);
        let rows = self.read(move |c| {
            Box::pin(async move {
                c.query(
                    "SELECT i.batch, i.recipient FROM journal_intent i
                     WHERE i.sender = $1 AND i.digest = $2 AND NOT EXISTS (
                         SELECT 1 FROM journal j WHERE j.sender = i.sender
                         AND j.digest = i.digest AND j.recipient = i.recipient)
                     ORDER BY i.batch, i.recipient",
                    &[&sender, &digest],
                )
                .await
            })
        })?;
        let rows = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        Ok(super::journal::group_by_batch(rows))
    }
    // --- end of journal intents ---

    // --- admin API: tokens and the audit log ---
    fn token_create(&self, token: &TokenRecord, audit: &AuditRecord) -> Result<(), StoreError> {
        let (token, audit) = (token.clone(), audit.clone());
        self.write(move |tx| {
            Box::pin(async move {
                tx.execute(
                    "INSERT INTO api_tokens
                     (id, sha256, site_admin, list, scopes, created, expires, revoked)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                    &[
                        &token.id,
                        &token.sha256,
                        &i64::from(token.site_admin),
                        &token.list,
                        &token.scopes,
                        &epoch_secs(token.created),
                        &token.expires.map(epoch_secs),
                        &token.revoked.map(epoch_secs),
                    ],
                )
                .await?;
                audit_put(tx, &audit).await
            })
        })
    }

    fn token_get(&self, id: &str) -> Result<Option<TokenRecord>, StoreError> {
        owned!(id);
        let row = self.read(move |c| {
            Box::pin(async move {
                c.query_opt(
                    &format!("SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE id = $1"),
                    &[&id],
                )
                .await
            })
        })?;
        Ok(row.as_ref().map(token_row))
    }

    fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let rows = self.read(|c| {
            Box::pin(async move {
                c.query(
                    &format!("SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY created, id"),
                    &[],
                )
                .await
            })
        })?;
        Ok(rows.iter().map(token_row).collect())
    }

    fn token_revoke(&self, id: &str, audit: &AuditRecord) -> Result<bool, StoreError> {
        owned!(id);
        let audit = audit.clone();
        self.write(move |tx| {
            Box::pin(async move {
                let n = tx
                    .execute(
                        "UPDATE api_tokens SET revoked = $2 WHERE id = $1 AND revoked IS NULL",
                        &[&id, &epoch_secs(audit.at)],
                    )
                    .await?;
                if n == 1 {
                    audit_put(tx, &audit).await?;
                }
                Ok(n == 1)
            })
        })
    }

    fn audit_record(&self, record: &AuditRecord) -> Result<(), StoreError> {
        let record = record.clone();
        self.write(move |tx| Box::pin(async move { audit_put(tx, &record).await }))
    }

    fn audit(&self, list: Option<&str>, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        let list = list.map(str::to_owned);
        let limit = limit.min(super::MAX_AUDIT_PAGE) as i64;
        let rows = self.read(move |c| {
            Box::pin(async move {
                c.query(
                    "SELECT seq, at, token_id, list, action, detail FROM audit
                     WHERE $1::text IS NULL OR list = $1 ORDER BY seq DESC LIMIT $2",
                    &[&list, &limit],
                )
                .await
            })
        })?;
        Ok(rows
            .iter()
            .map(|r| AuditRecord {
                seq: r.get(0),
                at: UNIX_EPOCH + Duration::from_secs(r.get::<_, i64>(1).max(0) as u64),
                token_id: r.get(2),
                list: r.get(3),
                action: r.get(4),
                detail: r.get(5),
            })
            .collect())
    }
    // --- end admin API ---

    // ---- certificate cache (issue 14) ----
    fn cert_cache_get(&self, fingerprints: &[String]) -> Result<Vec<CachedCert>, StoreError> {
        owned!(fingerprints);
        let rows = self.read(move |c| {
            Box::pin(async move {
                c.query(
                    "SELECT fingerprint, address, cert_sha256, tag, valid_from, valid_until,
                            expires, features, keys, check_sha256
                     FROM cert_cache WHERE fingerprint = ANY($1)",
                    &[&fingerprints],
                )
                .await
            })
        })?;
        Ok(rows
            .iter()
            .map(|r| CachedCert {
                fingerprint: r.get(0),
                address: r.get(1),
                cert_sha256: r.get(2),
                tag: r.get(3),
                valid_from: r.get(4),
                valid_until: r.get(5),
                expires: r.get(6),
                features: r.get(7),
                keys: r.get(8),
                check_sha256: r.get(9),
            })
            .collect())
    }

    fn cert_cache_put(&self, entries: &[CachedCert]) -> Result<(), StoreError> {
        let entries = entries.to_vec();
        self.write(move |tx| {
            Box::pin(async move {
                tx.execute(
                    "DELETE FROM cert_cache WHERE valid_until < extract(epoch from now())::bigint",
                    &[],
                )
                .await?;
                let insert = tx
                    .prepare(
                        "INSERT INTO cert_cache (fingerprint, address, cert_sha256, tag,
                           valid_from, valid_until, expires, features, keys, check_sha256)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                         ON CONFLICT (fingerprint, address) DO UPDATE SET
                           cert_sha256 = excluded.cert_sha256, tag = excluded.tag,
                           valid_from = excluded.valid_from, valid_until = excluded.valid_until,
                           expires = excluded.expires, features = excluded.features,
                           keys = excluded.keys, check_sha256 = excluded.check_sha256",
                    )
                    .await?;
                for e in &entries {
                    tx.execute(
                        &insert,
                        &[
                            &e.fingerprint,
                            &e.address,
                            &e.cert_sha256,
                            &e.tag,
                            &e.valid_from,
                            &e.valid_until,
                            &e.expires,
                            &e.features,
                            &e.keys,
                            &e.check_sha256,
                        ],
                    )
                    .await?;
                }
                Ok(())
            })
        })
    }
    // ---- end certificate cache ----
    // --- encrypted archive (issue 15 item 5) ---
    fn archived(&self, list: &str, digest: &[u8]) -> Result<bool, StoreError> {
        owned!(list, digest);
        let row = self.read(move |c| {
            Box::pin(async move {
                c.query_opt(
                    "SELECT 1 FROM archived WHERE list = $1 AND digest = $2",
                    &[&list, &digest],
                )
                .await
            })
        })?;
        Ok(row.is_some())
    }

    fn archive_record(
        &self,
        list: &str,
        digest: &[u8],
        retain_secs: u64,
    ) -> Result<(), StoreError> {
        owned!(list, digest);
        self.write(move |tx| {
            Box::pin(async move {
                let now = db_now(tx).await?;
                tx.execute(
                    "DELETE FROM archived WHERE archived < $1",
                    &[&(now - retain_secs as i64)],
                )
                .await?;
                tx.execute(
                    "INSERT INTO archived (list, digest, archived) VALUES ($1, $2, $3)
                     ON CONFLICT DO NOTHING",
                    &[&list, &digest, &now],
                )
                .await?;
                Ok(())
            })
        })
    }
    // --- end encrypted archive ---
}

// --- admin API: tokens and the audit log ---
const TOKEN_COLUMNS: &str = "id, sha256, site_admin, list, scopes, created, expires, revoked";

fn token_row(r: &tokio_postgres::Row) -> TokenRecord {
    let time = |s: i64| UNIX_EPOCH + Duration::from_secs(s.max(0) as u64);
    TokenRecord {
        id: r.get(0),
        sha256: r.get(1),
        site_admin: r.get::<_, i64>(2) != 0,
        list: r.get(3),
        scopes: r.get(4),
        created: time(r.get(5)),
        expires: r.get::<_, Option<i64>>(6).map(time),
        revoked: r.get::<_, Option<i64>>(7).map(time),
    }
}

async fn audit_put(tx: &Transaction<'_>, a: &AuditRecord) -> Result<(), tokio_postgres::Error> {
    tx.execute(
        "INSERT INTO audit (at, token_id, list, action, detail) VALUES ($1, $2, $3, $4, $5)",
        &[
            &epoch_secs(a.at),
            &a.token_id,
            &a.list,
            &a.action,
            &a.detail,
        ],
    )
    .await?;
    Ok(())
}
// --- end admin API ---

/// Keeps one connection LISTENing for generation bumps and calls `wake` for each (and once
/// after every reconnect, since bumps during the gap were missed). Runs until the store's
/// runtime stops.
async fn listen(
    settings: tokio_postgres::Config,
    wake: Arc<dyn Fn() + Send + Sync>,
    down: Arc<AtomicBool>,
) {
    let mut pause = Duration::from_millis(250);
    loop {
        match listen_once(&settings, &wake).await {
            Ok(()) => pause = Duration::from_millis(250),
            Err(e) => {
                // The store's calls log the outage itself; this only says why NOTIFY stopped.
                if !down.load(Ordering::Acquire) {
                    tracing::warn!(
                        "PostgreSQL change notifications interrupted ({}); polling meanwhile",
                        describe(&e)
                    );
                }
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

async fn listen_once(
    settings: &tokio_postgres::Config,
    wake: &Arc<dyn Fn() + Send + Sync>,
) -> Result<(), tokio_postgres::Error> {
    use std::future::poll_fn;
    let Ok(tls) = tls() else {
        // Nothing to listen with; the generation poll still finds every change.
        return Ok(());
    };
    let (client, mut connection) = settings.connect(tls).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    // The connection yields notifications only to whoever polls it.
    let driver = tokio::spawn(async move {
        loop {
            match poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(tokio_postgres::AsyncMessage::Notification(_))) => {
                    if tx.send(()).is_err() {
                        return Ok(());
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => return Ok(()),
            }
        }
    });
    client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
    wake();
    while rx.recv().await.is_some() {
        wake();
    }
    drop(client);
    match driver.await {
        Ok(result) => result,
        Err(_) => Ok(()),
    }
}
