//! The Debian packaging (`debian/`, `[package.metadata.deb]`), tested the way it can be without
//! systemd as PID 1: `systemd-analyze verify` and `security --offline=yes` on the units, and the
//! package's assets present. The .deb itself is built and installed by the chroot test.

use std::path::{Path, PathBuf};
use std::process::Command;

const SERVICES: [&str; 3] = [
    "listcrypt",
    "listcrypt-notify-expiry",
    "listcrypt-prune-subkeys",
];
const TIMERS: [&str; 2] = ["listcrypt-notify-expiry", "listcrypt-prune-subkeys"];
/// The goal for `systemd-analyze security` (0 = fully sandboxed, 10 = not at all).
const MAX_EXPOSURE: f64 = 2.0;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `systemd-analyze` when installed (package `systemd`); otherwise the reason to skip.
fn systemd_analyze() -> Option<Command> {
    match Command::new("systemd-analyze").arg("--version").output() {
        Ok(out) if out.status.success() => Some(Command::new("systemd-analyze")),
        _ => {
            println!("skipped: systemd-analyze not found (Debian package systemd)");
            None
        }
    }
}

/// The units as installed: ExecStart points at the binary under test, man pages in their
/// installed sections under MANPATH (verify runs `man` for each Documentation= entry).
fn installed_units(dir: &Path) -> Vec<PathBuf> {
    let bin = env!("CARGO_BIN_EXE_listcrypt");
    let mut units = Vec::new();
    let files = SERVICES
        .iter()
        .map(|u| format!("{u}.service"))
        .chain(TIMERS.iter().map(|u| format!("{u}.timer")));
    for name in files {
        let text = std::fs::read_to_string(root().join("debian").join(&name)).unwrap();
        let path = dir.join(&name);
        std::fs::write(&path, text.replace("/usr/bin/listcrypt", bin)).unwrap();
        units.push(path);
    }
    for (src, section, name) in [
        ("contrib/man/listcrypt.8", "man8", "listcrypt.8"),
        ("contrib/man/listcrypt.toml.5", "man5", "listcrypt.toml.5"),
    ] {
        std::fs::create_dir_all(dir.join("man").join(section)).unwrap();
        std::fs::copy(root().join(src), dir.join("man").join(section).join(name)).unwrap();
    }
    units
}

#[test]
fn units_verify() {
    let Some(mut cmd) = systemd_analyze() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let units = installed_units(dir.path());
    let out = cmd
        .arg("verify")
        .args(&units)
        .env("MANPATH", dir.path().join("man"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // Other units on this machine may draw warnings; ours must not.
    let ours: Vec<_> = stderr.lines().filter(|l| l.contains("listcrypt")).collect();
    assert!(ours.is_empty(), "{stderr}");
}

/// The number after "Overall exposure level for UNIT:".
fn exposure(report: &str) -> Option<f64> {
    let line = report
        .lines()
        .find(|l| l.contains("Overall exposure level for"))?;
    line.rsplit_once(": ")?
        .1
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[test]
fn units_are_sandboxed() {
    if systemd_analyze().is_none() {
        return;
    }
    for unit in SERVICES {
        let path = root().join("debian").join(format!("{unit}.service"));
        let out = systemd_analyze()
            .unwrap()
            .args(["security", "--offline=yes"])
            .arg(&path)
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&out.stdout);
        let score = exposure(&report).unwrap_or_else(|| panic!("no exposure level: {report}"));
        println!("{unit}.service: exposure {score}");
        assert!(score <= MAX_EXPOSURE, "{unit}: {score}\n{report}");
    }
}

fn deb_metadata() -> toml::Value {
    let text = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let cargo: toml::Value = toml::from_str(&text).unwrap();
    cargo["package"]["metadata"]["deb"].clone()
}

/// Each asset's source exists (the binary is built by `cargo deb`), the conffile is
/// installed, and the package has what the issue lists.
#[test]
fn package_assets_exist() {
    let deb = deb_metadata();
    let mut installed = Vec::new();
    for asset in deb["assets"].as_array().unwrap() {
        let [src, dest, _mode] = [0, 1, 2].map(|i| asset[i].as_str().unwrap());
        let name = Path::new(src).file_name().unwrap().to_str().unwrap();
        installed.push(match dest.strip_suffix('/') {
            Some(dir) => format!("/{dir}/{name}"),
            None => format!("/{dest}"),
        });
        if !src.starts_with("target/release/") {
            assert!(root().join(src).is_file(), "asset {src} is missing");
        }
    }
    for conffile in deb["conf-files"].as_array().unwrap() {
        let conffile = conffile.as_str().unwrap();
        assert!(installed.iter().any(|p| p == conffile), "{conffile}");
    }
    for wanted in [
        "/usr/bin/listcrypt",
        "/usr/share/man/man8/listcrypt.8",
        "/usr/share/man/man5/listcrypt.toml.5",
        "/etc/listcrypt/listcrypt.toml",
        "/usr/share/listcrypt/listcrypt_mailman.py",
        "/usr/share/doc/listcrypt/examples/main.cf",
        "/usr/share/doc/listcrypt/examples/master.cf",
        "/usr/lib/tmpfiles.d/listcrypt.conf",
    ] {
        assert!(
            installed.iter().any(|p| p == wanted),
            "{wanted} not packaged"
        );
    }
    // cargo-deb installs debian/<package>.sysusers as usr/lib/sysusers.d/<package>.conf itself.
    assert!(root().join("debian/listcrypt.sysusers").is_file());
    // cargo-deb finds each unit as debian/<unit-name>.service.
    for unit in deb["systemd-units"].as_array().unwrap() {
        let name = unit["unit-name"].as_str().unwrap();
        let dir = unit["unit-scripts"].as_str().unwrap();
        assert!(
            root().join(dir).join(format!("{name}.service")).is_file(),
            "{name}"
        );
    }
}

/// The packaged config has every key of the documented sample, so it stays complete when a
/// key is added.
#[test]
fn packaged_config_has_every_sample_key() {
    let keys = |path: &str| -> Vec<String> {
        let text = std::fs::read_to_string(root().join(path)).unwrap();
        let v: toml::Table = toml::from_str(&text).unwrap();
        let mut keys: Vec<_> = v.keys().cloned().collect();
        keys.sort();
        keys
    };
    assert_eq!(
        keys("debian/listcrypt.toml"),
        keys("contrib/listcrypt.toml")
    );
}
