//! Helpers shared by the inbound corpus runner and the milter scenarios: a throwaway listcrypt
//! site (config, list, bindings) driven through the real CLI, GnuPG homes in tempdirs, and the
//! in-process daemon on 127.0.0.1.
#![allow(dead_code)] // each test file uses a different subset

pub mod milter;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

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

/// The parts of a multipart body (bytes between the delimiter lines, RFC 2046 §5.1.1: the
/// CRLF before a delimiter belongs to it).
pub fn multipart_parts(body: &[u8], boundary: &str) -> Vec<Vec<u8>> {
    let body = to_crlf(body);
    let delimiter = format!("--{boundary}");
    let mut parts = Vec::new();
    let mut start: Option<usize> = None;
    let mut i = 0;
    while i < body.len() {
        let at_line_start = i == 0 || body[i - 1] == b'\n';
        if at_line_start && body[i..].starts_with(delimiter.as_bytes()) {
            if let Some(s) = start {
                let end = i.saturating_sub(2).max(s);
                parts.push(body[s..end].to_vec());
            }
            let rest = &body[i + delimiter.len()..];
            if rest.starts_with(b"--") {
                break;
            }
            let eol = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .map(|p| p + 2)
                .unwrap_or(rest.len());
            i += delimiter.len() + eol;
            start = Some(i);
            continue;
        }
        i += 1;
    }
    parts
}

/// The `boundary` parameter of a Content-Type value.
pub fn boundary_of(content_type: &str) -> Option<String> {
    let lower = content_type.to_ascii_lowercase();
    let at = lower.find("boundary=")? + "boundary=".len();
    let rest = &content_type[at..];
    let value = if let Some(r) = rest.strip_prefix('"') {
        r.split('"').next()?
    } else {
        rest.split([';', ' ', '\t', '\n', '\r']).next()?
    };
    Some(value.to_string())
}
