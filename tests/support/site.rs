//! A throwaway listcrypt site under a tempdir (config, list, bindings), driven through the real
//! CLI; the milter scenarios run the daemon in-process on it (`milter::start`).

use super::listcrypt::listcrypt_cmd;
use super::process::run_ok;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The list every test sets up.
pub const LIST: &str = "enc@lists.example.test";
/// Mailman's envelope sender for list mail, the only thing outbound identifies a list by.
pub const LIST_BOUNCES: &str = "enc-bounces@lists.example.test";
pub const LIST_OWNER: &str = "enc-owner@lists.example.test";

/// A listcrypt installation under a tempdir: config file, policy dir, keyrings and state.
pub struct Site {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

impl Site {
    pub fn new() -> Site {
        let dir = tempfile::Builder::new()
            .prefix("listcrypt-test-")
            .tempdir()
            .expect("tempdir");
        let root = dir.path();
        let config = root.join("listcrypt.toml");
        fs::write(&config, Site::config_text(root, &root.join("lists.d"))).expect("write config");
        Site { dir, config }
    }

    /// A configuration for this site; `policy_dir` may differ (per-case policy overrides share
    /// the keyrings and state of the site).
    pub fn config_text(root: &Path, policy_dir: &Path) -> String {
        format!(
            "inbound_socket = \"unix:{root}/run/inbound.sock\"\n\
             outbound_socket = \"unix:{root}/run/outbound.sock\"\n\
             policy_dir = \"{policy}\"\n\
             keyring_dir = \"{root}/keyrings\"\n\
             state_dir = \"{root}/state\"\n\
             log = \"stderr\"\n\
             log_level = \"warn\"\n",
            root = root.display(),
            policy = policy_dir.display(),
        )
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn cli(&self) -> Command {
        let mut cmd = listcrypt_cmd();
        cmd.arg("-c").arg(&self.config);
        cmd
    }

    pub fn create_list(&self, list: &str) {
        run_ok(self.cli().args(["list", "create", list]), None);
    }

    /// The list's public key, written to `<site>/<list>.asc`.
    pub fn export_list_key(&self, list: &str) -> PathBuf {
        let key = run_ok(self.cli().args(["list", "export-key", list]), None);
        let path = self.path(&format!("{list}.asc"));
        fs::write(&path, key).expect("write list key");
        path
    }

    pub fn bind(&self, list: &str, address: &str, cert: &Path, owner: bool) {
        let mut cmd = self.cli();
        cmd.args(["member", "add", list, address]).arg(cert);
        if owner {
            cmd.args(["--role", "owner"]);
        }
        run_ok(&mut cmd, None);
    }

    /// Points reinjection (`reinject_smtp`) at `port` on 127.0.0.1, e.g. an SMTP sink.
    pub fn reinject_to(&self, port: u16) {
        let text = fs::read_to_string(&self.config).expect("read config");
        let text = format!("{text}reinject_smtp = \"127.0.0.1:{port}\"\n");
        fs::write(&self.config, text).expect("write config");
    }

    /// Where the pgp.cert.d store (DESIGN.md: `keyring_dir/certs/`) keeps a certificate, as
    /// `sq --cert-store` would update it.
    pub fn cert_store_path(&self, fingerprint: &str) -> PathBuf {
        let hex = fingerprint.to_ascii_lowercase();
        self.path("keyrings")
            .join("certs")
            .join(&hex[..2])
            .join(&hex[2..])
    }
}

/// Seconds since the epoch, now.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}
