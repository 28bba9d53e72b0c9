//! `notify-expiry`: members whose key stops being usable soon get an encrypted notice, owners
//! hear about members without a usable key, each at most once per period; sent over SMTP to
//! the reinjection listener (here a capture sink).

mod support;

use std::fs;
use support::gpg::{Gpg, GpgOutcome};
use support::process::run_ok;
use support::sink;
use support::site::{Site, LIST};

fn member(site: &Site, name: &str, expire: &str, owner: bool) -> Gpg {
    let gpg = Gpg::new(site.path(&format!("gnupg-{name}")));
    let address = format!("{name}@example.test");
    gpg.ok(
        &[
            "--passphrase",
            "",
            "--quick-gen-key",
            &format!("{name} <{address}>"),
            "future-default",
            "default",
            expire,
        ],
        None,
    );
    let cert = site.path(&format!("{name}.asc"));
    gpg.export(&address, &cert);
    let mut cmd = site.cli();
    cmd.args(["member", "add", LIST, &address]).arg(&cert);
    if owner {
        cmd.args(["--role", "owner"]);
    }
    run_ok(&mut cmd, None);
    gpg
}

#[test]
fn expiring_keys_are_announced_and_unusable_ones_reported() {
    let site = Site::new();
    site.create_list(LIST);
    let sink = sink::Sink::start();
    site.reinject_to(sink.port);

    let alice = member(&site, "alice", "5d", false);
    let _bob = member(&site, "bob", "60d", false);
    let _carol = member(&site, "carol", "seconds=2", false);
    let owner = member(&site, "owner", "never", true);
    std::thread::sleep(std::time::Duration::from_secs(3)); // carol's key has expired now

    // The reinjection listener is down: a temporary failure (75), and nothing is marked as
    // sent, so the next run sends the notices instead of waiting a whole period.
    let good = fs::read_to_string(&site.config).unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    fs::write(
        &site.config,
        good.replace(
            &format!("127.0.0.1:{}", sink.port),
            &format!("127.0.0.1:{closed}"),
        ),
    )
    .unwrap();
    let out = support::process::run(site.cli().args(["notify-expiry", "--days", "14"]), None);
    assert_eq!(out.status.code(), Some(75), "{out:?}");
    fs::write(&site.config, good).unwrap();

    let out = String::from_utf8(run_ok(
        site.cli().args(["notify-expiry", "--days", "14"]),
        None,
    ))
    .unwrap();
    assert!(out.contains("alice@example.test key expires"), "{out}");
    assert!(
        !out.contains("bob@"),
        "60 days is beyond the horizon: {out}"
    );
    assert!(
        out.contains("owner owner@example.test told about 1 unusable key(s)"),
        "{out}"
    );

    let to_alice = sink.deliveries_to("alice@example.test");
    assert_eq!(to_alice.len(), 1, "{}", sink.summary());
    assert_eq!(to_alice[0].mail_from, "");
    assert!(
        !to_alice[0]
            .text()
            .contains("can be used for encryption until"),
        "encrypted"
    );
    let GpgOutcome {
        status,
        plaintext: plain,
        ..
    } = alice.decrypt(&to_alice[0].data);
    assert!(status.contains("DECRYPTION_OKAY"), "{status}");
    assert!(String::from_utf8_lossy(&plain).contains("can be used for encryption until"));

    let to_owner = sink.deliveries_to("owner@example.test");
    assert_eq!(to_owner.len(), 1);
    let GpgOutcome {
        status,
        plaintext: plain,
        ..
    } = owner.decrypt(&to_owner[0].data);
    assert!(status.contains("DECRYPTION_OKAY"), "{status}");
    assert!(String::from_utf8_lossy(&plain).contains("carol@example.test"));
    assert!(
        sink.deliveries_to("carol@example.test").is_empty(),
        "nothing for a dead key"
    );

    // Run daily: not again within the period.
    let out = String::from_utf8(run_ok(site.cli().args(["notify-expiry"]), None)).unwrap();
    assert!(out.is_empty(), "{out}");
    assert_eq!(sink.deliveries().len(), 2);
}
