//! Header fields without a round trip each (`SMFIP_NR_HDR`): listcrypt asks for it when the
//! MTA offers it, as Postfix and Sendmail do, and a refusal decided at a header field reaches
//! the MTA at the next answered stage (the body, or end of message when there is none), with
//! the same SMTP reply as before. An MTA that does not offer it gets an answer per field.
//! Expected replies are DESIGN.md's: a header field with a bare CR is `554 5.6.0`.

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
    assert_eq!(status.unwrap(), Status::Continue);
    assert_eq!(
        conn.mail(["<mallory@example.test>"]).await.unwrap(),
        Status::Continue
    );
    assert_eq!(
        conn.rcpt([format!("<{LIST}>")]).await.unwrap(),
        Status::Continue
    );
    let status = conn.data().await.unwrap();
    assert_eq!(status, Status::Continue);
    conn
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
    let daemon = milter::start(&site.config).await;

    // Postfix's offer: every option. NR_HDR is taken; no field gets an answer, and the
    // refusal comes with the first body chunk.
    let mut conn = open(daemon.inbound, ProtoOpts::all()).await;
    assert!(conn.negotiated_opts().contains(ProtoOpts::NOREPLY_HEADER));
    for (name, value) in HEADERS {
        assert_eq!(conn.header(*name, *value).await.unwrap(), Status::Noreply);
    }
    if !conn.negotiated_opts().contains(ProtoOpts::NO_EOH) {
        assert_eq!(conn.eoh().await.unwrap(), Status::Continue);
    }
    let status = conn.body(b"body\r\n".to_vec()).await.unwrap();
    milter::assert_reply(
        &status,
        "554",
        "5.6.0",
        "bare CR in a header field, at the body",
    );
    conn.abort().await.unwrap();

    // The next transaction on the same connection starts clean: a good header goes on.
    assert_eq!(
        conn.mail(["<mallory@example.test>"]).await.unwrap(),
        Status::Continue
    );
    assert_eq!(
        conn.rcpt([format!("<{LIST}>")]).await.unwrap(),
        Status::Continue
    );
    assert_eq!(conn.data().await.unwrap(), Status::Continue);
    assert_eq!(
        conn.header("Subject", " fine").await.unwrap(),
        Status::Noreply
    );
    if !conn.negotiated_opts().contains(ProtoOpts::NO_EOH) {
        assert_eq!(conn.eoh().await.unwrap(), Status::Continue);
    }
    assert_eq!(
        conn.body(b"body\r\n".to_vec()).await.unwrap(),
        Status::Continue
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

    // An MTA that does not offer NR_HDR: the field itself is answered.
    let mut conn = open(daemon.inbound, ProtoOpts::all() - ProtoOpts::NOREPLY_HEADER).await;
    assert!(!conn.negotiated_opts().contains(ProtoOpts::NOREPLY_HEADER));
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

    daemon.stop().await;
}
