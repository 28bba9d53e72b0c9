//! `list rotate-subkey`: a new encryption subkey; mail encrypted to the retiring one still
//! decrypts during the grace period; once the grace period is over, the next rotation destroys
//! the old secret and such mail can no longer be decrypted (550 5.7.5).

mod support;

use support::gpg::GpgMember;
use support::process::{run, run_ok};
use support::site::{Site, LIST};

fn inbound(site: &Site, from: &str, post: &[u8]) -> (i32, String) {
    let out = run(
        site.cli()
            .args(["process", "inbound", "--list", LIST, "--from", from]),
        Some(post),
    );
    let first = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    (out.status.code().unwrap_or(-1), first)
}

#[test]
fn rotation_keeps_old_mail_readable_through_the_grace_period() {
    let site = Site::new();
    site.create_list(LIST);
    let alice = GpgMember::new(&site, "alice", true);
    let old_post = alice.post("before rotation", "encrypted to the old subkey");
    assert_eq!(inbound(&site, &alice.address, &old_post).0, 0);

    let out = String::from_utf8(run_ok(
        site.cli().args(["list", "rotate-subkey", LIST]),
        None,
    ))
    .unwrap();
    assert!(out.contains("new encryption subkey"), "{out}");
    assert!(out.contains("retiring"), "{out}");
    // Still readable during the grace period.
    let (code, line) = inbound(&site, &alice.address, &old_post);
    assert_eq!(code, 0, "{line}");

    // Alice refreshes the list key: GnuPG now encrypts to the new subkey, which decrypts.
    let key = site.export_list_key(LIST);
    alice.gpg.import(&key);
    let new_post = alice.post("after rotation", "encrypted to the new subkey");
    let (code, line) = inbound(&site, &alice.address, &new_post);
    assert_eq!(code, 0, "{line}");

    // Grace period over (rotating with zero grace expires the current subkey now); the next
    // rotation destroys the expired secrets: the old post is no longer readable. (Binding
    // signatures have one-second resolution: a new one must be later than the last.)
    std::thread::sleep(std::time::Duration::from_millis(1100));
    run_ok(
        site.cli()
            .args(["list", "rotate-subkey", LIST, "--grace-days", "0"]),
        None,
    );
    // Expiry has one-second resolution: let "now" pass the zero-day grace period.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let out = String::from_utf8(run_ok(
        site.cli()
            .args(["list", "rotate-subkey", LIST, "--prune-only"]),
        None,
    ))
    .unwrap();
    assert!(
        !out.contains("new encryption subkey"),
        "pruning adds no subkey: {out}"
    );
    assert!(out.contains("destroyed the secret"), "{out}");
    let (code, line) = inbound(&site, &alice.address, &old_post);
    assert_eq!(code, 1);
    assert!(line.starts_with("reject 550 5.7.5"), "{line}");
    // The exported key carries no secret.
    let exported = run_ok(site.cli().args(["list", "export-key", LIST]), None);
    assert!(!String::from_utf8_lossy(&exported).contains("PRIVATE"));
}

/// The daily timer runs `--prune-only --all`: every list in policy_dir loses the secrets of
/// its expired subkeys, and no list gets a new subkey. `--all` needs `--prune-only` and no
/// address (sysexits.h EX_USAGE, 64, otherwise).
#[test]
fn prune_all_covers_every_list() {
    const OTHER: &str = "other@lists.example.test";
    let site = Site::new();
    site.create_list(LIST);
    site.create_list(OTHER);
    // Binding signatures have one-second resolution: the rotation must be later than creation.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    for list in [LIST, OTHER] {
        run_ok(
            site.cli()
                .args(["list", "rotate-subkey", list, "--grace-days", "0"]),
            None,
        );
    }
    std::thread::sleep(std::time::Duration::from_millis(1100));

    for bad in [
        &["list", "rotate-subkey", "--all"][..],
        &["list", "rotate-subkey", LIST, "--prune-only", "--all"][..],
        &["list", "rotate-subkey"][..],
    ] {
        let out = run(site.cli().args(bad), None);
        assert_eq!(out.status.code(), Some(64), "{bad:?}");
    }

    let out = String::from_utf8(run_ok(
        site.cli()
            .args(["list", "rotate-subkey", "--prune-only", "--all"]),
        None,
    ))
    .unwrap();
    assert!(!out.contains("new encryption subkey"), "{out}");
    // The two subkeys made at creation (transport and storage encryption) of each of two lists.
    assert_eq!(out.matches("destroyed the secret").count(), 4, "{out}");
    // Idempotent: the next day's run finds nothing left to destroy.
    let again = run_ok(
        site.cli()
            .args(["list", "rotate-subkey", "--prune-only", "--all"]),
        None,
    );
    assert!(again.is_empty(), "{}", String::from_utf8_lossy(&again));
}
