//! Limits at the milter: a header larger than `max_message_bytes` is refused with
//! `552 5.3.4` before any work; work past `limits.message_timeout` is abandoned with our own
//! `451 4.3.0`, so the MTA keeps the mail (here: a compression bomb allowed a large plaintext
//! budget, which takes longer than one second to inflate).

mod support;

use indymilter_test::Status;
use std::fs;
use support::gpg::GpgMember;
use support::milter::{self, Mail};
use support::site::{Site, LIST};
use support::text::to_crlf;

/// An RFC 3156 post from `from` carrying `armored` (a PGP MESSAGE).
fn encrypted_post(from: &str, subject: &str, armored: &[u8]) -> String {
    format!(
        "From: alice <{from}>\nTo: {LIST}\nSubject: {subject}\nMIME-Version: 1.0\n\
         Content-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\"; boundary=\"e\"\n\n\
         --e\nContent-Type: application/pgp-encrypted\n\nVersion: 1\n\n--e\n\
         Content-Type: application/octet-stream\n\n{armored}\n--e--\n",
        armored = String::from_utf8(armored.to_vec()).unwrap()
    )
}

fn with_limits(site: &Site, limits: &str) {
    let text = fs::read_to_string(&site.config).unwrap();
    fs::write(&site.config, format!("{text}\n[limits]\n{limits}\n")).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_header_is_refused() {
    let site = Site::new();
    site.create_list(LIST);
    with_limits(&site, "max_message_bytes = 4096");
    let daemon = milter::start(&site.config).await;
    let mut conn = milter::connect(daemon.inbound).await;
    let long = "x".repeat(5000);
    let mail = Mail::parse(
        format!("From: a@example.test\nTo: {LIST}\nX-Long: {long}\nSubject: big\n\nbody\n")
            .as_bytes(),
    );
    assert_eq!(
        conn.mail(["<a@example.test>"]).await.unwrap(),
        Status::Continue
    );
    assert_eq!(
        conn.rcpt([format!("<{LIST}>")]).await.unwrap(),
        Status::Continue
    );
    let (_, status) = milter::send(&mut conn, &mail).await;
    milter::assert_reply(&status, "552", "5.3.4", "header over max_message_bytes");
    conn.close().await.unwrap();
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn work_past_the_message_timeout_is_a_temporary_failure() {
    let site = Site::new();
    site.create_list(LIST);
    let alice = GpgMember::new(&site, "alice", true);
    // 256 MiB of zeros, compressed: a few hundred KiB on the wire.
    let mut inner = to_crlf(b"Content-Type: text/plain\n\n");
    inner.resize(inner.len() + (256 << 20), 0);
    let armored = alice.gpg.ok(
        &[
            "--armor",
            "--compress-algo",
            "zlib",
            "-z",
            "9",
            "--sign",
            "--encrypt",
            "--recipient",
            LIST,
        ],
        Some(&inner),
    );
    with_limits(
        &site,
        // The plaintext budget only reaches 512 MiB with room for the outbound copy.
        "max_plaintext_bytes = 536870912\nmax_message_bytes = 536870912\n\
         max_outbound_copy_bytes = 1073741824\nmessage_timeout = 1",
    );
    let post = encrypted_post(&alice.address, "slow", &armored);
    let daemon = milter::start(&site.config).await;
    let mut conn = milter::connect(daemon.inbound).await;
    assert_eq!(
        conn.mail([format!("<{}>", alice.address)]).await.unwrap(),
        Status::Continue
    );
    assert_eq!(
        conn.rcpt([format!("<{LIST}>")]).await.unwrap(),
        Status::Continue
    );
    let (_, status) = milter::send(&mut conn, &Mail::parse(post.as_bytes())).await;
    milter::assert_reply(&status, "451", "4.3.0", "work past message_timeout");
    conn.close().await.unwrap();
    daemon.stop().await;
}

/// A post small on the wire whose compressed plaintext is larger than what the daemon decides
/// on its async workers (256 KiB) is decided again under the configured limits, and goes on.
#[tokio::test(flavor = "multi_thread")]
async fn small_post_with_a_large_plaintext_goes_on() {
    let site = Site::new();
    site.create_list(LIST);
    let alice = GpgMember::new(&site, "alice", true);
    let line = "All work and no play makes a long post that compresses well.\n";
    let text = line.repeat((1 << 20) / line.len());
    let post = alice.post("long", &text);
    assert!(post.len() < 32 * 1024, "{} bytes on the wire", post.len());
    let original = Mail::parse(&post);
    let daemon = milter::start(&site.config).await;
    let (actions, status) = milter::transact(daemon.inbound, &alice.address, LIST, &original).await;
    milter::assert_goes_on(&status, "1 MiB plaintext in a small post");
    daemon.stop().await;
    let delivered = original.apply(&actions);
    let expected = to_crlf(text.as_bytes());
    assert!(
        support::text::contains(&delivered.body, &expected),
        "the whole plaintext reaches Mailman"
    );
}

/// A post small on the wire with more OpenPGP packets than the daemon handles on its async
/// workers (64): here 71 PKESKs, to the list and to 70 other keys. It is decided again under
/// the configured `max_packets` (10,000), and goes on.
#[tokio::test(flavor = "multi_thread")]
async fn small_post_with_many_packets_goes_on() {
    let site = Site::new();
    site.create_list(LIST);
    let alice = GpgMember::new(&site, "alice", true);
    let mut args = vec![
        "--armor".to_string(),
        "--sign".into(),
        "--local-user".into(),
        alice.fingerprint.clone(),
        "--encrypt".into(),
        "--recipient".into(),
        LIST.into(),
    ];
    for i in 0..70 {
        let fingerprint = alice.gpg.gen_key(&format!("other{i}@example.test"), None);
        args.extend(["--recipient".into(), fingerprint]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let text = "Hello list, and seventy others.";
    let inner = to_crlf(format!("Content-Type: text/plain\n\n{text}\n").as_bytes());
    let armored = alice.gpg.ok(&args, Some(&inner));
    let post = encrypted_post(&alice.address, "many", &armored);
    assert!(post.len() < 32 * 1024, "{} bytes on the wire", post.len());
    let original = Mail::parse(post.as_bytes());
    let daemon = milter::start(&site.config).await;
    let (actions, status) = milter::transact(daemon.inbound, &alice.address, LIST, &original).await;
    milter::assert_goes_on(&status, "71 PKESKs in a small post");
    daemon.stop().await;
    let delivered = original.apply(&actions);
    assert!(
        support::text::contains(&delivered.body, text.as_bytes()),
        "the plaintext reaches Mailman"
    );
}
