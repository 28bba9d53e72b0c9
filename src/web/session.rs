//! Sessions of the owners' page, and the sign-in rate limit, both held in memory and bounded.
//!
//! A session keeps the token it was opened with and re-authenticates it on every request
//! (src/api/extract.rs's `Caller`), so a revoked or expired token ends it at once.

use rand::RngCore;
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// Sessions held at once; beyond, the oldest goes (only valid tokens open sessions).
pub const MAX_SESSIONS: usize = 1024;
/// A session unused this long ends.
pub const IDLE: Duration = Duration::from_secs(30 * 60);
/// And none lasts longer than this, used or not.
pub const LIFETIME: Duration = Duration::from_secs(12 * 3600);

pub struct Session {
    /// The token signed in with (re-checked on every request).
    pub token: Zeroizing<String>,
    /// The form token of this session's POSTs.
    pub csrf: String,
    created: Instant,
    used: Instant,
}

#[derive(Default)]
pub struct Sessions {
    map: HashMap<String, Session>,
}

/// 256 random bits, hex.
pub fn random_id() -> String {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    data_encoding::HEXLOWER.encode(&b)
}

impl Sessions {
    /// Opens a session for `token`: its id and its CSRF token.
    pub fn open(&mut self, token: &str, now: Instant) -> (String, String) {
        self.map.retain(|_, s| live(s, now));
        if self.map.len() >= MAX_SESSIONS {
            let oldest = self
                .map
                .iter()
                .min_by_key(|(_, s)| s.created)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.map.remove(&k);
            }
        }
        let (id, csrf) = (random_id(), random_id());
        let session = Session {
            token: Zeroizing::new(token.to_string()),
            csrf: csrf.clone(),
            created: now,
            used: now,
        };
        self.map.insert(id.clone(), session);
        (id, csrf)
    }

    /// The token and CSRF token of a live session, which counts as used.
    pub fn get(&mut self, id: &str, now: Instant) -> Option<(Zeroizing<String>, String)> {
        let s = self.map.get_mut(id)?;
        if !live(s, now) {
            self.map.remove(id);
            return None;
        }
        s.used = now;
        Some((s.token.clone(), s.csrf.clone()))
    }

    pub fn close(&mut self, id: &str) {
        self.map.remove(id);
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

fn live(s: &Session, now: Instant) -> bool {
    now.duration_since(s.used) < IDLE && now.duration_since(s.created) < LIFETIME
}

/// A token bucket: `burst` tries, refilled one per `every`.
#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(burst: u32, now: Instant) -> Bucket {
        Bucket {
            tokens: f64::from(burst),
            at: now,
        }
    }

    /// Refills, then takes one try; `Err(wait)` when empty.
    fn take(&mut self, burst: u32, every: Duration, now: Instant) -> Result<(), Duration> {
        let refill = now.duration_since(self.at).as_secs_f64() / every.as_secs_f64();
        self.tokens = (self.tokens + refill).min(f64::from(burst));
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        Err(every.mul_f64(1.0 - self.tokens))
    }
}

/// Sign-in attempts, per client address and in all.
pub struct Limiter {
    per_ip: HashMap<IpAddr, Bucket>,
    global: Bucket,
}

/// Per address: 5 tries, then one every 12 s (token guessing is hopeless anyway: 256 bits).
const IP_BURST: u32 = 5;
const IP_EVERY: Duration = Duration::from_secs(12);
/// In all: 30 tries, then 2 a second; bounds the store lookups unauthenticated clients cause.
const GLOBAL_BURST: u32 = 30;
const GLOBAL_EVERY: Duration = Duration::from_millis(500);
/// Addresses remembered; beyond, full buckets are forgotten, then all of them.
const MAX_ADDRESSES: usize = 4096;

impl Limiter {
    pub fn new(now: Instant) -> Limiter {
        Limiter {
            per_ip: HashMap::new(),
            global: Bucket::full(GLOBAL_BURST, now),
        }
    }

    /// One sign-in attempt from `ip`; `Err(wait)` when over either limit.
    pub fn attempt(&mut self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        if self.per_ip.len() >= MAX_ADDRESSES {
            let full = f64::from(IP_BURST);
            self.per_ip.retain(|_, b| {
                b.tokens + now.duration_since(b.at).as_secs_f64() / IP_EVERY.as_secs_f64() < full
            });
            if self.per_ip.len() >= MAX_ADDRESSES {
                self.per_ip.clear();
            }
        }
        let bucket = self
            .per_ip
            .entry(ip)
            .or_insert_with(|| Bucket::full(IP_BURST, now));
        bucket.take(IP_BURST, IP_EVERY, now)?;
        self.global.take(GLOBAL_BURST, GLOBAL_EVERY, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_in_is_limited_per_address_and_in_all() {
        let t0 = Instant::now();
        let mut l = Limiter::new(t0);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..IP_BURST {
            assert!(l.attempt(a, t0).is_ok());
        }
        let wait = l.attempt(a, t0).unwrap_err();
        assert!(
            wait > Duration::from_secs(11) && wait <= IP_EVERY,
            "{wait:?}"
        );
        assert!(l.attempt(a, t0 + IP_EVERY).is_ok());
        // Many addresses together run into the global bucket (full again after 12 s, one
        // taken above).
        let mut refused = 0;
        for i in 0..100u8 {
            let ip = IpAddr::from([198, 51, 100, i]);
            refused += usize::from(l.attempt(ip, t0 + IP_EVERY).is_err());
        }
        assert_eq!(refused, 100 - (GLOBAL_BURST as usize - 1));
    }

    #[test]
    fn sessions_end_when_idle_or_old_and_stay_bounded() {
        let t0 = Instant::now();
        let mut s = Sessions::default();
        let (id, csrf) = s.open("tok", t0);
        assert_eq!(s.get(&id, t0 + IDLE / 2).unwrap().1, csrf);
        assert!(s.get(&id, t0 + IDLE / 2 + IDLE).is_none());
        let (id, _) = s.open("tok", t0);
        let mut t = t0;
        while t < t0 + LIFETIME {
            t += IDLE / 2;
            let _ = s.get(&id, t);
        }
        assert!(s.get(&id, t).is_none(), "past its lifetime");
        for i in 0..MAX_SESSIONS + 10 {
            s.open("tok", t + Duration::from_millis(i as u64));
        }
        assert_eq!(s.len(), MAX_SESSIONS);
    }
}
