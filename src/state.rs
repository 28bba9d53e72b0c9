//! What the running daemon shares between sessions: the configuration snapshot, the keyring
//! snapshot (rebuilt in the background when the store's generation changes), the store, and
//! the memory budget of messages in flight. Nothing here blocks an async worker: generation
//! checks and rebuilds run on the blocking pool while sessions keep answering from the
//! snapshot they have.

use crate::config::Config;
use crate::keys::{KeyError, Keyring};
use crate::store::{Store, StoreError};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// How often the daemon looks for a changed generation on its own, so a CLI change is
/// usually loaded before the next message asks.
pub const GENERATION_POLL: Duration = Duration::from_millis(250);

/// How long sessions may answer from a snapshot after the store was seen to change. Past it
/// mail waits (tempfail) rather than going out under bindings that stale, e.g. when every
/// rebuild fails.
pub const STALE_SNAPSHOT_BOUND: Duration = Duration::from_secs(30);

/// Sessions start a generation check at most this often. Each check is a store read on the
/// blocking pool: one per message would cost every post a thread hand-off and a query (about
/// 4% of the daemon's user CPU on inbound posts), and a session never waits for it anyway.
/// The poller and PostgreSQL's notifications start theirs regardless.
pub const SESSION_CHECK_INTERVAL: Duration = Duration::from_millis(20);

pub struct Daemon {
    config_path: Option<PathBuf>,
    config: RwLock<Arc<Config>>,
    store: Arc<dyn Store>,
    keyring: RwLock<Arc<Keyring>>,
    /// Serialises rebuilds (background and SIGHUP), so two never race to install.
    reload_lock: Mutex<()>,
    /// A background generation check or rebuild is running: at most one at a time.
    refreshing: AtomicBool,
    /// When a session last started a check: milliseconds since `opened`, plus one (0: never).
    session_check: AtomicU64,
    opened: Instant,
    /// When a changed generation was first seen and not yet loaded.
    stale_since: Mutex<Option<Instant>>,
    /// Keyrings built since start (for tests that count reloads).
    rebuilds: AtomicU64,
    /// The generation poller runs (started with the first session).
    watching: std::sync::Once,
    budget: Arc<Budget>,
    /// Member key updates for the background refresh (`crate::refresh`).
    key_updates: crate::refresh::Queue,
}

/// Bytes of messages held by all milter sessions at once, against `limits.max_inflight_bytes`.
#[derive(Debug, Default)]
pub struct Budget {
    held: AtomicU64,
}

impl Budget {
    /// Bytes held right now by every open [`Reservation`].
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Acquire)
    }
}

/// One message's share of the [`Budget`], given back when the message is dropped: at its end,
/// on abort, on a refusal, or when the connection goes away.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<Budget>,
    bytes: u64,
}

impl Reservation {
    pub fn new(budget: Arc<Budget>) -> Reservation {
        Reservation { budget, bytes: 0 }
    }

    /// Takes `n` more bytes if all messages together stay within `limit`; `false` takes none.
    pub fn grow(&mut self, n: u64, limit: u64) -> bool {
        let taken = self
            .budget
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(n).filter(|total| *total <= limit)
            });
        if taken.is_ok() {
            self.bytes += n;
        }
        taken.is_ok()
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.held.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

impl Daemon {
    pub fn open(config: Config, config_path: Option<PathBuf>) -> Result<Daemon, KeyError> {
        let store = crate::store::open(&config)?;
        let keyring = Keyring::load(&config, &*store)?;
        record_policy_digest(&config, &*store);
        crate::metrics::keyring_loaded(&keyring);
        Ok(Daemon {
            config_path,
            config: RwLock::new(Arc::new(config)),
            store,
            keyring: RwLock::new(Arc::new(keyring)),
            reload_lock: Mutex::new(()),
            refreshing: AtomicBool::new(false),
            session_check: AtomicU64::new(0),
            opened: Instant::now(),
            stale_since: Mutex::new(None),
            rebuilds: AtomicU64::new(0),
            watching: std::sync::Once::new(),
            budget: Arc::default(),
            key_updates: crate::refresh::Queue::default(),
        })
    }

    pub fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The memory budget every session's message counts against.
    pub fn budget(&self) -> Arc<Budget> {
        self.budget.clone()
    }

    /// The queue the inbound milter offers captured Autocrypt headers on.
    pub fn key_updates(&self) -> &crate::refresh::Queue {
        &self.key_updates
    }

    pub fn store(&self) -> &dyn Store {
        &*self.store
    }

    pub fn lists(&self) -> usize {
        self.current_keyring().lists.len()
    }

    /// How many keyrings were rebuilt since start (background and SIGHUP).
    pub fn rebuilds(&self) -> u64 {
        self.rebuilds.load(Ordering::Relaxed)
    }

    fn current_keyring(&self) -> Arc<Keyring> {
        self.keyring
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The current keyring snapshot, at once. Inside the runtime it also starts one
    /// background check of the store's generation (a CLI `member add`, say) that rebuilds
    /// the snapshot if it changed; sessions meanwhile use this one. An error means the
    /// change was seen more than [`STALE_SNAPSHOT_BOUND`] ago and is still not loaded.
    pub fn keyring(self: &Arc<Self>) -> Result<Arc<Keyring>, KeyError> {
        let current = self.current_keyring();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // Outside the runtime (the CLI, plain tests) nothing else is waiting: load here.
            return self.refresh().map(|_| self.current_keyring());
        };
        if let Some(since) = *self.stale_since.lock().unwrap_or_else(|e| e.into_inner()) {
            if since.elapsed() > STALE_SNAPSHOT_BOUND {
                self.start_refresh(&runtime);
                return Err(KeyError::Unusable(format!(
                    "bindings changed {} s ago and the keyring is not reloaded yet",
                    since.elapsed().as_secs()
                )));
            }
        }
        if self.session_check_due() {
            self.start_refresh(&runtime);
        }
        self.watching.call_once(|| self.watch(&runtime));
        Ok(current)
    }

    /// Whether this session starts a generation check: none started by a session in the
    /// last [`SESSION_CHECK_INTERVAL`] (one caller wins a race).
    fn session_check_due(&self) -> bool {
        self.claim_session_check(self.opened.elapsed())
    }

    /// [`Self::session_check_due`] at `at` after the daemon opened.
    fn claim_session_check(&self, at: Duration) -> bool {
        let now = at.as_millis() as u64 + 1;
        let last = self.session_check.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < SESSION_CHECK_INTERVAL.as_millis() as u64 {
            return false;
        }
        self.session_check
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    /// Polls the generation every [`GENERATION_POLL`] while the daemon lives, and checks at
    /// once when the store says another host changed it (PostgreSQL's NOTIFY).
    fn watch(self: &Arc<Self>, runtime: &tokio::runtime::Handle) {
        let (daemon, handle) = (Arc::downgrade(self), runtime.clone());
        self.store.on_change(Arc::new(move || {
            if let Some(d) = daemon.upgrade() {
                d.start_refresh(&handle);
            }
        }));
        let daemon = Arc::downgrade(self);
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(GENERATION_POLL).await;
                let Some(d) = daemon.upgrade() else { break };
                d.start_refresh(&tokio::runtime::Handle::current());
            }
        });
    }

    /// Rebuilds the keyring now if the store's generation moved: for the daemon's own
    /// binding changes, before its reply goes out. Blocking: call it on the blocking pool.
    pub fn refresh_now(&self) -> Result<(), KeyError> {
        self.refresh()
    }

    /// Starts a background refresh unless one is running.
    fn start_refresh(self: &Arc<Self>, runtime: &tokio::runtime::Handle) {
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let daemon = self.clone();
        runtime.spawn_blocking(move || {
            match daemon.refresh() {
                // The store logs an outage once, not at every poll.
                Err(KeyError::Store(StoreError::Unavailable(_))) => {}
                Err(e) => {
                    tracing::error!("keyring reload failed, still using the previous one: {e}")
                }
                Ok(()) => {}
            }
            daemon.refreshing.store(false, Ordering::Release);
        });
    }

    /// Rebuilds the keyring if the store's generation moved; blocking.
    fn refresh(&self) -> Result<(), KeyError> {
        let generation = self.store.generation()?;
        if self.current_keyring().generation == generation {
            return Ok(());
        }
        self.stale_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert_with(Instant::now);
        let _guard = self.reload_lock.lock().unwrap_or_else(|e| e.into_inner());
        // A SIGHUP reload may have installed it while we waited for the lock.
        if self.current_keyring().generation == generation {
            return Ok(());
        }
        let fresh = Arc::new(Keyring::load_running(&self.config(), &*self.store)?);
        tracing::info!("bindings changed; reloaded {} list(s)", fresh.lists.len());
        self.install(fresh);
        Ok(())
    }

    fn install(&self, keyring: Arc<Keyring>) {
        crate::metrics::keyring_reloaded(&keyring);
        *self.keyring.write().unwrap_or_else(|e| e.into_inner()) = keyring;
        self.rebuilds.fetch_add(1, Ordering::Relaxed);
        // A change made meanwhile starts a new stale period at the next check: constant
        // changes that do load never trip the bound, failing rebuilds do.
        *self.stale_since.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// SIGHUP: re-read the configuration, policies and keys; keep the old ones on any error.
    /// Blocking: the signal task runs it on the blocking pool, sessions meanwhile keep
    /// the old snapshot. Socket addresses are bound once and need a restart to change.
    pub fn reload(&self) -> Result<(), String> {
        let _guard = self.reload_lock.lock().unwrap_or_else(|e| e.into_inner());
        let config = match &self.config_path {
            Some(p) => Config::load(Some(p)).map_err(|e| e.to_string())?,
            None => Config::load(None).map_err(|e| e.to_string())?,
        };
        let keyring = Keyring::load(&config, &*self.store).map_err(|e| e.to_string())?;
        let n = keyring.lists.len();
        record_policy_digest(&config, &*self.store);
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
        self.install(Arc::new(keyring));
        tracing::info!("configuration reloaded: {n} list(s)");
        Ok(())
    }

    /// Runs store work on the blocking pool, so a busy database never stalls a worker.
    pub async fn blocking<T, F>(self: &Arc<Self>, work: F) -> Result<T, tokio::task::JoinError>
    where
        T: Send + 'static,
        F: FnOnce(&Daemon) -> T + Send + 'static,
    {
        let daemon = self.clone();
        tokio::task::spawn_blocking(move || work(&daemon)).await
    }
}

/// Records this host's policy digest for `check-config` on the other hosts; a failure only
/// costs that comparison, so it is logged and the daemon goes on.
fn record_policy_digest(config: &Config, store: &dyn Store) {
    if let Err(e) = crate::keys::record_policy_digest(config, store) {
        tracing::warn!("cannot record this host's policy digest: {e}");
    }
}

/// Blocking work called from inside async code that cannot await it (a synchronous
/// callback): on the multi-thread runtime the worker hands its other tasks off first.
pub fn block_in_place<T>(work: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(work),
        _ => work(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn daemon(dir: &std::path::Path) -> Arc<Daemon> {
        let config = Config {
            policy_dir: dir.join("lists.d"),
            keyring_dir: dir.join("keyrings"),
            state_dir: dir.join("state"),
            ..Config::default()
        };
        std::fs::create_dir_all(&config.policy_dir).unwrap();
        Arc::new(Daemon::open(config, None).unwrap())
    }

    /// Many sessions after a change answer at once from the old snapshot while one rebuild
    /// runs; the rebuild is held here by taking its lock, as a slow reload would.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[allow(clippy::await_holding_lock)] // holding the rebuild back is the point
    async fn concurrent_sessions_share_one_background_rebuild() {
        let dir = tempfile::tempdir().unwrap();
        let d = daemon(dir.path());
        let old = d.keyring().unwrap().generation;
        // That first call started a background check; let it finish before the change, or it
        // could see the change and rebuild before the lock below is held.
        while d.refreshing.load(Ordering::Acquire) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let held = d.reload_lock.lock().unwrap();
        d.store().touch().unwrap();
        let sessions: Vec<_> = (0..16)
            .map(|_| {
                let d = d.clone();
                tokio::spawn(async move { d.keyring().unwrap().generation })
            })
            .collect();
        for s in sessions {
            assert_eq!(s.await.unwrap(), old, "answered from the old snapshot");
        }
        assert_eq!(d.rebuilds(), 0);
        drop(held);
        let until = Instant::now() + Duration::from_secs(20);
        while d.keyring().unwrap().generation == old {
            assert!(Instant::now() < until, "the rebuild never landed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Let any further check finish: none may rebuild again.
        while d.refreshing.load(Ordering::Acquire) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(d.rebuilds(), 1, "one rebuild for every session");
    }

    /// Past the bound a snapshot of an older generation is not used: mail waits instead.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn snapshot_stale_past_the_bound_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let d = daemon(dir.path());
        d.store().touch().unwrap();
        let _held = d.reload_lock.lock().unwrap();
        let seen = Instant::now() - STALE_SNAPSHOT_BOUND - Duration::from_secs(1);
        *d.stale_since.lock().unwrap() = Some(seen);
        assert!(d.keyring().is_err());
    }

    /// Without the poller, a session that starts after a change (and past the interval)
    /// starts the check that loads it: sessions alone keep the keyring current.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_later_session_loads_a_change_without_the_poller() {
        let dir = tempfile::tempdir().unwrap();
        let d = daemon(dir.path());
        d.watching.call_once(|| {}); // no poller in this test
        let old = d.keyring().unwrap().generation;
        while d.refreshing.load(Ordering::Acquire) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        d.store().touch().unwrap();
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            tokio::time::sleep(SESSION_CHECK_INTERVAL + Duration::from_millis(5)).await;
            if d.keyring().unwrap().generation != old {
                break;
            }
            assert!(Instant::now() < until, "no session ever loaded the change");
        }
        assert_eq!(d.rebuilds(), 1);
    }

    #[test]
    fn sessions_start_one_generation_check_per_interval() {
        let dir = tempfile::tempdir().unwrap();
        let d = daemon(dir.path());
        let ms = Duration::from_millis;
        assert!(d.claim_session_check(ms(0)), "the first session checks");
        assert!(!d.claim_session_check(ms(0)));
        assert!(!d.claim_session_check(SESSION_CHECK_INTERVAL - ms(1)));
        assert!(d.claim_session_check(SESSION_CHECK_INTERVAL));
        assert!(!d.claim_session_check(SESSION_CHECK_INTERVAL + ms(5)));
        assert!(
            d.claim_session_check(ms(1000)),
            "a quiet daemon checks at the next message"
        );
    }

    #[test]
    fn reservations_share_one_budget_and_give_it_back_when_dropped() {
        let budget = Arc::new(Budget::default());
        let mut a = Reservation::new(budget.clone());
        let mut b = Reservation::new(budget.clone());
        assert!(a.grow(600, 1000));
        assert!(!b.grow(500, 1000), "600 + 500 is over 1000");
        assert!(b.grow(400, 1000));
        assert_eq!(budget.held(), 1000);
        drop(a);
        assert_eq!(budget.held(), 400);
        assert!(b.grow(600, 1000));
        drop(b);
        assert_eq!(budget.held(), 0);
    }
}
