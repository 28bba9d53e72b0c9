//! A recipient that the reinjection listener refuses in an extra batch becomes that
//! recipient's bounce — a content-free DSN to the list's bounces address, so Mailman counts it
//! against that member — and the post still reaches everyone else: no `451` for the whole post
//! (which Mailman would retry for days and then drop). A retry bounces nobody twice.

mod support;

use indymilter_test::Status;
use support::gpg::GpgMember;
use support::milter::{self, Mail};
use support::sink;
use support::site::{Site, LIST, LIST_BOUNCES};

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_recipient_is_bounced_not_the_whole_post() {
    let site = Site::new();
    site.create_list(LIST);
    let members = GpgMember::three_bound(&site);
    site.set_batch_size(LIST, 1);
    // Batches keep the order of the RCPTs: m1 stays, m2 and m3 are reinjected; m3 is refused.
    let refused = members[2].address.to_ascii_lowercase();
    let sink = sink::Sink::start_refusing(&[refused.as_str()]);
    site.reinject_to(sink.port);
    let post = Mail::parse(
        format!(
            "From: m1 <m1@example.test>\nTo: {LIST}\nSubject: refused\nMessage-ID: <refused-1@example.test>\n\
             MIME-Version: 1.0\nContent-Type: text/plain\n\nsecret text for the list\n"
        )
        .as_bytes(),
    );
    let daemon = milter::start(&site.config).await;
    let addresses: Vec<String> = members.iter().map(|m| m.address.clone()).collect();
    for attempt in 1..=2 {
        let (_, status) =
            milter::transact_many(daemon.outbound, LIST_BOUNCES, &addresses, &post).await;
        assert!(
            matches!(status, Status::Continue | Status::Accept | Status::Discard),
            "attempt {attempt}: the post goes on for the others: {}",
            milter::reply_text(&status)
        );
    }
    let to_m2 = sink.deliveries_to(&members[1].address);
    assert_eq!(to_m2.len(), 1, "m2 got its copy once: {}", sink.summary());
    assert!(sink.deliveries_to(&refused).is_empty());
    let bounces = sink.deliveries_to(LIST_BOUNCES);
    assert_eq!(
        bounces.len(),
        1,
        "one bounce, not one per attempt: {}",
        sink.summary()
    );
    let dsn = bounces[0].text();
    assert_eq!(
        bounces[0].mail_from, "",
        "a DSN has the null sender (RFC 3464 §2)"
    );
    assert!(dsn.contains("multipart/report"), "{dsn}");
    assert!(
        dsn.contains(&format!("Final-Recipient: rfc822; {refused}")),
        "{dsn}"
    );
    assert!(dsn.contains("Status: 5.1.1"), "{dsn}");
    assert!(!dsn.contains("secret text"), "the bounce quotes nothing");
    daemon.stop().await;
}
