//! A throwaway listcrypt site under a tempdir (config, list, bindings), driven through the real
//! CLI; the milter scenarios run the daemon in-process on it (`milter::start`).

use super::listcrypt::listcrypt_cmd;
use super::process::run_ok;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

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

    /// Sets the list's `batch_size` in its policy file (written by `list create` as 50).
    pub fn set_batch_size(&self, list: &str, size: u32) {
        let policy = self.path("lists.d").join(format!("{list}.toml"));
        let text = fs::read_to_string(&policy)
            .expect("policy file")
            .replace("batch_size = 50", &format!("batch_size = {size}"));
        fs::write(&policy, text).expect("write policy");
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

/// `listcrypt serve` on a site with its stderr read line by line; killed if the test fails
/// before stopping it.
pub struct Serving {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Every stderr line read so far.
    pub log: Vec<String>,
}

impl Site {
    pub fn serve(&self) -> Serving {
        let mut child = self
            .cli()
            .arg("serve")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("serve");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Serving {
            child,
            lines,
            log: Vec::new(),
        }
    }
}

impl Serving {
    /// The next stderr line that contains `needle`; panics with the log after 20 s.
    pub fn wait_for_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
                self.log.push(line.clone());
                if line.contains(needle) {
                    return line;
                }
            }
        }
        panic!(
            "no log line containing {needle:?}; log so far:\n{}",
            self.log.join("\n")
        );
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill SIGNAL PID`, e.g. `-HUP`.
    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// SIGTERM; the exit status, within 20 s.
    pub fn stop(mut self) -> ExitStatus {
        self.signal("-TERM");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "serve did not stop on SIGTERM");
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Seconds since the epoch, now.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}
