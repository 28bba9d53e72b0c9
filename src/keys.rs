//! Where list secret keys live (files, or the database several hosts share) and how they are
//! changed without losing a concurrent change, member bindings, and the in-memory keyring
//! snapshot the daemon works from. The OpenPGP work itself is in `pgp/`.

use crate::config::{Config, ConfigError, PassphraseSource, Policy};
use crate::pgp::{self, Cert, Fingerprint, Password, Protection, Signature};
use crate::store::{Binding, BindingState, Role, Store};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

// The OpenPGP halves moved to `pgp/`; these keep the paths the rest of the crate uses.
pub use crate::pgp::{
    cert_policy_ok, check_member_cert, read_cert_file, usable_until, CertDir, CertStore,
    EncryptionKeys, KeyError, KeyProblem, ListKeys, Member, RotateMode, Rotation,
};

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Lower-cases and strips angle brackets: the form addresses are stored and compared in.
pub fn normalize_address(s: &str) -> String {
    s.trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .trim()
        .to_ascii_lowercase()
}

/// A plausible `local@domain` address (no spaces, one `@`, no path separators).
pub fn valid_address(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.is_empty()
        && !domain.contains('@')
        && s.chars()
            .all(|c| c.is_ascii_graphic() && c != '/' && c != '\\')
}

pub fn list_dir(keyring_dir: &Path, list: &str) -> PathBuf {
    keyring_dir.join("lists").join(list)
}

/// Writes `bytes` to `path` atomically with the given mode.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), KeyError> {
    crate::atomic_file::write(path, bytes, mode).map_err(io_err(path))
}

/// An exclusive lock on the list's `secret.pgp.lock`, held for a whole read-modify-write of
/// `secret.pgp` so the daemon and the CLI never overwrite each other's change.
pub fn lock_list_secret(
    keyring_dir: &Path,
    list: &str,
) -> Result<nix::fcntl::Flock<std::fs::File>, KeyError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let dir = list_dir(keyring_dir, list);
    // Only the daemon's user may list or reach the secret key (check-config checks it).
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(io_err(&dir))?;
    let path = dir.join("secret.pgp.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(io_err(&path))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, errno)| io_err(&path)(std::io::Error::from(errno)))
}

/// Where list keys are kept: `keyring_dir/lists/LIST/secret.pgp` on a one-host site
/// (SQLite), or the database every host shares (PostgreSQL), there only passphrase-protected.
/// Hosts hold the keys they read from the database in memory (the keyring snapshot) and
/// read them again when the generation moves, which a key change bumps.
#[derive(Clone, Copy)]
pub enum KeyHome<'a> {
    Files(&'a Path),
    Database(&'a dyn Store),
}

impl<'a> KeyHome<'a> {
    /// The database if the store keeps keys, else `keyring_dir`.
    pub fn of(keyring_dir: &'a Path, store: &'a dyn Store) -> KeyHome<'a> {
        if store.keeps_keys() {
            KeyHome::Database(store)
        } else {
            KeyHome::Files(keyring_dir)
        }
    }
}

impl<'a> From<&'a Path> for KeyHome<'a> {
    fn from(keyring_dir: &'a Path) -> Self {
        KeyHome::Files(keyring_dir)
    }
}

impl<'a> From<&'a PathBuf> for KeyHome<'a> {
    fn from(keyring_dir: &'a PathBuf) -> Self {
        KeyHome::Files(keyring_dir)
    }
}

/// Loads the list key, lets `change` modify it and saves the result: under the lock in
/// files; in the database compare-and-set, `change` running again on a key another host
/// changed meanwhile, so both changes stay.
fn update_list_secret<'a, R>(
    home: impl Into<KeyHome<'a>>,
    list: &str,
    mut change: impl FnMut(Cert) -> Result<(Cert, R), KeyError>,
) -> Result<R, KeyError> {
    let store = match home.into() {
        KeyHome::Files(keyring_dir) => {
            let _lock = lock_list_secret(keyring_dir, list)?;
            let (cert, result) = change(load_list_key(keyring_dir, list)?)?;
            save_list_secret(keyring_dir, list, &cert)?;
            return Ok(result);
        }
        KeyHome::Database(store) => store,
    };
    loop {
        let stored = store
            .list_key_get(list)?
            .ok_or_else(|| not_in_database(list))?;
        let (cert, result) = change(pgp::parse_list_key(&stored.bytes, list)?)?;
        let (public, secret) = database_form(list, &cert)?;
        // Nothing changed (a prune with nothing to prune): no reload on every host.
        if secret == stored.bytes
            || store.list_key_put(list, &public, &secret, Some(stored.version))?
        {
            return Ok(result);
        }
    }
}

fn not_in_database(list: &str) -> KeyError {
    KeyError::Unusable(format!(
        "{list}: the list key is not in the database; a key made before the site moved to \
         PostgreSQL is uploaded with: listcrypt list upload {list}"
    ))
}

/// The armored public and secret forms of a list key for the database, which holds list
/// secrets only passphrase-protected.
fn database_form(list: &str, cert: &Cert) -> Result<(Vec<u8>, Vec<u8>), KeyError> {
    if pgp::protection(cert) != Protection::Protected {
        return Err(KeyError::Passphrase(format!(
            "{list}: the database stores list keys only protected by a passphrase, and this \
             one is not: protect it first with: listcrypt list protect {list}"
        )));
    }
    let public = pgp::armored_public(cert).map_err(|e| KeyError::Crypto(e.to_string()))?;
    Ok((public, pgp::armored_secret(cert)?))
}

/// Creates the list key (`pgp::generate_list_key`) without a passphrase, saves it and
/// returns it.
pub fn create_list_key(keyring_dir: &Path, list: &str) -> Result<Cert, KeyError> {
    create_list_key_with(keyring_dir, list, &Passphrases::none())
}

/// [`create_list_key`], protected with the configured passphrase if `passphrases` has a
/// source (in the database it must have one); returns the key as saved.
pub fn create_list_key_with<'a>(
    home: impl Into<KeyHome<'a>>,
    list: &str,
    passphrases: &Passphrases,
) -> Result<Cert, KeyError> {
    let keyring_dir = match home.into() {
        KeyHome::Database(store) => return create_in_database(store, list, passphrases),
        KeyHome::Files(keyring_dir) => keyring_dir,
    };
    let path = list_dir(keyring_dir, list).join("secret.pgp");
    let _lock = lock_list_secret(keyring_dir, list)?;
    if path.exists() {
        return Err(KeyError::ListExists(list.to_string()));
    }
    let mut cert = pgp::generate_list_key(list)?;
    if passphrases.source().is_some() {
        cert = pgp::protect(cert, &passphrases.get(list)?)?;
    }
    let bytes = pgp::armored_secret(&cert)?;
    write_atomic(&path, &bytes, 0o600)?;
    Ok(cert)
}

/// A new list key in the database, protected with the configured passphrase (there must be
/// one); an existing key there is never replaced.
fn create_in_database(
    store: &dyn Store,
    list: &str,
    passphrases: &Passphrases,
) -> Result<Cert, KeyError> {
    if passphrases.source().is_none() {
        return Err(KeyError::Passphrase(format!(
            "{list}: the database stores list keys only protected by a passphrase and none is \
             configured: set passphrase_file or give the service the systemd credential {}",
            crate::config::CREDENTIAL_NAME
        )));
    }
    if store.list_key_get(list)?.is_some() {
        return Err(KeyError::ListExists(list.to_string()));
    }
    let cert = pgp::protect(pgp::generate_list_key(list)?, &passphrases.get(list)?)?;
    let (public, secret) = database_form(list, &cert)?;
    if !store.list_key_put(list, &public, &secret, None)? {
        return Err(KeyError::ListExists(list.to_string()));
    }
    Ok(cert)
}

/// Copies `list`'s key from `keyring_dir` into the database (a site moving to PostgreSQL).
/// Only a passphrase-protected key is uploaded. Returns `false` if the database holds this
/// very key already; a different key there is an error, never replaced.
pub fn upload_list_key(
    keyring_dir: &Path,
    store: &dyn Store,
    list: &str,
) -> Result<bool, KeyError> {
    if !store.keeps_keys() {
        return Err(KeyError::Unusable(
            "list keys are uploaded to a database only: set database_url".into(),
        ));
    }
    let cert = load_list_key(keyring_dir, list)?;
    let (public, secret) = database_form(list, &cert)?;
    if let Some(stored) = store.list_key_get(list)? {
        let theirs = pgp::parse_list_key(&stored.bytes, list)?;
        if theirs.fingerprint() == cert.fingerprint() && stored.bytes == secret {
            return Ok(false);
        }
        return Err(KeyError::Unusable(format!(
            "{list}: the database holds another copy of the list key ({}); it is not replaced",
            theirs.fingerprint()
        )));
    }
    if !store.list_key_put(list, &public, &secret, None)? {
        return Err(KeyError::Unusable(format!(
            "{list}: another host uploaded the list key meanwhile; it is not replaced"
        )));
    }
    Ok(true)
}

/// The list key as stored: its secrets may still be encrypted.
pub fn load_list_key<'a>(home: impl Into<KeyHome<'a>>, list: &str) -> Result<Cert, KeyError> {
    match home.into() {
        KeyHome::Files(keyring_dir) => {
            let path = list_dir(keyring_dir, list).join("secret.pgp");
            let bytes = std::fs::read(&path).map_err(io_err(&path))?;
            pgp::parse_list_key(&bytes, &path.display().to_string())
        }
        KeyHome::Database(store) => {
            let stored = store
                .list_key_get(list)?
                .ok_or_else(|| not_in_database(list))?;
            pgp::parse_list_key(&stored.bytes, list)
        }
    }
}

/// The list key with its secrets opened in memory (asking `passphrases` if it is protected).
pub fn open_list_key<'a>(
    home: impl Into<KeyHome<'a>>,
    list: &str,
    passphrases: &Passphrases,
) -> Result<Cert, KeyError> {
    open(load_list_key(home, list)?, list, passphrases)
}

fn open(cert: Cert, list: &str, passphrases: &Passphrases) -> Result<Cert, KeyError> {
    match pgp::protection(&cert) {
        Protection::Unprotected => Ok(cert),
        Protection::Protected | Protection::Partial => {
            pgp::unlock(cert, &passphrases.get(list)?, list)
        }
    }
}

/// Where the passphrase of protected list keys comes from; read at most once per value, so
/// the CLI asks once however many lists it opens and the daemon re-reads it at each reload.
pub struct Passphrases {
    source: Option<PassphraseSource>,
    ask: bool,
    got: std::sync::Mutex<Option<Password>>,
}

impl Passphrases {
    /// The configured source only: the daemon and the timers, which have no one to ask.
    pub fn configured(config: &Config) -> Passphrases {
        Passphrases {
            source: config.passphrase_source(),
            ask: false,
            got: Default::default(),
        }
    }

    /// The configured source, else a prompt when standard input is a terminal (the CLI).
    pub fn interactive(config: &Config) -> Passphrases {
        Passphrases {
            ask: true,
            ..Passphrases::configured(config)
        }
    }

    /// No passphrase at all (keys that are protected stay locked).
    pub fn none() -> Passphrases {
        Passphrases {
            source: None,
            ask: false,
            got: Default::default(),
        }
    }

    /// A passphrase the caller holds already (tests, tools that read it themselves).
    pub fn given(password: Password) -> Passphrases {
        Passphrases {
            got: std::sync::Mutex::new(Some(password)),
            ..Passphrases::none()
        }
    }

    pub fn source(&self) -> Option<&PassphraseSource> {
        self.source.as_ref()
    }

    /// The passphrase, for opening `list`'s protected key (named in the error).
    pub fn get(&self, list: &str) -> Result<Password, KeyError> {
        let mut got = self.got.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = got.as_ref() {
            return Ok(p.clone());
        }
        let password = match (&self.source, self.ask) {
            (Some(source), _) => source.read().map_err(|e| {
                KeyError::Passphrase(format!(
                    "{list}: the list key is protected and its passphrase cannot be read: {e}"
                ))
            })?,
            (None, true) => crate::config::prompt_passphrase("Passphrase of the list keys", false)?
                .ok_or_else(|| no_passphrase(list))?,
            (None, false) => return Err(no_passphrase(list)),
        };
        *got = Some(password.clone());
        Ok(password)
    }
}

fn no_passphrase(list: &str) -> KeyError {
    KeyError::Passphrase(format!(
        "{list}: the list key is protected by a passphrase and none is available: set \
         passphrase_file, give the service the systemd credential {} \
         (LoadCredentialEncrypted=), or run the command on a terminal",
        crate::config::CREDENTIAL_NAME
    ))
}

/// Protects `list`'s key with `new` (opening it first with `current` if it is protected
/// already, which changes its passphrase); returns how it was protected before.
pub fn protect_list_key<'a>(
    home: impl Into<KeyHome<'a>>,
    list: &str,
    current: &Passphrases,
    new: &Password,
) -> Result<Protection, KeyError> {
    update_list_secret(home, list, |cert| {
        let before = pgp::protection(&cert);
        let cert = pgp::protect(open(cert, list, current)?, new)?;
        Ok((cert, before))
    })
}

/// Stores `list`'s key without a passphrase again (refused in the database).
pub fn unprotect_list_key<'a>(
    home: impl Into<KeyHome<'a>>,
    list: &str,
    current: &Passphrases,
) -> Result<(), KeyError> {
    update_list_secret(home, list, |cert| Ok((open(cert, list, current)?, ())))
}

/// What `check-config` and `doctor` say about `list`'s `secret.pgp` at rest: one warning per
/// problem (no passphrase, modes looser than 0600 and 0700, another owner than `owner`).
pub fn secret_key_warnings(config: &Config, list: &str, owner: Option<u32>) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let dir = list_dir(&config.keyring_dir, list);
    let path = dir.join("secret.pgp");
    let mut out = Vec::new();
    match load_list_key(&config.keyring_dir, list).map(|c| pgp::protection(&c)) {
        Ok(Protection::Protected) | Err(_) => {}
        Ok(p) => out.push(format!(
            "{list}: {} is {} by a passphrase{} — listcrypt list protect {list}",
            path.display(),
            if p == Protection::Partial {
                "only partly protected"
            } else {
                "not protected"
            },
            match config.passphrase_source() {
                Some(source) => format!(" although one is configured ({source})"),
                None => String::new(),
            }
        )),
    }
    for (file, want) in [(&path, 0o600), (&dir, 0o700)] {
        let Ok(meta) = std::fs::metadata(file) else {
            continue;
        };
        let mode = meta.mode() & 0o7777;
        if mode & !want != 0 {
            out.push(format!(
                "{list}: {} has mode {mode:04o}; it must be {want:04o} — chmod {want:o} {}",
                file.display(),
                file.display()
            ));
        }
        if let Some(uid) = owner.filter(|&uid| uid != meta.uid()) {
            out.push(format!(
                "{list}: {} is owned by uid {}, not by the daemon's user (uid {uid}) — chown {uid} {}",
                file.display(),
                meta.uid(),
                file.display()
            ));
        }
    }
    out
}

/// A snapshot of every list: built at start, rebuilt when the store's generation changes or
/// on SIGHUP. Sessions hold an `Arc` of it for a whole message.
pub struct Keyring {
    pub generation: i64,
    pub lists: HashMap<String, Arc<ListKeys>>,
    /// How addresses are read (Postfix's and Mailman's settings), with the same snapshot as
    /// the lists, so "is this list mail?" never mixes two configurations.
    pub address: crate::address::AddressConfig,
    /// Inbound recipients in a list domain that are no list's address.
    pub other_recipients: crate::config::OtherRecipients,
}

/// Names of the lists configured in `policy_dir` (one `<address>.toml` each). A missing or
/// unreadable directory, or anything in it that is not a list policy, is a configuration
/// error: a typo must not silently leave a list unmanaged, its mail passing in clear.
pub fn list_names(config: &Config) -> Result<Vec<String>, KeyError> {
    let dir = &config.policy_dir;
    let invalid = |message: String| {
        KeyError::Config(ConfigError::Invalid {
            path: dir.display().to_string(),
            message,
        })
    };
    let entries =
        std::fs::read_dir(dir).map_err(|e| invalid(format!("policy_dir cannot be read: {e}")))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| invalid(format!("policy_dir cannot be read: {e}")))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let list = name
            .strip_suffix(".toml")
            .filter(|l| valid_address(l))
            .filter(|_| entry.path().is_file());
        match list {
            Some(list) => names.push(list.to_ascii_lowercase()),
            None => {
                return Err(invalid(format!(
                    "{name:?} is not a list policy (only <list address>.toml files belong here)"
                )))
            }
        }
    }
    names.sort();
    Ok(names)
}

/// SHA-256 over every policy file (its name and the SHA-256 of its content, in name order),
/// hex: hosts sharing a database record it so that `check-config` sees them differ.
pub fn policy_digest(config: &Config) -> Result<String, KeyError> {
    use sha2::{Digest, Sha256};
    let mut all = Sha256::new();
    for list in list_names(config)? {
        let path = config.policy_path(&list);
        let bytes = std::fs::read(&path).map_err(io_err(&path))?;
        all.update(format!(
            "{list}.toml\0{}\n",
            data_encoding::HEXLOWER.encode(&Sha256::digest(&bytes))
        ));
    }
    Ok(data_encoding::HEXLOWER.encode(&all.finalize()))
}

/// Records this host's policy digest in the store (at start and reload).
pub fn record_policy_digest(config: &Config, store: &dyn Store) -> Result<(), KeyError> {
    Ok(store.host_record(&config.host_name(), &policy_digest(config)?)?)
}

/// What loading a keyring does with a list key whose passphrase is missing or wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockedKeys {
    /// An error: the daemon does not start, the CLI stops (check-config says why).
    Fail,
    /// The list is loaded locked and its mail gets 451 (a running daemon's reload), so the
    /// other lists keep working and nothing of this one passes unencrypted.
    Refuse,
}

impl Keyring {
    /// Every list, its key opened with the configured passphrase; a key that cannot be
    /// opened is an error.
    pub fn load(config: &Config, store: &dyn Store) -> Result<Keyring, KeyError> {
        Keyring::load_with(
            config,
            store,
            &Passphrases::configured(config),
            LockedKeys::Fail,
        )
    }

    /// [`Keyring::load`] for a running daemon: a list whose key cannot be opened is loaded
    /// locked, its mail refused with 451, and logged.
    pub fn load_running(config: &Config, store: &dyn Store) -> Result<Keyring, KeyError> {
        let passphrases = Passphrases::configured(config);
        Keyring::load_with(config, store, &passphrases, LockedKeys::Refuse)
    }

    pub fn load_with(
        config: &Config,
        store: &dyn Store,
        passphrases: &Passphrases,
        locked: LockedKeys,
    ) -> Result<Keyring, KeyError> {
        let generation = store.generation()?;
        let certs = CertStore::of(&config.keyring_dir, store);
        let home = KeyHome::of(&config.keyring_dir, store);
        let mut lists = HashMap::new();
        let mut opened = Opened::take(&mut OPENED.lock().unwrap_or_else(|e| e.into_inner()));
        for name in list_names(config)? {
            let policy = Policy::load(&config.policy_path(&name))?;
            let secret = load_list_key(home, &name)?;
            let (members, digests) = active_members(store, &certs, &name)?;
            let encryption = cached_encryption_keys(store, &name, &members, &digests);
            let keys = match opened.open(&name, secret.clone(), passphrases) {
                Ok(secret) => ListKeys::new(name.clone(), policy, secret, members),
                Err(KeyError::Passphrase(why)) if locked == LockedKeys::Refuse => {
                    tracing::error!("{why}; mail of {name} is deferred (451) until it opens");
                    ListKeys::new_locked(name.clone(), policy, secret, members, why)
                }
                Err(e) => return Err(e),
            };
            lists.insert(name, Arc::new(keys.with_encryption(encryption)));
        }
        *OPENED.lock().unwrap_or_else(|e| e.into_inner()) = opened.kept;
        Ok(Keyring {
            generation,
            lists,
            address: config.address_config(),
            other_recipients: config.list_domain_other_recipients,
        })
    }
}

/// Secrets of protected list keys opened by an earlier keyring load: a reload reuses them
/// instead of deriving every S2K key again (RFC 9580 §3.7.1.3: each derivation hashes 65 MB
/// on purpose), so a rotation another host made costs one derivation, for the new subkey.
/// Reused only for the same encrypted key packet and the same passphrase.
static OPENED: std::sync::LazyLock<std::sync::Mutex<HashMap<String, OpenedKey>>> =
    std::sync::LazyLock::new(Default::default);

struct OpenedKey {
    password: Password,
    secrets: pgp::OpenedSecrets,
}

/// One load's view of [`OPENED`]: what it may reuse, and what the next load may.
struct Opened {
    before: HashMap<String, OpenedKey>,
    kept: HashMap<String, OpenedKey>,
}

impl Opened {
    fn take(map: &mut HashMap<String, OpenedKey>) -> Opened {
        Opened {
            before: std::mem::take(map),
            kept: HashMap::new(),
        }
    }

    /// [`open`], reusing the secrets opened last time whose encrypted packets did not change,
    /// if the passphrase did not either; only lists loaded now are kept for next time. (Loads
    /// that overlap only lose entries: the secrets are then opened again.)
    fn open(
        &mut self,
        list: &str,
        cert: Cert,
        passphrases: &Passphrases,
    ) -> Result<Cert, KeyError> {
        if pgp::protection(&cert) == Protection::Unprotected {
            return Ok(cert);
        }
        let password = passphrases.get(list)?;
        let mut before = match self.before.remove(list) {
            Some(k) if k.password == password => k.secrets,
            _ => Default::default(),
        };
        let mut secrets = Default::default();
        let cert = pgp::unlock_reusing(cert, &password, list, &mut before, &mut secrets)?;
        let key = OpenedKey { password, secrets };
        self.kept.insert(list.to_string(), key);
        Ok(cert)
    }
}

/// Every member's encryption keys as of now: from the certificate cache where it holds a
/// trusted entry, else validated in full (and cached), so no message waits for validation.
fn cached_encryption_keys(
    store: &dyn Store,
    list: &str,
    members: &[Member],
    digests: &[pgp::Sha256],
) -> Vec<Result<EncryptionKeys, KeyProblem>> {
    let wanted: Vec<pgp::Wanted<'_>> = members
        .iter()
        .zip(digests)
        .map(|(m, sha256)| pgp::Wanted {
            address: &m.address,
            cert: &m.cert,
            sha256,
        })
        .collect();
    let cache = pgp::CertCache::new(store);
    let (keys, used) = cache.encryption_keys(&wanted, std::time::SystemTime::now());
    tracing::debug!(
        "{list}: {} member key(s) from the certificate cache, {} validated, {} cached",
        used.hits,
        used.validated,
        used.written
    );
    keys
}

/// The members of `list` with an active binding whose certificate is in the store, each
/// with the SHA-256 of its certificate as stored (same order).
fn active_members(
    store: &dyn Store,
    certs: &CertStore<'_>,
    name: &str,
) -> Result<(Vec<Member>, Vec<pgp::Sha256>), KeyError> {
    let mut active = Vec::new();
    for b in store.bindings(name)? {
        if b.state != BindingState::Active {
            continue;
        }
        let fpr: Fingerprint = b.fingerprint.parse().map_err(|_| {
            KeyError::Unusable(format!("binding {} on {name}: bad fingerprint", b.address))
        })?;
        active.push((b, fpr));
    }
    let fprs: Vec<Fingerprint> = active.iter().map(|(_, f)| f.clone()).collect();
    let mut found: HashMap<Fingerprint, (Cert, pgp::Sha256)> = certs
        .get_many_digested(&fprs)?
        .into_iter()
        .map(|(c, d)| (c.fingerprint(), (c, d)))
        .collect();
    // Moved out at its last binding, cloned before: a certificate clone costs a parse's tenth.
    let mut uses: HashMap<&Fingerprint, usize> = HashMap::new();
    for fpr in &fprs {
        *uses.entry(fpr).or_default() += 1;
    }
    let mut members = Vec::new();
    let mut digests = Vec::new();
    for (b, fpr) in &active {
        let left = uses.get_mut(fpr).map(|n| {
            *n -= 1;
            *n
        });
        let cert = match left {
            Some(0) => found.remove(fpr),
            _ => found.get(fpr).cloned(),
        };
        match cert {
            Some((cert, digest)) => {
                members.push(Member {
                    address: b.address.clone(),
                    cert,
                    role: b.role,
                    show_key_id: b.show_key_id,
                });
                digests.push(digest);
            }
            None => tracing::warn!(
                "{name}: certificate {fpr} for {} is missing from the cert store",
                b.address
            ),
        }
    }
    Ok((members, digests))
}

/// Whether a member's copies name the recipient key in the clear (`member add
/// --show-key-id`), for clients that cannot try their keys on hidden recipients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecipientKeyId {
    Hidden,
    Shown,
}

/// Binds `address` on `list` to the certificate in `cert_path` (CLI `member add`).
pub fn add_member(
    config: &Config,
    store: &dyn Store,
    list: &str,
    address: &str,
    cert: &Cert,
    role: Role,
    key_id: RecipientKeyId,
) -> Result<Binding, KeyError> {
    if !config.policy_path(list).exists() {
        return Err(KeyError::NoSuchList(list.to_string()));
    }
    if cert.is_tsk() {
        tracing::info!("ignoring secret key material in the certificate for {address}");
    }
    check_member_cert(cert, address).map_err(|p| KeyError::Unusable(p.to_string()))?;
    CertStore::of(&config.keyring_dir, store).insert(cert)?;
    let binding = Binding {
        list: list.to_string(),
        address: address.to_string(),
        fingerprint: cert.fingerprint().to_hex(),
        role,
        state: BindingState::Active,
        show_key_id: key_id == RecipientKeyId::Shown,
    };
    store.bind(&binding)?;
    Ok(binding)
}

/// One binding as `member list` prints it (and the admin API returns it), in the same words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberRow {
    pub address: String,
    pub fingerprint: String,
    /// `member` or `owner`.
    pub role: String,
    pub show_key_id: bool,
    /// `active` or `pending` (a key offered and not yet proven).
    pub state: String,
    /// `expiry_text`: a date, `never`, `expired`, `revoked`…, or `missing`.
    pub expires: String,
}

impl MemberRow {
    /// `ADDRESS FINGERPRINT ROLE STATE EXPIRES`.
    pub fn line(&self) -> String {
        let role = if self.show_key_id {
            format!("{},show-key-id", self.role)
        } else {
            self.role.clone()
        };
        format!(
            "{} {} {role} {} {}",
            self.address, self.fingerprint, self.state, self.expires
        )
    }
}

/// Every binding of `list`, then the keys offered by email and not yet proven.
pub fn member_rows(
    keyring_dir: &Path,
    store: &dyn Store,
    list: &str,
) -> Result<Vec<MemberRow>, KeyError> {
    member_rows_known(keyring_dir, store, list, None)
}

/// [`member_rows`], taking the certificates the running daemon has loaded for `list` from
/// `known` instead of reading and parsing each again (the rest from the store, as the CLI).
pub fn member_rows_known(
    keyring_dir: &Path,
    store: &dyn Store,
    list: &str,
    known: Option<&pgp::ListKeys>,
) -> Result<Vec<MemberRow>, KeyError> {
    let certs = CertStore::of(keyring_dir, store);
    let loaded: HashMap<String, &Cert> = known
        .map(|l| {
            l.members
                .iter()
                .map(|m| (m.cert.fingerprint().to_hex(), &m.cert))
                .collect()
        })
        .unwrap_or_default();
    let expires = |fingerprint: &str| {
        if let Some(cert) = loaded.get(fingerprint) {
            return expiry_text(cert);
        }
        match fingerprint.parse().ok().map(|f| certs.get(&f)) {
            Some(Ok(Some(cert))) => expiry_text(&cert),
            _ => "missing".into(),
        }
    };
    let mut rows = Vec::new();
    for b in store.bindings(list)? {
        rows.push(MemberRow {
            expires: expires(&b.fingerprint),
            role: b.role.as_str().into(),
            show_key_id: b.show_key_id,
            state: b.state.to_string(),
            address: b.address,
            fingerprint: b.fingerprint,
        });
    }
    // Keys offered by email and not yet proven (the challenge is out).
    for (address, fingerprint) in store.pending_list(list)? {
        rows.push(MemberRow {
            expires: expires(&fingerprint),
            role: crate::store::Role::Member.as_str().into(),
            show_key_id: false,
            state: "pending".into(),
            address,
            fingerprint,
        });
    }
    Ok(rows)
}

/// Expiry of a certificate as the `member list` column shows it.
pub fn expiry_text(cert: &Cert) -> String {
    match pgp::primary_expiry(cert) {
        Some(Some(t)) => {
            let secs = t
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            format_date(secs)
        }
        Some(None) => "never".into(),
        None => "invalid".into(),
    }
}

/// `YYYY-MM-DD` (UTC) for a Unix time.
pub fn format_date(secs: u64) -> String {
    i64::try_from(secs)
        .ok()
        .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC)
        .format("%Y-%m-%d")
        .to_string()
}

/// Merges members' certifications of the list key into it (published wherever the list key
/// goes: key requests, WKD, `export-key`). Returns how many were new.
pub fn add_list_certifications<'a>(
    home: impl Into<KeyHome<'a>>,
    list: &str,
    sigs: Vec<Signature>,
) -> Result<usize, KeyError> {
    update_list_secret(home, list, |cert| {
        pgp::insert_certifications(cert, sigs.clone())
    })
}

/// Rotates the list key's encryption subkey under the lock (`pgp::rotate`: a fresh subkey,
/// the current ones retiring after `grace`, expired secrets destroyed). A new subkey needs
/// the key opened; the key is saved protected if it was, or if a passphrase is configured.
pub fn rotate_subkey<'a>(
    home: impl Into<KeyHome<'a>>,
    list: &str,
    grace: std::time::Duration,
    mode: RotateMode,
    passphrases: &Passphrases,
) -> Result<Rotation, KeyError> {
    let now = std::time::SystemTime::now();
    update_list_secret(home, list, |cert| {
        // Destroying secrets needs no passphrase: pruning leaves protection as it is.
        if mode == RotateMode::PruneOnly {
            return pgp::rotate(cert, list, grace, mode, now);
        }
        let password = match (pgp::protection(&cert), passphrases.source()) {
            (Protection::Unprotected, None) => None,
            _ => Some(passphrases.get(list)?),
        };
        let original = cert.clone();
        let cert = match &password {
            Some(p) if pgp::protection(&cert) != Protection::Unprotected => {
                pgp::unlock(cert, p, list)?
            }
            _ => cert,
        };
        let (cert, rotation) = pgp::rotate(cert, list, grace, mode, now)?;
        match &password {
            // Only the new subkey gets a fresh encryption: the others stay byte for byte.
            Some(p) => Ok((
                pgp::protect(pgp::keep_encrypted_secrets(cert, &original)?, p)?,
                rotation,
            )),
            None => Ok((cert, rotation)),
        }
    })
}

fn save_list_secret(keyring_dir: &Path, list: &str, cert: &Cert) -> Result<(), KeyError> {
    let bytes = pgp::armored_secret(cert)?;
    write_atomic(
        &list_dir(keyring_dir, list).join("secret.pgp"),
        &bytes,
        0o600,
    )
}

/// Address lookups (`address::classify`) find lists in the keyring snapshot.
impl crate::address::ListDirectory for Keyring {
    type List = Arc<ListKeys>;
    fn find(&self, address: &str) -> Option<Self::List> {
        self.lists.get(address).cloned()
    }
    fn key_suffix<'a>(&'a self, list: &'a Self::List) -> &'a str {
        &list.policy.key_suffix
    }
    fn hosts_domain(&self, domain: &str) -> bool {
        self.lists
            .keys()
            .any(|a| a.rsplit_once('@').is_some_and(|(_, d)| d == domain))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(format_date(0), "1970-01-01");
        assert_eq!(format_date(951_782_400), "2000-02-29");
        assert_eq!(format_date(1_798_675_200), "2026-12-31");
    }

    /// The daemon (a member's certification) and the CLI (a rotation) changing the list key
    /// at once: each read-modify-write sees the other's result, so both changes stay.
    #[test]
    fn concurrent_list_key_updates_both_stay() {
        let dir = tempfile::tempdir().unwrap();
        let keyring = dir.path().to_path_buf();
        let list = "enc@lists.example.test";
        let before = create_list_key(&keyring, list).unwrap();
        let subkeys = |c: &Cert| c.keys().subkeys().count();
        let rounds = 4;
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let keyring = keyring.clone();
                std::thread::spawn(move || {
                    for _ in 0..rounds {
                        let grace = std::time::Duration::from_secs(3600);
                        let none = Passphrases::none();
                        rotate_subkey(&keyring, list, grace, RotateMode::NewSubkey, &none).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let after = load_list_key(&keyring, list).unwrap();
        assert_eq!(subkeys(&after), subkeys(&before) + 2 * rounds);
    }

    /// A rotation of a protected key encrypts only the new subkey's secret: the others stay
    /// as they were, so hosts that opened them before need no S2K derivation for them again.
    #[test]
    fn a_rotation_keeps_the_other_secrets_encrypted_as_they_were() {
        let dir = tempfile::tempdir().unwrap();
        let keyring = dir.path();
        let list = "enc@lists.example.test";
        create_list_key(keyring, list).unwrap();
        let pw = Password::from("right");
        protect_list_key(keyring, list, &Passphrases::none(), &pw).unwrap();
        let before = load_list_key(keyring, list).unwrap();
        let given = Passphrases::given(pw);
        let grace = std::time::Duration::from_secs(3600);
        rotate_subkey(keyring, list, grace, RotateMode::NewSubkey, &given).unwrap();
        let after = load_list_key(keyring, list).unwrap();
        assert_eq!(pgp::protection(&after), Protection::Protected);
        let secrets = |c: &Cert| -> HashMap<Fingerprint, _> {
            c.keys()
                .secret()
                .map(|ka| (ka.key().fingerprint(), ka.key().secret().clone()))
                .collect()
        };
        let (old, new) = (secrets(&before), secrets(&after));
        assert_eq!(new.len(), old.len() + 1);
        for (fpr, secret) in &old {
            assert!(new.get(fpr) == Some(secret), "{fpr} re-encrypted");
        }
    }

    /// A configuration under `root` with one list's policy file (no key yet).
    fn one_list_site(root: &std::path::Path) -> (Config, &'static str) {
        let config = Config {
            policy_dir: root.join("lists.d"),
            keyring_dir: root.join("keyrings"),
            state_dir: root.join("state"),
            ..Config::default()
        };
        let list = "enc@lists.example.test";
        std::fs::create_dir_all(&config.policy_dir).unwrap();
        std::fs::write(config.policy_path(list), Policy::default_file_text(list)).unwrap();
        (config, list)
    }

    /// A reload reuses an opened key only with the same passphrase: a wrong one is an error
    /// (or, for a running daemon, a locked list), even though the file did not change.
    #[test]
    fn a_wrong_passphrase_is_never_masked_by_an_earlier_load() {
        let dir = tempfile::tempdir().unwrap();
        let (config, list) = one_list_site(dir.path());
        let store = crate::store::SqliteStore::open(&config.state_dir).unwrap();
        let right = || Passphrases::given(Password::from("right"));
        let wrong = || Passphrases::given(Password::from("wrong"));
        create_list_key(&config.keyring_dir, list).unwrap();
        let new = Password::from("right");
        protect_list_key(&config.keyring_dir, list, &Passphrases::none(), &new).unwrap();
        let load = |p: Passphrases, locked| Keyring::load_with(&config, &store, &p, locked);
        let k = load(right(), LockedKeys::Fail).unwrap();
        assert!(k.lists[list].locked().is_none());
        assert_eq!(
            pgp::protection(&k.lists[list].secret),
            Protection::Unprotected
        );
        let err = load(wrong(), LockedKeys::Fail).err().unwrap();
        assert!(matches!(err, KeyError::Passphrase(_)), "{err}");
        let k = load(wrong(), LockedKeys::Refuse).unwrap();
        assert!(k.lists[list].locked().is_some());
        assert!(load(right(), LockedKeys::Fail).unwrap().lists[list]
            .locked()
            .is_none());
    }

    /// A restart loads the members' keys from the certificate cache, the same keys a cold
    /// load found; a cache that cannot be read or written costs only time.
    #[test]
    fn keyring_loads_answer_from_the_certificate_cache_and_survive_without_it() {
        use crate::pgp::testkit::general_purpose;
        use sequoia_openpgp::serialize::MarshalInto;
        let dir = tempfile::tempdir().unwrap();
        let (config, list) = one_list_site(dir.path());
        create_list_key(&config.keyring_dir, list).unwrap();
        let store = crate::store::SqliteStore::open(&config.state_dir).unwrap();
        let members: Vec<(String, Cert)> = (0..3)
            .map(|i| {
                let a = format!("m{i}@x.test");
                let cert = general_purpose(&format!("<{a}>"));
                (a, cert)
            })
            .collect();
        for (a, cert) in &members {
            add_member(
                &config,
                &store,
                list,
                a,
                cert,
                Role::Member,
                RecipientKeyId::Hidden,
            )
            .unwrap();
        }
        let keys_of = |k: &Keyring| -> Vec<Vec<Vec<u8>>> {
            members
                .iter()
                .map(|(a, _)| {
                    let (_, keys) = k.lists[list].recipient(a).unwrap();
                    let keys = keys.as_ref().unwrap();
                    keys.keys.iter().map(|k| k.to_vec().unwrap()).collect()
                })
                .collect()
        };
        // A certificate bound to two addresses: both members get it.
        let mut twice = store.bindings(list).unwrap()[0].clone();
        twice.address = "alias@x.test".into();
        store.bind(&twice).unwrap();
        let k = Keyring::load(&config, &store).unwrap();
        let alias = k.lists[list].member("alias@x.test").unwrap();
        assert_eq!(alias.cert.fingerprint().to_hex(), twice.fingerprint);
        assert_eq!(k.lists[list].members.len(), 4);
        let cold = keys_of(&k);
        let fprs: Vec<String> = members
            .iter()
            .map(|(_, c)| c.fingerprint().to_hex())
            .collect();
        assert_eq!(
            store.cert_cache_get(&fprs).unwrap().len(),
            3,
            "written at load"
        );
        assert_eq!(keys_of(&Keyring::load(&config, &store).unwrap()), cold);
        let db = rusqlite::Connection::open(config.state_dir.join("state.sqlite")).unwrap();
        db.execute_batch("DROP TABLE cert_cache").unwrap();
        assert_eq!(keys_of(&Keyring::load(&config, &store).unwrap()), cold);
    }

    #[test]
    fn addresses() {
        assert_eq!(
            normalize_address(" <Alice@Example.NET> "),
            "alice@example.net"
        );
        assert!(valid_address("a@b"));
        assert!(!valid_address("a@b@c"));
        assert!(!valid_address("../x@y"));
        assert!(!valid_address("a b@c"));
    }
}
