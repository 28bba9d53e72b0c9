//! The encrypted archive (issue 15): a post that Mailman sends in three outbound
//! transactions is archived once, encrypted to the list's archive key; Mailman's notices and
//! digests are not archived; `listcrypt archive decrypt` turns the archive into an mbox that
//! Python's `mailbox` reads with every post once and unchanged; an archive that cannot be
//! written is a 451 (no post goes out unarchived).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use support::gpg::{Gpg, GpgMember};
use support::milter::{self, Mail};
use support::process::run_ok;
use support::sink;
use support::site::{Site, LIST, LIST_BOUNCES};

const ARCHIVE_ADDRESS: &str = "enc-archive@archive.example.test";

/// A protected archive key made with GnuPG: (public cert, secret key, passphrase file, gpg).
fn archive_key(site: &Site) -> (PathBuf, PathBuf, PathBuf, Gpg) {
    let gpg = Gpg::new(site.path("gnupg-archive"));
    gpg.ok(
        &[
            "--passphrase",
            "archive pw",
            "--quick-gen-key",
            "Archive <archive@example.test>",
            "future-default",
            "default",
            "never",
        ],
        None,
    );
    let public = site.path("archive.asc");
    gpg.export("archive@example.test", &public);
    let secret = site.path("archive-secret.asc");
    let out = gpg.ok(
        &[
            "--passphrase",
            "archive pw",
            "--armor",
            "--export-secret-keys",
            "archive@example.test",
        ],
        None,
    );
    std::fs::write(&secret, out).unwrap();
    let pass = site.path("archive-pass.txt");
    std::fs::write(&pass, "archive pw\n").unwrap();
    (public, secret, pass, gpg)
}

fn set_policy(site: &Site, lines: &str) {
    let path = site.path("lists.d").join(format!("{LIST}.toml"));
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text.replace("archive = \"off\"\n", "");
    std::fs::write(&path, format!("{text}{lines}\n")).unwrap();
}

/// A post as Mailman's posting pipeline sends it (rule headers, List-Post, Precedence: list).
fn post(n: u32, text: &str) -> Mail {
    Mail::parse(
        format!(
            "From: m1 <m1@example.test>\nTo: {LIST}\nSubject: [Enc] post {n}\n\
             Message-ID: <archive-post-{n}@example.test>\nPrecedence: list\n\
             List-Post: <mailto:{LIST}>\nX-Mailman-Rule-Misses: dmarc-mitigation; no-senders; \
             approved; loop; banned-address; member-moderation\n\
             MIME-Version: 1.0\nContent-Type: text/plain\n\n{text}"
        )
        .as_bytes(),
    )
}

/// Mailman's welcome notice (Precedence: bulk, Auto-Submitted; no rule headers).
fn notice() -> Mail {
    Mail::parse(
        b"From: enc-owner@lists.example.test\nTo: m1@example.test\nSubject: Welcome\n\
          Message-ID: <notice-1@lists.example.test>\nPrecedence: bulk\n\
          Auto-Submitted: auto-generated\nMIME-Version: 1.0\nContent-Type: text/plain\n\n\
          welcome notice text\n",
    )
}

/// A digest (from LIST-request, List-Post, no rule headers).
fn digest() -> Mail {
    Mail::parse(
        format!(
            "From: enc-request@lists.example.test\nTo: {LIST}\nSubject: Enc Digest, Vol 1, Issue 1\n\
             Message-ID: <digest-1@lists.example.test>\nList-Post: <mailto:{LIST}>\n\
             MIME-Version: 1.0\nContent-Type: text/plain\n\ndigest table of contents\n"
        )
        .as_bytes(),
    )
}

async fn deliver(daemon: &milter::Running, members: &[GpgMember], mail: &Mail) {
    for m in members {
        let (_, status) = milter::transact(daemon.outbound, LIST_BOUNCES, &m.address, mail).await;
        milter::assert_goes_on(&status, &m.address);
    }
}

fn decrypt_archive(site: &Site, encrypted: &Path, secret: &Path, pass: &Path) -> PathBuf {
    let out = site.path("decrypted.mbox");
    let status = Command::new(support::listcrypt::listcrypt_bin())
        .args(["archive", "decrypt", "--key"])
        .arg(secret)
        .arg("--passphrase-file")
        .arg(pass)
        .stdin(std::fs::File::open(encrypted).unwrap())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(Stdio::inherit())
        .status()
        .unwrap();
    assert!(status.success(), "archive decrypt: {status}");
    out
}

/// Every message of `mbox` as Python's mailbox module reads it: Message-ID and body.
fn python_read(mbox: &Path) -> Vec<(String, String)> {
    let script = "import mailbox, sys, json\n\
        print(json.dumps([[m['Message-ID'], m.get_payload()] for m in mailbox.mbox(sys.argv[1])]))";
    let out = run_ok(Command::new("python3").args(["-c", script]).arg(mbox), None);
    serde_json::from_slice(&out).expect("python output")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_post_in_three_transactions_is_archived_once_and_decrypts() {
    let site = Site::new();
    site.create_list(LIST);
    let members = GpgMember::three_bound(&site);
    let (public, secret, pass, _gpg) = archive_key(&site);
    // The secret key is refused: it must never be on the list host.
    let out = site
        .cli()
        .args(["list", "archive-key", "import", LIST])
        .arg(&secret)
        .output();
    assert_eq!(out.unwrap().status.code(), Some(65));
    run_ok(
        site.cli()
            .args(["list", "archive-key", "import", LIST])
            .arg(&public),
        None,
    );
    set_policy(&site, "archive = \"mbox\"");
    run_ok(site.cli().arg("check-config"), None);
    let daemon = milter::start(&site.config).await;

    // Mailman splits a post into transactions (TLD buckets, max_recipients): here three.
    let quoted =
        "first line\nFrom the start of a line\n>From quoted already\nsecret archive text 1\n";
    deliver(&daemon, &members, &post(1, quoted)).await;
    deliver(&daemon, &members[..1], &post(2, "secret archive text 2\n")).await;
    deliver(&daemon, &members[..2], &notice()).await;
    deliver(&daemon, &members[..1], &digest()).await;
    daemon.stop().await;

    let mbox = site
        .path("state")
        .join("archive")
        .join(format!("{LIST}.mbox"));
    let meta = std::fs::metadata(&mbox).expect("the archive mbox");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let raw = String::from_utf8(std::fs::read(&mbox).unwrap()).unwrap();
    assert!(
        !raw.contains("secret archive text"),
        "the archive is encrypted"
    );
    assert_eq!(raw.matches("\nFrom ").count() + 1, 2, "two entries: {raw}");

    let plain = decrypt_archive(&site, &mbox, &secret, &pass);
    let posts = python_read(&plain);
    let ids: Vec<&str> = posts.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "<archive-post-1@example.test>",
            "<archive-post-2@example.test>"
        ],
        "every post once, no notice, no digest"
    );
    // Python's mailbox reads mbox in the mboxo form: a body line `From ` (which Mailman itself
    // sends as `>From `, smtplib's mangling) comes back as `>From `; every other line as sent.
    let want = quoted.replace("\nFrom the start", "\n>From the start");
    assert_eq!(posts[0].1.replace("\r\n", "\n"), want, "the post's body");
    assert!(posts[1].1.contains("secret archive text 2"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_archive_that_cannot_be_written_is_a_tempfail() {
    let site = Site::new();
    site.create_list(LIST);
    let m1 = GpgMember::new(&site, "m1", true);
    set_policy(&site, "archive = \"mbox\"");
    let daemon = milter::start(&site.config).await;
    // No archive key yet: the post waits (451), it does not go out unarchived.
    let (_, status) =
        milter::transact(daemon.outbound, LIST_BOUNCES, &m1.address, &post(1, "x\n")).await;
    milter::assert_reply(&status, "451", "4.3.0", "no archive key");
    // A notice is not archived, so it goes on.
    let (_, status) = milter::transact(daemon.outbound, LIST_BOUNCES, &m1.address, &notice()).await;
    milter::assert_goes_on(&status, "notice");

    let (public, ..) = archive_key(&site);
    run_ok(
        site.cli()
            .args(["list", "archive-key", "import", LIST])
            .arg(&public),
        None,
    );
    // The mbox cannot be opened (a directory in its place): 451 again.
    let mbox = site
        .path("state")
        .join("archive")
        .join(format!("{LIST}.mbox"));
    std::fs::create_dir_all(&mbox).unwrap();
    let (_, status) =
        milter::transact(daemon.outbound, LIST_BOUNCES, &m1.address, &post(1, "x\n")).await;
    milter::assert_reply(&status, "451", "4.3.0", "archive not writable");
    std::fs::remove_dir(&mbox).unwrap();
    let (_, status) =
        milter::transact(daemon.outbound, LIST_BOUNCES, &m1.address, &post(1, "x\n")).await;
    milter::assert_goes_on(&status, "archive writable again");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn archive_address_gets_each_post_once_through_the_reinjection_listener() {
    let site = Site::new();
    site.create_list(LIST);
    let members = GpgMember::three_bound(&site);
    let (public, _, _, gpg) = archive_key(&site);
    run_ok(
        site.cli()
            .args(["list", "archive-key", "import", LIST])
            .arg(&public),
        None,
    );
    set_policy(
        &site,
        &format!("archive = \"address\"\narchive_address = \"{ARCHIVE_ADDRESS}\""),
    );
    let sink = sink::Sink::start();
    site.reinject_to(sink.port);
    let daemon = milter::start(&site.config).await;
    deliver(&daemon, &members, &post(1, "secret archive text 1\n")).await;
    deliver(&daemon, &members[..1], &notice()).await;
    daemon.stop().await;

    let sent = sink.deliveries_to(ARCHIVE_ADDRESS);
    assert_eq!(sent.len(), 1, "{}", sink.summary());
    assert_eq!(sent[0].mail_from, LIST_BOUNCES);
    assert!(!sent[0].text().contains("secret archive text"));
    let out = gpg
        .cmd()
        .args(["--passphrase", "archive pw", "--decrypt"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(&sent[0].data)?;
            c.wait_with_output()
        })
        .unwrap();
    let plain = String::from_utf8_lossy(&out.stdout);
    assert!(
        plain.contains("Message-ID: <archive-post-1@example.test>"),
        "{plain}"
    );
    assert!(plain.contains("secret archive text 1"), "{plain}");
}
