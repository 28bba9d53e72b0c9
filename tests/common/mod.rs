//! Helpers shared by the inbound corpus runner and the milter scenarios: a throwaway listcrypt
//! site (config, list, bindings) driven through the real CLI, GnuPG homes in tempdirs, and the
//! in-process daemon on 127.0.0.1.
#![allow(dead_code)] // each test file uses a different subset

pub mod milter;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The list every test sets up.
pub const LIST: &str = "enc@lists.example.test";
/// Mailman's envelope sender for list mail, the only thing outbound identifies a list by.
pub const LIST_BOUNCES: &str = "enc-bounces@lists.example.test";
pub const LIST_OWNER: &str = "enc-owner@lists.example.test";

/// The listcrypt binary cargo built for this test run.
pub fn listcrypt_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_listcrypt"))
}

/// The listcrypt binary with no `LISTCRYPT_*` overrides inherited from the caller's environment.
pub fn listcrypt_cmd() -> Command {
    let mut cmd = Command::new(listcrypt_bin());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("LISTCRYPT_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// LF → CRLF (idempotent: existing CRLF stays as is).
pub fn to_crlf(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 32);
    let mut prev = 0u8;
    for &b in data {
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        prev = b;
    }
    out
}

/// CRLF → LF.
pub fn to_lf(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut i = 0;
    while i < data.len() {
        if data[i] == b'\r' && data.get(i + 1) == Some(&b'\n') {
            i += 1;
            continue;
        }
        out.push(data[i]);
        i += 1;
    }
    out
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Runs a command to completion, feeding `stdin`.
pub fn run(cmd: &mut Command, stdin: Option<&[u8]>) -> Output {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let writer = stdin.map(|data| {
        let mut pipe = child.stdin.take().expect("piped stdin");
        let data = data.to_vec();
        // A separate thread, so a child that answers before reading all input cannot deadlock us.
        std::thread::spawn(move || {
            let _ = pipe.write_all(&data);
        })
    });
    let out = child.wait_with_output().expect("wait for child");
    if let Some(w) = writer {
        let _ = w.join();
    }
    out
}

/// Panics with the command's stderr unless it succeeded; returns stdout.
pub fn run_ok(cmd: &mut Command, stdin: Option<&[u8]>) -> Vec<u8> {
    let shown = format!("{cmd:?}");
    let out = run(cmd, stdin);
    assert!(
        out.status.success(),
        "{shown} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

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

/// A GnuPG home in its own directory; its agent is stopped on drop.
pub struct Gpg {
    pub home: PathBuf,
}

impl Gpg {
    pub fn new(home: PathBuf) -> Gpg {
        fs::create_dir_all(&home).expect("gpg home");
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&home, fs::Permissions::from_mode(0o700)).expect("chmod gpg home");
        Gpg { home }
    }

    pub fn cmd(&self) -> Command {
        let mut cmd = Command::new("gpg");
        cmd.arg("--homedir")
            .arg(&self.home)
            .args([
                "--batch",
                "--yes",
                "--no-tty",
                "--trust-model",
                "always",
                "--pinentry-mode",
                "loopback",
            ])
            .env("LC_ALL", "C");
        cmd
    }

    pub fn ok(&self, args: &[&str], stdin: Option<&[u8]>) -> Vec<u8> {
        run_ok(self.cmd().args(args), stdin)
    }

    /// Generates an unprotected Ed25519/Cv25519 key (GnuPG's `future-default`), optionally
    /// created at a faked time (seconds since the epoch). Returns the primary fingerprint.
    pub fn gen_key(&self, uid: &str, created: Option<u64>) -> String {
        let mut cmd = self.cmd();
        if let Some(t) = created {
            cmd.arg("--faked-system-time").arg(t.to_string());
        }
        cmd.args([
            "--passphrase",
            "",
            "--quick-gen-key",
            uid,
            "future-default",
            "default",
            "never",
        ]);
        run_ok(&mut cmd, None);
        self.fingerprint(uid)
    }

    pub fn fingerprint(&self, who: &str) -> String {
        let out = self.ok(&["--with-colons", "--list-keys", who], None);
        String::from_utf8_lossy(&out)
            .lines()
            .find_map(|l| l.strip_prefix("fpr:"))
            .and_then(|l| l.split(':').find(|f| f.len() == 40))
            .unwrap_or_else(|| panic!("no fingerprint for {who}"))
            .to_string()
    }

    pub fn import(&self, path: &Path) {
        run_ok(self.cmd().arg("--import").arg(path), None);
    }

    pub fn export(&self, who: &str, path: &Path) {
        let out = self.ok(&["--armor", "--export", who], None);
        assert!(!out.is_empty(), "gpg exported nothing for {who}");
        fs::write(path, out).expect("write cert");
    }

    pub fn export_secret(&self, who: &str, path: &Path) {
        let out = self.ok(
            &["--passphrase", "", "--armor", "--export-secret-keys", who],
            None,
        );
        assert!(!out.is_empty(), "gpg exported no secret key for {who}");
        fs::write(path, out).expect("write key");
    }

    /// Decrypts with `--status-fd 1`: (status lines, plaintext).
    pub fn decrypt(&self, armored: &[u8], dir: &Path) -> (String, Vec<u8>) {
        let out_path = dir.join("gpg-decrypted.out");
        let _ = fs::remove_file(&out_path);
        let out = run(
            self.cmd()
                .args(["--status-fd", "1", "--output"])
                .arg(&out_path)
                .arg("--decrypt"),
            Some(armored),
        );
        let status = String::from_utf8_lossy(&out.stdout).into_owned();
        let plain = fs::read(&out_path).unwrap_or_default();
        (status, plain)
    }
}

impl Drop for Gpg {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .arg("--homedir")
            .arg(&self.home)
            .args(["--kill", "all"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Seconds since the epoch, now.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}
