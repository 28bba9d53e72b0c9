//! A batch the reinjection listener refuses at the end of DATA (`552 5.3.4`, over Postfix's
//! `message_size_limit`) becomes one content-free bounce per recipient of that batch, sent to
//! the list's bounces address; the post still goes on for the first batch: no `451` for the
//! whole post, which Mailman would retry for days and then drop.

mod support;

use indymilter_test::Status;
use support::gpg::GpgMember;
use support::milter::{self, Mail};
use support::sink;
use support::site::{Site, LIST, LIST_BOUNCES};

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_refused_for_its_size_bounces_each_recipient() {
    let site = Site::new();
    site.create_list(LIST);
    let members = GpgMember::three_bound(&site);
    site.set_batch_size(LIST, 1);
    // A 20 kB post armours to more than 26 kB: every copy is over the listener's 12 kB, while
    // a content-free DSN is well under it.
    let sink = sink::Sink::start_limited(12_000);
    site.reinject_to(sink.port);
    let body = "secret text for the list, long enough to be too large\n".repeat(380);
    let post = Mail::parse(
        format!(
            "From: m1 <m1@example.test>\nTo: {LIST}\nSubject: large\nMessage-ID: <large-1@example.test>\n\
             MIME-Version: 1.0\nContent-Type: text/plain\n\n{body}"
        )
        .as_bytes(),
    );
    let daemon = milter::start(&site.config).await;
    let addresses: Vec<String> = members.iter().map(|m| m.address.clone()).collect();
    let (_, status) = milter::transact_many(daemon.outbound, LIST_BOUNCES, &addresses, &post).await;
    assert!(
        matches!(status, Status::Continue | Status::Accept),
        "the post goes on for the first batch: {}",
        milter::reply_text(&status)
    );
    let bounces = sink.deliveries_to(LIST_BOUNCES);
    assert_eq!(
        bounces.len(),
        2,
        "one bounce per refused recipient: {}",
        sink.summary()
    );
    for (bounce, m) in bounces.iter().zip(&members[1..]) {
        let dsn = bounce.text();
        assert_eq!(
            bounce.mail_from, "",
            "a DSN has the null sender (RFC 3464 §2)"
        );
        let rcpt = m.address.to_ascii_lowercase();
        assert!(
            dsn.to_ascii_lowercase()
                .contains(&format!("final-recipient: rfc822; {rcpt}")),
            "{dsn}"
        );
        assert!(dsn.contains("Status: 5.3.4"), "{dsn}");
        assert!(!dsn.contains("secret text"), "the bounce quotes nothing");
    }
    daemon.stop().await;
}
