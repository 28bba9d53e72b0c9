//! Inbound: the same signed post arriving again (an SMTP retry, or an attacker replaying a
//! captured post) is not distributed twice. Once Mailman has emitted the post, by default
//! (`duplicate_action = "discard"`) it is discarded; with `duplicate_action = "reject"` it is
//! refused with `550 5.7.1`. (Before that: tests/milter_inbound_replay_outcome.rs.)

mod support;

use indymilter_test::{Status, TestConnection};
use std::fs;
use support::gpg::GpgMember;
use support::milter::{self, Mail};
use support::site::{Site, LIST, LIST_BOUNCES};

async fn post_once(conn: &mut TestConnection, sender: &str, mail: &Mail) -> (Mail, Status) {
    let from = format!("<{sender}>");
    assert_eq!(conn.mail([from.as_str()]).await.unwrap(), Status::Continue);
    let to = format!("<{LIST}>");
    assert_eq!(conn.rcpt([to.as_str()]).await.unwrap(), Status::Continue);
    let (actions, status) = milter::send(conn, mail).await;
    let replaced = milter::replaces_body(&actions);
    if matches!(status, Status::Continue | Status::Accept) {
        assert!(replaced, "an accepted post is decrypted");
    }
    (mail.apply(&actions), status)
}

#[tokio::test(flavor = "multi_thread")]
async fn replayed_post_is_discarded_or_rejected_per_policy() {
    let site = Site::new();
    site.create_list(LIST);
    let alice = GpgMember::new(&site, "alice", true);
    let post = Mail::parse(&alice.post("[...]", "Only once, please."));

    let daemon = milter::start(&site.config).await;
    let mut conn = milter::connect(daemon.inbound).await;
    let (for_mailman, first) = post_once(&mut conn, &alice.address, &post).await;
    assert!(
        matches!(first, Status::Continue | Status::Accept),
        "first delivery: {}",
        milter::reply_text(&first)
    );
    // Mailman distributes it: its copy leaves through the outbound listener.
    let (_, out) =
        milter::transact(daemon.outbound, LIST_BOUNCES, &alice.address, &for_mailman).await;
    milter::assert_goes_on(&out, "Mailman's copy");
    let (_, again) = post_once(&mut conn, &alice.address, &post).await;
    assert_eq!(
        again,
        Status::Discard,
        "the same post again, default duplicate_action = discard: {}",
        milter::reply_text(&again)
    );
    conn.close().await.unwrap();
    daemon.stop().await;

    // The record survives a restart; the policy now refuses duplicates.
    fs::write(
        site.path("lists.d").join(format!("{LIST}.toml")),
        "duplicate_action = \"reject\"\n",
    )
    .unwrap();
    let daemon = milter::start(&site.config).await;
    let mut conn = milter::connect(daemon.inbound).await;
    let (_, third) = post_once(&mut conn, &alice.address, &post).await;
    milter::assert_reply(
        &third,
        "550",
        "5.7.1",
        "replayed post with duplicate_action = reject",
    );
    conn.close().await.unwrap();
    daemon.stop().await;
}
