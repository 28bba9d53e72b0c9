//! Members' bound keys kept fresh in the background, never on the SMTP path. The inbound
//! milter only captures the `Autocrypt` header of a verified post (bounded, see
//! [`update::capture`]) and offers it on a bounded queue; a task here parses, merges, stores
//! and reloads. Optionally a timer fetches every bound key from WKD or a VKS keyserver.
//!
//! The outer `Autocrypt` header is not signed. Applying it is safe only because every
//! accepted change is a valid self-signature of the bound primary key ([`update::accept`]):
//! whoever alters the header can add nothing the member's key did not sign.

pub mod fetch;
pub mod update;

pub use update::{capture, Captured, Refused};

use crate::config::KeyRefreshSource;
use crate::inbound::Verdict;
use crate::key_address::{Effect, Outcome};
use crate::keys::{CertStore, KeyError};
use crate::pgp::{Cert, Fingerprint};
use crate::state::Daemon;
use crate::store::{BindingState, StoreError};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once, Weak};
use std::time::Duration;
use tokio::sync::mpsc;

/// Offers waiting for the task; more are dropped (the member's next post offers again).
pub const QUEUE_LEN: usize = 64;

/// One captured header of a verified post, for the member bound on `list`.
#[derive(Debug, Clone)]
pub struct Offer {
    pub list: String,
    pub address: String,
    pub fingerprint: Fingerprint,
    pub keydata: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("storing the refreshed key: {0}")]
    Commit(String),
}

/// The daemon's queue of key updates and the gate its task passes before each one.
pub struct Queue {
    tx: mpsc::Sender<Offer>,
    rx: Mutex<Option<mpsc::Receiver<Offer>>>,
    gate: Arc<tokio::sync::Mutex<()>>,
    started: Once,
    /// Offers the task has finished with, applied or not (tests wait on it).
    handled: Arc<AtomicU64>,
}

impl Default for Queue {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(QUEUE_LEN);
        Queue {
            tx,
            rx: Mutex::new(Some(rx)),
            gate: Arc::default(),
            started: Once::new(),
            handled: Arc::default(),
        }
    }
}

impl Queue {
    /// Hands `offer` to the task without waiting; `false` when the queue is full.
    pub fn offer(&self, offer: Offer) -> bool {
        match self.tx.try_send(offer) {
            Ok(()) => true,
            Err(_) => {
                tracing::debug!("key refresh queue full: an Autocrypt update was dropped");
                false
            }
        }
    }

    /// How many offers the task has finished with since start, applied or ignored.
    pub fn handled(&self) -> u64 {
        self.handled.load(Ordering::Acquire)
    }

    /// Holds the task before its next update until the guard is dropped (so a test can show
    /// that the SMTP reply never waits for it).
    pub async fn pause(&self) -> tokio::sync::OwnedMutexGuard<()> {
        self.gate.clone().lock_owned().await
    }
}

/// The inbound milter's part, once a post is decided: the `Autocrypt` header of a post
/// accepted with a good signature by the author's bound key is captured (header bytes only,
/// [`update::capture`]) and queued. Never waits and never changes the post's verdict.
pub fn offer_from_post(daemon: &Daemon, list: &str, verdict: &Verdict, message: &[u8]) {
    let Verdict::Deliver {
        signer: Some(signer),
        ..
    } = verdict
    else {
        return;
    };
    if !daemon.config().key_refresh.autocrypt {
        return;
    }
    // Autocrypt Level 1 §2.3: the header speaks for its `addr`, which must be the author.
    let Some(captured) = capture(message).filter(|c| c.addr == signer.address) else {
        return;
    };
    daemon.key_updates().offer(Offer {
        list: list.to_string(),
        address: signer.address.clone(),
        fingerprint: signer.fingerprint.clone(),
        keydata: captured.keydata,
    });
}

/// Starts the refresh task (and the network timer when `key_refresh.interval` is set), once
/// per daemon, inside its runtime. Both hold the daemon weakly and end with it.
pub fn start(daemon: &Arc<Daemon>) {
    let queue = daemon.key_updates();
    queue.started.call_once(|| {
        let Some(rx) = queue.rx.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        let (gate, handled) = (queue.gate.clone(), queue.handled.clone());
        tokio::spawn(work(Arc::downgrade(daemon), rx, gate, handled));
        let interval = daemon.config().key_refresh.interval;
        if interval > 0 {
            tokio::spawn(timer(Arc::downgrade(daemon), Duration::from_secs(interval)));
        }
    });
}

async fn work(
    daemon: Weak<Daemon>,
    mut rx: mpsc::Receiver<Offer>,
    gate: Arc<tokio::sync::Mutex<()>>,
    handled: Arc<AtomicU64>,
) {
    while let Some(offer) = rx.recv().await {
        let _open = gate.lock().await;
        let Some(d) = daemon.upgrade() else { break };
        let applied = d.blocking(move |d| apply_offer(d, &offer)).await;
        match applied {
            Ok(Ok(Some(fpr))) => tell_owners(&d, &fpr).await,
            Ok(Ok(None)) => {}
            Ok(Err(e)) => tracing::warn!("key refresh from an Autocrypt header failed: {e}"),
            Err(e) => tracing::error!("key refresh task failed: {e}"),
        }
        handled.fetch_add(1, Ordering::Release);
    }
}

async fn timer(daemon: Weak<Daemon>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(d) = daemon.upgrade() else { break };
        refresh_from_network(&d).await;
    }
}

/// Applies a captured header to the member's bound key. `Some(fingerprint)` when the key
/// became unusable by it (revoked, say), for the owners' notice. Blocking.
pub fn apply_offer(daemon: &Daemon, offer: &Offer) -> Result<Option<Fingerprint>, RefreshError> {
    if !daemon.config().key_refresh.autocrypt {
        return Ok(None);
    }
    let hex = offer.fingerprint.to_hex();
    let bound = daemon.store().bindings(&offer.list)?.into_iter().any(|b| {
        b.address == offer.address
            && b.fingerprint.eq_ignore_ascii_case(&hex)
            && b.state == BindingState::Active
    });
    if !bound {
        return Ok(None); // unbound or rebound since the post
    }
    let source = "its Autocrypt header";
    let Some(current) = stored(daemon, &offer.fingerprint)? else {
        return Ok(None);
    };
    match update::accept_bytes(&current, &offer.keydata) {
        Ok(Some(u)) => store_update(daemon, &offer.list, &offer.address, &current, u, source),
        Ok(None) => Ok(None),
        Err(why) => {
            tracing::info!(
                "{}: key update for {} from {source} ignored: {why}",
                offer.list,
                offer.address
            );
            Ok(None)
        }
    }
}

fn stored(daemon: &Daemon, fpr: &Fingerprint) -> Result<Option<Cert>, RefreshError> {
    let config = daemon.config();
    Ok(CertStore::of(&config.keyring_dir, daemon.store()).get(fpr)?)
}

/// Stores the merged key the way the key address does (only a real change bumps the
/// generation) and reloads the keyring at once, so a revocation holds for the next batch.
fn store_update(
    daemon: &Daemon,
    list: &str,
    address: &str,
    before: &Cert,
    update: update::Update,
    source: &str,
) -> Result<Option<Fingerprint>, RefreshError> {
    let fpr = update.cert.fingerprint();
    let was_usable = crate::keys::check_member_cert(before, address).is_ok();
    let problem = crate::keys::check_member_cert(&update.cert, address).err();
    let outcome = Outcome {
        list: list.to_string(),
        summary: String::new(),
        reply: None,
        effects: vec![Effect::RefreshBoundCert(update.cert)],
    };
    let config = daemon.config();
    outcome
        .commit(daemon.store(), &config.keyring_dir)
        .map_err(|e| RefreshError::Commit(e.to_string()))?;
    daemon.refresh_now()?;
    let now = match &problem {
        Some(why) => format!("; now unusable: {why}"),
        None => String::new(),
    };
    tracing::info!(
        "{list}: key of {address} (0x{fpr}) refreshed from {source}: {} new subkey(s), \
         {} new self-signature(s){now}",
        update.new_subkeys,
        update.new_signatures,
    );
    Ok((was_usable && problem.is_some()).then_some(fpr))
}

/// Tells the owners of every list that binds `fpr` that the key is unusable, with
/// `notify-expiry`'s owners' notice (rate-limited the same way, daily per owner).
pub async fn tell_owners(daemon: &Arc<Daemon>, fpr: &Fingerprint) {
    let Ok(keyring) = daemon.keyring() else {
        return;
    };
    let config = daemon.config();
    let mut notices = Vec::new();
    for list in keyring.lists.values() {
        let lines: Vec<String> = list
            .members
            .iter()
            .filter(|m| &m.cert.fingerprint() == fpr)
            .filter_map(crate::notices::unusable_line)
            .collect();
        let made = crate::notices::owner_notices(
            daemon.store(),
            list,
            &lines,
            &mut notices,
            &mut std::io::sink(),
        );
        if let Err(e) = made {
            tracing::warn!("{}: owners' notice not made: {e}", list.address);
        }
    }
    if let Err(e) = crate::notices::deliver(&config, daemon.store(), &notices).await {
        tracing::warn!("owners' notice of an unusable key not sent: {e}");
    }
}

/// One network refresh of every bound key from the configured sources; what a source
/// offers is reduced to the key's own signatures and user IDs already bound, then merged
/// under the same rule as an Autocrypt header.
pub async fn refresh_from_network(daemon: &Arc<Daemon>) {
    let Ok(keyring) = daemon.keyring() else {
        return;
    };
    let config = daemon.config();
    let mut seen = std::collections::BTreeSet::new();
    for list in keyring.lists.values() {
        for m in &list.members {
            let fpr = m.cert.fingerprint();
            if !seen.insert(fpr.clone()) {
                continue;
            }
            for source in &config.key_refresh.sources {
                let fetched = match source {
                    KeyRefreshSource::Wkd => wkd(&m.address, &config.key_refresh).await,
                    KeyRefreshSource::Vks => {
                        let url = fetch::vks_url(&fpr.to_hex(), &config.key_refresh);
                        fetch_one(&url).await
                    }
                };
                let Some(bytes) = fetched else { continue };
                let (list_addr, address) = (list.address.clone(), m.address.clone());
                let fpr2 = fpr.clone();
                let applied = daemon
                    .blocking(move |d| apply_fetched(d, &list_addr, &address, &fpr2, &bytes))
                    .await;
                match applied {
                    Ok(Ok(Some(f))) => tell_owners(daemon, &f).await,
                    Ok(Ok(None)) => {}
                    Ok(Err(e)) => tracing::warn!("key refresh of {} failed: {e}", m.address),
                    Err(e) => tracing::error!("key refresh task failed: {e}"),
                }
            }
        }
    }
}

async fn wkd(address: &str, config: &crate::config::KeyRefresh) -> Option<Vec<u8>> {
    for url in fetch::wkd_urls(address, config) {
        if let Some(bytes) = fetch_one(&url).await {
            return Some(bytes);
        }
    }
    None
}

async fn fetch_one(url: &str) -> Option<Vec<u8>> {
    match fetch::get(url).await {
        Ok(found) => found,
        Err(e) => {
            tracing::debug!("key refresh: {e}");
            None
        }
    }
}

/// A fetched certificate (several may come: the one with the bound primary counts), reduced
/// to what the bound key signed over the user IDs already bound, and merged. Blocking.
fn apply_fetched(
    daemon: &Daemon,
    list: &str,
    address: &str,
    fpr: &Fingerprint,
    bytes: &[u8],
) -> Result<Option<Fingerprint>, RefreshError> {
    let Some(current) = stored(daemon, fpr)? else {
        return Ok(None);
    };
    let Some(offered) = crate::pgp::parse_certs(bytes)
        .find(|c| &c.fingerprint() == fpr)
        .and_then(|c| crate::pgp::own_signatures_only(&c))
    else {
        return Ok(None);
    };
    let known: Vec<_> = current.userids().map(|u| u.userid().clone()).collect();
    let offered = offered
        .retain_userids(|u| known.contains(u.userid()))
        .retain_user_attributes(|_| false);
    match update::accept(&current, offered) {
        Ok(Some(u)) => store_update(daemon, list, address, &current, u, "the network"),
        Ok(None) => Ok(None),
        Err(why) => {
            tracing::info!("{list}: fetched key of {address} ignored: {why}");
            Ok(None)
        }
    }
}
