//! Where the passphrase of the list keys comes from: a systemd credential, `passphrase_file`,
//! or (the CLI on a terminal) a prompt. The passphrase is read when needed and zeroised after.

use super::{Config, ConfigError};
use sequoia_openpgp::crypto::Password;
use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// The credential name the unit passes with `LoadCredentialEncrypted=` (or `LoadCredential=`);
/// systemd puts it in `$CREDENTIALS_DIRECTORY`.
pub const CREDENTIAL_NAME: &str = "listcrypt-passphrase";

/// Longest passphrase file read: a line, not a key file.
const MAX_PASSPHRASE_BYTES: u64 = 4096;

/// A configured source of the list keys' passphrase.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PassphraseSource {
    /// `$CREDENTIALS_DIRECTORY/listcrypt-passphrase`.
    Credential(PathBuf),
    /// The `passphrase_file` key.
    File(PathBuf),
}

impl PassphraseSource {
    pub fn path(&self) -> &Path {
        match self {
            PassphraseSource::Credential(p) | PassphraseSource::File(p) => p,
        }
    }

    /// The passphrase: the file's first line, without its line ending (as gpg's
    /// `--passphrase-file` reads it, so the same file opens an exported key there).
    pub fn read(&self) -> Result<Password, ConfigError> {
        let path = self.path();
        let io = |source| ConfigError::Io {
            path: path.display().to_string(),
            source,
        };
        let invalid = |message: &str| ConfigError::Invalid {
            path: path.display().to_string(),
            message: message.into(),
        };
        let mut file = std::fs::File::open(path).map_err(io)?;
        // Room for the whole file up front, so no reallocation leaves a copy behind.
        let mut bytes = Zeroizing::new(Vec::with_capacity(MAX_PASSPHRASE_BYTES as usize + 1));
        (&mut file)
            .take(MAX_PASSPHRASE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(io)?;
        if bytes.len() as u64 > MAX_PASSPHRASE_BYTES {
            return Err(invalid("passphrase file is longer than 4096 bytes"));
        }
        let line = first_line(&bytes);
        if line.is_empty() {
            return Err(invalid("passphrase file is empty"));
        }
        Ok(Password::from(line))
    }
}

impl std::fmt::Display for PassphraseSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PassphraseSource::Credential(p) => write!(f, "systemd credential {}", p.display()),
            PassphraseSource::File(p) => write!(f, "passphrase_file {}", p.display()),
        }
    }
}

fn first_line(bytes: &[u8]) -> &[u8] {
    let line = bytes.split(|&b| b == b'\n').next().unwrap_or_default();
    line.strip_suffix(b"\r").unwrap_or(line)
}

impl Config {
    /// The systemd credential when the service was given one, else `passphrase_file`.
    pub fn passphrase_source(&self) -> Option<PassphraseSource> {
        let credential = std::env::var_os("CREDENTIALS_DIRECTORY")
            .filter(|d| !d.is_empty())
            .map(|d| Path::new(&d).join(CREDENTIAL_NAME))
            .filter(|p| p.exists());
        match credential {
            Some(p) => Some(PassphraseSource::Credential(p)),
            None if !self.passphrase_file.as_os_str().is_empty() => {
                Some(PassphraseSource::File(self.passphrase_file.clone()))
            }
            None => None,
        }
    }
}

/// Asks on the terminal for a passphrase when standard input is one (the CLI run by hand);
/// `None` when there is no terminal to ask on. Twice when `confirm`.
pub fn prompt(question: &str, confirm: bool) -> Result<Option<Password>, ConfigError> {
    if !std::io::stdin().is_terminal() {
        return Ok(None);
    }
    let io = |source| ConfigError::Io {
        path: "/dev/tty".into(),
        source,
    };
    let first = Zeroizing::new(rpassword::prompt_password(format!("{question}: ")).map_err(io)?);
    let invalid = |message: &str| ConfigError::Invalid {
        path: "/dev/tty".into(),
        message: message.into(),
    };
    if first.is_empty() {
        return Err(invalid("empty passphrase"));
    }
    if confirm {
        let again = Zeroizing::new(rpassword::prompt_password("Repeat it: ").map_err(io)?);
        if *again != *first {
            return Err(invalid("the passphrases differ"));
        }
    }
    Ok(Some(Password::from(first.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_line_is_the_passphrase() {
        assert_eq!(first_line(b"secret\n"), b"secret");
        assert_eq!(first_line(b"secret\r\nrest\n"), b"secret");
        assert_eq!(first_line(b"with space "), b"with space ");
        assert_eq!(first_line(b"\nsecond"), b"");
    }

    #[test]
    fn an_empty_or_missing_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "\n").unwrap();
        let source = PassphraseSource::File(path.clone());
        assert!(source.read().unwrap_err().to_string().contains("empty"));
        std::fs::remove_file(&path).unwrap();
        let err = source.read().unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        std::fs::write(&path, "correct horse\n").unwrap();
        assert_eq!(source.read().unwrap(), Password::from("correct horse"));
    }
}
