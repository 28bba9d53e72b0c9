//! What the end-to-end tests need from the machine: root, and the programs they start.

use super::process::run;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The command that installs what these tests need and runs them (see README).
pub const TEST_COMMAND: &str = "bash scripts/test";

/// The repository root (for the admin-facing snippets under `postfix/`).
pub fn repo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Panics with a clear message unless the test runs as root with the programs it needs.
pub fn require_environment(programs: &[&str]) {
    let uid = String::from_utf8(run(Command::new("id").arg("-u"), None).stdout).unwrap_or_default();
    if uid.trim() != "0" {
        panic!(
            "this end-to-end test starts its own Postfix and Mailman and must run as root; \
             run `{TEST_COMMAND}` from the repository root (it installs the packages too)"
        );
    }
    let missing: Vec<&str> = programs
        .iter()
        .copied()
        .filter(|p| which(p).is_none())
        .collect();
    if !missing.is_empty() {
        panic!(
            "this end-to-end test needs {} (not found in PATH, /usr/sbin or /usr/bin); \
             run `{TEST_COMMAND}` from the repository root, it installs them",
            missing.join(", ")
        );
    }
}

pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"])
        .map(|dir| Path::new(dir).join(program))
        .find(|p| p.is_file());
    found
}
