//! End to end: a real Postfix with listcrypt's two milters, a real Mailman 3 core and GnuPG
//! subscribers, all on 127.0.0.1 in one tempdir. Postfix and Mailman are configured from the
//! admin snippets in `postfix/`, so those are tested too.
//!
//! Runs as root (it starts its own Postfix and Mailman); `bash scripts/test` installs the
//! packages and runs it. Nothing is mocked: what the subscribers' mail server receives is
//! captured by an SMTP sink in this process and decrypted with each subscriber's own gpg.

mod support;

use std::time::{Duration, Instant};
use support::gpg::GpgUser;
use support::mime;
use support::sink::Delivery;
use support::smtp::{self, Dialogue};
use support::world::{
    encrypted_post, message_id, unique_marker, World, WorldOptions, DELIVERY_TIMEOUT, GONE, LIST,
    LIST_BOUNCES, MEMBERS,
};

fn assert_refused_5xx(d: &Dialogue, code: u16, enhanced: &str, what: &str) {
    let reply = d
        .end_of_data()
        .unwrap_or_else(|| panic!("{what}: the transaction did not reach the end of DATA:\n{d}"));
    assert_eq!(
        (reply.code, reply.enhanced()),
        (code, Some(enhanced)),
        "{what}: expected {code} {enhanced} at the end of DATA:\n{d}"
    );
}

/// A: a member's signed and encrypted post reaches every other member, encrypted to each
/// one's own key, signed by the list, with key ids hidden and no plaintext on the wire.
fn member_post_is_delivered_encrypted(w: &World) {
    let marker = unique_marker("post");
    // The outer Subject is hidden by the default header protection (hcp_baseline).
    let subject_marker = unique_marker("subject");
    let subject = format!("E2E encrypted post {subject_marker}");
    let body = format!("Hello list,\n\nthe secret word is {marker}.\n\n-- \nAlice\n");
    let post = w.encrypted_post(&w.alice, &subject, &body);
    let secrets = [marker.as_str(), subject_marker.as_str()];
    let d = smtp::send(w.inbound_port, &w.alice.email, &[LIST], &post);
    assert!(
        d.accepted(),
        "alice's encrypted post was not accepted:\n{d}"
    );

    let per_rcpt = w.await_deliveries(&[&w.bob.email, &w.carol.email], &subject);
    for (user, copies) in [&w.bob, &w.carol].into_iter().zip(&per_rcpt) {
        assert_eq!(
            copies.len(),
            1,
            "{} got {} copies of the post, not exactly one",
            user.email,
            copies.len()
        );
        check_encrypted_copy(w, user, &copies[0], &secrets, &w.alice);
    }
    // Mailman sends the author a copy too unless she opted out; if it came, it must be sound.
    if let Some(copy) = w.sink.deliveries_to(&w.alice.email).first() {
        check_encrypted_copy(w, &w.alice, copy, &secrets, &w.alice);
    }
}

/// One subscriber's copy of `author`'s post: structure, leak (none of `secrets` on the wire,
/// all of them inside), key ids, decryption, the list's signature, the author's signature and
/// Mailman's footer.
fn check_encrypted_copy(
    w: &World,
    user: &GpgUser,
    copy: &Delivery,
    secrets: &[&str],
    author: &GpgUser,
) {
    let who = &user.email;
    let text = copy.text();
    // For a look afterwards: KEEP_E2E_TMPDIR=1 keeps the tempdir.
    support::files::write(
        &w.dir.path().join(format!("copy-for-{who}.eml")),
        &copy.data,
    );
    for secret in secrets {
        assert!(
            !text.contains(secret),
            "LEAK: the copy for {who} shows {secret:?} unencrypted:\n{text}"
        );
    }
    assert!(
        !copy.mail_from.is_empty(),
        "the copy for {who} has an empty envelope sender"
    );
    let armored = mime::rfc3156_payload(&text).unwrap_or_else(|why| {
        panic!("the copy for {who} is not RFC 3156 encrypted ({why}):\n{text}")
    });

    let packets = w.inspector.list_packets(armored.as_bytes());
    let pkesks: Vec<&str> = packets
        .lines()
        .filter(|l| l.starts_with(":pubkey enc packet:"))
        .collect();
    assert!(
        !pkesks.is_empty(),
        "no PKESK in the copy for {who}:\n{packets}"
    );
    for p in &pkesks {
        assert!(
            p.contains("keyid 0000000000000000"),
            "the copy for {who} shows a recipient key id (policy hides them): {p}"
        );
    }

    let dec = user.gpg.decrypt(armored.as_bytes());
    assert!(
        dec.decrypted(),
        "{who} cannot decrypt their copy:\n{}",
        dec.report()
    );
    assert!(
        dec.valid_signers()
            .iter()
            .any(|f| f.eq_ignore_ascii_case(&w.list_fpr)),
        "{who}'s copy is not signed by the list key {}:\n{}",
        w.list_fpr,
        dec.report()
    );
    let plain = dec.text();
    for secret in secrets {
        assert!(
            plain.contains(secret),
            "{who}'s decrypted copy lacks {secret:?} of the post:\n{plain}"
        );
    }
    assert!(
        !plain.contains("To unsubscribe send an email to"),
        "Mailman added its footer (the list settings from postfix/ did not apply):\n{plain}"
    );
    // The author's own signature survives Mailman and re-encryption (DESIGN invariant 4).
    let (signed, signature) = mime::multipart_signed(&plain).unwrap_or_else(|| {
        panic!("{who}'s decrypted copy has no multipart/signed from the author:\n{plain}")
    });
    let verified = w
        .inspector
        .verify_detached(signed.as_bytes(), signature.as_bytes());
    assert!(
        verified.valid_signers().contains(&author.fpr),
        "{}'s signature does not verify in {who}'s copy:\n{}\n--- signed part\n{signed:?}",
        author.email,
        verified.report()
    );
}

/// B: a plaintext post to the list is refused at the end of DATA.
fn plaintext_post_is_refused(w: &World) {
    let marker = unique_marker("plain");
    let subject = "E2E plaintext post";
    let id = message_id(subject);
    let post = mime::plain_text(
        &[
            ("From", "Alice <alice@example.net>"),
            ("To", LIST),
            ("Subject", subject),
            ("Message-ID", &id),
        ],
        &format!("This should never reach the list: {marker}\n"),
    );
    let d = smtp::send(w.inbound_port, &w.alice.email, &[LIST], &post);
    assert_refused_5xx(&d, 550, "5.7.1", "a plaintext post");
}

/// F: a plaintext post to `LIST+x@`, which Postfix (recipient_delimiter = +) and Mailman's
/// LMTP runner both take as a post to LIST, is refused in the SMTP dialogue, and no member
/// receives anything (every copy would be encrypted, so copies are counted, not searched).
fn plaintext_post_to_extension_is_refused(w: &World) {
    let list_mail_count = || -> Vec<usize> {
        MEMBERS
            .iter()
            .map(|(_, addr)| {
                w.sink
                    .deliveries_to(addr)
                    .iter()
                    .filter(|d| d.mail_from.starts_with("enc-bounces"))
                    .count()
            })
            .collect()
    };
    let before = list_mail_count();
    let marker = unique_marker("plus");
    let subject = "E2E plaintext post to LIST+x";
    let id = message_id(subject);
    let post = mime::plain_text(
        &[
            ("From", "Alice <alice@example.net>"),
            ("To", LIST),
            ("Subject", subject),
            ("Message-ID", &id),
        ],
        &format!("This should never reach the list: {marker}\n"),
    );
    let rcpt = "enc+x@lists.example.test";
    let d = smtp::send(w.inbound_port, &w.alice.email, &[rcpt], &post);
    assert!(
        !d.accepted(),
        "a plaintext post to {rcpt} was accepted:\n{d}"
    );
    let (_, reply) = d
        .first_refusal()
        .unwrap_or_else(|| panic!("nothing refused the post to {rcpt}:\n{d}"));
    assert!(
        (500..600).contains(&reply.code),
        "the post to {rcpt} got {reply}, not a permanent refusal:\n{d}"
    );
    // Give a wrongly accepted post the time Mailman would need to distribute it.
    let settle = Instant::now() + Duration::from_secs(20);
    while Instant::now() < settle && !w.postfix.queue_is_empty() {
        std::thread::sleep(Duration::from_millis(250));
    }
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        list_mail_count(),
        before,
        "members received list mail after a refused plaintext post to {rcpt}"
    );
}

/// C: a signed and encrypted post by someone whose key is not bound to the list is refused.
fn non_member_post_is_refused(w: &World) {
    let marker = unique_marker("dave");
    let post = w.encrypted_post(
        &w.dave,
        "E2E post by a stranger",
        &format!("I am not on this list: {marker}\n"),
    );
    let d = smtp::send(w.inbound_port, &w.dave.email, &[LIST], &post);
    assert_refused_5xx(&d, 550, "5.7.1", "a post by a non-member");
}

/// E: Postfix's own mail carries no plaintext. Mailman refuses a post that listcrypt decrypted
/// (the list is gone from its database), so Postfix's bounce daemon writes a DSN to the author
/// that would quote the decrypted post; `internal_mail_filter_classes = bounce` with
/// `non_smtpd_milters` (postfix/main.cf) runs it through listcrypt before it leaves.
fn dsn_for_refused_post_does_not_quote_it(w: &World) {
    let marker = unique_marker("dsn");
    let body = format!("Mailman will refuse this: {marker}\n");
    let gone_fpr = w
        .gone_fpr
        .as_deref()
        .expect("the world has the forgotten list");
    let post = encrypted_post(&w.alice, GONE, gone_fpr, "E2E refused by Mailman", &body);
    let d = smtp::send(w.inbound_port, &w.alice.email, &[GONE], &post);
    assert!(
        d.accepted(),
        "alice's encrypted post to {GONE} was not accepted:\n{d}"
    );
    let dsn = support::process::wait_for(
        "Postfix's DSN to alice about the post Mailman refused",
        DELIVERY_TIMEOUT,
        || {
            w.sink
                .deliveries_to(&w.alice.email)
                .into_iter()
                .find(|d| d.mail_from.is_empty())
        },
    );
    support::files::write(&w.dir.path().join("dsn-for-alice.eml"), &dsn.data);
    let text = dsn.text();
    assert!(
        !text.contains(&marker),
        "LEAK: Postfix's DSN quotes the decrypted post:\n{text}"
    );
}

/// D: with listcrypt stopped, both listeners answer 4xx: nothing passes unchecked.
fn stopped_daemon_fails_closed(w: &mut World) {
    let status = w.listcrypt.stop();
    eprintln!("e2e: listcrypt stopped: {status:?}");
    let post = w.encrypted_post(&w.alice, "E2E while listcrypt is down", "Retry me later.\n");
    let inbound = smtp::send(w.inbound_port, &w.alice.email, &[LIST], &post);
    let outbound = smtp::send(
        w.outbound_port,
        LIST_BOUNCES,
        &[&w.bob.email],
        &mime::plain_text(
            &[
                ("From", LIST),
                ("To", "bob@example.net"),
                (
                    "Subject",
                    "E2E plaintext from Mailman while listcrypt is down",
                ),
            ],
            "This must not leave in clear.\n",
        ),
    );
    for (name, d) in [("inbound", &inbound), ("outbound", &outbound)] {
        eprintln!("e2e: {name} smtpd with listcrypt down:\n{d}");
        assert!(
            !d.accepted(),
            "the {name} smtpd accepted a message while listcrypt was down:\n{d}"
        );
        let (stage, reply) = d.first_refusal().unwrap_or_else(|| {
            panic!("the {name} smtpd refused nothing while listcrypt was down:\n{d}")
        });
        assert!(
            (400..500).contains(&reply.code),
            "the {name} smtpd answered {reply} at {stage} while listcrypt was down, not 4xx \
             (milter_default_action = tempfail):\n{d}"
        );
    }
}

#[test]
fn encrypted_list_through_postfix_and_mailman() {
    support::environment::require_environment(&[
        "postfix",
        "postconf",
        "postqueue",
        "postmap",
        "mailman",
        "gpg",
        "gpgconf",
    ]);
    assert!(
        std::path::Path::new("/usr/share/publicsuffix/public_suffix_list.dat").exists(),
        "the publicsuffix package is missing; run `{}`",
        support::environment::TEST_COMMAND
    );
    let mut w = World::start(WorldOptions {
        name: "e2e",
        gone_list: true,
        ..Default::default()
    });
    eprintln!("e2e: world up after {:?}", w.started.elapsed());

    member_post_is_delivered_encrypted(&w);
    eprintln!(
        "e2e: A (member post delivered encrypted) ok, {:?}",
        w.started.elapsed()
    );
    plaintext_post_is_refused(&w);
    eprintln!("e2e: B (plaintext post refused) ok");
    non_member_post_is_refused(&w);
    eprintln!("e2e: C (non-member post refused) ok");
    plaintext_post_to_extension_is_refused(&w);
    eprintln!("e2e: F (plaintext post to LIST+x refused, nothing distributed) ok");
    dsn_for_refused_post_does_not_quote_it(&w);
    eprintln!("e2e: E (DSN without the decrypted post) ok");
    stopped_daemon_fails_closed(&mut w);
    eprintln!("e2e: D (fail closed) ok, {:?}", w.started.elapsed());
}
