//! The outbound listener takes from Mailman only what still fits `max_outbound_copy_bytes`
//! once armoured (×1.375, RFC 4880 §6.3) and padded: a larger message is refused with
//! `552 5.3.4` while it arrives, though it is under `max_message_bytes`.

mod support;

use std::fs;
use support::gpg::GpgMember;
use support::milter::{self, Mail};
use support::site::{Site, LIST, LIST_BOUNCES};

fn post(body_bytes: usize) -> Mail {
    let line = "text for the list, seventy-two characters long, padded to that length..\n";
    let body = line.repeat(body_bytes / line.len());
    Mail::parse(
        format!(
            "From: m1 <m1@example.test>\nTo: {LIST}\nSubject: size\nMessage-ID: <size@example.test>\n\
             MIME-Version: 1.0\nContent-Type: text/plain\n\n{body}"
        )
        .as_bytes(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_whose_copy_cannot_fit_is_refused() {
    let site = Site::new();
    site.create_list(LIST);
    let member = GpgMember::new(&site, "m1", true);
    // A copy of at most 1 MiB + 400 KiB: beyond the fixed 1 MiB for signature, key packets and
    // headers, 400 KiB carries no more than 400 KiB / 1.375 of the message, armoured.
    let text = fs::read_to_string(&site.config).unwrap();
    fs::write(
        &site.config,
        format!(
            "{text}\n[limits]\nmax_outbound_copy_bytes = {}\n",
            (1024 + 400) * 1024
        ),
    )
    .unwrap();
    let daemon = milter::start(&site.config).await;
    let (_, status) = milter::transact(
        daemon.outbound,
        LIST_BOUNCES,
        &member.address,
        &post(100_000),
    )
    .await;
    milter::assert_goes_on(&status, "a 100 kB post fits a 400 kB copy");
    let (_, status) = milter::transact(
        daemon.outbound,
        LIST_BOUNCES,
        &member.address,
        &post(300_000),
    )
    .await;
    milter::assert_reply(
        &status,
        "552",
        "5.3.4",
        "a 300 kB post armours to over 400 kB",
    );
    daemon.stop().await;
}
