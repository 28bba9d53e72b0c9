//! Key encapsulations made ahead, while the MTA is still sending recipients. The costly part
//! of an X25519 PKESK (two scalar multiplications and the KDF, [`super::ecdh`]) depends on
//! the recipient's key alone, not on the session key, and the milter learns each recipient
//! one RCPT round trip at a time: the cores are idle meanwhile. [`Prekeys::offer`] queues a
//! recipient's keys, one worker on a spare crypto permit encapsulates them, and end of message
//! takes one encapsulation per PKESK ([`Prekeys::take`]), making any that are missing itself.
//!
//! Each encapsulation is used once (taken by value) and cleared on drop; a transaction that
//! ends without end of message drops them unused. Builds without the fast path
//! (`crypto-nettle`) make none.

use super::encrypt::PublicKey;
#[cfg(feature = "crypto-openssl")]
use std::collections::HashMap;
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};

#[cfg(feature = "crypto-openssl")]
use super::ecdh::{Encapsulation, Recipient};

/// At most this many keys per transaction are encapsulated ahead (Postfix's
/// `smtpd_recipient_limit` is 1000 by default); the rest are made at end of message.
const MAX_KEYS: usize = 10_000;

/// Keys waiting per running worker before another one starts.
const BACKLOG: usize = 8;

/// One transaction's encapsulations made ahead.
#[derive(Default)]
pub struct Prekeys {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// Signalled when a worker stops.
    stopped: Condvar,
}

#[derive(Default)]
struct State {
    waiting: VecDeque<PublicKey>,
    #[cfg(feature = "crypto-openssl")]
    ready: HashMap<sequoia_openpgp::Fingerprint, Vec<(Arc<Recipient>, Encapsulation)>>,
    /// Keys queued so far (bounded by [`MAX_KEYS`]).
    offered: usize,
    /// Encapsulations made so far.
    made: usize,
    /// Workers running.
    working: usize,
    closed: bool,
}

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, State> {
    shared.state.lock().unwrap_or_else(|e| e.into_inner())
}

impl Prekeys {
    pub fn new() -> Prekeys {
        Prekeys::default()
    }

    /// Queues one recipient's encryption keys. A worker starts on tokio's blocking pool if
    /// none is running; outside a tokio runtime (`process outbound`, which knows every
    /// recipient at once) nothing is made ahead.
    pub fn offer(&self, keys: &[PublicKey]) {
        if !cfg!(feature = "crypto-openssl") {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut state = lock(&self.shared);
        if state.closed {
            return;
        }
        for key in keys {
            if state.offered < MAX_KEYS {
                state.waiting.push_back(key.clone());
                state.offered += 1;
            }
        }
        // One worker, and another per BACKLOG keys waiting while cores are free: the
        // envelope's round trips come faster than one core encapsulates.
        let cores = crate::crypto_pool::global().size();
        if state.working < cores && state.waiting.len() > state.working * BACKLOG {
            state.working += 1;
            let shared = self.shared.clone();
            runtime.spawn_blocking(move || work(&shared));
        }
    }

    /// No more are made; a worker stops after the key in hand.
    pub fn close(&self) {
        let mut state = lock(&self.shared);
        state.closed = true;
        state.waiting.clear();
    }

    /// End of message: [`Prekeys::close`], then waits (one encapsulation, at most 100 ms)
    /// until the workers have given their crypto permits back, for the PKESKs still to be
    /// made. Call it off the async workers.
    pub fn finish(&self) {
        self.close();
        // Bounded: a worker still queued behind a saturated blocking pool must not hold end of
        // message up (it stops as soon as it starts).
        let until = std::time::Instant::now() + std::time::Duration::from_millis(100);
        let mut state = lock(&self.shared);
        while state.working > 0 {
            let left = until.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return;
            }
            state = self
                .shared
                .stopped
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// How many encapsulations were made ahead (for tests and benchmarks).
    pub fn made(&self) -> usize {
        lock(&self.shared).made
    }

    /// An encapsulation made ahead for `key` (whose fast-path form is `to`), if any: removed,
    /// so it serves one PKESK only.
    #[cfg(feature = "crypto-openssl")]
    pub(super) fn take(&self, key: &PublicKey, to: &Recipient) -> Option<Encapsulation> {
        let mut state = lock(&self.shared);
        let list = state.ready.get_mut(&key.fingerprint())?;
        let i = list.iter().position(|(r, _)| r.same_key(to))?;
        Some(list.swap_remove(i).1)
    }
}

impl Drop for Prekeys {
    fn drop(&mut self) {
        // The worker stops at its next key; what it made is dropped (and cleared) with it.
        self.close();
    }
}

/// The worker: on a crypto permit that is free now (or not at all: then end of message makes
/// every PKESK, as without this), until the queue is empty or the transaction closed.
#[cfg(feature = "crypto-openssl")]
fn work(shared: &Shared) {
    let pool = crate::crypto_pool::global();
    let permit = pool.spare(1);
    loop {
        let key = {
            let mut state = lock(shared);
            match state.waiting.pop_front() {
                Some(key) if permit.count() > 0 && !state.closed => key,
                other => {
                    // Without a permit the key waits for the next worker (or end of message).
                    // Decided under the lock `offer` takes: a key queued after this starts a
                    // new worker.
                    if let Some(key) = other {
                        state.waiting.push_front(key);
                    }
                    state.working -= 1;
                    drop(state);
                    drop(permit);
                    shared.stopped.notify_all();
                    return;
                }
            }
        };
        let Some(to) = super::ecdh::recipient(&key) else {
            continue;
        };
        // A failure here (a low-order point) recurs at end of message, which reports it.
        let Ok(encapsulation) = super::ecdh::encapsulate(&to) else {
            continue;
        };
        let mut state = lock(shared);
        if state.closed {
            continue;
        }
        state.made += 1;
        state
            .ready
            .entry(key.fingerprint())
            .or_default()
            .push((to, encapsulation));
    }
}

#[cfg(not(feature = "crypto-openssl"))]
fn work(shared: &Shared) {
    lock(shared).working -= 1;
    shared.stopped.notify_all();
}

#[cfg(all(test, feature = "crypto-openssl"))]
mod tests {
    use super::super::ecdh::tests::cv25519_key;
    use super::super::encrypt::{make_pkesks, pkesks_ahead};
    use super::*;
    use openpgp::crypto::mpi::Ciphertext;
    use openpgp::crypto::SessionKey;
    use openpgp::parse::Parse;
    use openpgp::types::{HashAlgorithm, SymmetricAlgorithm};
    use sequoia_openpgp as openpgp;

    /// How many encapsulations wait to be taken.
    fn ready(p: &Prekeys) -> usize {
        lock(&p.shared).ready.values().map(Vec::len).sum()
    }

    /// Keys offered one by one (as RCPTs come) are encapsulated by the workers; end of message
    /// takes each once: every PKESK opens with its recipient's key, none shares an ephemeral
    /// key, and a second message made with the same `Prekeys` makes its own.
    #[test]
    fn made_ahead_used_once_and_decryptable() {
        const N: usize = 40;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let secrets: Vec<_> = (0..N)
            .map(|i| {
                let sym = [SymmetricAlgorithm::AES128, SymmetricAlgorithm::AES256][i % 2];
                cv25519_key(HashAlgorithm::SHA256, sym)
            })
            .collect();
        let publics: Vec<PublicKey> = secrets
            .iter()
            .map(|k| k.clone().parts_into_public())
            .collect();
        let prekeys = Prekeys::new();
        runtime.block_on(async {
            for k in &publics {
                prekeys.offer(std::slice::from_ref(k));
            }
        });
        // The workers run on their own; wait for them (bounded), as RCPT round trips would.
        let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while prekeys.made() < N && std::time::Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        prekeys.finish();
        assert_eq!(prekeys.made(), N);
        assert_eq!(ready(&prekeys), N);
        let jobs: Vec<(&PublicKey, bool)> = publics.iter().map(|k| (k, false)).collect();
        let mut ephemeral = std::collections::HashSet::new();
        for round in 0..2 {
            let before = pkesks_ahead();
            let session_key = SessionKey::new(32).unwrap();
            let sym = SymmetricAlgorithm::AES256;
            let pkesks = make_pkesks(&jobs, sym, &session_key, false, Some(&prekeys)).unwrap();
            if round == 0 {
                // Other tests' PKESKs may count too: at least ours.
                assert!(pkesks_ahead() - before >= N as u64);
            }
            assert_eq!(ready(&prekeys), 0, "each encapsulation taken once");
            for (i, bytes) in pkesks.iter().enumerate() {
                let openpgp::Packet::PKESK(p) = openpgp::Packet::from_bytes(bytes).unwrap() else {
                    panic!("not a PKESK");
                };
                let Ciphertext::ECDH { e, .. } = p.esk() else {
                    panic!("not ECDH");
                };
                assert!(ephemeral.insert(e.value().to_vec()), "ephemeral key reused");
                let mut pair = secrets[i].clone().into_keypair().unwrap();
                let (algo, sk) = p.decrypt(&mut pair, None).expect("its recipient opens it");
                assert_eq!(&sk[..], &session_key[..]);
                assert_eq!(algo, Some(sym));
            }
        }
    }

    /// Keys offered after the transaction closed are not encapsulated, and dropping the
    /// transaction stops its worker.
    #[test]
    fn closed_makes_no_more() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let key =
            cv25519_key(HashAlgorithm::SHA256, SymmetricAlgorithm::AES128).parts_into_public();
        let prekeys = Prekeys::new();
        prekeys.finish();
        runtime.block_on(async { prekeys.offer(std::slice::from_ref(&key)) });
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(prekeys.made(), 0);
        // Outside a runtime (`process outbound`) nothing is queued at all.
        let outside = Prekeys::new();
        outside.offer(std::slice::from_ref(&key));
        assert!(lock(&outside.shared).waiting.is_empty());
        let shared = {
            let p = Prekeys::new();
            runtime.block_on(async {
                for _ in 0..500 {
                    p.offer(std::slice::from_ref(&key));
                }
            });
            p.shared.clone()
        };
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while lock(&shared).working > 0 && std::time::Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let state = lock(&shared);
        assert_eq!(state.working, 0, "workers stopped");
        assert!(state.made < 500, "stopped early: {}", state.made);
    }
}
