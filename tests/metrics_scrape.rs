//! Metrics: with `metrics_listen` on loopback, `GET /metrics` answers in the OpenMetrics text
//! format, and a refused plaintext post and a good post move the decision and refusal
//! counters. No series names a member.

mod support;

use indymilter_test::Status;
use std::collections::BTreeMap;
use std::fs;
use std::net::SocketAddr;
use support::gpg::GpgMember;
use support::milter::{self, Mail};
use support::site::{Site, LIST};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// OpenMetrics 1.0, "Protocol Negotiation".
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The head and body of one `GET path` answer.
async fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let raw = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    s.write_all(raw.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8(buf).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete head");
    (head.to_string(), body.to_string())
}

/// Samples by name and sorted labels, e.g. `decisions_total{direction=inbound,...}`.
fn samples(body: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').expect("series and value");
        let key = match series.split_once('{') {
            Some((name, labels)) => {
                let mut pairs: Vec<String> = labels
                    .trim_end_matches('}')
                    .split(',')
                    .map(|p| p.replace('"', ""))
                    .collect();
                pairs.sort();
                format!("{name}{{{}}}", pairs.join(","))
            }
            None => series.to_string(),
        };
        out.insert(key, value.parse().expect("a number"));
    }
    out
}

fn value(samples: &BTreeMap<String, f64>, key: &str) -> f64 {
    samples.get(key).copied().unwrap_or(0.0)
}

async fn post(daemon: &milter::Running, from: &str, mail: &Mail) -> Status {
    let mut conn = milter::connect(daemon.inbound).await;
    let from = format!("<{from}>");
    assert_eq!(conn.mail([from.as_str()]).await.unwrap(), Status::Continue);
    let to = format!("<{LIST}>");
    assert_eq!(conn.rcpt([to.as_str()]).await.unwrap(), Status::Continue);
    let (_, status) = milter::send(&mut conn, mail).await;
    conn.close().await.unwrap();
    status
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scrape_shows_decisions_and_refusals_without_members() {
    let site = Site::new();
    site.create_list(LIST);
    let alice = GpgMember::new(&site, "alice", true);
    // Bob's key expires in 10 days: within 30 days, not within 7.
    let bob = support::gpg::Gpg::new(site.path("gnupg-bob"));
    let bob_uid = "bob <bob@example.test>";
    bob.ok(
        &[
            "--passphrase",
            "",
            "--quick-gen-key",
            bob_uid,
            "future-default",
            "default",
            "10d",
        ],
        None,
    );
    let bob_cert = site.path("bob.asc");
    bob.export(&bob.fingerprint(bob_uid), &bob_cert);
    site.bind(LIST, "bob@example.test", &bob_cert, false);
    let config = fs::read_to_string(&site.config).unwrap();
    fs::write(
        &site.config,
        format!("{config}metrics_listen = \"127.0.0.1:0\"\n"),
    )
    .unwrap();
    let plaintext = Mail::parse(
        b"From: Alice <alice@example.test>\nTo: enc@lists.example.test\nSubject: plain\n\
          Message-ID: <plain@example.test>\nContent-Type: text/plain\n\nMeet at noon.\n",
    );
    let good = Mail::parse(&alice.post("[...]", "Hello list."));

    let daemon = milter::start(&site.config).await;
    let addr = daemon.metrics.expect("metrics_listen is set");
    assert!(addr.ip().is_loopback());
    let (_, before) = get(addr, "/metrics").await;
    let before = samples(&before);

    let refused = post(&daemon, &alice.address, &plaintext).await;
    milter::assert_reply(&refused, "550", "5.7.1", "plaintext post");
    milter::assert_goes_on(&post(&daemon, &alice.address, &good).await, "good post");

    let (head, body) = get(addr, "/metrics").await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("\r\ncontent-type: {OPENMETRICS}")),
        "{head}"
    );
    // OpenMetrics: the exposition ends with the EOF marker.
    assert!(body.ends_with("# EOF\n"), "{body}");
    for member in [alice.address.as_str(), "bob@example.test"] {
        assert!(!body.contains(member), "no member in the metrics: {body}");
    }
    let after = samples(&body);
    let moved = |key: &str| value(&after, key) - value(&before, key);
    let decision = |outcome: &str| {
        format!("listcrypt_decisions_total{{direction=inbound,list={LIST},outcome={outcome}}}")
    };
    assert_eq!(moved(&decision("reject")), 1.0, "{body}");
    assert_eq!(moved(&decision("accept")), 1.0, "{body}");
    assert_eq!(moved("listcrypt_refusals_total{code=5.7.1}"), 1.0, "{body}");
    assert_eq!(value(&after, "listcrypt_lists"), 1.0, "{body}");
    assert_eq!(value(&after, "listcrypt_members"), 2.0, "{body}");
    // Alice's key never expires, Bob's in 10 days.
    for (days, n) in [("7", 0.0), ("30", 1.0)] {
        let key = format!("listcrypt_member_keys_expiring{{days={days},list={LIST}}}");
        assert_eq!(after.get(&key), Some(&n), "{key} in {body}");
    }

    let (head, _) = get(addr, "/").await;
    assert!(head.starts_with("HTTP/1.1 404 "), "{head}");
    daemon.stop().await;
}
