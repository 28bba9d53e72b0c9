//! Inbound fail-closed rule: a recipient in a domain that hosts an encrypted list, or routed
//! there by Postfix's `%` and `!` operators, that is no address of a list is refused at RCPT
//! with `550 5.1.1`; `list_domain_other_recipients = "accept"` lets it pass as non-list mail.

mod support;

use indymilter_test::Status;
use support::milter;
use support::site::{Site, LIST};

#[tokio::test(flavor = "multi_thread")]
async fn other_recipients_in_a_list_domain_follow_the_setting() {
    let site = Site::new();
    site.create_list(LIST);
    let daemon = milter::start(&site.config).await;
    let mut conn = milter::connect(daemon.inbound).await;
    for rcpt in [
        "<other@lists.example.test>",
        "<enc-bogus@lists.example.test>",
        // Postfix's percent hack delivers this to enc@lists.example.test.
        "<enc%lists.example.test@mx.example.test>",
        "<lists.example.test!enc@mx.example.test>",
        // Unqualified: Postfix appends $myorigin, which may be the list domain.
        "<enc>",
    ] {
        assert_eq!(
            conn.mail(["<mallory@example.test>"]).await.unwrap(),
            Status::Continue
        );
        let status = conn.rcpt([rcpt]).await.unwrap();
        milter::assert_reply(&status, "550", "5.1.1", rcpt);
        conn.abort().await.unwrap();
    }
    // Mail for other domains is none of listcrypt's business, nor is the unqualified
    // postmaster that RFC 5321 section 4.5.1 requires every host to accept.
    for rcpt in ["<bob@example.org>", "<postmaster>"] {
        assert_eq!(
            conn.mail(["<mallory@example.test>"]).await.unwrap(),
            Status::Continue
        );
        assert_eq!(conn.rcpt([rcpt]).await.unwrap(), Status::Continue, "{rcpt}");
        conn.abort().await.unwrap();
    }
    conn.close().await.unwrap();
    daemon.stop().await;

    let text = std::fs::read_to_string(&site.config).unwrap();
    std::fs::write(
        &site.config,
        format!("{text}list_domain_other_recipients = \"accept\"\n"),
    )
    .unwrap();
    let daemon = milter::start(&site.config).await;
    let mut conn = milter::connect(daemon.inbound).await;
    assert_eq!(
        conn.mail(["<mallory@example.test>"]).await.unwrap(),
        Status::Continue
    );
    assert_eq!(
        conn.rcpt(["<other@lists.example.test>"]).await.unwrap(),
        Status::Continue,
        "accepted as non-list mail"
    );
    conn.abort().await.unwrap();
    // A routed form of the list's own address still reaches Mailman: refused either way.
    assert_eq!(
        conn.mail(["<mallory@example.test>"]).await.unwrap(),
        Status::Continue
    );
    let status = conn
        .rcpt(["<enc%lists.example.test@mx.example.test>"])
        .await
        .unwrap();
    milter::assert_reply(&status, "550", "5.1.1", "routed list address with accept");
    conn.close().await.unwrap();
    daemon.stop().await;
}
