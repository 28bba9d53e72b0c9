//! Outbound: Mailman's copy of a post (envelope sender `LIST-bounces@`) is accepted at RCPT only
//! for members with a bound key — an unbound recipient gets `550 5.7.1`, never plaintext — and
//! at end of message the body becomes RFC 3156 multipart/encrypted that the member's GnuPG
//! decrypts and finds signed by the list key.

mod support;

use indymilter_test::Status;
use support::gpg::{GpgMember, GpgOutcome};
use support::milter::{self, Mail};
use support::mime::{boundary_of, multipart_parts};
use support::site::{Site, LIST, LIST_BOUNCES};
use support::text::contains;

#[tokio::test(flavor = "multi_thread")]
async fn member_copy_is_encrypted_and_unbound_recipient_refused() {
    let site = Site::new();
    site.create_list(LIST);
    let alice = GpgMember::new(&site, "alice", true);
    let secret_subject = "Quarterly numbers are in";
    let secret_text = "Revenue is up; do not forward.";
    let post = Mail::parse(
        format!(
            "From: Bob <bob@example.test>\n\
             To: {LIST}\n\
             Subject: [Enc] {secret_subject}\n\
             Date: Thu, 26 Nov 2026 10:00:00 +0000\n\
             Message-ID: <outbound-1@example.test>\n\
             List-Id: <enc.lists.example.test>\n\
             MIME-Version: 1.0\n\
             Content-Type: text/plain; charset=utf-8\n\
             Content-Transfer-Encoding: 7bit\n\
             \n\
             {secret_text}\n"
        )
        .as_bytes(),
    );

    let daemon = milter::start(&site.config).await;
    let mut conn = milter::connect(daemon.outbound).await;
    let from = format!("<{LIST_BOUNCES}>");
    assert_eq!(conn.mail([from.as_str()]).await.unwrap(), Status::Continue);
    let rcpt = format!("<{}>", alice.address);
    assert_eq!(
        conn.rcpt([rcpt.as_str()]).await.unwrap(),
        Status::Continue,
        "bound member"
    );
    let status = conn.rcpt(["<stranger@example.test>"]).await.unwrap();
    milter::assert_reply(&status, "550", "5.7.1", "recipient without a bound key");
    let (actions, status) = milter::send(&mut conn, &post).await;
    milter::assert_goes_on(&status, "member copy");
    assert!(
        milter::replaces_body(&actions),
        "the body must be replaced by the encrypted copy"
    );
    assert!(
        !actions.has_delete_recipient(rcpt.as_str())
            && !actions.has_delete_recipient(alice.address.as_str()),
        "a single batch keeps its recipient"
    );
    conn.close().await.unwrap();
    daemon.stop().await;

    let sent = post.apply(&actions);
    let rendered = sent.render();
    assert!(
        !contains(&rendered, secret_text.as_bytes()),
        "no plaintext body may leave the list host"
    );
    let subject = sent.header("Subject").unwrap_or_default();
    assert!(
        !subject.contains(secret_subject),
        "the outer Subject is hidden by default (hcp_baseline), got {subject:?}"
    );
    let content_type = sent.header("Content-Type").expect("Content-Type");
    assert!(
        content_type
            .to_ascii_lowercase()
            .starts_with("multipart/encrypted")
            && content_type.contains("application/pgp-encrypted"),
        "expected RFC 3156 multipart/encrypted, got {content_type}"
    );
    let boundary = boundary_of(&content_type).expect("boundary");
    let parts = multipart_parts(&sent.body, &boundary);
    assert_eq!(parts.len(), 2, "version part and encrypted part");
    assert!(contains(&parts[0], b"Version: 1"), "version part");
    assert!(
        contains(&parts[1], b"-----BEGIN PGP MESSAGE-----"),
        "armored OpenPGP message"
    );

    let GpgOutcome {
        status, plaintext, ..
    } = alice.gpg.decrypt(&parts[1]);
    assert!(
        status.contains("[GNUPG:] DECRYPTION_OKAY"),
        "alice must decrypt her copy:\n{status}"
    );
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("[GNUPG:] VALIDSIG") && l.ends_with(&alice.list_fingerprint)),
        "the copy must carry a valid list signature:\n{status}"
    );
    assert!(
        contains(&plaintext, secret_text.as_bytes()),
        "decrypted copy holds the post:\n{}",
        String::from_utf8_lossy(&plaintext)
    );
    assert!(
        contains(&plaintext, secret_subject.as_bytes()),
        "the real Subject travels inside the encryption"
    );
}
