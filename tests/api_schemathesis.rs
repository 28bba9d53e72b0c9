//! schemathesis (PyPI, pinned) against the admin API's own OpenAPI document, once with a
//! token of each scope and once with a site-admin token: no 5xx, and every answer matches
//! the document (status, content type, headers, body schema). The tool is installed into a
//! venv under the target directory on first use (Debian: python3-venv, which scripts/test
//! installs); CI must run it, so there it never skips.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use support::api::{enable, serve, token};
use support::gpg::GpgMember;
use support::sink::Sink;
use support::site::{Site, LIST};

const VERSION: &str = "4.32.5";

/// What every run checks: server errors and conformance to the document.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
response_headers_conformance,response_schema_conformance";

fn venv() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("schemathesis-venv")
}

fn installed(bin: &Path) -> bool {
    Command::new(bin)
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(VERSION))
}

/// The schemathesis executable, installed if needed; `None` (outside CI only) if it cannot be.
fn schemathesis() -> Option<PathBuf> {
    let venv = venv();
    let bin = venv.join("bin/schemathesis");
    if installed(&bin) {
        return Some(bin);
    }
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .is_ok_and(|s| s.success())
        && Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", &format!("schemathesis=={VERSION}")])
            .status()
            .is_ok_and(|s| s.success());
    if made && installed(&bin) {
        return Some(bin);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "cannot install schemathesis {VERSION} into {} (python3-venv and PyPI needed)",
        venv.display()
    );
    eprintln!("SKIPPED: schemathesis {VERSION} cannot be installed here (not CI)");
    None
}

#[test]
fn schemathesis_finds_no_server_error_and_no_schema_violation_for_any_scope() {
    let Some(bin) = schemathesis() else { return };
    let site = Site::new();
    site.create_list(LIST);
    let sink = Sink::start();
    site.reinject_to(sink.port);
    let _alice = GpgMember::new(&site, "alice", true);
    enable(&site);
    let mut tokens: Vec<(String, String)> = ["read", "members", "keys", "policy"]
        .iter()
        .map(|s| (s.to_string(), token(&site, &["--list", LIST, "--scope", s])))
        .collect();
    tokens.push(("site-admin".into(), token(&site, &["--site-admin"])));
    let (_serving, addr) = serve(&site);
    // Operations on the list that exists, so that requests get past the 404.
    let config = site.path("schemathesis.toml");
    std::fs::write(
        &config,
        format!("[parameters]\n\"path.list\" = \"{LIST}\"\n"),
    )
    .unwrap();
    for (scope, token) in &tokens {
        let out = Command::new(&bin)
            // Its cache goes to the working directory: the site's, not the repository.
            .current_dir(site.dir.path())
            .arg("--config-file")
            .arg(&config)
            .arg("run")
            .arg(format!("http://{addr}/openapi.json"))
            .args(["-H", &format!("Authorization: Bearer {token}")])
            .args([
                "--checks",
                CHECKS,
                "--max-examples",
                "25",
                "--seed",
                "20261206",
            ])
            .args(["--phases", "examples,coverage,fuzzing", "--no-color"])
            .output()
            .expect("run schemathesis");
        let text = String::from_utf8_lossy(&out.stdout);
        let summary: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("generated") || l.contains(" passed") || l.contains("failed"))
            .collect();
        eprintln!("schemathesis, {scope} token:\n{}", summary.join("\n"));
        assert!(
            out.status.success(),
            "schemathesis with a {scope} token failed:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
