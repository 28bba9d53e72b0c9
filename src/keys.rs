//! List secret keys, member certificates (a pgp.cert.d directory) and the in-memory keyring
//! snapshot the daemon works from.

use crate::config::{Config, ConfigError, Policy};
use crate::store::{Binding, BindingState, Role, Store, StoreError};
use openpgp::cert::prelude::*;
use openpgp::parse::Parse;
use openpgp::policy::{Policy as _, StandardPolicy};
use openpgp::serialize::{Serialize, SerializeInto};
use openpgp::types::{PublicKeyAlgorithm, RevocationStatus};
use openpgp::{Cert, Fingerprint, KeyHandle, KeyID};
use sequoia_openpgp as openpgp;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub static POLICY: StandardPolicy<'static> = StandardPolicy::new();

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not an OpenPGP key: {reason}")]
    Parse { path: String, reason: String },
    #[error("{0}")]
    Unusable(String),
    #[error("list {0} does not exist (no policy file)")]
    NoSuchList(String),
    #[error("list {0} already exists")]
    ListExists(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("OpenPGP: {0}")]
    Crypto(String),
}

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
    use std::os::unix::fs::OpenOptionsExt;
    let dir = list_dir(keyring_dir, list);
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
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

/// Loads the list key, lets `change` modify it and saves the result, all under the lock.
fn update_list_secret<R>(
    keyring_dir: &Path,
    list: &str,
    change: impl FnOnce(Cert) -> Result<(Cert, R), KeyError>,
) -> Result<R, KeyError> {
    let _lock = lock_list_secret(keyring_dir, list)?;
    let (cert, result) = change(load_list_key(keyring_dir, list)?)?;
    save_list_secret(keyring_dir, list, &cert)?;
    Ok(result)
}

/// Creates the list key (v4, Cv25519: GnuPG 2.2 reads it; reference/openpgp.md) and returns it.
pub fn create_list_key(keyring_dir: &Path, list: &str) -> Result<Cert, KeyError> {
    let path = list_dir(keyring_dir, list).join("secret.pgp");
    let _lock = lock_list_secret(keyring_dir, list)?;
    if path.exists() {
        return Err(KeyError::ListExists(list.to_string()));
    }
    let (cert, _rev) = CertBuilder::new()
        .set_cipher_suite(CipherSuite::Cv25519)
        .set_profile(openpgp::Profile::RFC4880)
        .map_err(|e| KeyError::Crypto(e.to_string()))?
        .add_userid(format!("<{list}>"))
        .add_signing_subkey()
        .add_transport_encryption_subkey()
        .add_storage_encryption_subkey()
        .generate()
        .map_err(|e| KeyError::Crypto(e.to_string()))?;
    let bytes = cert
        .as_tsk()
        .armored()
        .to_vec()
        .map_err(|e| KeyError::Crypto(e.to_string()))?;
    write_atomic(&path, &bytes, 0o600)?;
    Ok(cert)
}

pub fn load_list_key(keyring_dir: &Path, list: &str) -> Result<Cert, KeyError> {
    let path = list_dir(keyring_dir, list).join("secret.pgp");
    let cert = Cert::from_file(&path).map_err(|e| match e.downcast::<std::io::Error>() {
        Ok(source) => KeyError::Io {
            path: path.display().to_string(),
            source,
        },
        Err(e) => KeyError::Parse {
            path: path.display().to_string(),
            reason: e.to_string(),
        },
    })?;
    if !cert.is_tsk() {
        return Err(KeyError::Unusable(format!(
            "{}: has no secret key material",
            path.display()
        )));
    }
    Ok(cert)
}

/// Member and owner certificates in the pgp.cert.d layout (`certs/ab/cdef…`), so admins can
/// also use `sq --cert-store`.
pub struct CertDir {
    root: PathBuf,
}

impl CertDir {
    pub fn new(keyring_dir: &Path) -> CertDir {
        CertDir {
            root: keyring_dir.join("certs"),
        }
    }

    fn path(&self, fpr: &Fingerprint) -> PathBuf {
        let hex = fpr.to_hex().to_ascii_lowercase();
        self.root.join(&hex[..2]).join(&hex[2..])
    }

    pub fn get(&self, fpr: &Fingerprint) -> Result<Option<Cert>, KeyError> {
        let path = self.path(fpr);
        match std::fs::read(&path) {
            Ok(bytes) => Cert::from_bytes(&bytes)
                .map(Some)
                .map_err(|e| KeyError::Parse {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(KeyError::Io {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    /// Inserts the public parts of `cert`, merged with any stored copy.
    pub fn insert(&self, cert: &Cert) -> Result<(), KeyError> {
        let public = cert.clone().strip_secret_key_material();
        let merged = match self.get(&cert.fingerprint())? {
            Some(old) => old
                .merge_public(public)
                .map_err(|e| KeyError::Crypto(e.to_string()))?,
            None => public,
        };
        let mut bytes = Vec::new();
        merged
            .serialize(&mut bytes)
            .map_err(|e| KeyError::Crypto(e.to_string()))?;
        write_atomic(&self.path(&cert.fingerprint()), &bytes, 0o644)
    }
}

/// Why a member certificate cannot be used for encryption now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyProblem {
    #[error("certificate {0} is not valid: {1}")]
    Invalid(Fingerprint, String),
    #[error("certificate {0} is revoked")]
    Revoked(Fingerprint),
    #[error("certificate {0} has expired")]
    Expired(Fingerprint),
    #[error("certificate {0} has no valid user ID for {1}")]
    NoUserId(Fingerprint, String),
    #[error("{0}")]
    Weak(&'static str),
    #[error("certificate {0} has no usable encryption subkey")]
    NoEncryptionKey(Fingerprint),
}

/// Why a member certificate cannot be used for encryption now, or `Ok` if it can.
pub fn check_member_cert(cert: &Cert, address: &str) -> Result<(), KeyProblem> {
    let fpr = cert.fingerprint();
    let vc = cert
        .with_policy(&POLICY, None)
        .map_err(|e| KeyProblem::Invalid(fpr.clone(), e.to_string()))?;
    if let RevocationStatus::Revoked(_) = vc.revocation_status() {
        return Err(KeyProblem::Revoked(fpr));
    }
    vc.alive().map_err(|_| KeyProblem::Expired(fpr.clone()))?;
    let has_uid = vc.userids().any(|u| {
        u.userid()
            .email_normalized()
            .ok()
            .flatten()
            .is_some_and(|e| e == address)
    });
    if !has_uid {
        return Err(KeyProblem::NoUserId(fpr, address.to_string()));
    }
    let mut usable = 0;
    for ka in vc.keys().for_transport_encryption().alive().revoked(false) {
        weak_key(ka.key().pk_algo(), ka.key().mpis().bits())?;
        usable += 1;
    }
    if usable == 0 {
        return Err(KeyProblem::NoEncryptionKey(fpr));
    }
    Ok(())
}

fn weak_key(algo: PublicKeyAlgorithm, bits: Option<usize>) -> Result<(), KeyProblem> {
    #[allow(deprecated)]
    match algo {
        PublicKeyAlgorithm::ElGamalEncrypt | PublicKeyAlgorithm::ElGamalEncryptSign => {
            Err(KeyProblem::Weak(
                "ElGamal encryption keys are too weak; please use a Curve25519 or RSA-3072 key",
            ))
        }
        PublicKeyAlgorithm::RSAEncryptSign | PublicKeyAlgorithm::RSAEncrypt
            if bits.unwrap_or(0) < 2048 =>
        {
            Err(KeyProblem::Weak("RSA keys under 2048 bits are too weak"))
        }
        _ => Ok(()),
    }
}

/// Reads a certificate file (armored or binary) that must hold exactly one certificate.
pub fn read_cert_file(path: &Path) -> Result<Cert, KeyError> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    let parser = CertParser::from_bytes(&bytes).map_err(|e| KeyError::Parse {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    let certs: Vec<Cert> = parser
        .collect::<Result<_, _>>()
        .map_err(|e| KeyError::Parse {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
    match certs.len() {
        1 => Ok(certs.into_iter().next().expect("one")),
        0 => Err(KeyError::Parse {
            path: path.display().to_string(),
            reason: "no certificate found".into(),
        }),
        n => Err(KeyError::Parse {
            path: path.display().to_string(),
            reason: format!("{n} certificates found, expected one"),
        }),
    }
}

/// A member's certificate as the daemon uses it.
#[derive(Clone)]
pub struct Member {
    pub address: String,
    pub cert: Cert,
    pub role: Role,
    pub show_key_id: bool,
}

/// Everything the pipelines need to know about one list.
pub struct ListKeys {
    pub address: String,
    pub policy: Policy,
    /// The list's secret key (TSK).
    pub secret: Cert,
    pub members: Vec<Member>,
    by_address: HashMap<String, usize>,
    by_keyid: HashMap<KeyID, Vec<usize>>,
    /// Per member (same index): the encryption keys, worked out at most once per snapshot
    /// (on first use) so the RCPT path and encryption do not re-validate certificates per
    /// message, and loading a snapshot does not validate members nobody writes to.
    encryption: Vec<std::sync::OnceLock<Result<EncryptionKeys, KeyProblem>>>,
}

/// A member's usable encryption keys as of the snapshot.
#[derive(Clone)]
pub struct EncryptionKeys {
    /// What the certificate advertises (SEIPDv2 or not): decides the batch's packet version.
    pub features: openpgp::types::Features,
    pub keys: Vec<
        openpgp::packet::Key<
            openpgp::packet::key::PublicParts,
            openpgp::packet::key::UnspecifiedRole,
        >,
    >,
    /// When the first of those keys (or the certificate) expires.
    pub until: Option<std::time::SystemTime>,
}

impl EncryptionKeys {
    fn of(cert: &Cert, address: &str) -> Result<EncryptionKeys, KeyProblem> {
        use openpgp::cert::Preferences;
        check_member_cert(cert, address)?;
        let vc = cert
            .with_policy(&POLICY, None)
            .map_err(|e| KeyProblem::Invalid(cert.fingerprint(), e.to_string()))?;
        let features = vc
            .features()
            .unwrap_or_else(|| openpgp::types::Features::empty().set_seipdv1());
        let mut until = vc.primary_key().key_expiration_time();
        let mut keys = Vec::new();
        for ka in vc
            .keys()
            .for_transport_encryption()
            .alive()
            .revoked(false)
            .supported()
        {
            if let Some(t) = ka.key_expiration_time() {
                until = Some(until.map_or(t, |u| u.min(t)));
            }
            keys.push(ka.key().clone().role_into_unspecified());
        }
        Ok(EncryptionKeys {
            features,
            keys,
            until,
        })
    }

    /// Usable now (the snapshot may outlive an expiry).
    pub fn usable(&self) -> bool {
        !self.keys.is_empty() && self.until.is_none_or(|t| t > std::time::SystemTime::now())
    }
}

impl ListKeys {
    pub fn new(address: String, policy: Policy, secret: Cert, members: Vec<Member>) -> ListKeys {
        let mut by_address = HashMap::new();
        let mut by_keyid: HashMap<KeyID, Vec<usize>> = HashMap::new();
        for (i, m) in members.iter().enumerate() {
            by_address.insert(m.address.clone(), i);
            for k in m.cert.keys() {
                by_keyid.entry(k.key().keyid()).or_default().push(i);
            }
        }
        let encryption = members.iter().map(|_| std::sync::OnceLock::new()).collect();
        ListKeys {
            address,
            policy,
            secret,
            members,
            by_address,
            by_keyid,
            encryption,
        }
    }

    /// The member bound to `address` and its encryption keys (or why it has none).
    pub fn recipient(
        &self,
        address: &str,
    ) -> Option<(&Member, &Result<EncryptionKeys, KeyProblem>)> {
        self.by_address.get(address).map(|&i| {
            let m = &self.members[i];
            let keys = self.encryption[i].get_or_init(|| EncryptionKeys::of(&m.cert, &m.address));
            (m, keys)
        })
    }

    pub fn member(&self, address: &str) -> Option<&Member> {
        self.by_address.get(address).map(|&i| &self.members[i])
    }

    /// Member certificates holding a key with this handle (key id or fingerprint).
    pub fn certs_for(&self, handle: &KeyHandle) -> Vec<&Member> {
        let ids = self
            .by_keyid
            .get(&KeyID::from(handle))
            .cloned()
            .unwrap_or_default();
        ids.into_iter()
            .map(|i| &self.members[i])
            .filter(|m| m.cert.keys().any(|k| k.key().key_handle().aliases(handle)))
            .collect()
    }

    /// The list's address parts: (`local`, `domain`).
    pub fn parts(&self) -> (&str, &str) {
        self.address.split_once('@').unwrap_or((&self.address, ""))
    }
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

impl Keyring {
    pub fn load(config: &Config, store: &dyn Store) -> Result<Keyring, KeyError> {
        let generation = store.generation()?;
        let certs = CertDir::new(&config.keyring_dir);
        let mut lists = HashMap::new();
        for name in list_names(config)? {
            let policy = Policy::load(&config.policy_path(&name))?;
            let secret = load_list_key(&config.keyring_dir, &name)?;
            let mut members = Vec::new();
            for b in store.bindings(&name)? {
                if b.state != BindingState::Active {
                    continue;
                }
                let fpr: Fingerprint = b.fingerprint.parse().map_err(|_| {
                    KeyError::Unusable(format!("binding {} on {name}: bad fingerprint", b.address))
                })?;
                match certs.get(&fpr)? {
                    Some(cert) => members.push(Member {
                        address: b.address.clone(),
                        cert,
                        role: b.role,
                        show_key_id: b.show_key_id,
                    }),
                    None => tracing::warn!(
                        "{name}: certificate {fpr} for {} is missing from the cert store",
                        b.address
                    ),
                }
            }
            lists.insert(
                name.clone(),
                Arc::new(ListKeys::new(name, policy, secret, members)),
            );
        }
        Ok(Keyring {
            generation,
            lists,
            address: crate::address::AddressConfig::from_config(config),
            other_recipients: config.list_domain_other_recipients,
        })
    }
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
    CertDir::new(&config.keyring_dir).insert(cert)?;
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

/// Expiry of a certificate as the `member list` column shows it.
pub fn expiry_text(cert: &Cert) -> String {
    match cert.with_policy(&POLICY, None) {
        Ok(vc) => match vc.primary_key().key_expiration_time() {
            Some(t) => {
                let secs = t
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                format_date(secs)
            }
            None => "never".into(),
        },
        Err(_) => "invalid".into(),
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

/// Whether the policy accepts `cert` at all (used by check-config).
pub fn cert_policy_ok(cert: &Cert) -> bool {
    cert.with_policy(&POLICY, None).is_ok()
        && POLICY
            .packet(&openpgp::Packet::from(cert.primary_key().key().clone()))
            .is_ok()
}

/// Until when a certificate can be encrypted to: the earlier of the primary key's expiry and
/// the latest expiry among its live encryption subkeys (`None`: no expiry).
pub fn usable_until(cert: &Cert) -> Option<Option<std::time::SystemTime>> {
    let vc = cert.with_policy(&POLICY, None).ok()?;
    let primary = vc.primary_key().key_expiration_time();
    let mut latest: Option<Option<std::time::SystemTime>> = None;
    for ka in vc.keys().for_transport_encryption().alive().revoked(false) {
        let e = ka.key_expiration_time();
        latest = Some(match (latest, e) {
            (None, e) => e,
            (Some(None), _) | (_, None) => None,
            (Some(Some(a)), Some(b)) => Some(a.max(b)),
        });
    }
    let subkeys = latest?;
    Some(match (primary, subkeys) {
        (None, s) => s,
        (p, None) => p,
        (Some(p), Some(s)) => Some(p.min(s)),
    })
}

/// Merges members' certifications of the list key into it (published wherever the list key
/// goes: key requests, WKD, `export-key`). Returns how many were new.
pub fn add_list_certifications(
    keyring_dir: &Path,
    list: &str,
    sigs: Vec<openpgp::packet::Signature>,
) -> Result<usize, KeyError> {
    update_list_secret(keyring_dir, list, |cert| {
        let before = cert
            .userids()
            .map(|u| u.certifications().count())
            .sum::<usize>();
        let cert = cert
            .insert_packets(sigs)
            .map_err(|e| KeyError::Crypto(e.to_string()))?
            .0;
        let after = cert
            .userids()
            .map(|u| u.certifications().count())
            .sum::<usize>();
        Ok((cert, after.saturating_sub(before)))
    })
}

/// What `list rotate-subkey` did.
pub struct Rotation {
    /// `None` when only pruning.
    pub new_subkey: Option<Fingerprint>,
    /// Encryption subkeys that now expire at the end of the grace period.
    pub retiring: Vec<Fingerprint>,
    /// Encryption subkeys whose grace period had ended: secret material destroyed.
    pub destroyed: Vec<Fingerprint>,
}

/// What `rotate_subkey` does beyond destroying the secrets whose grace period has ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotateMode {
    /// Retire the current encryption subkeys and add a fresh one.
    NewSubkey,
    /// Only destroy retired secrets (a daily cron job), no new subkey.
    PruneOnly,
}

/// Adds a fresh Cv25519 encryption subkey to the list key; the current encryption subkeys
/// expire after `grace` (their secrets are kept, so mail already encrypted to them still
/// decrypts); secrets of encryption subkeys that expired before now are destroyed.
pub fn rotate_subkey(
    keyring_dir: &Path,
    list: &str,
    grace: std::time::Duration,
    mode: RotateMode,
) -> Result<Rotation, KeyError> {
    update_list_secret(keyring_dir, list, |cert| {
        let now = std::time::SystemTime::now();
        let (cert, destroyed) = destroy_expired_secrets(cert, now)?;
        if mode == RotateMode::PruneOnly {
            let rotation = Rotation {
                new_subkey: None,
                retiring: Vec::new(),
                destroyed,
            };
            return Ok((cert, rotation));
        }
        let mut primary = primary_signer(&cert, list)?;
        let (cert, retiring) = retire_encryption_subkeys(cert, &mut primary, now + grace)?;
        let (cert, new_subkey) = add_encryption_subkey(cert, primary)?;
        let rotation = Rotation {
            new_subkey: Some(new_subkey),
            retiring,
            destroyed,
        };
        Ok((cert, rotation))
    })
}

fn crypto_error(e: anyhow::Error) -> KeyError {
    KeyError::Crypto(e.to_string())
}

fn encryption_flags() -> openpgp::types::KeyFlags {
    openpgp::types::KeyFlags::empty()
        .set_transport_encryption()
        .set_storage_encryption()
}

/// Strips the secrets of encryption subkeys past their (grace) expiry, keeping the public
/// halves; returns the stripped key and the subkeys whose secrets went.
fn destroy_expired_secrets(
    cert: Cert,
    now: std::time::SystemTime,
) -> Result<(Cert, Vec<Fingerprint>), KeyError> {
    // Judged as of now under the policy, so the binding signature in force decides.
    let expired: Vec<Fingerprint> = cert
        .with_policy(&POLICY, now)
        .map_err(crypto_error)?
        .keys()
        .subkeys()
        .key_flags(encryption_flags())
        .filter(|ka| ka.key().has_secret() && ka.alive().is_err())
        .map(|ka| ka.key().fingerprint())
        .collect();
    let mut destroyed = Vec::new();
    let mut packets: Vec<openpgp::Packet> = Vec::new();
    for p in cert.into_tsk().into_packets() {
        match p {
            openpgp::Packet::SecretSubkey(k) if expired.contains(&k.fingerprint()) => {
                destroyed.push(k.fingerprint());
                let (public, _) = k.take_secret();
                packets.push(openpgp::Packet::PublicSubkey(public));
            }
            other => packets.push(other),
        }
    }
    let cert = Cert::from_packets(packets.into_iter()).map_err(crypto_error)?;
    Ok((cert, destroyed))
}

/// The list key's primary secret, which signs the subkey bindings.
fn primary_signer(cert: &Cert, list: &str) -> Result<openpgp::crypto::KeyPair, KeyError> {
    let primary_fpr = cert.fingerprint();
    cert.keys()
        .secret()
        .find(|ka| ka.key().fingerprint() == primary_fpr)
        .ok_or_else(|| KeyError::Unusable(format!("{list}: the list key has no primary secret")))?
        .key()
        .clone()
        .into_keypair()
        .map_err(crypto_error)
}

/// Makes every live encryption subkey expire at `until` (unless it expires sooner already);
/// returns the updated key and the subkeys now retiring.
fn retire_encryption_subkeys(
    cert: Cert,
    primary: &mut openpgp::crypto::KeyPair,
    until: std::time::SystemTime,
) -> Result<(Cert, Vec<Fingerprint>), KeyError> {
    let vc = cert.with_policy(&POLICY, None).map_err(crypto_error)?;
    let mut retiring = Vec::new();
    let mut sigs = Vec::new();
    for ka in vc
        .keys()
        .subkeys()
        .key_flags(encryption_flags())
        .alive()
        .revoked(false)
    {
        if ka.key_expiration_time().is_none_or(|t| t > until) {
            sigs.extend(
                ka.set_expiration_time(primary, None, Some(until))
                    .map_err(crypto_error)?,
            );
            retiring.push(ka.key().fingerprint());
        }
    }
    let cert = cert.insert_packets(sigs).map_err(crypto_error)?.0;
    Ok((cert, retiring))
}

/// Binds a fresh Cv25519 encryption subkey without expiry; returns the key and its
/// fingerprint.
fn add_encryption_subkey(
    cert: Cert,
    primary: openpgp::crypto::KeyPair,
) -> Result<(Cert, Fingerprint), KeyError> {
    let vc = cert.with_policy(&POLICY, None).map_err(crypto_error)?;
    let before: Vec<Fingerprint> = cert
        .keys()
        .subkeys()
        .map(|ka| ka.key().fingerprint())
        .collect();
    let cert = openpgp::cert::prelude::KeyBuilder::new(encryption_flags())
        .set_cipher_suite(CipherSuite::Cv25519)
        .subkey(vc)
        .map_err(crypto_error)?
        .set_primary_key_signer(primary)
        // The new subkey does not inherit the retiring subkeys' expiry.
        .set_key_validity_period(None)
        .map_err(crypto_error)?
        .attach_cert()
        .map_err(crypto_error)?;
    let new_subkey = cert
        .keys()
        .subkeys()
        .map(|ka| ka.key().fingerprint())
        .find(|f| !before.contains(f))
        .ok_or_else(|| KeyError::Crypto("no subkey after rotation".into()))?;
    Ok((cert, new_subkey))
}

fn save_list_secret(keyring_dir: &Path, list: &str, cert: &Cert) -> Result<(), KeyError> {
    let bytes = cert.as_tsk().armored().to_vec().map_err(crypto_error)?;
    write_atomic(
        &list_dir(keyring_dir, list).join("secret.pgp"),
        &bytes,
        0o600,
    )
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
                        rotate_subkey(&keyring, list, grace, RotateMode::NewSubkey).unwrap();
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
