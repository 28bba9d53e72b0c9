//! GnuPG in homes of their own: `Gpg` is one GNUPGHOME (its agent stopped on drop);
//! `GpgMember` a subscriber of a listcrypt site holding the list's certificate; `GpgUser` a
//! subscriber of the end-to-end tests with an Ed25519 signing key and a Cv25519 encryption
//! subkey, as `gpg --quick-gen-key` makes them.

use super::files::{mkdir, read_lossy, write};
use super::process::{run, run_ok};
use super::site::{now, Site, LIST};
use super::text::{to_crlf, to_lf};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A GnuPG home in its own directory; its agent is stopped on drop.
pub struct Gpg {
    pub home: PathBuf,
}

impl Gpg {
    pub fn new(home: PathBuf) -> Gpg {
        mkdir(&home, 0o700);
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

    /// Imports every certificate in `path` (armored blocks may follow one another); returns
    /// the primary fingerprint of the first one gpg reports imported.
    pub fn import(&self, path: &Path) -> Option<String> {
        let out = run_ok(
            self.cmd().args(["--status-fd", "1", "--import"]).arg(path),
            None,
        );
        String::from_utf8_lossy(&out)
            .lines()
            .find_map(|l| l.strip_prefix("[GNUPG:] IMPORT_OK "))
            .and_then(|rest| rest.split_whitespace().nth(1))
            .map(str::to_string)
    }

    pub fn export(&self, who: &str, path: &Path) {
        let out = self.ok(&["--armor", "--export", who], None);
        assert!(!out.is_empty(), "gpg exported nothing for {who}");
        write(path, out);
    }

    pub fn export_secret(&self, who: &str, path: &Path) {
        let out = self.ok(
            &["--passphrase", "", "--armor", "--export-secret-keys", who],
            None,
        );
        assert!(!out.is_empty(), "gpg exported no secret key for {who}");
        write(path, out);
    }

    /// Fingerprints of the primary keys and subkeys in the certificate file `cert`, without
    /// importing it (`gpg --show-keys`).
    pub fn show_fingerprints(&self, cert: &Path) -> Vec<String> {
        let out = run_ok(
            self.cmd()
                .args(["--with-colons", "--with-subkey-fingerprints", "--show-keys"])
                .arg(cert),
            None,
        );
        String::from_utf8_lossy(&out)
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
        let out = run(
            self.cmd().arg("--status-file").arg(&status_file).args(args),
            None,
        );
        GpgOutcome {
            plaintext: out.stdout,
            // Not UTF-8: notation data (e.g. sequoia's salt) is only partly escaped.
            status: read_lossy(&status_file),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            exit_code: out.status.code(),
        }
    }

    /// `gpg --list-packets` of an OpenPGP message (use an empty home: nothing is decrypted).
    pub fn list_packets(&self, armored: &[u8]) -> String {
        let dir = tempfile::tempdir().expect("tempdir");
        let input = dir.path().join("in.asc");
        write(&input, armored);
        let out = run(self.cmd().arg("--list-packets").arg(&input), None);
        String::from_utf8_lossy(&out.stdout).into_owned()
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

/// A subscriber with GnuPG in a home of their own, holding only their key and the list's
/// certificate.
pub struct GpgMember {
    pub gpg: Gpg,
    pub address: String,
    pub fingerprint: String,
    /// Armored certificate.
    pub cert: PathBuf,
    /// The list key's primary fingerprint as GnuPG shows it.
    pub list_fingerprint: String,
}

impl GpgMember {
    /// `m1`, `m2` and `m3`, each bound on `LIST`: the outbound tests' usual list.
    pub fn three_bound(site: &Site) -> Vec<GpgMember> {
        ["m1", "m2", "m3"]
            .iter()
            .map(|n| GpgMember::new(site, n, true))
            .collect()
    }

    /// Creates `name@example.test`'s key, imports the list key, and binds the member on
    /// `LIST` when `bind`.
    pub fn new(site: &Site, name: &str, bind: bool) -> GpgMember {
        let address = format!("{name}@example.test");
        let gpg = Gpg::new(site.path(&format!("gnupg-{name}")));
        let fingerprint = gpg.gen_key(&format!("{name} <{address}>"), None);
        let cert = site.path(&format!("{name}.asc"));
        gpg.export(&fingerprint, &cert);
        let list_cert = site.path(&format!("{LIST}.asc"));
        if !list_cert.exists() {
            site.export_list_key(LIST);
        }
        gpg.import(&list_cert);
        let list_fingerprint = gpg.fingerprint(LIST);
        if bind {
            site.bind(LIST, &address, &cert, false);
        }
        GpgMember {
            gpg,
            address,
            fingerprint,
            cert,
            list_fingerprint,
        }
    }

    /// An RFC 3156 PGP/MIME post (LF line endings): `gpg --sign --encrypt` of a text/plain
    /// entity in canonical CRLF form, to the list key.
    pub fn post(&self, subject: &str, text: &str) -> Vec<u8> {
        self.compose(subject, text, true, "")
    }

    /// Like [`GpgMember::post`], optionally unsigned, with `extra` header lines (each ending
    /// in LF) in the outer header.
    pub fn compose(&self, subject: &str, text: &str, sign: bool, extra: &str) -> Vec<u8> {
        let inner =
            to_crlf(format!("Content-Type: text/plain; charset=utf-8\n\n{text}\n").as_bytes());
        let mut args = vec!["--armor"];
        if sign {
            args.extend(["--sign", "--local-user", &self.fingerprint]);
        }
        args.extend(["--encrypt", "--recipient", LIST]);
        let armored = self.gpg.ok(&args, Some(&inner));
        let armored = to_lf(&armored);
        let armored = String::from_utf8(armored).expect("armor is ASCII");
        let message = format!(
            "From: {name} <{address}>\n\
             To: {LIST}\n\
             Subject: {subject}\n\
             Date: Thu, 26 Nov 2026 10:00:00 +0000\n\
             Message-ID: <{time}.{seq}@example.test>\n\
             {extra}\
             MIME-Version: 1.0\n\
             Content-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\";\n \
             boundary=\"enc1\"\n\
             \n\
             This is an OpenPGP/MIME encrypted message (RFC 4880 and 3156)\n\
             --enc1\n\
             Content-Type: application/pgp-encrypted\n\
             \n\
             Version: 1\n\
             \n\
             --enc1\n\
             Content-Type: application/octet-stream; name=\"encrypted.asc\"\n\
             \n\
             {armored}\n\
             --enc1--\n",
            name = self.address.split('@').next().unwrap_or("someone"),
            address = self.address,
            time = now(),
            seq = NEXT_ID.fetch_add(1, Ordering::Relaxed),
        );
        message.into_bytes()
    }
}

/// A subscriber of the end-to-end tests: a home under the test's directory named by the
/// address, with an Ed25519 signing key and a Cv25519 encryption subkey.
pub struct GpgUser {
    pub name: String,
    pub email: String,
    pub gpg: Gpg,
    /// Primary key fingerprint (upper-case hex).
    pub fpr: String,
}

impl GpgUser {
    /// A new home under `dir` with a fresh key for `Name <email>`.
    pub fn create(dir: &Path, name: &str, email: &str) -> GpgUser {
        let gpg = Gpg::new(dir.join(email));
        let uid = format!("{name} <{email}>");
        let generate = [
            "--passphrase",
            "",
            "--quick-gen-key",
            &uid,
            "ed25519",
            "sign",
            "never",
        ];
        gpg.ok(&generate, None);
        let fpr = gpg.fingerprint(&format!("<{email}>"));
        gpg.ok(
            &[
                "--passphrase",
                "",
                "--quick-add-key",
                &fpr,
                "cv25519",
                "encr",
                "never",
            ],
            None,
        );
        GpgUser {
            name: name.into(),
            email: email.into(),
            gpg,
            fpr,
        }
    }

    /// The public key, armored, written to `path`.
    pub fn export(&self, path: &Path) -> PathBuf {
        self.gpg.export(&self.fpr, path);
        path.to_path_buf()
    }

    /// Signs with our key and encrypts to `recipient` (a fingerprint); armored OpenPGP message.
    pub fn sign_encrypt(&self, recipient: &str, data: &[u8]) -> String {
        let out = self.gpg.ok(
            &[
                "--armor",
                "--local-user",
                &self.fpr,
                "--sign",
                "--encrypt",
                "--recipient",
                recipient,
            ],
            Some(data),
        );
        String::from_utf8(out).expect("armor is ASCII")
    }

    /// Encrypts to `recipient` (a fingerprint) without signing; armored OpenPGP message.
    pub fn encrypt(&self, recipient: &str, data: &[u8]) -> String {
        let out = self.gpg.ok(
            &["--armor", "--encrypt", "--recipient", recipient],
            Some(data),
        );
        String::from_utf8(out).expect("armor is ASCII")
    }
}
