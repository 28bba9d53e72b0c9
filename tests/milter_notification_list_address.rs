//! Postfix's own notifications (null sender, `{daemon_port}` 0 from `non_smtpd_milters`):
//! nothing that quotes a message reaches a list address unchecked. A notification to the
//! list's posting address gets the post rules; a success report (RET=FULL) naming any spelling
//! of a list address is reduced to a notice without the quoted post.

mod support;

use indymilter_test::{MacroStage, Status, TestConnection};
use support::milter::{self, Mail};
use support::site::{Site, LIST};

async fn internal_null_sender(conn: &mut TestConnection) {
    conn.macros(MacroStage::Mail, [("{daemon_port}", "0")])
        .await
        .unwrap();
    assert_eq!(conn.mail(["<>"]).await.unwrap(), Status::Continue);
}

#[tokio::test(flavor = "multi_thread")]
async fn notifications_to_or_about_a_list_are_checked() {
    let site = Site::new();
    site.create_list(LIST);
    let daemon = milter::start(&site.config).await;

    // A bounce to a forged envelope sender `enc+x@`: Mailman would take it as a post.
    let bounce = Mail::parse(
        format!(
            "From: MAILER-DAEMON@mx.example.test (Mail Delivery System)\n\
             To: {LIST}\n\
             Subject: Undelivered Mail Returned to Sender\n\
             MIME-Version: 1.0\n\
             Content-Type: text/plain; charset=us-ascii\n\
             \n\
             QUOTED-FORGED-POST\n"
        )
        .as_bytes(),
    );
    let mut conn = milter::connect(daemon.inbound).await;
    internal_null_sender(&mut conn).await;
    assert_eq!(
        conn.rcpt(["<enc+x@lists.example.test>"]).await.unwrap(),
        Status::Continue
    );
    let (_, status) = milter::send(&mut conn, &bounce).await;
    milter::assert_reply(
        &status,
        "550",
        "5.7.1",
        "plaintext notification to the list",
    );
    conn.close().await.unwrap();

    // A success DSN with RET=FULL for a post delivered to Mailman, back to its author.
    let dsn = Mail::parse(
        b"From: MAILER-DAEMON@mx.example.test (Mail Delivery System)\n\
          To: alice@example.test\n\
          Subject: Successful Mail Delivery Report\n\
          MIME-Version: 1.0\n\
          Content-Type: multipart/report; report-type=delivery-status; boundary=\"B\"\n\
          \n\
          --B\n\
          Content-Type: text/plain\n\
          \n\
          Your message was successfully delivered.\n\
          --B\n\
          Content-Type: message/delivery-status\n\
          \n\
          Reporting-MTA: dns; mx.example.test\n\
          \n\
          Final-Recipient: rfc822; ENC+x@lists.example.test\n\
          Original-Recipient: rfc822;ENC+x@lists.example.test\n\
          Action: delivered\n\
          Status: 2.0.0\n\
          \n\
          --B\n\
          Content-Type: message/rfc822\n\
          \n\
          Subject: DECRYPTED SUBJECT\n\
          \n\
          DECRYPTED BODY\n\
          --B--\n",
    );
    let mut conn = milter::connect(daemon.inbound).await;
    internal_null_sender(&mut conn).await;
    assert_eq!(
        conn.rcpt(["<alice@example.test>"]).await.unwrap(),
        Status::Continue
    );
    let (actions, status) = milter::send(&mut conn, &dsn).await;
    milter::assert_goes_on(&status, "success DSN");
    let out = String::from_utf8_lossy(&dsn.apply(&actions).render()).into_owned();
    assert!(!out.contains("DECRYPTED"), "{out}");
    assert!(out.contains("Action: delivered"), "{out}");
    conn.close().await.unwrap();
    daemon.stop().await;
}
