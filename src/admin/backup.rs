//! `listcrypt backup DIR` and `listcrypt restore DIR`: list keys (byte for byte, so protected
//! keys stay protected), member certificates, policy files and the state database, with a
//! manifest of SHA-256 digests that `restore` checks before it writes anything.

use super::{exit, CommandError, Result};
use crate::config::Config;
use crate::store::{self, SqliteStore, SCHEMA_VERSION};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// The manifest's own format; a backup of another format is refused, not guessed at.
const FORMAT: u32 = 1;
const MANIFEST: &str = "manifest.toml";
const STATE: &str = "state.sqlite";

/// What a backup holds and whether it is intact. It detects damage and a changed file, not a
/// forger who rewrites the manifest too: keep backups where only root can write.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    format: u32,
    listcrypt_version: String,
    /// Schema version of `state.sqlite`; a newer one than this binary knows is refused.
    schema_version: i64,
    /// Seconds since the epoch.
    created: u64,
    #[serde(default, rename = "dir")]
    dirs: Vec<DirEntry>,
    #[serde(default, rename = "file")]
    files: Vec<FileEntry>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DirEntry {
    path: String,
    mode: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEntry {
    path: String,
    mode: String,
    size: u64,
    sha256: String,
}

/// The trees a backup covers: its name inside the backup, and where it lives in `config`.
fn roots(config: &Config) -> [(&'static str, PathBuf); 3] {
    [
        ("keyrings/lists", config.keyring_dir.join("lists")),
        ("keyrings/certs", config.keyring_dir.join("certs")),
        ("lists.d", config.policy_dir.clone()),
    ]
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> CommandError + '_ {
    move |e| CommandError::new(exit::IOERR, path.display().to_string(), e)
}

fn damaged(why: impl std::fmt::Display) -> CommandError {
    CommandError::new(exit::DATA, "restore", why)
}

fn mode_of(meta: &std::fs::Metadata) -> String {
    format!("{:04o}", meta.permissions().mode() & 0o777)
}

fn parse_mode(text: &str) -> Result<u32> {
    match u32::from_str_radix(text, 8) {
        Ok(m) if m <= 0o777 => Ok(m),
        _ => Err(damaged(format!("manifest: bad mode {text:?}"))),
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(&Sha256::digest(bytes))
}

/// Directories and regular files under `root`, as paths relative to it, sorted; anything else
/// (a symbolic link, a socket) is an error rather than a silent gap in the backup.
fn walk(root: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let (mut dirs, mut files) = (Vec::new(), Vec::new());
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        let dir = root.join(&rel);
        for entry in std::fs::read_dir(&dir).map_err(io_error(&dir))? {
            let entry = entry.map_err(io_error(&dir))?;
            let kind = entry.file_type().map_err(io_error(&entry.path()))?;
            let child = rel.join(entry.file_name());
            if kind.is_dir() {
                dirs.push(child.clone());
                todo.push(child);
            } else if kind.is_file() {
                files.push(child);
            } else {
                return Err(CommandError::new(
                    exit::DATA,
                    entry.path().display().to_string(),
                    "neither a regular file nor a directory",
                ));
            }
        }
    }
    dirs.sort();
    files.sort();
    Ok((dirs, files))
}

/// The state of several hosts lives in PostgreSQL, which has its own backup tools; a backup
/// made here would hold an empty local database and restore it over nothing.
fn refuse_postgres(config: &Config, verb: &str) -> Result<()> {
    if config.database_url.is_empty() {
        return Ok(());
    }
    Err(CommandError::new(
        exit::USAGE,
        verb,
        "the state is in PostgreSQL (database_url): back it up with pg_dump, and the \
         keyring and policy directories with your file backup",
    ))
}

/// `listcrypt backup DIR`: DIR must be new or empty; it is made 0700.
pub fn backup(config: &Config, dir: &Path, out: &mut dyn Write) -> Result<()> {
    refuse_postgres(config, "backup")?;
    prepare_backup_dir(dir)?;
    let store = SqliteStore::open(&config.state_dir)?;
    let state = dir.join(STATE);
    // The state first: files copied after it can only be newer (a certificate nothing binds
    // yet), never missing one that its bindings name.
    let schema_version = store.snapshot_into(&state)?;
    let mut manifest = Manifest {
        format: FORMAT,
        listcrypt_version: env!("CARGO_PKG_VERSION").to_string(),
        schema_version,
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        dirs: Vec::new(),
        files: Vec::new(),
    };
    for (name, source) in roots(config) {
        if !source.exists() {
            continue;
        }
        copy_tree(name, &source, dir, &mut manifest)?;
    }
    let bytes = std::fs::read(&state).map_err(io_error(&state))?;
    manifest.files.push(FileEntry {
        path: STATE.into(),
        mode: "0600".into(),
        size: bytes.len() as u64,
        sha256: sha256_hex(&bytes),
    });
    let text =
        toml::to_string(&manifest).map_err(|e| CommandError::new(exit::SOFTWARE, "manifest", e))?;
    // Written last: a backup without its manifest is an incomplete one, and restore says so.
    let path = dir.join(MANIFEST);
    crate::atomic_file::write(&path, text.as_bytes(), 0o600).map_err(io_error(&path))?;
    let lists = manifest
        .files
        .iter()
        .filter(|f| f.path.starts_with("lists.d/"))
        .count();
    writeln!(
        out,
        "backed up {lists} list(s), {} file(s), state schema version {schema_version} to {}",
        manifest.files.len(),
        dir.display()
    )
    .ok();
    Ok(())
}

fn prepare_backup_dir(dir: &Path) -> Result<()> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(CommandError::new(
                    exit::USAGE,
                    dir.display().to_string(),
                    "not empty: give a new directory for each backup",
                ));
            }
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(io_error(dir))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .mode(0o700)
            .create(dir)
            .map_err(io_error(dir)),
        Err(e) => Err(io_error(dir)(e)),
    }
}

/// Copies the tree at `source` to `dir/name`, recording modes and digests.
fn copy_tree(name: &str, source: &Path, dir: &Path, manifest: &mut Manifest) -> Result<()> {
    let (dirs, files) = walk(source)?;
    for rel in std::iter::once(PathBuf::new()).chain(dirs) {
        let from = source.join(&rel);
        let meta = std::fs::metadata(&from).map_err(io_error(&from))?;
        let to = dir.join(name).join(&rel);
        std::fs::create_dir_all(&to).map_err(io_error(&to))?;
        manifest.dirs.push(DirEntry {
            path: join(name, &rel),
            mode: mode_of(&meta),
        });
    }
    for rel in files {
        let from = source.join(&rel);
        let meta = std::fs::metadata(&from).map_err(io_error(&from))?;
        let bytes = std::fs::read(&from).map_err(io_error(&from))?;
        let to = dir.join(name).join(&rel);
        crate::atomic_file::write(&to, &bytes, meta.permissions().mode() & 0o777)
            .map_err(io_error(&to))?;
        manifest.files.push(FileEntry {
            path: join(name, &rel),
            mode: mode_of(&meta),
            size: bytes.len() as u64,
            sha256: sha256_hex(&bytes),
        });
    }
    Ok(())
}

/// `name/rel` with `/`, as the manifest spells paths.
fn join(name: &str, rel: &Path) -> String {
    match rel.to_str() {
        Some("") => name.to_string(),
        Some(r) => format!("{name}/{r}"),
        None => format!("{name}/{}", rel.to_string_lossy()),
    }
}

/// `listcrypt restore DIR [--force]`: verifies the whole backup, then writes the files
/// (each atomically, with its mode) and the state database last, in one transaction.
pub fn restore(config: &Config, dir: &Path, force: bool, out: &mut dyn Write) -> Result<()> {
    refuse_postgres(config, "restore")?;
    let (manifest, contents) = verify(dir)?;
    let store = SqliteStore::open(&config.state_dir)?;
    if !force && target_holds_something(config, &store)? {
        return Err(CommandError::new(
            exit::USAGE,
            "restore",
            "the target already holds lists, keys or state; add --force to replace them \
             with the backup",
        ));
    }
    drop(store);
    let roots = roots(config);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&config.keyring_dir)
        .map_err(io_error(&config.keyring_dir))?;
    let mut kept = BTreeSet::new();
    for d in &manifest.dirs {
        let path = target(&roots, &d.path)?;
        std::fs::create_dir_all(&path).map_err(io_error(&path))?;
        let mode = std::fs::Permissions::from_mode(parse_mode(&d.mode)?);
        std::fs::set_permissions(&path, mode).map_err(io_error(&path))?;
        kept.insert(path);
    }
    let mut state: &[u8] = &[];
    for (f, bytes) in manifest.files.iter().zip(&contents) {
        if f.path == STATE {
            state = bytes;
            continue;
        }
        let path = target(&roots, &f.path)?;
        crate::atomic_file::write(&path, bytes, parse_mode(&f.mode)?).map_err(io_error(&path))?;
        kept.insert(path);
    }
    remove_unlisted(&roots, &kept)?;
    // Last, so a daemon reloading on the new generation finds the keys its bindings name. From
    // the verified bytes, not the backup's file, which could have changed since.
    let mut copy =
        tempfile::NamedTempFile::new_in(&config.state_dir).map_err(io_error(&config.state_dir))?;
    copy.write_all(state)
        .and_then(|()| copy.as_file().sync_all())
        .map_err(io_error(copy.path()))?;
    store::restore_from(&config.state_dir, copy.path())?;
    writeln!(
        out,
        "restored {} file(s) and the state (schema version {}) from {}",
        manifest.files.len() - 1,
        manifest.schema_version,
        dir.display()
    )
    .ok();
    Ok(())
}

/// Where a manifest path goes in this configuration.
fn target(roots: &[(&'static str, PathBuf)], path: &str) -> Result<PathBuf> {
    for (name, root) in roots {
        match path.strip_prefix(name) {
            Some("") => return Ok(root.clone()),
            Some(rest) if rest.starts_with('/') => return Ok(root.join(&rest[1..])),
            _ => {}
        }
    }
    Err(damaged(format!(
        "manifest: {path:?} belongs to no known tree"
    )))
}

/// The target becomes the backup: files and directories in its trees that the backup does not
/// hold (lists, keys and certificates made since) are removed.
fn remove_unlisted(roots: &[(&'static str, PathBuf)], kept: &BTreeSet<PathBuf>) -> Result<()> {
    for (_, root) in roots {
        if !root.exists() {
            continue;
        }
        let (dirs, files) = walk(root)?;
        for path in files.into_iter().map(|rel| root.join(rel)) {
            if !kept.contains(&path) {
                std::fs::remove_file(&path).map_err(io_error(&path))?;
            }
        }
        // Deepest first, so a directory is empty by the time it is removed.
        for path in dirs.into_iter().rev().map(|rel| root.join(rel)) {
            if !kept.contains(&path) {
                std::fs::remove_dir(&path).map_err(io_error(&path))?;
            }
        }
    }
    Ok(())
}

/// Reads the manifest and checks every file against it: nothing missing, nothing added,
/// every size and SHA-256 equal, paths inside the backup, and a state database that SQLite
/// finds intact at a schema this binary knows. Returns each file's bytes, in manifest order.
fn verify(dir: &Path) -> Result<(Manifest, Vec<Vec<u8>>)> {
    let path = dir.join(MANIFEST);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(damaged(format!(
                "no {MANIFEST} in {}: not a listcrypt backup, or an incomplete one",
                dir.display()
            )))
        }
        Err(e) => return Err(io_error(&path)(e)),
    };
    let manifest: Manifest =
        toml::from_str(&text).map_err(|e| damaged(format!("{}: {e}", path.display())))?;
    if manifest.format != FORMAT {
        return Err(damaged(format!(
            "backup format {} is not {FORMAT}, the one this listcrypt reads",
            manifest.format
        )));
    }
    if manifest.schema_version > SCHEMA_VERSION {
        return Err(damaged(format!(
            "the backup's state has schema version {}, newer than this listcrypt knows \
             ({SCHEMA_VERSION}): restore it with listcrypt {} or later",
            manifest.schema_version, manifest.listcrypt_version
        )));
    }
    let mut listed = BTreeSet::new();
    for p in manifest.dirs.iter().map(|d| &d.path) {
        check_path(p)?;
    }
    for f in &manifest.files {
        check_path(&f.path)?;
        if !listed.insert(f.path.clone()) {
            return Err(damaged(format!("manifest: {} listed twice", f.path)));
        }
    }
    if !listed.contains(STATE) {
        return Err(damaged(format!("manifest: no {STATE}")));
    }
    let (_, present) = walk(dir)?;
    for rel in present {
        let name = rel.to_string_lossy();
        if name != MANIFEST && !listed.contains(name.as_ref()) {
            return Err(damaged(format!(
                "{name} is in the backup but not in its manifest"
            )));
        }
    }
    let mut contents = Vec::with_capacity(manifest.files.len());
    for f in &manifest.files {
        let file = dir.join(&f.path);
        let bytes = match std::fs::read(&file) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(damaged(format!("{} is missing", f.path)))
            }
            Err(e) => return Err(io_error(&file)(e)),
        };
        if bytes.len() as u64 != f.size || sha256_hex(&bytes) != f.sha256 {
            return Err(damaged(format!(
                "{} does not match its SHA-256 in the manifest: damaged or changed",
                f.path
            )));
        }
        parse_mode(&f.mode)?;
        contents.push(bytes);
    }
    let found =
        store::schema_version_of(&dir.join(STATE)).map_err(|e| damaged(format!("{STATE}: {e}")))?;
    if found != manifest.schema_version {
        return Err(damaged(format!(
            "{STATE} has schema version {found}, the manifest says {}",
            manifest.schema_version
        )));
    }
    Ok((manifest, contents))
}

/// A manifest path is relative, plain (no `..`, no `.`), and inside a known tree.
fn check_path(path: &str) -> Result<()> {
    let plain = Path::new(path)
        .components()
        .all(|c| matches!(c, Component::Normal(_)));
    let known = path == STATE
        || ["keyrings/lists", "keyrings/certs", "lists.d"]
            .iter()
            .any(|root| path == *root || path.starts_with(&format!("{root}/")));
    if path.is_empty() || !plain || !known {
        return Err(damaged(format!("manifest: path {path:?} is not allowed")));
    }
    Ok(())
}

/// Whether the target already has a list key, a certificate, a policy file or state rows.
fn target_holds_something(config: &Config, store: &SqliteStore) -> Result<bool> {
    for (_, root) in roots(config) {
        if root.exists() && !walk(&root)?.1.is_empty() {
            return Ok(true);
        }
    }
    Ok(store.holds_state()?)
}
