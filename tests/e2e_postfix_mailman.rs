//! End to end: a real Postfix with listcrypt's two milters, a real Mailman 3 core and GnuPG
//! subscribers, all on 127.0.0.1 in one tempdir. Postfix and Mailman are configured from the
//! admin snippets in `postfix/`, so those are tested too.
//!
//! Runs as root (it starts its own Postfix and Mailman); `bash scripts/test` installs the
//! packages and runs it. Nothing is mocked: what the subscribers' mail server receives is
//! captured by an SMTP sink in this process and decrypted with each subscriber's own gpg.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use support::files::mkdir;
use support::gpg::{Gpg, GpgUser};
use support::listcrypt::Listcrypt;
use support::mailman::{Mailman, MailmanSettings};
use support::mime;
use support::net::free_ports;
use support::postfix::{make_searchable, Postfix, PostfixSettings};
use support::sink::{Delivery, Sink};
use support::smtp::{self, Dialogue};
use support::text::tail;

const LIST: &str = "enc@lists.example.test";
const LIST_BOUNCES: &str = "enc-bounces@lists.example.test";
const OWNER: &str = "owner@example.net";
/// A list that Postfix routes to Mailman but Mailman no longer knows: its LMTP refuses the
/// decrypted post, and Postfix's DSN would quote it (scenario E).
const GONE: &str = "gone@lists.example.test";
const MEMBERS: [(&str, &str); 3] = [
    ("Alice", "alice@example.net"),
    ("Bob", "bob@example.net"),
    ("Carol", "carol@example.net"),
];

/// How long a post may take from alice's SMTP session to the subscribers' mailboxes.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(90);

/// Everything one run needs. Fields drop in order: the daemons stop before the tempdir goes.
struct World {
    listcrypt: Listcrypt,
    postfix: Postfix,
    mailman: Mailman,
    sink: Sink,
    alice: GpgUser,
    bob: GpgUser,
    carol: GpgUser,
    /// Bound as the list owner; kept so that its gpg-agent is stopped at the end.
    _owner: GpgUser,
    dave: GpgUser,
    /// A home without secret keys, for `gpg --list-packets` and the author's signature.
    inspector: Gpg,
    list_fpr: String,
    /// The key of the list that Mailman forgot.
    gone_fpr: String,
    inbound_port: u16,
    outbound_port: u16,
    started: Instant,
    dir: tempfile::TempDir,
}

impl World {
    fn start() -> World {
        let started = Instant::now();
        let dir = tempfile::Builder::new()
            .prefix("listcrypt-e2e.")
            .tempdir_in("/tmp")
            .expect("tempdir in /tmp");
        let base = dir.path().to_path_buf();
        make_searchable(&base);
        eprintln!("e2e: working in {}", base.display());

        let sink = Sink::start();
        let [inbound_port, outbound_port, reinject_port, lmtp_port, rest_port] = free_ports();
        let socket_dir = mkdir(&base.join("run"), 0o755);
        let mut listcrypt =
            Listcrypt::configure(&base.join("listcrypt"), &socket_dir, reinject_port);
        let mailman_base = base.join("mailman");

        let mut postfix = Postfix::configure(&PostfixSettings {
            base: base.join("postfix"),
            inbound_port,
            outbound_port,
            reinject_port,
            sink_port: sink.port,
            inbound_socket: listcrypt.inbound_socket.clone(),
            outbound_socket: listcrypt.outbound_socket.clone(),
            mailman_data_dir: mailman_base.join("var/data"),
        });

        let mut mailman = Mailman::configure(&MailmanSettings {
            base: mailman_base,
            lmtp_port,
            rest_port,
            smtp_port: outbound_port,
            postfix_etc: postfix.etc.clone(),
        });
        let members: Vec<&str> = MEMBERS.iter().map(|(_, email)| *email).collect();
        // Creating the list also writes Postfix's relay_domains and transport maps. The
        // commands need no running Mailman, so the slow start-up overlaps the work below.
        mailman.create_list(LIST, OWNER, &members);
        mailman.apply_encrypted_list_settings(LIST);
        mailman.create_list(GONE, OWNER, &[]);
        mailman.start();
        // After `mailman start`, which rewrites the maps from the lists it knows.
        mailman.forget_list(GONE);
        eprintln!(
            "e2e: list created, Mailman starting ({:?})",
            started.elapsed()
        );

        postfix.start();
        eprintln!("e2e: Postfix up ({:?})", started.elapsed());

        let homes = mkdir(&base.join("gnupg"), 0o700);
        let [alice, bob, carol] = MEMBERS.map(|(name, email)| GpgUser::create(&homes, name, email));
        let owner = GpgUser::create(&homes, "Owner", OWNER);
        let dave = GpgUser::create(&homes, "Dave", "dave@example.net");
        let inspector = Gpg::new(homes.join("inspector"));
        eprintln!("e2e: keys made ({:?})", started.elapsed());

        let list_key = create_list(&listcrypt, LIST, &base);
        for user in [&alice, &bob, &carol] {
            bind(&listcrypt, LIST, user, "member", &base);
        }
        bind(&listcrypt, LIST, &owner, "owner", &base);
        let mut list_fpr = String::new();
        for user in [&alice, &bob, &carol, &owner, &dave] {
            list_fpr = user
                .gpg
                .import(&list_key)
                .expect("gpg imported the list key");
        }
        let gone_key = create_list(&listcrypt, GONE, &base);
        bind(&listcrypt, GONE, &alice, "member", &base);
        let gone_fpr = alice
            .gpg
            .import(&gone_key)
            .expect("gpg imported the list key");
        // The author's signature is checked with a home that knows only public keys.
        inspector.import(&base.join("alice@example.net.asc"));
        listcrypt.serve();
        eprintln!(
            "e2e: listcrypt serving, list key {list_fpr} ({:?})",
            started.elapsed()
        );
        mailman.wait_until_ready();
        eprintln!("e2e: Mailman up ({:?})", started.elapsed());

        World {
            listcrypt,
            postfix,
            mailman,
            sink,
            alice,
            bob,
            carol,
            _owner: owner,
            dave,
            inspector,
            list_fpr,
            gone_fpr,
            inbound_port,
            outbound_port,
            started,
            dir,
        }
    }

    /// A post to `LIST`, signed and encrypted to its key by `author`, as RFC 3156 PGP/MIME.
    fn encrypted_post(&self, author: &GpgUser, subject: &str, body: &str) -> Vec<u8> {
        encrypted_post(author, LIST, &self.list_fpr, subject, body)
    }
}

/// `listcrypt list create` and `list export-key`; returns the file with the list's key.
fn create_list(listcrypt: &Listcrypt, list: &str, base: &Path) -> PathBuf {
    listcrypt.cli(&["list", "create", list]);
    let exported = listcrypt.cli(&["list", "export-key", list]).stdout;
    assert!(
        String::from_utf8_lossy(&exported).contains("-----BEGIN PGP PUBLIC KEY BLOCK-----"),
        "`listcrypt list export-key {list}` printed no armored key"
    );
    let path = base.join(format!("{list}.asc"));
    support::files::write(&path, &exported);
    path
}

/// `listcrypt member add LIST ADDRESS CERT --role ROLE` with the user's exported key.
fn bind(listcrypt: &Listcrypt, list: &str, user: &GpgUser, role: &str, base: &Path) {
    let cert = user.export(&base.join(format!("{}.asc", user.email)));
    let cert = cert.display().to_string();
    listcrypt.cli(&["member", "add", list, &user.email, &cert, "--role", role]);
}

/// A post to `list`, signed by `author` and encrypted to `list_fpr`, as RFC 3156 PGP/MIME.
fn encrypted_post(
    author: &GpgUser,
    list: &str,
    list_fpr: &str,
    subject: &str,
    body: &str,
) -> Vec<u8> {
    let inner = format!(
        "Content-Type: text/plain; charset=utf-8\r\n\
             Content-Transfer-Encoding: 8bit\r\n\r\n{}",
        body.replace('\n', "\r\n")
    );
    let armored = author.sign_encrypt(list_fpr, inner.as_bytes());
    let from = format!("{} <{}>", author.name, author.email);
    let id = message_id(subject);
    mime::pgp_mime_encrypted(
        &[
            ("From", from.as_str()),
            ("To", list),
            ("Subject", subject),
            ("Message-ID", id.as_str()),
            ("Date", "Thu, 01 Jan 2026 12:00:00 +0000"),
        ],
        &armored,
        "listcrypt-e2e-boundary",
    )
}

impl World {
    /// Waits until every address in `rcpts` got at least one delivery, then a little longer
    /// so that duplicates would show. Returns the deliveries per recipient.
    fn await_deliveries(&self, rcpts: &[&str], marker_subject: &str) -> Vec<Vec<Delivery>> {
        let relevant = |rcpt: &str| -> Vec<Delivery> {
            self.sink
                .deliveries_to(rcpt)
                .into_iter()
                .filter(|d| d.mail_from.starts_with("enc-bounces"))
                .collect()
        };
        let deadline = Instant::now() + DELIVERY_TIMEOUT;
        while !rcpts.iter().all(|r| !relevant(r).is_empty()) {
            assert!(
                Instant::now() < deadline,
                "no copy of {marker_subject:?} for {:?} within {DELIVERY_TIMEOUT:?}",
                rcpts
                    .iter()
                    .filter(|r| relevant(r).is_empty())
                    .collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        // Let Mailman and Postfix finish, so that a second copy would arrive before we count.
        let settle = Instant::now() + Duration::from_secs(20);
        while Instant::now() < settle && !self.postfix.queue_is_empty() {
            std::thread::sleep(Duration::from_millis(250));
        }
        std::thread::sleep(Duration::from_secs(2));
        rcpts.iter().map(|r| relevant(r)).collect()
    }

    fn diagnostics(&self) -> String {
        format!(
            "===== listcrypt log ({})\n{}\n\
             ===== Postfix maillog (last 120 lines)\n{}\n\
             ===== Postfix queue\n{}\n\
             ===== Mailman logs (last 40 lines each)\n{}\n\
             ===== SMTP sink\n{}\n",
            self.listcrypt.log.display(),
            tail(&self.listcrypt.log_text(), 200),
            self.postfix.log_tail(120),
            self.postfix.queue_listing(),
            self.mailman.logs_tail(40),
            self.sink.summary(),
        )
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("\n{}", self.diagnostics());
        }
        if std::env::var_os("KEEP_E2E_TMPDIR").is_some() {
            let kept = std::mem::replace(
                &mut self.dir,
                tempfile::tempdir().expect("replacement tempdir"),
            );
            eprintln!("e2e: keeping {} (KEEP_E2E_TMPDIR)", kept.keep().display());
        }
        eprintln!("e2e: stopping (ran {:?})", self.started.elapsed());
        self.listcrypt.stop();
        self.postfix.stop();
        self.mailman.stop();
    }
}

fn message_id(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let tag: String = tag
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(20)
        .collect();
    format!("<{tag}.{nanos}@example.net>")
}

fn unique_marker(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("MARKER-{tag}-{nanos:x}")
}

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
    let post = encrypted_post(&w.alice, GONE, &w.gone_fpr, "E2E refused by Mailman", &body);
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
    let mut w = World::start();
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
