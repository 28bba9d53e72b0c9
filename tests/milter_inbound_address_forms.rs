//! Inbound: every spelling of the posting address that Postfix delivers to Mailman as a post
//! to the list gets the post rules, so a plaintext post is refused with `550 5.7.1` at end of
//! message. Forms from Postfix 3.7 (recipient_delimiter = +, source route and trailing dot
//! removed, quotes removed) and Mailman 3's lmtp.py (lowercased, split at `+`).

mod support;

use indymilter_test::Status;
use support::milter::{self, Mail};
use support::site::{Site, LIST};

#[tokio::test(flavor = "multi_thread")]
async fn plaintext_post_to_any_spelling_of_the_list_is_rejected() {
    let site = Site::new();
    site.create_list(LIST);
    let post = Mail::parse(
        format!(
            "From: Mallory <mallory@example.test>\n\
             To: {LIST}\n\
             Subject: forged\n\
             MIME-Version: 1.0\n\
             Content-Type: text/plain; charset=utf-8\n\
             \n\
             Not encrypted.\n"
        )
        .as_bytes(),
    );
    let daemon = milter::start(&site.config).await;
    for rcpt in [
        "<enc+anything@lists.example.test>",
        "<EnC@LiStS.ExAmPlE.TeSt.>",
        "<\"enc\"@lists.example.test>",
        "<@relay.example.test:enc@lists.example.test>",
    ] {
        let mut conn = milter::connect(daemon.inbound).await;
        assert_eq!(
            conn.mail(["<mallory@example.test>"]).await.unwrap(),
            Status::Continue
        );
        assert_eq!(conn.rcpt([rcpt]).await.unwrap(), Status::Continue, "{rcpt}");
        let (_, status) = milter::send(&mut conn, &post).await;
        milter::assert_reply(&status, "550", "5.7.1", rcpt);
        assert!(
            milter::reply_text(&status).contains("post must be encrypted"),
            "{rcpt}: {}",
            milter::reply_text(&status)
        );
        conn.close().await.unwrap();
    }
    daemon.stop().await;
}
