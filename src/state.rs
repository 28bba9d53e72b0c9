//! What the running daemon shares between sessions: the configuration snapshot, the keyring
//! snapshot (rebuilt when the store's generation changes), the store, and the memory budget
//! of messages in flight.

use crate::config::Config;
use crate::keys::{KeyError, Keyring};
use crate::store::{SqliteStore, Store};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

pub struct Daemon {
    config_path: Option<PathBuf>,
    config: RwLock<Arc<Config>>,
    store: Arc<SqliteStore>,
    keyring: RwLock<Arc<Keyring>>,
    reload_lock: Mutex<()>,
    budget: Arc<Budget>,
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
        let store = Arc::new(SqliteStore::open(&config.state_dir)?);
        let keyring = Keyring::load(&config, &*store)?;
        Ok(Daemon {
            config_path,
            config: RwLock::new(Arc::new(config)),
            store,
            keyring: RwLock::new(Arc::new(keyring)),
            reload_lock: Mutex::new(()),
            budget: Arc::default(),
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

    pub fn store(&self) -> &dyn Store {
        &*self.store
    }

    pub fn lists(&self) -> usize {
        self.current_keyring().lists.len()
    }

    fn current_keyring(&self) -> Arc<Keyring> {
        self.keyring
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The current keyring, rebuilt first if the store changed (a CLI `member add`, say).
    /// An error means mail waits (tempfail) rather than going out under stale bindings.
    pub fn keyring(&self) -> Result<Arc<Keyring>, KeyError> {
        let generation = self.store.generation()?;
        let current = self.current_keyring();
        if current.generation == generation {
            return Ok(current);
        }
        let _guard = self.reload_lock.lock().unwrap_or_else(|e| e.into_inner());
        // Another session may have reloaded while we waited for the lock.
        let current = self.current_keyring();
        if current.generation == generation {
            return Ok(current);
        }
        let fresh = Arc::new(Keyring::load(&self.config(), &*self.store)?);
        tracing::info!("bindings changed; reloaded {} list(s)", fresh.lists.len());
        *self.keyring.write().unwrap_or_else(|e| e.into_inner()) = fresh.clone();
        Ok(fresh)
    }

    /// SIGHUP: re-read the configuration, policies and keys; keep the old ones on any error.
    /// Socket addresses are bound once and need a restart to change.
    pub fn reload(&self) -> Result<(), String> {
        let _guard = self.reload_lock.lock().unwrap_or_else(|e| e.into_inner());
        let config = match &self.config_path {
            Some(p) => Config::load(Some(p)).map_err(|e| e.to_string())?,
            None => Config::load(None).map_err(|e| e.to_string())?,
        };
        let keyring = Keyring::load(&config, &*self.store).map_err(|e| e.to_string())?;
        let n = keyring.lists.len();
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
        *self.keyring.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keyring);
        tracing::info!("configuration reloaded: {n} list(s)");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
