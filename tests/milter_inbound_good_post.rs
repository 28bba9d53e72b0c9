//! Inbound: a member's signed and encrypted post is replaced, at end of message, by the
//! plaintext Mailman should see, with the author's signature intact (multipart/signed that
//! GnuPG verifies).

mod support;

use indymilter_test::Status;
use std::fs;
use support::gpg::GpgMember;
use support::milter::{self, Mail};
use support::mime::{boundary_of, multipart_parts};
use support::site::{Site, LIST};
use support::text::contains;

#[tokio::test(flavor = "multi_thread")]
async fn good_post_is_decrypted_with_the_author_signature_kept() {
    let site = Site::new();
    site.create_list(LIST);
    let alice = GpgMember::new(&site, "alice", true);
    let text = "Hello list, this is the decrypted text.";
    let original = Mail::parse(&alice.post("[...]", text));

    let daemon = milter::start(&site.config).await;
    let mut conn = milter::connect(daemon.inbound).await;
    let from = format!("<{}>", alice.address);
    assert_eq!(conn.mail([from.as_str()]).await.unwrap(), Status::Continue);
    let to = format!("<{LIST}>");
    assert_eq!(conn.rcpt([to.as_str()]).await.unwrap(), Status::Continue);
    let (actions, status) = milter::send(&mut conn, &original).await;
    milter::assert_goes_on(&status, "good post");
    assert!(
        milter::replaces_body(&actions),
        "the body must be replaced by the plaintext"
    );
    conn.close().await.unwrap();
    daemon.stop().await;

    let delivered = original.apply(&actions);
    let rendered = delivered.render();
    assert!(contains(&delivered.body, text.as_bytes()), "plaintext body");
    assert!(
        !contains(&rendered, b"-----BEGIN PGP MESSAGE-----"),
        "no ciphertext left for Mailman"
    );
    assert_eq!(
        delivered.header("From").as_deref(),
        original.header("From").as_deref()
    );

    // The author's signature survives as RFC 3156 multipart/signed over the exact bytes.
    let content_type = delivered.header("Content-Type").expect("Content-Type");
    assert!(
        content_type
            .to_ascii_lowercase()
            .starts_with("multipart/signed"),
        "expected multipart/signed, got {content_type}"
    );
    let boundary = boundary_of(&content_type).expect("boundary");
    let parts = multipart_parts(&delivered.body, &boundary);
    assert_eq!(parts.len(), 2, "signed part and signature");
    let signature = &parts[1];
    let at = signature
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("signature part header")
        + 4;
    let data = site.path("signed-part");
    let sig = site.path("signed-part.asc");
    fs::write(&data, &parts[0]).unwrap();
    fs::write(&sig, &signature[at..]).unwrap();
    let out = support::process::run(
        alice
            .gpg
            .cmd()
            .args(["--status-fd", "1", "--verify"])
            .arg(&sig)
            .arg(&data),
        None,
    );
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("[GNUPG:] VALIDSIG") && l.ends_with(&alice.fingerprint)),
        "alice's signature must verify over the delivered part:\n{status}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
