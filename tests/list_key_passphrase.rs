//! List keys protected by a passphrase: `secret.pgp` encrypted at rest in a form GnuPG reads
//! (RFC 9580 §5.5.3), opened by the daemon in memory, a wrong or missing passphrase refused at
//! start and answered with 451 at run time, `list protect`/`unprotect`, and `check-config`'s
//! warnings about keys at rest.

mod support;

use indymilter_test::Status;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use support::gpg::{Gpg, GpgMember};
use support::milter::{self, Mail};
use support::process::{run, run_ok};
use support::site::{Site, LIST, LIST_BOUNCES};
use support::text::contains;

const PASSPHRASE: &str = "correct horse battery staple";

/// Points the site's config at `<site>/passphrase` holding `passphrase`.
fn configure_passphrase(site: &Site, passphrase: &str) -> PathBuf {
    let file = site.path("passphrase");
    fs::write(&file, format!("{passphrase}\n")).unwrap();
    let mut config = fs::read_to_string(&site.config).unwrap();
    config.push_str(&format!("passphrase_file = \"{}\"\n", file.display()));
    fs::write(&site.config, config).unwrap();
    file
}

fn secret_key_path(site: &Site) -> PathBuf {
    site.path("keyrings")
        .join("lists")
        .join(LIST)
        .join("secret.pgp")
}

/// Per secret key packet of `secret.pgp`, whether GnuPG sees it protected, and with what.
fn gpg_protection(site: &Site) -> Vec<String> {
    let gpg = Gpg::new(site.path("gnupg-inspect"));
    let out = run_ok(
        gpg.cmd().arg("--list-packets").arg(secret_key_path(site)),
        None,
    );
    let text = String::from_utf8_lossy(&out).into_owned();
    text.lines()
        .filter(|l| l.trim_start().starts_with("skey[") || l.contains("S2K"))
        .map(|l| l.trim().to_string())
        .collect()
}

/// Every secret key packet protected with AES-256 (algo 9) under an iterated and salted S2K
/// over SHA-256 (hash 8), the SHA-1 check (usage 254): RFC 9580 §3.7.1.3, §5.5.3.
fn assert_protected(site: &Site) {
    let lines = gpg_protection(site);
    let s2k: Vec<_> = lines.iter().filter(|l| l.contains("S2K")).collect();
    let skeys: Vec<_> = lines.iter().filter(|l| l.starts_with("skey[")).collect();
    assert!(!skeys.is_empty(), "{lines:?}");
    assert!(
        skeys.iter().all(|l| l.contains("protected")),
        "every secret protected: {lines:?}"
    );
    assert!(s2k.len() >= 4, "one S2K per secret key packet: {lines:?}");
    assert!(
        s2k.iter()
            .all(|l| l.starts_with("iter+salt S2K, algo: 9, SHA1 protection, hash: 8")),
        "{lines:?}"
    );
}

fn assert_unprotected(site: &Site) {
    let lines = gpg_protection(site);
    assert!(
        !lines.is_empty()
            && lines
                .iter()
                .all(|l| !l.contains("protected") && !l.contains("S2K")),
        "{lines:?}"
    );
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `list create` with a passphrase source writes a protected key; the daemon opens it and a
/// member's post decrypts. GnuPG imports the same file with the passphrase and signs with it.
#[tokio::test(flavor = "multi_thread")]
async fn a_protected_list_key_decrypts_posts_and_opens_in_gnupg() {
    let site = Site::new();
    let passphrase_file = configure_passphrase(&site, PASSPHRASE);
    site.create_list(LIST);
    assert_protected(&site);

    let alice = GpgMember::new(&site, "alice", true);
    let text = "Posted to a list whose key is protected at rest.";
    let original = Mail::parse(&alice.post("[...]", text));
    let daemon = milter::start(&site.config).await;
    let mut conn = milter::connect(daemon.inbound).await;
    let from = format!("<{}>", alice.address);
    assert_eq!(conn.mail([from.as_str()]).await.unwrap(), Status::Continue);
    let to = format!("<{LIST}>");
    assert_eq!(conn.rcpt([to.as_str()]).await.unwrap(), Status::Continue);
    let (actions, status) = milter::send(&mut conn, &original).await;
    milter::assert_goes_on(&status, "post to a protected list key");
    let delivered = original.apply(&actions);
    assert!(contains(&delivered.body, text.as_bytes()), "decrypted body");
    conn.close().await.unwrap();
    daemon.stop().await;

    // The file is an ordinary protected OpenPGP key: gpg imports it and uses it only with
    // the passphrase (gpg reads the first line of --passphrase-file, as listcrypt does).
    let gpg = Gpg::new(site.path("gnupg-backup"));
    gpg.ok(
        &["--import"],
        Some(&fs::read(secret_key_path(&site)).unwrap()),
    );
    let sign = |passphrase: &std::path::Path| {
        run(
            gpg.cmd().arg("--passphrase-file").arg(passphrase).args([
                "--local-user",
                LIST,
                "--detach-sign",
                "--armor",
            ]),
            Some(b"data"),
        )
    };
    let wrong = site.path("wrong");
    fs::write(&wrong, "not the passphrase\n").unwrap();
    assert!(
        !sign(&wrong).status.success(),
        "gpg signs with a wrong passphrase"
    );
    let out = sign(&passphrase_file);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(contains(&out.stdout, b"-----BEGIN PGP SIGNATURE-----"));
}

/// A wrong passphrase: the daemon does not start, `check-config` says why (78); without any
/// source and without a terminal the CLI says how to give one.
#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_or_missing_passphrase_is_a_clear_error() {
    let site = Site::new();
    let passphrase_file = configure_passphrase(&site, PASSPHRASE);
    site.create_list(LIST);
    fs::write(&passphrase_file, "something else\n").unwrap();

    let config = listcrypt::config::Config::load(Some(&site.config)).unwrap();
    let err = match listcrypt::Daemon::open(config, None) {
        Ok(_) => panic!("the daemon started with a wrong passphrase"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains(LIST) && err.contains("passphrase does not open"),
        "{err}"
    );

    let out = run(site.cli().arg("check-config"), None);
    assert_eq!(out.status.code(), Some(78), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("passphrase does not open"),
        "{}",
        stderr_of(&out)
    );
    let out = run(site.cli().arg("serve"), None);
    assert_eq!(out.status.code(), Some(78), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("passphrase does not open"),
        "{}",
        stderr_of(&out)
    );

    // No source at all, stdin not a terminal: the CLI cannot ask.
    let config = fs::read_to_string(&site.config).unwrap();
    let without: String = config
        .lines()
        .filter(|l| !l.starts_with("passphrase_file"))
        .map(|l| format!("{l}\n"))
        .collect();
    fs::write(&site.config, without).unwrap();
    let out = run(site.cli().arg("check-config"), None);
    assert_eq!(out.status.code(), Some(78), "{}", stderr_of(&out));
    let err = stderr_of(&out);
    assert!(
        err.contains("none is available") && err.contains("passphrase_file"),
        "{err}"
    );
    // The public key needs no passphrase.
    run_ok(site.cli().args(["list", "export-key", LIST]), None);
}

/// The list key's passphrase changes under a running daemon that still has the old one: that
/// list's mail gets 451 4.3.0 at RCPT on both listeners, never plaintext; once the daemon's
/// source has the new passphrase, the next reload opens the key and posts decrypt again.
#[tokio::test(flavor = "multi_thread")]
async fn a_key_that_no_longer_opens_defers_its_mail() {
    let site = Site::new();
    let passphrase_file = configure_passphrase(&site, PASSPHRASE);
    site.create_list(LIST);
    let alice = GpgMember::new(&site, "alice", true);
    let daemon = milter::start(&site.config).await;

    let new = site.path("new-passphrase");
    fs::write(&new, "a new passphrase\n").unwrap();
    let out = run_ok(
        site.cli()
            .args(["list", "protect", LIST, "--new-passphrase-file"])
            .arg(&new),
        None,
    );
    assert!(String::from_utf8_lossy(&out).contains("changed the passphrase"));
    assert_protected(&site);

    let from = format!("<{}>", alice.address);
    let to = format!("<{LIST}>");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        let mut conn = milter::connect(daemon.inbound).await;
        assert_eq!(conn.mail([from.as_str()]).await.unwrap(), Status::Continue);
        let status = conn.rcpt([to.as_str()]).await.unwrap();
        conn.close().await.unwrap();
        if status != Status::Continue || Instant::now() > deadline {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    milter::assert_reply(
        &status,
        "451",
        "4.3.0",
        "post to a list whose key does not open",
    );

    // Outbound, Mailman's copy to a member: refused at RCPT too, nothing leaves.
    let mut conn = milter::connect(daemon.outbound).await;
    let bounces = format!("<{LIST_BOUNCES}>");
    let _ = conn.mail([bounces.as_str()]).await.unwrap();
    let status = conn.rcpt([from.as_str()]).await.unwrap();
    milter::assert_reply(&status, "451", "4.3.0", "outbound copy of a locked list");
    conn.close().await.unwrap();

    // The daemon's source gets the new passphrase; the next change reloads and opens the key.
    fs::copy(&new, &passphrase_file).unwrap();
    run_ok(site.cli().args(["list", "rotate-subkey", LIST]), None);
    assert_protected(&site);
    let original = Mail::parse(&alice.post("[...]", "after the fix"));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut conn = milter::connect(daemon.inbound).await;
        let _ = conn.mail([from.as_str()]).await.unwrap();
        let status = conn.rcpt([to.as_str()]).await.unwrap();
        if status == Status::Continue {
            let (actions, status) = milter::send(&mut conn, &original).await;
            milter::assert_goes_on(&status, "post after the passphrase was fixed");
            assert!(contains(&original.apply(&actions).body, b"after the fix"));
            conn.close().await.unwrap();
            break;
        }
        conn.close().await.unwrap();
        assert!(Instant::now() < deadline, "the key never opened again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    daemon.stop().await;
}

/// `list protect` and `list unprotect` round trip on an existing key: the same key (same
/// fingerprint, same public key), protected in between, and usable by the CLI only with the
/// passphrase.
#[test]
fn protect_and_unprotect_round_trip() {
    let site = Site::new();
    site.create_list(LIST);
    assert_unprotected(&site);
    let before = run_ok(site.cli().args(["list", "export-key", LIST]), None);

    let file = site.path("pw");
    fs::write(&file, format!("{PASSPHRASE}\n")).unwrap();
    let out = run_ok(
        site.cli()
            .args(["list", "protect", LIST, "--new-passphrase-file"])
            .arg(&file),
        None,
    );
    assert!(String::from_utf8_lossy(&out).contains("protected"));
    assert_protected(&site);
    assert_eq!(
        run_ok(site.cli().args(["list", "export-key", LIST]), None),
        before
    );

    // Without the passphrase nothing opens the key; with it, every command does.
    let out = run(site.cli().args(["list", "unprotect", LIST]), None);
    assert_eq!(out.status.code(), Some(78), "{}", stderr_of(&out));
    assert_protected(&site);
    let mut config = fs::read_to_string(&site.config).unwrap();
    config.push_str(&format!("passphrase_file = \"{}\"\n", file.display()));
    fs::write(&site.config, config).unwrap();
    run_ok(site.cli().arg("check-config"), None);
    run_ok(site.cli().args(["list", "unprotect", LIST]), None);
    assert_unprotected(&site);
    assert_eq!(
        run_ok(site.cli().args(["list", "export-key", LIST]), None),
        before
    );
}

/// `check-config` warns (exit 0) about a key stored in the clear, more pointedly with a
/// passphrase configured, and about a `secret.pgp` or directory others can read.
#[test]
fn check_config_warns_about_keys_at_rest() {
    let site = Site::new();
    site.create_list(LIST);
    let out = run(site.cli().arg("check-config"), None);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let err = stderr_of(&out);
    assert!(
        err.contains("warning:") && err.contains("not protected by a passphrase"),
        "{err}"
    );
    assert!(
        !err.contains("mode"),
        "list create writes 0600 in 0700: {err}"
    );

    configure_passphrase(&site, PASSPHRASE);
    let key = secret_key_path(&site);
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    fs::set_permissions(key.parent().unwrap(), fs::Permissions::from_mode(0o755)).unwrap();
    let out = run(site.cli().arg("check-config"), None);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let err = stderr_of(&out);
    assert!(err.contains("although one is configured"), "{err}");
    assert!(
        err.contains("mode 0644") && err.contains("chmod 600"),
        "{err}"
    );
    assert!(
        err.contains("mode 0755") && err.contains("chmod 700"),
        "{err}"
    );

    // Protected (rotate-subkey protects with the configured passphrase) and 0600: quiet.
    run_ok(site.cli().args(["list", "rotate-subkey", LIST]), None);
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(key.parent().unwrap(), fs::Permissions::from_mode(0o700)).unwrap();
    assert_protected(&site);
    let out = run(site.cli().arg("check-config"), None);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    assert!(
        !stderr_of(&out).contains("warning: enc@"),
        "{}",
        stderr_of(&out)
    );
}

/// `doctor` reports the same about each list key at rest, one line per list.
#[test]
fn doctor_reports_keys_at_rest() {
    let site = Site::new();
    site.create_list(LIST);
    let missing = site.path("no-postfix-here");
    let doctor = || {
        let out = run(
            site.cli()
                .args(["doctor", "--postfix-config"])
                .arg(&missing),
            None,
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let report = doctor();
    let line = format!("warn list key {LIST} at rest: ");
    assert!(
        report
            .lines()
            .any(|l| l.starts_with(&line) && l.contains("not protected by a passphrase")),
        "{report}"
    );
    let file = configure_passphrase(&site, PASSPHRASE);
    run_ok(
        site.cli()
            .args(["list", "protect", LIST, "--new-passphrase-file"])
            .arg(&file),
        None,
    );
    let report = doctor();
    assert!(
        report
            .lines()
            .any(|l| l == format!("ok list key {LIST} at rest")),
        "{report}"
    );
}
