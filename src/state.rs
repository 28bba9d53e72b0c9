//! What the running daemon shares between sessions: the configuration snapshot, the keyring
//! snapshot (rebuilt when the store's generation changes) and the store.

use crate::config::Config;
use crate::keys::{KeyError, Keyring};
use crate::store::{SqliteStore, Store};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

pub struct Daemon {
    config_path: Option<PathBuf>,
    config: RwLock<Arc<Config>>,
    store: Arc<SqliteStore>,
    keyring: RwLock<Arc<Keyring>>,
    reload_lock: Mutex<()>,
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
        })
    }

    pub fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
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
