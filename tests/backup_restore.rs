//! `listcrypt backup DIR` and `listcrypt restore DIR`: a site set up with the CLI and the
//! daemon (a list, members, an owner, a replay record) is backed up, wiped and restored, and
//! works as before: the same bindings, posts decrypt with the restored list key, and the post
//! already distributed is still a replay. A damaged or tampered backup is refused before
//! anything is written.

mod support;

use indymilter_test::{Status, TestConnection};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use support::gpg::GpgMember;
use support::milter::{self, Mail};
use support::process::{run, run_ok};
use support::site::{Site, LIST, LIST_BOUNCES};

fn mode(path: &Path) -> u32 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn text(site: &Site, args: &[&str]) -> String {
    String::from_utf8(run_ok(site.cli().args(args), None)).unwrap()
}

/// `process inbound` of `post`: the exit code and stdout.
fn inbound(site: &Site, from: &str, post: &[u8]) -> (i32, String) {
    let out = run(
        site.cli()
            .args(["process", "inbound", "--list", LIST, "--from", from]),
        Some(post),
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.code().unwrap_or(-1), stdout)
}

async fn post_once(conn: &mut TestConnection, sender: &str, mail: &Mail) -> (Mail, Status) {
    let from = format!("<{sender}>");
    assert_eq!(conn.mail([from.as_str()]).await.unwrap(), Status::Continue);
    let to = format!("<{LIST}>");
    assert_eq!(conn.rcpt([to.as_str()]).await.unwrap(), Status::Continue);
    let (actions, status) = milter::send(conn, mail).await;
    (mail.apply(&actions), status)
}

/// Posts `post` through the in-process daemon and lets Mailman's copy leave through the
/// outbound listener, which makes its replay record final (the README's replay rule).
async fn distribute(site: &Site, sender: &str, post: &Mail) {
    let daemon = milter::start(&site.config).await;
    let mut conn = milter::connect(daemon.inbound).await;
    let (for_mailman, status) = post_once(&mut conn, sender, post).await;
    assert!(
        matches!(status, Status::Continue | Status::Accept),
        "first delivery: {}",
        milter::reply_text(&status)
    );
    let (_, out) = milter::transact(daemon.outbound, LIST_BOUNCES, sender, &for_mailman).await;
    milter::assert_goes_on(&out, "Mailman's copy");
    conn.close().await.unwrap();
    daemon.stop().await;
}

fn wipe(site: &Site) {
    for dir in ["keyrings", "lists.d", "state"] {
        fs::remove_dir_all(site.path(dir)).unwrap();
    }
    fs::create_dir(site.path("lists.d")).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restored_site_works_as_the_backed_up_one() {
    let site = Site::new();
    site.create_list(LIST);
    let alice = GpgMember::new(&site, "alice", true);
    let bob = GpgMember::new(&site, "bob", false);
    site.bind(LIST, &bob.address, &bob.cert, true);
    let carol = GpgMember::new(&site, "carol", false);
    run_ok(
        site.cli()
            .args(["member", "add", LIST, &carol.address])
            .arg(&carol.cert)
            .arg("--show-key-id"),
        None,
    );
    let post = alice.post("[...]", "Distributed before the backup.");
    distribute(&site, &alice.address, &Mail::parse(&post)).await;

    let members = text(&site, &["member", "list", LIST]);
    assert_eq!(members.lines().count(), 3, "{members}");
    let list_key = text(&site, &["list", "export-key", LIST]);
    let policy_path = site.path("lists.d").join(format!("{LIST}.toml"));
    let policy = fs::read(&policy_path).unwrap();
    let secret_path = site.path("keyrings/lists").join(LIST).join("secret.pgp");
    let secret = fs::read(&secret_path).unwrap();

    let backup = site.path("backup");
    let said = text(&site, &["backup", backup.to_str().unwrap()]);
    assert!(said.contains("1 list(s)"), "{said}");
    assert_eq!(mode(&backup), 0o700, "the backup directory");
    assert!(backup.join("manifest.toml").is_file());

    wipe(&site);
    let gone = run(site.cli().args(["member", "list", LIST]), None);
    assert_ne!(gone.status.code(), Some(0), "the wipe removed the list");

    let said = text(&site, &["restore", backup.to_str().unwrap()]);
    assert!(said.contains("restored"), "{said}");

    // Byte for byte, with the modes of secrets and private directories.
    assert_eq!(fs::read(&secret_path).unwrap(), secret, "secret.pgp");
    assert_eq!(mode(&secret_path), 0o600, "secret.pgp");
    assert_eq!(fs::read(&policy_path).unwrap(), policy, "policy file");
    assert_eq!(mode(&site.path("state")), 0o700, "state_dir");
    assert_eq!(mode(&site.path("state/state.sqlite")), 0o600, "database");
    assert_eq!(text(&site, &["member", "list", LIST]), members);
    assert_eq!(text(&site, &["list", "export-key", LIST]), list_key);
    let check = text(&site, &["check-config"]);
    assert!(check.contains("1 list(s)"), "{check}");

    // A new post decrypts with the restored list key and verifies against the restored binding.
    let fresh = alice.post("[...]", "Posted after the restore.");
    let (code, stdout) = inbound(&site, &alice.address, &fresh);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("Posted after the restore."), "{stdout}");

    // The post distributed before the backup is still a replay (duplicate_action = discard),
    // in the dry run and in the daemon.
    let (code, stdout) = inbound(&site, &alice.address, &post);
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.starts_with("discard "), "{stdout}");
    let daemon = milter::start(&site.config).await;
    let mut conn = milter::connect(daemon.inbound).await;
    let (_, again) = post_once(&mut conn, &alice.address, &Mail::parse(&post)).await;
    assert_eq!(again, Status::Discard, "{}", milter::reply_text(&again));
    conn.close().await.unwrap();
    daemon.stop().await;
}

/// Restore exits 65 (bad data) and writes nothing for each kind of damage.
#[test]
fn a_damaged_or_tampered_backup_is_refused() {
    let site = Site::new();
    site.create_list(LIST);
    GpgMember::new(&site, "alice", true);
    let backup = site.path("backup");
    text(&site, &["backup", backup.to_str().unwrap()]);
    wipe(&site);

    let copy = |name: &str| {
        let to = site.path(name);
        run_ok(
            std::process::Command::new("cp")
                .arg("-a")
                .arg(&backup)
                .arg(&to),
            None,
        );
        to
    };
    let secret = Path::new("keyrings/lists").join(LIST).join("secret.pgp");
    let manifest = |dir: &Path| fs::read_to_string(dir.join("manifest.toml")).unwrap();

    let changed = copy("changed");
    let mut bytes = fs::read(changed.join(&secret)).unwrap();
    let at = bytes.len() / 2;
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    fs::write(changed.join(&secret), bytes).unwrap();

    let added = copy("added");
    fs::write(added.join("lists.d/other@lists.example.test.toml"), "").unwrap();

    let missing = copy("missing");
    fs::remove_file(missing.join(&secret)).unwrap();

    let newer = copy("newer");
    let text_now = manifest(&newer);
    let line = text_now
        .lines()
        .find(|l| l.starts_with("schema_version = "))
        .unwrap()
        .to_string();
    fs::write(
        newer.join("manifest.toml"),
        text_now.replace(&line, "schema_version = 9999"),
    )
    .unwrap();

    let escaping = copy("escaping");
    let m = manifest(&escaping).replacen(
        &format!("path = \"lists.d/{LIST}.toml\""),
        "path = \"lists.d/../../escaped.toml\"",
        1,
    );
    fs::write(escaping.join("manifest.toml"), m).unwrap();

    let no_manifest = copy("no-manifest");
    fs::remove_file(no_manifest.join("manifest.toml")).unwrap();

    for (dir, why) in [
        (&changed, "SHA-256"),
        (&added, "not in its manifest"),
        (&missing, "missing"),
        (&newer, "newer than this listcrypt"),
        (&escaping, "not allowed"),
        (&no_manifest, "manifest.toml"),
    ] {
        let out = run(site.cli().arg("restore").arg(dir), None);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(65), "{}: {err}", dir.display());
        assert!(err.contains(why), "{}: {err}", dir.display());
        assert!(
            !site.path("keyrings/lists").exists(),
            "{}: nothing written",
            dir.display()
        );
        assert!(!site.path("escaped.toml").exists());
    }

    // The intact backup restores; a second restore onto the now populated site needs --force.
    text(&site, &["restore", backup.to_str().unwrap()]);
    let again = run(site.cli().arg("restore").arg(&backup), None);
    assert_eq!(again.status.code(), Some(64), "{again:?}");
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    text(&site, &["restore", "--force", backup.to_str().unwrap()]);
    let members = text(&site, &["member", "list", LIST]);
    assert_eq!(members.lines().count(), 1, "{members}");
}

/// With --force, the target becomes the backup: a list made after it is gone.
#[test]
fn a_forced_restore_replaces_what_came_after_the_backup() {
    let site = Site::new();
    site.create_list(LIST);
    let backup = site.path("backup");
    text(&site, &["backup", backup.to_str().unwrap()]);
    let later = "later@lists.example.test";
    site.create_list(later);
    text(&site, &["restore", "--force", backup.to_str().unwrap()]);
    assert!(!site.path("lists.d").join(format!("{later}.toml")).exists());
    assert!(!site.path("keyrings/lists").join(later).exists());
    let check = text(&site, &["check-config"]);
    assert!(check.contains("1 list(s)"), "{check}");
}

/// With `database_url` the state is in PostgreSQL, not in the local SQLite file that a backup
/// would copy: both verbs refuse (exit 64, EX_USAGE) instead of saving or restoring an empty
/// local database as if it were the site.
#[test]
fn a_site_on_postgresql_is_not_backed_up_as_if_it_were_local() {
    let site = Site::new();
    site.create_list(LIST);
    let config = fs::read_to_string(&site.config).unwrap();
    fs::write(
        &site.config,
        format!("{config}database_url = \"postgresql://listcrypt@127.0.0.1:1/listcrypt\"\n"),
    )
    .unwrap();
    let backup = site.path("backup");
    for args in [
        vec!["backup", backup.to_str().unwrap()],
        vec!["restore", backup.to_str().unwrap()],
    ] {
        let out = run(site.cli().args(&args), None);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {stderr}");
        assert!(stderr.contains("pg_dump"), "{args:?}: {stderr}");
    }
    assert!(!backup.join("manifest.toml").exists());
}
