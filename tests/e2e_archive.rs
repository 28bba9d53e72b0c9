//! End to end, the encrypted archive (issue 15): members' posts go through a real Postfix and
//! Mailman 3 core; listcrypt archives each post once, encrypted to the list's archive key, in
//! `<state_dir>/archive/LIST.mbox` (`archive = "mbox"`) or at the archive address
//! (`archive = "address"`, through the reinjection listener and Postfix to the sink).
//! `listcrypt archive decrypt` gives an mbox that Python's `mailbox` reads, each post once.
//!
//! Runs as root like tests/e2e_postfix_mailman.rs (it starts its own Postfix and Mailman).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::gpg::GpgUser;
use support::process::run_ok;
use support::smtp;
use support::world::{unique_marker, World, WorldOptions, DELIVERY_TIMEOUT, LIST};

const ARCHIVE_ADDRESS: &str = "enc-archive@example.net";

/// Posts one encrypted post from alice per marker and waits for bob's copies; returns the
/// Message-IDs as Mailman keeps them.
fn post(w: &World, markers: &[String]) -> Vec<String> {
    let mut ids = Vec::new();
    for marker in markers {
        let subject = format!("archived {marker}");
        let post = w.encrypted_post(&w.alice, &subject, &format!("archive me: {marker}\n"));
        let id = support::world::header_value(&post, "Message-ID").expect("a Message-ID");
        let d = smtp::send(w.inbound_port, &w.alice.email, &[LIST], &post);
        assert!(d.accepted(), "post {marker} not accepted:\n{d}");
        let deadline = Instant::now() + DELIVERY_TIMEOUT;
        while w.copies_of(&w.bob.email, &id).is_empty() {
            assert!(Instant::now() < deadline, "no copy of {marker} for bob");
            std::thread::sleep(Duration::from_millis(250));
        }
        ids.push(id);
    }
    w.settle();
    ids
}

/// Every message of `mbox` as Python's mailbox module reads it: Message-ID and the whole text.
fn python_read(mbox: &Path) -> Vec<(String, String)> {
    let script = "import mailbox, sys, json\n\
        print(json.dumps([[m['Message-ID'], m.as_string()] for m in mailbox.mbox(sys.argv[1])]))";
    let out = run_ok(Command::new("python3").args(["-c", script]).arg(mbox), None);
    serde_json::from_slice(&out).expect("python output")
}

fn decrypt(encrypted: &Path, secret: &Path, out: &Path) {
    let status = Command::new(support::listcrypt::listcrypt_bin())
        .args(["archive", "decrypt", "--key"])
        .arg(secret)
        .stdin(std::fs::File::open(encrypted).unwrap())
        .stdout(std::fs::File::create(out).unwrap())
        .stderr(Stdio::inherit())
        .status()
        .unwrap();
    assert!(status.success(), "archive decrypt: {status}");
}

/// Restarts listcrypt with `policy` lines set on the list.
fn set_archive(w: &mut World, policy: &[(&str, &str)]) {
    w.listcrypt.stop();
    for (k, v) in policy {
        w.listcrypt.set_policy(LIST, k, v);
    }
    let out = w.listcrypt.cli(&["check-config"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    w.listcrypt.serve();
}

fn archive_key(w: &World) -> (GpgUser, PathBuf, PathBuf) {
    let homes = w.dir.path().join("gnupg");
    let archive = GpgUser::create(&homes, "Archive", ARCHIVE_ADDRESS);
    let public = archive.export(&w.dir.path().join("archive.asc"));
    let secret = w.dir.path().join("archive-secret.asc");
    archive.gpg.export_secret(&archive.fpr, &secret);
    let p = public.display().to_string();
    let out = w
        .listcrypt
        .cli(&["list", "archive-key", "import", LIST, &p]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (archive, public, secret)
}

fn mbox_archive(w: &mut World, secret: &Path) {
    set_archive(w, &[("archive", "\"mbox\"")]);
    let markers: Vec<String> = (1..=3)
        .map(|i| unique_marker(&format!("mbox{i}")))
        .collect();
    let ids = post(w, &markers);
    let mbox = w
        .dir
        .path()
        .join(format!("listcrypt/state/archive/{LIST}.mbox"));
    let raw = String::from_utf8(std::fs::read(&mbox).expect("the archive mbox")).unwrap();
    for m in &markers {
        assert!(!raw.contains(m.as_str()), "LEAK: {m} in the archive mbox");
    }
    let plain = w.dir.path().join("archive-plain.mbox");
    decrypt(&mbox, secret, &plain);
    let posts = python_read(&plain);
    let got: Vec<&str> = posts.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(got, ids, "each post once, in order, nothing else");
    for ((_, text), marker) in posts.iter().zip(&markers) {
        // Mailman's post as distributed: its List-Id and the author's signed text.
        assert!(text.contains(marker.as_str()), "{marker} missing:\n{text}");
        assert!(
            text.contains("List-Id:"),
            "not the post as Mailman sent it:\n{text}"
        );
    }
    hyperkitty_import(w, &plain, &ids);
}

/// HyperKitty's own import command takes the decrypted mbox: one archived email per post.
/// Django settings: HyperKitty's test settings, with a database file and no search index.
fn hyperkitty_import(w: &World, mbox: &Path, ids: &[String]) {
    let dir = w.dir.path().join("hyperkitty");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("hk_settings.py"),
        "from hyperkitty.tests.settings_test import *  # noqa\n\
         DATABASES = {'default': {'ENGINE': 'django.db.backends.sqlite3', 'NAME': 'hk.db'}}\n\
         HAYSTACK_CONNECTIONS = {'default': {'ENGINE': 'haystack.backends.simple_backend.SimpleEngine'}}\n\
         HAYSTACK_SIGNAL_PROCESSOR = 'haystack.signals.BaseSignalProcessor'\n",
    )
    .unwrap();
    let admin = |args: &[&str]| {
        let mut cmd = Command::new("django-admin");
        cmd.current_dir(&dir)
            .env("PYTHONPATH", &dir)
            .env("DJANGO_SETTINGS_MODULE", "hk_settings")
            .args(args);
        String::from_utf8_lossy(&run_ok(&mut cmd, None)).into_owned()
    };
    admin(&["migrate", "-v0"]);
    let m = mbox.display().to_string();
    admin(&["hyperkitty_import", "--no-sync-mailman", "-l", LIST, &m]);
    let listed = admin(&[
        "shell",
        "-c",
        "from hyperkitty.models import Email\n\
         for e in Email.objects.order_by('archived_date', 'id'): print(e.mailinglist.name, '<' + e.message_id + '>')",
    ]);
    let want: Vec<String> = ids.iter().map(|id| format!("{LIST} {id}")).collect();
    let mut got: Vec<&str> = listed.lines().collect();
    let mut want_sorted: Vec<&str> = want.iter().map(String::as_str).collect();
    got.sort();
    want_sorted.sort();
    assert_eq!(got, want_sorted, "HyperKitty holds every post once");
}

fn address_archive(w: &mut World, archive: &GpgUser) {
    set_archive(
        w,
        &[
            ("archive", "\"address\""),
            ("archive_address", &format!("\"{ARCHIVE_ADDRESS}\"")),
        ],
    );
    let marker = unique_marker("address");
    let ids = post(w, std::slice::from_ref(&marker));
    let copies = w.sink.deliveries_to(ARCHIVE_ADDRESS);
    assert_eq!(copies.len(), 1, "one archive copy:\n{}", w.sink.summary());
    assert!(
        !copies[0].text().contains(marker.as_str()),
        "LEAK at the archive address"
    );
    let dec = archive.gpg.decrypt(&copies[0].data);
    assert!(dec.decrypted(), "{}", dec.report());
    let text = String::from_utf8_lossy(&dec.plaintext);
    assert!(
        text.contains(marker.as_str()) && text.contains(ids[0].as_str()),
        "{text}"
    );
}

#[test]
fn posts_are_archived_encrypted_once_through_postfix_and_mailman() {
    support::environment::require_environment(&[
        "postfix",
        "postconf",
        "postqueue",
        "postmap",
        "mailman",
        "gpg",
        "gpgconf",
        "python3",
        "django-admin",
    ]);
    let mut w = World::start(WorldOptions {
        name: "e2e-archive",
        ..Default::default()
    });
    let (archive, _public, secret) = archive_key(&w);
    mbox_archive(&mut w, &secret);
    eprintln!("e2e-archive: mbox ok, {:?}", w.started.elapsed());
    address_archive(&mut w, &archive);
    eprintln!("e2e-archive: address ok, {:?}", w.started.elapsed());
}
