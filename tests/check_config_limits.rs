//! `check-config` warns when listcrypt's own size limits do not fit in each other (exit 0,
//! `warning:` lines on stderr), and says nothing for the defaults.

mod support;

use std::fs;
use support::process::run;
use support::site::{Site, LIST};

#[test]
fn limits_that_cannot_fit_are_warned_about() {
    let site = Site::new();
    assert_eq!(
        run(site.cli().args(["list", "create", LIST]), None)
            .status
            .code(),
        Some(0)
    );
    let out = run(site.cli().arg("check-config"), None);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    // (A list key stored without a passphrase is warned about too: not a limit.)
    assert!(
        !err.contains("warning: limits."),
        "defaults must fit: {err}"
    );

    // 50 MiB of plaintext armours to over 68 MiB (RFC 4880 §6.3), far above a 40 MiB copy; a
    // 1 MiB budget for all messages in flight cannot hold one 25 MiB message.
    let text = fs::read_to_string(&site.config).unwrap();
    fs::write(
        &site.config,
        format!("{text}\n[limits]\nmax_plaintext_bytes = 52428800\nmax_inflight_bytes = 1048576\n"),
    )
    .unwrap();
    let out = run(site.cli().arg("check-config"), None);
    assert_eq!(out.status.code(), Some(0), "warnings only: {out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    let warnings: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("warning: limits."))
        .collect();
    assert_eq!(warnings.len(), 2, "{err}");
    assert!(warnings[0].contains("limits.max_plaintext_bytes"), "{err}");
    assert!(warnings[1].contains("limits.max_inflight_bytes"), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("configuration ok"));
}
