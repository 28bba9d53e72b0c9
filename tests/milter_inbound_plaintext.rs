//! Inbound: a plaintext post to an encrypted list is refused at end of message with
//! `550 5.7.1`, and nothing of it is rewritten.

mod support;

use indymilter_test::Status;
use support::milter::{self, Mail};
use support::site::{Site, LIST};

#[tokio::test(flavor = "multi_thread")]
async fn plaintext_post_is_rejected_with_5_7_1() {
    let site = Site::new();
    site.create_list(LIST);
    let post = Mail::parse(
        format!(
            "From: Alice <alice@example.test>\n\
             To: {LIST}\n\
             Subject: the plans\n\
             Message-ID: <plain@example.test>\n\
             MIME-Version: 1.0\n\
             Content-Type: text/plain; charset=utf-8\n\
             \n\
             Meet at noon.\n"
        )
        .as_bytes(),
    );

    let daemon = milter::start(&site.config).await;
    let mut conn = milter::connect(daemon.inbound).await;
    assert_eq!(
        conn.mail(["<alice@example.test>"]).await.unwrap(),
        Status::Continue
    );
    let to = format!("<{LIST}>");
    assert_eq!(conn.rcpt([to.as_str()]).await.unwrap(), Status::Continue);
    let (actions, status) = milter::send(&mut conn, &post).await;
    milter::assert_reply(&status, "550", "5.7.1", "plaintext post");
    assert!(
        !milter::replaces_body(&actions),
        "a refused post is not rewritten"
    );
    let reply = milter::reply_text(&status);
    assert!(
        !reply.contains("Meet at noon") && !reply.contains("the plans"),
        "the reply must not echo message content: {reply}"
    );
    conn.close().await.unwrap();
    daemon.stop().await;
}
