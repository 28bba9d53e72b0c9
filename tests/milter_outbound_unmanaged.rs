//! Outbound mail whose envelope sender is no managed list's: passed untouched by default
//! (Mailman may also serve unencrypted lists), refused at MAIL with
//! `unmanaged_outbound = "reject"`.

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
    let status = conn
        .mail(["<other-bounces@lists.example.test>"])
        .await
        .unwrap();
    assert_eq!(status, Status::Accept, "default: passed untouched");
    conn.close().await.unwrap();
    daemon.stop().await;

    let text = std::fs::read_to_string(&site.config).unwrap();
    std::fs::write(
        &site.config,
        format!("{text}unmanaged_outbound = \"reject\"\n"),
    )
    .unwrap();
    let daemon = milter::start(&site.config).await;
    let mut conn = milter::connect(daemon.outbound).await;
    let status = conn.mail(["<mailman@lists.example.test>"]).await.unwrap();
    milter::assert_reply(&status, "550", "5.7.1", "unmanaged outbound mail");
    // The list itself still goes through.
    let status = conn
        .mail(["<enc-bounces@lists.example.test>"])
        .await
        .unwrap();
    assert_eq!(status, Status::Continue);
    conn.close().await.unwrap();
    daemon.stop().await;
}
