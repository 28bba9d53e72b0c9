//! Outbound batches: a transaction larger than `batch_size` keeps its first batch and sends
//! the others over SMTP to the reinjection listener (here a capture sink) with the original
//! envelope sender; each copy decrypts for its own recipients only. The sender's retry of the
//! same transaction skips the recipients already reinjected (journal): nothing twice.

mod support;

use indymilter_test::{EomAction, Status};
use support::gpg::{GpgMember, GpgOutcome};
use support::milter::{self, Mail};
use support::sink;
use support::site::{Site, LIST, LIST_BOUNCES};

fn deleted(actions: &[EomAction]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            EomAction::DeleteRecipient { rcpt } => Some(rcpt.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn extra_batches_are_reinjected_once() {
    let site = Site::new();
    site.create_list(LIST);
    let members = GpgMember::three_bound(&site);
    site.set_batch_size(LIST, 1);
    let sink = sink::Sink::start();
    site.reinject_to(sink.port);

    let post = Mail::parse(
        format!(
            "From: m1 <m1@example.test>\nTo: {LIST}\nSubject: batches\nMessage-ID: <batches-1@example.test>\n\
             MIME-Version: 1.0\nContent-Type: text/plain\n\nsecret batch text\n"
        )
        .as_bytes(),
    );
    let daemon = milter::start(&site.config).await;

    let run = |attempt: u32| {
        let members = &members;
        let post = &post;
        let daemon = &daemon;
        async move {
            let mut conn = milter::connect(daemon.outbound).await;
            assert_eq!(
                conn.mail([format!("<{LIST_BOUNCES}>")]).await.unwrap(),
                Status::Continue
            );
            for m in members {
                assert_eq!(
                    conn.rcpt([format!("<{}>", m.address)]).await.unwrap(),
                    Status::Continue
                );
            }
            let (actions, status) = milter::send(&mut conn, post).await;
            assert!(
                matches!(status, Status::Continue | Status::Accept),
                "attempt {attempt}: {}",
                milter::reply_text(&status)
            );
            conn.close().await.unwrap();
            actions
        }
    };

    // First attempt: batch 1 stays, batches 2 and 3 are reinjected and deleted here.
    let actions = run(1).await;
    let mut removed = deleted(&actions.actions);
    removed.sort();
    assert_eq!(removed.len(), 2, "{:?}", actions.actions);
    let reinjected = sink.deliveries();
    assert_eq!(reinjected.len(), 2, "{}", sink.summary());
    for d in &reinjected {
        assert_eq!(d.mail_from, LIST_BOUNCES, "original envelope sender");
        assert_eq!(d.rcpts.len(), 1);
        assert!(!d.text().contains("secret batch text"), "encrypted");
        let owner = members.iter().find(|m| m.address == d.rcpts[0]).unwrap();
        let GpgOutcome {
            status,
            plaintext: plain,
            ..
        } = owner.gpg.decrypt(&d.data);
        assert!(status.contains("DECRYPTION_OKAY"), "{status}");
        assert!(String::from_utf8_lossy(&plain).contains("secret batch text"));
        // Nobody else can read another's copy.
        let other = members.iter().find(|m| m.address != d.rcpts[0]).unwrap();
        let GpgOutcome { status, .. } = other.gpg.decrypt(&d.data);
        assert!(!status.contains("DECRYPTION_OKAY"), "{status}");
    }
    let mut sent: Vec<String> = reinjected
        .iter()
        .map(|d| format!("<{}>", d.rcpts[0]))
        .collect();
    sent.sort();
    assert_eq!(
        sent, removed,
        "exactly the reinjected recipients leave this transaction"
    );

    // The sender retries the same transaction (say listcrypt's reply was lost): the two
    // recipients already served are deleted again, and nothing is reinjected twice.
    let actions = run(2).await;
    let mut removed_again = deleted(&actions.actions);
    removed_again.sort();
    assert_eq!(removed_again, removed);
    assert_eq!(
        sink.deliveries().len(),
        2,
        "no duplicate: {}",
        sink.summary()
    );
    daemon.stop().await;
}
