//! Inbound: replay state follows the outcome (README, "The replay rule"). A post's record is
//! tentative until the outbound listener sees Mailman emit the post (or a hold notice carrying
//! it); a duplicate before that may be the sender's retry of a copy lost after listcrypt's yes
//! (a later milter's tempfail, a dropped connection), so it gets `451 4.7.1`, never a silent
//! discard. Once Mailman is seen with the post, a duplicate follows `duplicate_action`; a
//! tentative record with no evidence within `limits.replay_confirm_window` lapses (the retry is
//! new), though evidence that comes later still makes it final.

mod support;

use indymilter_test::{EomActions, Status, TestConnection};
use std::fs::OpenOptions;
use std::io::Write;
use std::time::Duration;
use support::gpg::GpgMember;
use support::milter::{self, Mail};
use support::site::{Site, LIST, LIST_BOUNCES};

/// One inbound transaction of `mail` from `sender` to the list.
async fn post_once(conn: &mut TestConnection, sender: &str, mail: &Mail) -> (EomActions, Status) {
    let from = format!("<{sender}>");
    assert_eq!(conn.mail([from.as_str()]).await.unwrap(), Status::Continue);
    let to = format!("<{LIST}>");
    assert_eq!(conn.rcpt([to.as_str()]).await.unwrap(), Status::Continue);
    milter::send(conn, mail).await
}

/// Mailman's copy of the accepted post leaves through the outbound listener to a member.
async fn mailman_emits(outbound: std::net::SocketAddr, to: &str, mail: &Mail) {
    let (actions, status) = milter::transact(outbound, LIST_BOUNCES, to, mail).await;
    milter::assert_goes_on(&status, "Mailman's copy of the post");
    assert!(milter::replaces_body(&actions), "the copy is encrypted");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_duplicate_waits_until_mailman_has_the_post_then_follows_duplicate_action() {
    let site = Site::new();
    site.create_list(LIST);
    let alice = GpgMember::new(&site, "alice", true);
    let post = Mail::parse(&alice.post("[...]", "Exactly once, please."));

    let daemon = milter::start(&site.config).await;
    let mut conn = milter::connect(daemon.inbound).await;
    let (actions, first) = post_once(&mut conn, &alice.address, &post).await;
    milter::assert_goes_on(&first, "first copy");
    let for_mailman = post.apply(&actions);
    assert_eq!(
        for_mailman.header("Message-ID"),
        post.header("Message-ID"),
        "Mailman gets the post's Message-ID"
    );

    // Nothing shows yet that the first copy got past Postfix: the retry must come back later.
    let (_, again) = post_once(&mut conn, &alice.address, &post).await;
    milter::assert_reply(
        &again,
        "451",
        "4.7.1",
        "duplicate before Mailman emitted the post",
    );

    mailman_emits(daemon.outbound, &alice.address, &for_mailman).await;

    let (_, third) = post_once(&mut conn, &alice.address, &post).await;
    assert_eq!(
        third,
        Status::Discard,
        "after Mailman emitted it, default duplicate_action = discard: {}",
        milter::reply_text(&third)
    );
    conn.close().await.unwrap();
    daemon.stop().await;
}

/// Mailman's hold notice (chains/hold.py): the post rides as the second part, message/rfc822,
/// and reaches the owners from the bounces address.
#[tokio::test(flavor = "multi_thread")]
async fn a_hold_notice_carrying_the_post_makes_its_record_final() {
    let site = Site::new();
    site.create_list(LIST);
    let alice = GpgMember::new(&site, "alice", true);
    let owner = GpgMember::new(&site, "olga", true);
    let post = Mail::parse(&alice.post("[...]", "Held, then retried."));

    let daemon = milter::start(&site.config).await;
    let mut conn = milter::connect(daemon.inbound).await;
    let (actions, first) = post_once(&mut conn, &alice.address, &post).await;
    milter::assert_goes_on(&first, "first copy");
    let (_, early) = post_once(&mut conn, &alice.address, &post).await;
    milter::assert_reply(&early, "451", "4.7.1", "duplicate before the hold notice");
    let held = post.apply(&actions).render();
    let notice = format!(
        "From: {LIST_BOUNCES}\r\n\
         To: enc-owner@lists.example.test\r\n\
         Subject: Enc post from alice requires approval\r\n\
         Message-ID: <notice-1@lists.example.test>\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"held\"\r\n\
         \r\n\
         --held\r\n\
         Content-Type: text/plain; charset=\"us-ascii\"\r\n\
         \r\n\
         As list administrator, your authorization is requested.\r\n\
         --held\r\n\
         Content-Type: message/rfc822\r\n\
         MIME-Version: 1.0\r\n\
         \r\n\
         {}\r\n\
         --held\r\n\
         Content-Type: message/rfc822\r\n\
         MIME-Version: 1.0\r\n\
         \r\n\
         Subject: confirm 0123456789abcdef\r\n\
         Message-ID: <confirm-1@lists.example.test>\r\n\
         \r\n\
         If you reply to this message, Mailman will discard the held message.\r\n\
         --held--\r\n",
        String::from_utf8(held).expect("decrypted post is UTF-8")
    );
    mailman_emits(
        daemon.outbound,
        &owner.address,
        &Mail::parse(notice.as_bytes()),
    )
    .await;

    let (_, again) = post_once(&mut conn, &alice.address, &post).await;
    assert_eq!(
        again,
        Status::Discard,
        "Mailman holds the post: its sender's retry is a duplicate: {}",
        milter::reply_text(&again)
    );
    conn.close().await.unwrap();
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tentative_record_without_evidence_expires_and_the_retry_is_new() {
    let site = Site::new();
    site.create_list(LIST);
    let mut config = OpenOptions::new().append(true).open(&site.config).unwrap();
    config
        .write_all(b"[limits]\nreplay_confirm_window = 1\n")
        .unwrap();
    let alice = GpgMember::new(&site, "alice", true);
    let post = Mail::parse(&alice.post("[...]", "Lost behind a later milter."));

    let daemon = milter::start(&site.config).await;
    let mut conn = milter::connect(daemon.inbound).await;
    let (_, first) = post_once(&mut conn, &alice.address, &post).await;
    milter::assert_goes_on(&first, "first copy");
    let (_, again) = post_once(&mut conn, &alice.address, &post).await;
    milter::assert_reply(&again, "451", "4.7.1", "retry inside the window");

    // Past the window (whole seconds) with no sign of the post from Mailman.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let (actions, retry) = post_once(&mut conn, &alice.address, &post).await;
    milter::assert_goes_on(&retry, "retry after the window");
    assert!(milter::replaces_body(&actions), "the retry is decrypted");
    conn.close().await.unwrap();
    daemon.stop().await;
}

/// Finding F2 of the fault campaign: Mailman or Postfix is down for longer than the window, so
/// the post's first copy leaves Mailman only after it, while other posts keep arriving. The
/// late copy is evidence all the same: a replay after it is discarded, not distributed again.
#[tokio::test(flavor = "multi_thread")]
async fn a_first_copy_later_than_the_window_still_makes_the_record_final() {
    let site = Site::new();
    site.create_list(LIST);
    let mut config = OpenOptions::new().append(true).open(&site.config).unwrap();
    config
        .write_all(b"[limits]\nreplay_confirm_window = 1\n")
        .unwrap();
    let alice = GpgMember::new(&site, "alice", true);
    let post = Mail::parse(&alice.post("[...]", "Distributed after an outage."));
    let next = Mail::parse(&alice.post("[...]", "Another post meanwhile."));

    let daemon = milter::start(&site.config).await;
    let mut conn = milter::connect(daemon.inbound).await;
    let (actions, first) = post_once(&mut conn, &alice.address, &post).await;
    milter::assert_goes_on(&first, "first copy");

    // The outage outlasts the window (whole seconds); the list gets other mail meanwhile.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let (_, other) = post_once(&mut conn, &alice.address, &next).await;
    milter::assert_goes_on(&other, "another post during the outage");
    mailman_emits(daemon.outbound, &alice.address, &post.apply(&actions)).await;

    let (_, replay) = post_once(&mut conn, &alice.address, &post).await;
    assert_eq!(
        replay,
        Status::Discard,
        "Mailman emitted the post, late: a replay follows duplicate_action = discard: {}",
        milter::reply_text(&replay)
    );
    conn.close().await.unwrap();
    daemon.stop().await;
}
