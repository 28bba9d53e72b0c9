//! Counters and gauges for Prometheus, in the OpenMetrics text format (served on
//! `metrics_listen`). Labels are lists, directions, outcomes and status codes, never members:
//! per-member series would leak addresses and grow without bound.

use crate::keys::Keyring;
use prometheus_client::encoding::text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

/// The `Content-Type` of a scrape (OpenMetrics 1.0 text).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels<const N: usize> = [(&'static str, String); N];

/// Which milter side took a decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
    KeyAddress,
}

/// What became of a message at end of message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Accept,
    Hold,
    Discard,
    Reject,
    Tempfail,
}

impl Direction {
    fn label(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
            Direction::KeyAddress => "key_address",
        }
    }
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Accept => "accept",
            Outcome::Hold => "hold",
            Outcome::Discard => "discard",
            Outcome::Reject => "reject",
            Outcome::Tempfail => "tempfail",
        }
    }
}

struct Metrics {
    registry: Registry,
    decisions: Family<Labels<3>, Counter>,
    refusals: Family<Labels<1>, Counter>,
    batches: Counter,
    batch_size: Histogram,
    encryption: Histogram,
    reinjection_failures: Counter,
    reinject_in_doubt: Counter,
    keyring_reloads: Counter,
    lists: Gauge,
    members: Gauge,
    key_expiry: Family<Labels<1>, Gauge<f64, std::sync::atomic::AtomicU64>>,
    members_expiring: Family<Labels<2>, Gauge>,
}

fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

impl Metrics {
    fn new() -> Metrics {
        let mut m = Metrics {
            registry: Registry::with_prefix("listcrypt"),
            decisions: Family::default(),
            refusals: Family::default(),
            batches: Counter::default(),
            // Recipients per batch: 1 up to a few thousand.
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
            // Seconds per outbound message: 1 ms up to about 33 s.
            encryption: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            reinjection_failures: Counter::default(),
            reinject_in_doubt: Counter::default(),
            keyring_reloads: Counter::default(),
            lists: Gauge::default(),
            members: Gauge::default(),
            key_expiry: Family::default(),
            members_expiring: Family::default(),
        };
        m.register();
        m
    }

    fn register(&mut self) {
        let r = &mut self.registry;
        r.register(
            "decisions",
            "Messages decided, by list, direction and outcome",
            self.decisions.clone(),
        );
        r.register(
            "refusals",
            "SMTP refusals, by enhanced status code",
            self.refusals.clone(),
        );
        r.register(
            "batches",
            "Outbound batches encrypted",
            self.batches.clone(),
        );
        r.register(
            "batch_size",
            "Recipients per outbound batch",
            self.batch_size.clone(),
        );
        r.register(
            "encryption_seconds",
            "Time to encrypt one outbound message, all batches",
            self.encryption.clone(),
        );
        r.register(
            "reinjection_failures",
            "Batches the reinjection listener did not take",
            self.reinjection_failures.clone(),
        );
        r.register(
            "reinject_in_doubt",
            "Reinjected batches sent again because an earlier attempt may have queued them",
            self.reinject_in_doubt.clone(),
        );
        r.register(
            "keyring_reloads",
            "Keyrings installed since start",
            self.keyring_reloads.clone(),
        );
        r.register("lists", "Lists in the keyring", self.lists.clone());
        r.register("members", "Members of all lists", self.members.clone());
        r.register(
            "list_key_expiry_seconds",
            "Seconds until the list key expires (absent: it never does)",
            self.key_expiry.clone(),
        );
        r.register(
            "member_keys_expiring",
            "Members whose key stops being usable within the given number of days",
            self.members_expiring.clone(),
        );
    }
}

/// One end-of-message decision.
pub fn decision(list: &str, direction: Direction, outcome: Outcome) {
    let labels = [
        ("list", list.to_string()),
        ("direction", direction.label().to_string()),
        ("outcome", outcome.label().to_string()),
    ];
    metrics().decisions.get_or_create(&labels).inc();
}

/// One refusal sent to the MTA, e.g. `5.7.1`.
pub fn refusal(xcode: &str) {
    let labels = [("code", xcode.to_string())];
    metrics().refusals.get_or_create(&labels).inc();
}

/// One outbound message encrypted in batches of the given recipient counts.
pub fn encrypted(elapsed: Duration, batch_sizes: impl IntoIterator<Item = usize>) {
    let m = metrics();
    m.encryption.observe(elapsed.as_secs_f64());
    for n in batch_sizes {
        m.batches.inc();
        m.batch_size.observe(n as f64);
    }
}

pub fn reinjection_failure() {
    metrics().reinjection_failures.inc();
}

/// One in-doubt batch sent again (its recipients may get a second copy).
pub fn reinject_in_doubt() {
    metrics().reinject_in_doubt.inc();
}

/// A keyring rebuilt and installed (background or SIGHUP): counted, and its size taken.
pub fn keyring_reloaded(keyring: &Keyring) {
    metrics().keyring_reloads.inc();
    keyring_loaded(keyring);
}

/// The size of the keyring in use (also the first one, at start).
pub fn keyring_loaded(keyring: &Keyring) {
    let m = metrics();
    m.lists.set(keyring.lists.len() as i64);
    let members: usize = keyring.lists.values().map(|l| l.members.len()).sum();
    m.members.set(members as i64);
}

/// The OpenMetrics text of every metric, the expiry gauges taken from `keyring` at `now`
/// (they change with time, not only on reloads).
pub fn scrape(keyring: &Keyring, now: SystemTime) -> Result<String, std::fmt::Error> {
    let m = metrics();
    expiry(m, keyring, now);
    let mut out = String::new();
    text::encode(&mut out, &m.registry)?;
    Ok(out)
}

fn expiry(m: &Metrics, keyring: &Keyring, now: SystemTime) {
    // Lists removed since the last scrape disappear instead of reporting stale values.
    m.key_expiry.clear();
    m.members_expiring.clear();
    let seconds = |t: SystemTime| match t.duration_since(now) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    };
    for (name, list) in &keyring.lists {
        if let Some(Some(t)) = crate::pgp::primary_expiry(&list.secret) {
            let labels = [("list", name.clone())];
            m.key_expiry.get_or_create(&labels).set(seconds(t));
        }
        for days in [7u64, 30] {
            let horizon = now + Duration::from_secs(days * 86_400);
            let n = list
                .members
                .iter()
                .filter(|mb| match crate::pgp::usable_until(&mb.cert) {
                    Some(Some(t)) => t <= horizon,
                    Some(None) => false,
                    // A key the policy rejects is as good as expired.
                    None => true,
                })
                .count();
            let labels = [("list", name.clone()), ("days", days.to_string())];
            m.members_expiring.get_or_create(&labels).set(n as i64);
        }
    }
}
