//! The memory budget across sessions: messages held by all milter connections at once count
//! against `limits.max_inflight_bytes`; a message that would pass it is deferred with
//! `452 4.3.1` (DESIGN's decision table), and a message's share comes back at abort, at end of
//! message and when its connection closes.

mod support;

use indymilter_test::{ProtoOpts, Status, TestConnection};
use std::fs;
use std::net::SocketAddr;
use support::milter::{self, Mail};
use support::site::{Site, LIST};

/// Header fields and a body of `body` octets, as one transaction to the list.
fn post(body: usize) -> Mail {
    let line = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\n";
    let text = line.repeat(body / line.len() + 1);
    Mail::parse(
        format!(
            "From: a@example.test\nTo: {LIST}\nSubject: budget\n\n{}",
            &text[..body]
        )
        .as_bytes(),
    )
}

async fn start_transaction(addr: SocketAddr) -> TestConnection {
    let mut conn = milter::connect(addr).await;
    assert_eq!(
        conn.mail(["<a@example.test>"]).await.unwrap(),
        Status::Continue
    );
    assert_eq!(
        conn.rcpt([format!("<{LIST}>")]).await.unwrap(),
        Status::Continue
    );
    conn
}

/// Sends DATA, the header and the body, but not the end of message: the milter holds it.
async fn hold(conn: &mut TestConnection, mail: &Mail) -> Status {
    // Each stage only where the milter negotiated it, as Postfix does.
    let opts = conn.negotiated_opts();
    if !opts.contains(ProtoOpts::NO_DATA) {
        assert_eq!(conn.data().await.unwrap(), Status::Continue);
    }
    for (name, value) in &mail.headers {
        // Postfix does not wait for header answers where the milter asked so (NR_HDR).
        let status = conn.header(name.as_str(), value.as_str()).await.unwrap();
        if !matches!(status, Status::Continue | Status::Noreply) {
            return status;
        }
    }
    if !opts.contains(ProtoOpts::NO_EOH) {
        assert_eq!(conn.eoh().await.unwrap(), Status::Continue);
    }
    // Where the body is not answered (NR_BODY), the message is held as far as the MTA knows:
    // a refusal shows at end of message (`over_budget`).
    match conn.body(mail.body.clone()).await.unwrap() {
        Status::Noreply => Status::Continue,
        status => status,
    }
}

/// The answer to a message [`hold`] left going: at end of message where the body was not
/// answered.
async fn over_budget(conn: &mut TestConnection, held: Status) -> Status {
    if held == Status::Continue && conn.negotiated_opts().contains(ProtoOpts::NOREPLY_BODY) {
        return conn.eom().await.unwrap().1;
    }
    held
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_in_flight_share_one_budget() {
    let site = Site::new();
    site.create_list(LIST);
    let text = fs::read_to_string(&site.config).unwrap();
    fs::write(
        &site.config,
        format!("{text}\n[limits]\nmax_inflight_bytes = 10000\n"),
    )
    .unwrap();
    let daemon = milter::start(&site.config).await;
    let mail = post(6000);

    // One 6 kB message fits; a second one held at the same time does not.
    let mut first = start_transaction(daemon.inbound).await;
    assert_eq!(hold(&mut first, &mail).await, Status::Continue);
    let mut second = start_transaction(daemon.inbound).await;
    let status = hold(&mut second, &mail).await;
    let status = over_budget(&mut second, status).await;
    milter::assert_reply(&status, "452", "4.3.1", "second message over the budget");

    // The first one's abort gives its share back (MAIL answers only once abort is done).
    first.abort().await.unwrap();
    assert_eq!(
        first.mail(["<a@example.test>"]).await.unwrap(),
        Status::Continue
    );
    // After a refusal Postfix aborts the transaction before the next MAIL.
    second.abort().await.unwrap();
    assert_eq!(
        second.mail(["<a@example.test>"]).await.unwrap(),
        Status::Continue
    );
    assert_eq!(
        second.rcpt([format!("<{LIST}>")]).await.unwrap(),
        Status::Continue
    );
    assert_eq!(hold(&mut second, &mail).await, Status::Continue);
    // Past the budget, the post meets the list's policy: unencrypted, refused.
    let (_, status) = second.eom().await.unwrap();
    milter::assert_reply(&status, "550", "5.7.1", "unencrypted post after the budget");

    // End of message gave that share back too: two more fit one after the other, the second
    // after the first connection is closed mid-message.
    let mut third = start_transaction(daemon.inbound).await;
    assert_eq!(hold(&mut third, &mail).await, Status::Continue);
    third.close().await.unwrap();
    let mut fourth = start_transaction(daemon.inbound).await;
    let mut answer = Status::Tempfail { message: None };
    // The closed connection's session is dropped by the daemon on its own time.
    for _ in 0..100 {
        let held = hold(&mut fourth, &mail).await;
        answer = over_budget(&mut fourth, held).await;
        if !milter::reply_text(&answer).starts_with("452") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        fourth.abort().await.unwrap();
        fourth.mail(["<a@example.test>"]).await.unwrap();
        fourth.rcpt([format!("<{LIST}>")]).await.unwrap();
    }
    // Held (or, unanswered, taken to end of message and refused by the list's policy).
    if answer != Status::Continue {
        milter::assert_reply(&answer, "550", "5.7.1", "the fourth fits the budget");
    }

    first.close().await.unwrap();
    second.close().await.unwrap();
    fourth.close().await.unwrap();
    daemon.stop().await;
}
