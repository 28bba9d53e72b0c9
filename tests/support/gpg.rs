//! GnuPG subscribers: each one a GNUPGHOME of its own with an Ed25519 signing key and a
//! Cv25519 encryption subkey, as `gpg --quick-gen-key` makes them.

use super::{mkdir, output, run, run_with_input, write};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct GpgUser {
    pub name: String,
    pub email: String,
    pub home: PathBuf,
    /// Primary key fingerprint (upper-case hex).
    pub fpr: String,
}

/// What gpg said (`--status-file`) and wrote when decrypting or verifying one message.
pub struct GpgOutcome {
    /// Decrypted data (empty for a detached verification).
    pub plaintext: Vec<u8>,
    pub status: String,
    pub stderr: String,
    pub exit_code: Option<i32>,
}

impl GpgOutcome {
    pub fn status_lines(&self, keyword: &str) -> Vec<&str> {
        let prefix = format!("[GNUPG:] {keyword} ");
        let bare = format!("[GNUPG:] {keyword}");
        self.status
            .lines()
            .filter(|l| l.starts_with(&prefix) || *l == bare)
            .collect()
    }

    pub fn decrypted(&self) -> bool {
        !self.status_lines("DECRYPTION_OKAY").is_empty()
    }

    /// Primary fingerprints of the keys that made good, valid signatures.
    pub fn valid_signers(&self) -> Vec<String> {
        self.status_lines("VALIDSIG")
            .iter()
            .filter_map(|l| l.split_whitespace().last())
            .map(str::to_string)
            .collect()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.plaintext).into_owned()
    }

    /// Exit code, status lines and stderr, for failure messages.
    pub fn report(&self) -> String {
        format!(
            "exit {:?}\n--- status\n{}\n--- stderr\n{}",
            self.exit_code, self.status, self.stderr
        )
    }
}

impl GpgUser {
    /// A new home under `dir` with a fresh key for `Name <email>`.
    pub fn create(dir: &Path, name: &str, email: &str) -> GpgUser {
        let home = mkdir(&dir.join(email), 0o700);
        let mut user = GpgUser {
            name: name.into(),
            email: email.into(),
            home,
            fpr: String::new(),
        };
        let uid = format!("{name} <{email}>");
        run(user
            .gpg()
            .args(["--passphrase", "", "--quick-gen-key", &uid])
            .args(["ed25519", "sign", "never"]));
        let fpr = user.primary_fpr(email);
        run(user
            .gpg()
            .args(["--passphrase", "", "--quick-add-key", &fpr])
            .args(["cv25519", "encr", "never"]));
        user.fpr = fpr;
        user
    }

    /// An empty home, e.g. for `--list-packets` without any secret key.
    pub fn empty(dir: &Path, name: &str) -> GpgUser {
        GpgUser {
            name: name.into(),
            email: String::new(),
            home: mkdir(&dir.join(name), 0o700),
            fpr: String::new(),
        }
    }

    pub fn gpg(&self) -> Command {
        let mut cmd = Command::new("gpg");
        cmd.arg("--homedir")
            .arg(&self.home)
            .args(["--batch", "--no-tty", "--quiet"]);
        cmd
    }

    fn primary_fpr(&self, email: &str) -> String {
        let out = run(self
            .gpg()
            .args(["--with-colons", "--list-keys", &format!("<{email}>")]));
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .find(|l| l.starts_with("fpr:"))
            .and_then(|l| l.split(':').nth(9))
            .map(str::to_string)
            .unwrap_or_else(|| panic!("no fingerprint for {email} in:\n{text}"))
    }

    /// The public key, armored, written to `path`.
    pub fn export(&self, path: &Path) -> PathBuf {
        let out = run(self.gpg().args(["--armor", "--export", &self.fpr]));
        assert!(
            !out.stdout.is_empty(),
            "gpg exported nothing for {}",
            self.email
        );
        write(path, &out.stdout);
        path.to_path_buf()
    }

    /// Imports a certificate and returns its primary fingerprint.
    pub fn import(&self, cert: &Path) -> String {
        let out = run(self.gpg().args(["--status-fd", "1", "--import"]).arg(cert));
        let status = String::from_utf8_lossy(&out.stdout);
        status
            .lines()
            .find_map(|l| l.strip_prefix("[GNUPG:] IMPORT_OK "))
            .and_then(|rest| rest.split_whitespace().nth(1))
            .map(str::to_string)
            .unwrap_or_else(|| panic!("gpg imported nothing from {}:\n{status}", cert.display()))
    }

    /// Signs with our key and encrypts to `recipient` (a fingerprint); armored OpenPGP message.
    pub fn sign_encrypt(&self, recipient: &str, data: &[u8]) -> String {
        let out = run_with_input(
            self.gpg()
                .args(["--trust-model", "always", "--armor"])
                .args(["--local-user", &self.fpr, "--sign", "--encrypt"])
                .args(["--recipient", recipient]),
            data,
        );
        String::from_utf8(out.stdout).expect("armor is ASCII")
    }

    /// Encrypts to `recipient` (a fingerprint) without signing; armored OpenPGP message.
    pub fn encrypt(&self, recipient: &str, data: &[u8]) -> String {
        let out = run_with_input(
            self.gpg()
                .args(["--trust-model", "always", "--armor", "--encrypt"])
                .args(["--recipient", recipient]),
            data,
        );
        String::from_utf8(out.stdout).expect("armor is ASCII")
    }

    /// Imports every certificate in `path` (armored blocks may follow one another).
    pub fn import_all(&self, path: &Path) {
        run(self.gpg().arg("--import").arg(path));
    }

    /// Fingerprints of the primary keys and subkeys in the certificate file `cert`, without
    /// importing it (`gpg --show-keys`).
    pub fn show_fingerprints(&self, cert: &Path) -> Vec<String> {
        let out = run(self
            .gpg()
            .args(["--with-colons", "--with-subkey-fingerprints", "--show-keys"])
            .arg(cert));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("fpr:"))
            .filter_map(|l| l.split(':').nth(9))
            .map(str::to_string)
            .collect()
    }

    /// Decrypts and verifies. gpg may exit 2 after trying its key on another member's
    /// wildcard PKESK even though it decrypted fine, so judge by the status lines.
    pub fn decrypt(&self, armored: &[u8]) -> GpgOutcome {
        let dir = tempfile::tempdir().expect("tempdir");
        let input = dir.path().join("in.asc");
        write(&input, armored);
        self.status_run(dir.path(), &[OsStr::new("--decrypt"), input.as_os_str()])
    }

    /// Verifies a detached signature over `data` (exact bytes).
    pub fn verify_detached(&self, data: &[u8], signature: &[u8]) -> GpgOutcome {
        let dir = tempfile::tempdir().expect("tempdir");
        let (data_file, sig_file) = (dir.path().join("data"), dir.path().join("data.sig"));
        write(&data_file, data);
        write(&sig_file, signature);
        self.status_run(
            dir.path(),
            &[
                OsStr::new("--verify"),
                sig_file.as_os_str(),
                data_file.as_os_str(),
            ],
        )
    }

    fn status_run(&self, dir: &Path, args: &[&OsStr]) -> GpgOutcome {
        let status_file = dir.join("status");
        let out = output(
            self.gpg()
                .args(["--trust-model", "always", "--status-file"])
                .arg(&status_file)
                .args(args),
        );
        GpgOutcome {
            plaintext: out.stdout,
            // Not UTF-8: notation data (e.g. sequoia's salt) is only partly escaped.
            status: super::read_lossy(&status_file),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            exit_code: out.status.code(),
        }
    }

    /// `gpg --list-packets` of an OpenPGP message (use an empty home: nothing is decrypted).
    pub fn list_packets(&self, armored: &[u8]) -> String {
        let dir = tempfile::tempdir().expect("tempdir");
        let input = dir.path().join("in.asc");
        write(&input, armored);
        let out = output(self.gpg().arg("--list-packets").arg(&input));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Stops the gpg-agent that gpg started for this home.
    pub fn kill_agent(&self) {
        let _ = output(
            Command::new("gpgconf")
                .arg("--homedir")
                .arg(&self.home)
                .args(["--kill", "gpg-agent"]),
        );
    }
}

impl Drop for GpgUser {
    fn drop(&mut self) {
        self.kill_agent();
    }
}
