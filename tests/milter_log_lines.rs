//! What `listcrypt serve` writes to a redirected stderr: plain text (no ANSI escape sequences),
//! and a refusal at RCPT, before Postfix has a queue id, under Postfix's own placeholder
//! `NOQUEUE` with the client and envelope that Postfix's `NOQUEUE: reject:` line shows.

mod support;

use indymilter_test::{Actions, ProtoOpts, Status, TestConnection};
use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant};
use support::milter;
use support::site::{Site, LIST};

/// Polls `done` for up to 20 s.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

async fn connect_unix(socket: &std::path::Path) -> TestConnection {
    let mut conn = TestConnection::configure()
        .available_actions(Actions::all())
        .available_opts(ProtoOpts::all())
        .exact_leading_space(true)
        .open_unix(socket)
        .await
        .expect("open milter connection");
    // Postfix names a client whose address does not resolve `unknown` (smtpd(8)).
    let client = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)), 40123);
    let status = conn.connect("unknown", client).await.expect("connect");
    // No answer where listcrypt took NR_CONN, as it does when offered.
    assert!(
        matches!(status, Status::Continue | Status::Noreply),
        "{status:?}"
    );
    conn
}

#[tokio::test(flavor = "multi_thread")]
async fn redirected_log_is_plain_and_rcpt_refusals_say_noqueue_with_client_and_envelope() {
    let site = Site::new();
    site.create_list(LIST);
    let config = fs::read_to_string(&site.config)
        .unwrap()
        .replace("log_level = \"warn\"", "log_level = \"info\"");
    fs::write(&site.config, config).unwrap();
    let log = site.path("serve.log");
    let mut child = site
        .cli()
        .arg("serve")
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .expect("serve");
    let read_log = || fs::read(&log).unwrap_or_default();
    wait_until("serve's start", || {
        String::from_utf8_lossy(&read_log()).contains("serving 1 list(s)")
    });

    let mut conn = connect_unix(&site.path("run/inbound.sock")).await;
    assert_eq!(
        conn.mail(["<mallory@example.test>"]).await.unwrap(),
        Status::Continue
    );
    let status = conn.rcpt(["<other@lists.example.test>"]).await.unwrap();
    milter::assert_reply(&status, "550", "5.1.1", "a stranger in the list domain");
    conn.abort().await.unwrap();
    conn.close().await.unwrap();
    wait_until("the refusal's log line", || {
        String::from_utf8_lossy(&read_log()).contains("refused")
    });
    let _ = child.kill();
    let _ = child.wait();

    let bytes = read_log();
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        !bytes.contains(&0x1b),
        "no escape sequences in a file:\n{text:?}"
    );
    let line = text
        .lines()
        .find(|l| l.contains("other@lists.example.test"))
        .unwrap_or_else(|| panic!("no refusal line:\n{text}"));
    assert!(line.contains("NOQUEUE: inbound: recipient"), "{line}");
    assert!(!line.contains("NONE"), "{line}");
    assert!(
        line.contains(
            "client=unknown[192.0.2.7] from=<mallory@example.test> to=<other@lists.example.test>"
        ),
        "{line}"
    );
}
