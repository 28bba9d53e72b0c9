//! Outbound mail whose envelope sender is no managed list's: refused at MAIL by default
//! (`550 5.7.1`, fail closed), passed untouched with `unmanaged_outbound = "accept"` (Mailman
//! also serving unencrypted lists).

mod support;

use indymilter_test::Status;
use support::milter;
use support::site::{Site, LIST};

#[tokio::test(flavor = "multi_thread")]
async fn unmanaged_outbound_mail_follows_the_setting() {
    let site = Site::new();
    site.create_list(LIST);

    let daemon = milter::start(&site.config).await;
    let mut conn = milter::connect(daemon.outbound).await;
    let status = conn.mail(["<mailman@lists.example.test>"]).await.unwrap();
    milter::assert_reply(&status, "550", "5.7.1", "default: unmanaged outbound mail");
    let status = conn
        .mail(["<other-bounces@lists.example.test>"])
        .await
        .unwrap();
    milter::assert_reply(&status, "550", "5.7.1", "another list's bounces");
    // The list itself still goes through, in each form Mailman sends it (VERP included).
    for sender in [
        "<enc-bounces@lists.example.test>",
        "<enc-bounces+alice=example.test@lists.example.test>",
        "<ENC-Bounces@Lists.Example.Test.>",
    ] {
        assert_eq!(
            conn.mail([sender]).await.unwrap(),
            Status::Continue,
            "{sender}"
        );
    }
    conn.close().await.unwrap();
    daemon.stop().await;

    let text = std::fs::read_to_string(&site.config).unwrap();
    std::fs::write(
        &site.config,
        format!("{text}unmanaged_outbound = \"accept\"\n"),
    )
    .unwrap();
    let daemon = milter::start(&site.config).await;
    let mut conn = milter::connect(daemon.outbound).await;
    let status = conn
        .mail(["<other-bounces@lists.example.test>"])
        .await
        .unwrap();
    assert_eq!(status, Status::Accept, "accept: passed untouched");
    conn.close().await.unwrap();
    daemon.stop().await;
}
