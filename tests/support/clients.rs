//! Subscribers on OpenPGP clients other than GnuPG: Sequoia's `sq` (0.27) and RNP's `rnp`
//! (0.16, the engine of older Thunderbird releases). Both exit 0 in cases that are not a
//! success (rnp with an unknown or bad signer; sq with `-n 0`), so their outcome is judged from
//! what they print.

use super::files::{mkdir, write};
use super::process::{run, run_ok};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// What a client printed when decrypting or verifying one message.
pub struct ClientOutcome {
    pub exit_code: Option<i32>,
    pub plaintext: Vec<u8>,
    pub stderr: String,
    /// Key ids or fingerprints (upper-case hex) the client reported good signatures from.
    pub good_signers: Vec<String>,
    /// Every line that reports a signature it could not verify (bad, unknown key, ...).
    pub signature_problems: Vec<String>,
}

impl ClientOutcome {
    /// A client's outcome; `judge` reads its stderr into (good signers, signature problems).
    fn judged(
        out: Output,
        judge: impl FnOnce(&str) -> (Vec<String>, Vec<String>),
    ) -> ClientOutcome {
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let (good_signers, signature_problems) = judge(&stderr);
        ClientOutcome {
            exit_code: out.status.code(),
            plaintext: out.stdout,
            stderr,
            good_signers,
            signature_problems,
        }
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.plaintext).into_owned()
    }

    /// Whether a good signature came from one of `fingerprints` (a key id reported by the
    /// client matches a fingerprint's low 64 bits).
    pub fn signed_by(&self, fingerprints: &[String]) -> bool {
        self.good_signers.iter().any(|s| {
            fingerprints
                .iter()
                .any(|f| f.to_ascii_uppercase().ends_with(&s.to_ascii_uppercase()))
        })
    }

    pub fn report(&self) -> String {
        format!(
            "exit {:?}; good signatures from {:?}\n--- stderr\n{}",
            self.exit_code, self.good_signers, self.stderr
        )
    }
}

/// An `sq` user: a secret key file and its certificate, no key store.
pub struct SqUser {
    pub email: String,
    pub key: PathBuf,
    pub cert: PathBuf,
}

impl SqUser {
    /// `sq key generate --userid '<email>'` (Cv25519) and `sq key extract-cert`, under `dir`.
    pub fn create(dir: &Path, email: &str) -> SqUser {
        let home = mkdir(&dir.join(email), 0o700);
        let key = home.join("key.pgp");
        let cert = home.join("cert.pgp");
        run_ok(
            Command::new("sq")
                .args(["key", "generate", "--cipher-suite", "cv25519"])
                .arg("--userid")
                .arg(format!("<{email}>"))
                .arg("--export")
                .arg(&key),
            None,
        );
        run_ok(
            Command::new("sq")
                .args(["key", "extract-cert", "--output"])
                .arg(&cert)
                .arg(&key),
            None,
        );
        SqUser {
            email: email.into(),
            key,
            cert,
        }
    }

    /// `sq encrypt --recipient-cert CERT --signer-key KEY`: signed and encrypted, armored.
    pub fn sign_encrypt(&self, recipient_cert: &Path, data: &[u8]) -> String {
        let out = run_ok(
            Command::new("sq")
                .arg("encrypt")
                .arg("--recipient-cert")
                .arg(recipient_cert)
                .arg("--signer-key")
                .arg(&self.key),
            Some(data),
        );
        String::from_utf8(out).expect("armor is ASCII")
    }

    /// `sq decrypt --recipient-key KEY --signer-cert CERT...`; with `threshold` as `-n`
    /// (sq withholds the plaintext unless that many signatures verify).
    pub fn decrypt(&self, armored: &[u8], signers: &[&Path], threshold: usize) -> ClientOutcome {
        let dir = tempfile::tempdir().expect("tempdir");
        let input = dir.path().join("in.asc");
        write(&input, armored);
        let mut cmd = Command::new("sq");
        cmd.arg("decrypt").arg("--recipient-key").arg(&self.key);
        for s in signers {
            cmd.arg("--signer-cert").arg(s);
        }
        cmd.arg("-n").arg(threshold.to_string()).arg(&input);
        sq_outcome(run(&mut cmd, None))
    }

    /// `sq verify --signer-cert CERT --detached SIG DATA`.
    pub fn verify_detached(&self, data: &[u8], signature: &[u8], signer: &Path) -> ClientOutcome {
        let dir = tempfile::tempdir().expect("tempdir");
        let (data_file, sig_file) = (dir.path().join("data"), dir.path().join("data.sig"));
        write(&data_file, data);
        write(&sig_file, signature);
        sq_outcome(run(
            Command::new("sq")
                .arg("verify")
                .arg("--signer-cert")
                .arg(signer)
                .arg("--detached")
                .arg(&sig_file)
                .arg(&data_file),
            None,
        ))
    }
}

/// sq reports `Good signature from KEYID …`, and its problems in lines about a signature or
/// checksum.
fn sq_outcome(out: Output) -> ClientOutcome {
    ClientOutcome::judged(out, |stderr| {
        let good_signers = stderr
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Good signature from "))
            .filter_map(|rest| rest.split_whitespace().next())
            .map(|id| id.to_ascii_uppercase())
            .collect();
        let signature_problems = stderr
            .lines()
            .filter(|l| {
                let l = l.to_ascii_lowercase();
                (l.contains("signature") || l.contains("checksum")) && !l.contains("good signature")
            })
            .map(str::to_string)
            .collect();
        (good_signers, signature_problems)
    })
}

/// An `rnp` user: its own key ring directory (`--homedir`), key without a passphrase.
pub struct RnpUser {
    pub email: String,
    pub home: PathBuf,
    /// The exported public key (armored).
    pub cert: PathBuf,
}

impl RnpUser {
    /// `rnpkeys --generate-key --expert` choosing (22) EdDSA + X25519, non-interactively.
    pub fn create(dir: &Path, email: &str) -> RnpUser {
        let home = mkdir(&dir.join(email), 0o700);
        let uid = format!("<{email}>");
        run_ok(
            Command::new("rnpkeys")
                .arg("--homedir")
                .arg(&home)
                .args(["--generate-key", "--expert", "--userid", &uid])
                .args(["--password", "", "--notty"]),
            Some(b"22\n"),
        );
        let cert = home.join("cert.asc");
        let out = run_ok(
            Command::new("rnpkeys")
                .arg("--homedir")
                .arg(&home)
                .args(["--export-key", &uid]),
            None,
        );
        assert!(
            String::from_utf8_lossy(&out).contains("BEGIN PGP PUBLIC KEY BLOCK"),
            "rnpkeys exported no key for {email}"
        );
        write(&cert, &out);
        RnpUser {
            email: email.into(),
            home,
            cert,
        }
    }

    pub fn import(&self, cert: &Path) {
        run_ok(
            Command::new("rnpkeys")
                .arg("--homedir")
                .arg(&self.home)
                .arg("--import")
                .arg(cert),
            None,
        );
    }

    /// `rnp --decrypt` (verifies the signatures it finds against the imported keys).
    pub fn decrypt(&self, armored: &[u8]) -> ClientOutcome {
        let dir = tempfile::tempdir().expect("tempdir");
        let input = dir.path().join("in.asc");
        write(&input, armored);
        rnp_outcome(run(
            self.rnp()
                .args(["--password", "", "--decrypt"])
                .arg(&input)
                .args(["--output", "-"]),
            None,
        ))
    }

    /// `rnp --verify SIG --source DATA`.
    pub fn verify_detached(&self, data: &[u8], signature: &[u8]) -> ClientOutcome {
        let dir = tempfile::tempdir().expect("tempdir");
        let (data_file, sig_file) = (dir.path().join("data"), dir.path().join("data.sig"));
        write(&data_file, data);
        write(&sig_file, signature);
        rnp_outcome(run(
            self.rnp()
                .arg("--verify")
                .arg(&sig_file)
                .arg("--source")
                .arg(&data_file),
            None,
        ))
    }

    fn rnp(&self) -> Command {
        let mut cmd = Command::new("rnp");
        cmd.arg("--homedir").arg(&self.home).arg("--notty");
        cmd
    }
}

/// rnp reports each signature as `Good signature made …` / `BAD signature made …` /
/// `NO PUBLIC KEY for signature made …`, then `using ALGO key KEYID`.
fn rnp_outcome(out: Output) -> ClientOutcome {
    ClientOutcome::judged(out, |stderr| {
        let mut good_signers = Vec::new();
        let mut signature_problems = Vec::new();
        let mut pending: Option<(bool, String)> = None;
        for line in stderr.lines().map(str::trim) {
            if line.starts_with("Good signature") {
                pending = Some((true, line.to_string()));
            } else if line.starts_with("BAD signature") || line.starts_with("NO PUBLIC KEY") {
                pending = Some((false, line.to_string()));
            } else if line.starts_with("using ") && line.contains(" key ") {
                let id = line
                    .rsplit(' ')
                    .next()
                    .unwrap_or_default()
                    .to_ascii_uppercase();
                match pending.take() {
                    Some((true, _)) => good_signers.push(id),
                    Some((false, what)) => signature_problems.push(format!("{what} ({id})")),
                    None => {}
                }
            } else if line.starts_with("Signature verification failure") {
                signature_problems.push(line.to_string());
            }
        }
        (good_signers, signature_problems)
    })
}
