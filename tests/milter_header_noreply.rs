//! Connect, header fields and body chunks without a round trip each (`SMFIP_NR_CONN`, `_HDR`,
//! `_BODY`): listcrypt asks for them when the MTA offers them, as Postfix and Sendmail do, and
//! a refusal decided at a header field or body chunk reaches the MTA at the next answered
//! stage (end of message), with the same SMTP reply as before. An MTA that offers none of them
//! gets an answer per stage. Expected replies are DESIGN.md's: a header field with a bare CR is
//! `554 5.6.0`; a message over `max_message_bytes` is `552 5.3.4`.

mod support;

use indymilter_test::{Actions, ProtoOpts, Status, TestConnection};
use std::net::SocketAddr;
use std::time::Duration;
use support::milter;
use support::site::{Site, LIST};

async fn open(addr: SocketAddr, opts: ProtoOpts) -> TestConnection {
    let mut conn = TestConnection::configure()
        .read_timeout(Duration::from_secs(60))
        .write_timeout(Duration::from_secs(60))
        .available_actions(Actions::all())
        .available_opts(opts)
        .exact_leading_space(true)
        .open_tcp(addr)
        .await
        .expect("open milter connection");
    let status = conn.connect("client.example.test", [127, 0, 0, 1]).await;
    let want = if conn.negotiated_opts().contains(ProtoOpts::NOREPLY_CONNECT) {
        Status::Noreply
    } else {
        Status::Continue
    };
    assert_eq!(status.unwrap(), want);
    transaction(&mut conn).await;
    conn
}

/// MAIL, RCPT to the list and DATA, each going on.
async fn transaction(conn: &mut TestConnection) {
    assert_eq!(
        conn.mail(["<mallory@example.test>"]).await.unwrap(),
        Status::Continue
    );
    assert_eq!(
        conn.rcpt([format!("<{LIST}>")]).await.unwrap(),
        Status::Continue
    );
    assert_eq!(conn.data().await.unwrap(), Status::Continue);
}

/// Headers of a post whose second field carries a bare CR (a forged field once rebuilt).
const HEADERS: &[(&str, &str)] = &[
    ("From", " Mallory <mallory@example.test>"),
    ("Subject", " hi\rBcc: everyone@example.test"),
    ("To", " enc@lists.example.test"),
];

#[tokio::test(flavor = "multi_thread")]
async fn a_header_refusal_waits_for_the_next_answer_when_the_mta_does_not_wait() {
    let site = Site::new();
    site.create_list(LIST);
    let text = std::fs::read_to_string(&site.config).unwrap();
    std::fs::write(
        &site.config,
        format!("{text}\n[limits]\nmax_message_bytes = {LIMIT}\n"),
    )
    .unwrap();
    let daemon = milter::start(&site.config).await;

    // Postfix's offer: every option. The three are taken; no field or chunk gets an answer,
    // and the refusal comes at end of message.
    let mut conn = open(daemon.inbound, ProtoOpts::all()).await;
    assert!(conn.negotiated_opts().contains(UNANSWERED));
    for (name, value) in HEADERS {
        assert_eq!(conn.header(*name, *value).await.unwrap(), Status::Noreply);
    }
    if !conn.negotiated_opts().contains(ProtoOpts::NO_EOH) {
        assert_eq!(conn.eoh().await.unwrap(), Status::Continue);
    }
    let status = conn.body(b"body\r\n".to_vec()).await.unwrap();
    assert_eq!(status, Status::Noreply);
    let (actions, status) = conn.eom().await.unwrap();
    milter::assert_reply(&status, "554", "5.6.0", "bare CR in a header field, at EOM");
    assert!(actions.actions.is_empty(), "nothing changed: {actions:?}");
    conn.abort().await.unwrap();

    // The next transaction on the same connection starts clean: a good header goes on.
    transaction(&mut conn).await;
    assert_eq!(
        conn.header("Subject", " fine").await.unwrap(),
        Status::Noreply
    );
    if !conn.negotiated_opts().contains(ProtoOpts::NO_EOH) {
        assert_eq!(conn.eoh().await.unwrap(), Status::Continue);
    }
    assert_eq!(
        conn.body(b"body\r\n".to_vec()).await.unwrap(),
        Status::Noreply
    );
    conn.abort().await.unwrap();
    conn.close().await.unwrap();

    // No body at all: the refusal comes at end of message.
    let mut conn = open(daemon.inbound, ProtoOpts::all()).await;
    for (name, value) in HEADERS {
        assert_eq!(conn.header(*name, *value).await.unwrap(), Status::Noreply);
    }
    if !conn.negotiated_opts().contains(ProtoOpts::NO_EOH) {
        assert_eq!(conn.eoh().await.unwrap(), Status::Continue);
    }
    let (actions, status) = conn.eom().await.unwrap();
    milter::assert_reply(&status, "554", "5.6.0", "bare CR in a header field, at EOM");
    assert!(actions.actions.is_empty(), "nothing changed: {actions:?}");
    conn.close().await.unwrap();

    // An MTA that offers none of them: the field itself is answered.
    let mut conn = open(daemon.inbound, ProtoOpts::all() - UNANSWERED).await;
    assert!(!conn.negotiated_opts().intersects(UNANSWERED));
    let (name, value) = HEADERS[0];
    assert_eq!(conn.header(name, value).await.unwrap(), Status::Continue);
    let (name, value) = HEADERS[1];
    let status = conn.header(name, value).await.unwrap();
    milter::assert_reply(
        &status,
        "554",
        "5.6.0",
        "bare CR in a header field, at once",
    );
    conn.close().await.unwrap();

    // A body over the limit, unanswered: refused at end of message.
    let mut conn = open(daemon.inbound, ProtoOpts::all()).await;
    assert_eq!(
        conn.header("Subject", " big").await.unwrap(),
        Status::Noreply
    );
    if !conn.negotiated_opts().contains(ProtoOpts::NO_EOH) {
        assert_eq!(conn.eoh().await.unwrap(), Status::Continue);
    }
    let chunk = vec![b'a'; 65_535];
    for _ in 0..(LIMIT / chunk.len() + 2) {
        assert_eq!(conn.body(chunk.clone()).await.unwrap(), Status::Noreply);
    }
    let (_, status) = conn.eom().await.unwrap();
    milter::assert_reply(&status, "552", "5.3.4", "over max_message_bytes, at EOM");
    conn.close().await.unwrap();

    daemon.stop().await;
}

/// The stages listcrypt need not answer.
const UNANSWERED: ProtoOpts = ProtoOpts::NOREPLY_CONNECT
    .union(ProtoOpts::NOREPLY_HEADER)
    .union(ProtoOpts::NOREPLY_BODY);

/// `max_message_bytes` in this test's configuration.
const LIMIT: usize = 200_000;
