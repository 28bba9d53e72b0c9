//! Sendmail sends its queue id (macro `i`) with MAIL already (its default
//! `Milter.macros.envfrom` starts with `i`; listcrypt asks for it at MAIL too), while Postfix
//! knows it only from DATA. A refusal at RCPT then names Sendmail's queue id, the one in
//! Sendmail's own log line for that transaction, instead of Postfix's placeholder `NOQUEUE`.

mod support;

use indymilter_test::{Actions, MacroStage, ProtoOpts, Status, TestConnection};
use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant};
use support::milter;
use support::site::{Site, LIST};

/// A queue id as Sendmail 8.17 writes it (seen in its mail log: `sendmail[26122]: 6B6H3WQH026122:`).
const QUEUE_ID: &str = "6B6H3WQH026122";

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rcpt_refusal_names_the_queue_id_sendmail_sent_with_mail() {
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
    let read_log = || String::from_utf8_lossy(&fs::read(&log).unwrap_or_default()).into_owned();
    wait_until("serve's start", || read_log().contains("serving 1 list(s)"));

    let mut conn = TestConnection::configure()
        .available_actions(Actions::all())
        .available_opts(ProtoOpts::all())
        .exact_leading_space(true)
        .open_unix(&site.path("run/inbound.sock"))
        .await
        .expect("open milter connection");
    let requested = conn.requested_macros().get(&MacroStage::Mail);
    assert!(
        requested.is_some_and(|m| m.to_bytes().split(|b| *b == b' ').any(|n| n == b"i")),
        "listcrypt does not ask for the queue id at MAIL: {requested:?}"
    );
    // Sendmail names a client without a verified host name `[address]`.
    let client = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)), 40123);
    let status = conn.connect("[192.0.2.7]", client).await.expect("connect");
    // No answer where listcrypt took NR_CONN, as it does when offered.
    assert!(
        matches!(status, Status::Continue | Status::Noreply),
        "{status:?}"
    );
    conn.macros(MacroStage::Mail, [("i", QUEUE_ID)])
        .await
        .unwrap();
    assert_eq!(
        conn.mail(["<mallory@example.test>"]).await.unwrap(),
        Status::Continue
    );
    let status = conn.rcpt(["<other@lists.example.test>"]).await.unwrap();
    milter::assert_reply(&status, "550", "5.1.1", "a stranger in the list domain");
    conn.abort().await.unwrap();
    conn.close().await.unwrap();
    wait_until("the refusal's log line", || read_log().contains("refused"));
    let _ = child.kill();
    let _ = child.wait();

    let text = read_log();
    let line = text
        .lines()
        .find(|l| l.contains("other@lists.example.test"))
        .unwrap_or_else(|| panic!("no refusal line:\n{text}"));
    assert!(
        line.contains(&format!(
            "{QUEUE_ID}: inbound: recipient other@lists.example.test refused"
        )),
        "{line}"
    );
    assert!(!line.contains("NOQUEUE"), "{line}");
    assert!(
        line.contains("client=[192.0.2.7] from=<mallory@example.test>"),
        "{line}"
    );
}
