//! Outbound loopback (Mailman to its own `LIST-owner@`): the message reaches end of message
//! and forged copies of listcrypt's own header fields are removed, as on every inbound path.

mod support;

use indymilter_test::Status;
use support::milter::{self, Mail};
use support::site::{Site, LIST, LIST_BOUNCES, LIST_OWNER};

#[tokio::test(flavor = "multi_thread")]
async fn loopback_loses_forged_listcrypt_headers() {
    let site = Site::new();
    site.create_list(LIST);
    let daemon = milter::start(&site.config).await;
    let mut conn = milter::connect(daemon.outbound).await;
    let notice = Mail::parse(
        format!(
            "From: {LIST_BOUNCES}\n\
             To: {LIST_OWNER}\n\
             Subject: Uncaught bounce notification\n\
             X-Listcrypt-Signer: alice@example.test 0xFORGED\n\
             X-Listcrypt-Hold: forged\n\
             MIME-Version: 1.0\n\
             Content-Type: text/plain; charset=utf-8\n\
             \n\
             The attached message was received as a bounce.\n"
        )
        .as_bytes(),
    );
    let from = format!("<{LIST_BOUNCES}>");
    let owner = format!("<{LIST_OWNER}>");
    assert_eq!(conn.mail([from.as_str()]).await.unwrap(), Status::Continue);
    assert_eq!(conn.rcpt([owner.as_str()]).await.unwrap(), Status::Continue);
    let (actions, status) = milter::send(&mut conn, &notice).await;
    milter::assert_goes_on(&status, "loopback");
    let out = notice.apply(&actions);
    assert_eq!(out.header("X-Listcrypt-Signer"), None, "{:?}", out.headers);
    assert_eq!(out.header("X-Listcrypt-Hold"), None, "{:?}", out.headers);
    assert_eq!(
        out.header("Subject").as_deref(),
        Some("Uncaught bounce notification")
    );
    assert_eq!(out.body, notice.body, "the body passes untouched");
    conn.close().await.unwrap();
    daemon.stop().await;
}
