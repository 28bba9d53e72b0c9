//! `list archive-key import|show|remove` and `archive decrypt`.

use super::{existing_list, exit, list_address, open_store, CommandError, Result};
use crate::archive::{self, ArchiveError};
use crate::config::{Config, PassphraseSource};
use crate::keys::KeyHome;
use crate::pgp::{self, Cert, Protection};
use std::io::Write;
use std::path::Path;

impl From<ArchiveError> for CommandError {
    fn from(e: ArchiveError) -> Self {
        match e {
            ArchiveError::Key(k) => k.into(),
            ArchiveError::Store(s) => s.into(),
            ArchiveError::Io { .. } => CommandError::new(exit::IOERR, "archive", e),
            ArchiveError::Entry(..) => CommandError::new(exit::DATA, "archive", e),
            _ => CommandError::new(exit::SOFTWARE, "archive", e),
        }
    }
}

/// `check-config`'s archive rule: a list that archives needs its archive key, or every post
/// of it would wait (451).
pub fn check(
    config: &Config,
    store: &dyn crate::store::Store,
    list: &str,
    policy: &crate::config::Policy,
) -> Option<String> {
    if policy.archive == crate::config::Archive::Off {
        return None;
    }
    match archive::load_key(KeyHome::of(&config.keyring_dir, store), list) {
        Ok(Some(_)) => None,
        Ok(None) => Some(format!(
            "{list}: archive is on but the list has no archive key; posts wait until one is \
             imported: listcrypt list archive-key import {list} FILE"
        )),
        Err(e) => Some(format!("{list}: {e}")),
    }
}

/// `list archive-key import LIST FILE`: the public certificate every post is archived to.
pub fn import_key(config: &Config, address: &str, file: &Path, out: &mut dyn Write) -> Result<()> {
    let list = list_address(address)?;
    existing_list(config, &list)?;
    let bytes = std::fs::read(file)
        .map_err(|e| CommandError::new(exit::IOERR, file.display().to_string(), e))?;
    let cert = archive::parse_key(&bytes, &file.display().to_string())?;
    let store = open_store(config)?;
    archive::store_key(
        KeyHome::of(&config.keyring_dir, &*store),
        &list,
        Some(&cert),
    )?;
    writeln!(
        out,
        "archive key {} imported for {list}",
        cert.fingerprint()
    )
    .ok();
    Ok(())
}

/// `list archive-key show LIST`: the archive certificate, armored.
pub fn show_key(config: &Config, address: &str, out: &mut dyn Write) -> Result<()> {
    let list = list_address(address)?;
    existing_list(config, &list)?;
    let store = open_store(config)?;
    let Some(cert) = archive::load_key(KeyHome::of(&config.keyring_dir, &*store), &list)? else {
        return Err(CommandError::new(exit::USAGE, &list, "no archive key"));
    };
    let armored =
        pgp::armored_public(&cert).map_err(|e| CommandError::new(exit::SOFTWARE, "export", e))?;
    out.write_all(&armored)
        .map_err(|e| CommandError::new(exit::IOERR, "stdout", e))
}

/// `list archive-key remove LIST`. A list whose policy still archives then tempfails its
/// posts (check-config says so).
pub fn remove_key(config: &Config, address: &str, out: &mut dyn Write) -> Result<()> {
    let list = list_address(address)?;
    existing_list(config, &list)?;
    let store = open_store(config)?;
    archive::store_key(KeyHome::of(&config.keyring_dir, &*store), &list, None)?;
    writeln!(out, "archive key of {list} removed").ok();
    Ok(())
}

/// `archive decrypt --key FILE`: the encrypted archive on `input`, a plain mbox on `output`,
/// each post once.
pub fn decrypt(
    key: &Path,
    passphrase_file: Option<&Path>,
    input: impl std::io::BufRead,
    output: impl Write,
    err: &mut dyn Write,
) -> Result<()> {
    let cert = open_secret(key, passphrase_file)?;
    let done = archive::decrypt_mbox(input, output, &cert)?;
    writeln!(
        err,
        "listcrypt: {} post(s) decrypted, {} duplicate(s) left out",
        done.posts, done.duplicates
    )
    .ok();
    Ok(())
}

/// The archive secret key from `path`, opened with the passphrase from `passphrase_file` or
/// asked on the terminal.
fn open_secret(path: &Path, passphrase_file: Option<&Path>) -> Result<Cert> {
    let cert = pgp::read_cert_file(path)?;
    if !cert.is_tsk() {
        return Err(CommandError::new(
            exit::DATA,
            path.display().to_string(),
            "holds no secret key (the archive's secret key is needed)",
        ));
    }
    if pgp::protection(&cert) == Protection::Unprotected {
        return Ok(cert);
    }
    let password = match passphrase_file {
        Some(f) => PassphraseSource::File(f.to_path_buf()).read()?,
        None => rpassword::prompt_password("Passphrase of the archive key: ")
            .map(pgp::Password::from)
            .map_err(|e| CommandError::new(exit::USAGE, "/dev/tty", e))?,
    };
    Ok(pgp::unlock(cert, &password, "archive key")?)
}
