//! Member and owner certificates: in the pgp.cert.d layout on disk (one host, SQLite), or in
//! the database every host shares (PostgreSQL).

use super::KeyError;
use crate::store::Store;
use openpgp::parse::Parse;
use openpgp::serialize::Serialize;
use openpgp::{Cert, Fingerprint};
use sequoia_openpgp as openpgp;
use std::path::{Path, PathBuf};

/// Member and owner certificates in the pgp.cert.d layout (`certs/ab/cdef…`), so admins can
/// also use `sq --cert-store`.
pub struct CertDir {
    root: PathBuf,
}

impl CertDir {
    pub fn new(keyring_dir: &Path) -> CertDir {
        CertDir::at(&keyring_dir.join("certs"))
    }

    /// A pgp.cert.d directory at `root` itself (`certs export` and `import`).
    pub fn at(root: &Path) -> CertDir {
        CertDir {
            root: root.to_path_buf(),
        }
    }

    fn path(&self, fpr: &Fingerprint) -> PathBuf {
        let hex = fpr.to_hex().to_ascii_lowercase();
        self.root.join(&hex[..2]).join(&hex[2..])
    }

    pub fn get(&self, fpr: &Fingerprint) -> Result<Option<Cert>, KeyError> {
        Ok(self.get_digested(fpr)?.map(|(cert, _)| cert))
    }

    /// [`CertDir::get`] with the SHA-256 of the file's bytes (the certificate cache's key).
    fn get_digested(&self, fpr: &Fingerprint) -> Result<Option<(Cert, Sha256)>, KeyError> {
        let path = self.path(fpr);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let cert = parse(&bytes, &path.display().to_string())?;
                Ok(Some((cert, sha256(&bytes))))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(KeyError::Io {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    /// Inserts the public parts of `cert`, merged with any stored copy.
    pub fn insert(&self, cert: &Cert) -> Result<(), KeyError> {
        let merged = merge(self.get(&cert.fingerprint())?, cert)?;
        let bytes = serialize(&merged)?;
        let path = self.path(&cert.fingerprint());
        crate::atomic_file::write(&path, &bytes, 0o644).map_err(|source| KeyError::Io {
            path: path.display().to_string(),
            source,
        })
    }

    /// Every certificate in the directory. Only the pgp.cert.d certificate files count
    /// (`ab/cdef…`, 40 or 64 hex digits in all); the special names (`trust-root`, `_…`) not.
    pub fn all(&self) -> Result<Vec<Cert>, KeyError> {
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| KeyError::Io { path, source }
        };
        let mut certs = Vec::new();
        let entries = match std::fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(certs),
            Err(e) => return Err(io(&self.root)(e)),
        };
        let hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
        let mut dirs = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io(&self.root))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.len() == 2 && hex(&name) && entry.path().is_dir() {
                dirs.push(entry.path());
            }
        }
        dirs.sort();
        for dir in dirs {
            let mut files = Vec::new();
            for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
                let entry = entry.map_err(io(&dir))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if matches!(name.len(), 38 | 62) && hex(&name) {
                    files.push(entry.path());
                }
            }
            files.sort();
            for file in files {
                let bytes = std::fs::read(&file).map_err(io(&file))?;
                certs.push(parse(&bytes, &file.display().to_string())?);
            }
        }
        Ok(certs)
    }
}

/// The certificates the daemon and the CLI use: `keyring_dir/certs` where the store keeps no
/// keys (SQLite), else the database, so that a certificate added on one host is on all.
pub enum CertStore<'a> {
    Dir(CertDir),
    Database(&'a dyn Store),
}

impl<'a> CertStore<'a> {
    pub fn of(keyring_dir: &Path, store: &'a dyn Store) -> CertStore<'a> {
        if store.keeps_keys() {
            CertStore::Database(store)
        } else {
            CertStore::Dir(CertDir::new(keyring_dir))
        }
    }

    pub fn get(&self, fpr: &Fingerprint) -> Result<Option<Cert>, KeyError> {
        match self {
            CertStore::Dir(dir) => dir.get(fpr),
            CertStore::Database(store) => match store.cert_get(&fpr.to_hex())? {
                Some(stored) => parse(&stored.bytes, &format!("certificate {fpr}")).map(Some),
                None => Ok(None),
            },
        }
    }

    /// The certificates of `fingerprints` that are stored (in one query from the database).
    pub fn get_many(&self, fingerprints: &[Fingerprint]) -> Result<Vec<Cert>, KeyError> {
        let certs = self.get_many_digested(fingerprints)?;
        Ok(certs.into_iter().map(|(cert, _)| cert).collect())
    }

    /// [`CertStore::get_many`], each with the SHA-256 of its bytes as stored: the
    /// certificate cache's key, so any change to a certificate misses its entries.
    pub fn get_many_digested(
        &self,
        fingerprints: &[Fingerprint],
    ) -> Result<Vec<(Cert, Sha256)>, KeyError> {
        match self {
            CertStore::Dir(dir) => {
                let mut certs = Vec::new();
                for fpr in fingerprints {
                    certs.extend(dir.get_digested(fpr)?);
                }
                Ok(certs)
            }
            CertStore::Database(store) => {
                let hex: Vec<String> = fingerprints.iter().map(|f| f.to_hex()).collect();
                store
                    .certs_get(&hex)?
                    .iter()
                    .map(|(fpr, bytes)| {
                        let cert = parse(bytes, &format!("certificate {fpr}"))?;
                        Ok((cert, sha256(bytes)))
                    })
                    .collect()
            }
        }
    }

    /// Inserts the public parts of `cert`, merged with any stored copy. In the database a
    /// copy another host changed meanwhile is read again and merged, so no change is lost.
    pub fn insert(&self, cert: &Cert) -> Result<(), KeyError> {
        let store = match self {
            CertStore::Dir(dir) => return dir.insert(cert),
            CertStore::Database(store) => store,
        };
        let fpr = cert.fingerprint();
        loop {
            let stored = store.cert_get(&fpr.to_hex())?;
            let (old, version) = match &stored {
                Some(s) => (
                    Some(parse(&s.bytes, &format!("certificate {fpr}"))?),
                    Some(s.version),
                ),
                None => (None, None),
            };
            let merged = merge(old.clone(), cert)?;
            if old.as_ref() == Some(&merged) {
                return Ok(());
            }
            if store.cert_put(&fpr.to_hex(), &serialize(&merged)?, version)? {
                return Ok(());
            }
        }
    }

    /// Every stored certificate.
    pub fn all(&self) -> Result<Vec<Cert>, KeyError> {
        match self {
            CertStore::Dir(dir) => dir.all(),
            CertStore::Database(store) => {
                let fprs = store.cert_fingerprints()?;
                store
                    .certs_get(&fprs)?
                    .iter()
                    .map(|(fpr, bytes)| parse(bytes, &format!("certificate {fpr}")))
                    .collect()
            }
        }
    }
}

/// A SHA-256 digest.
pub type Sha256 = [u8; 32];

fn sha256(bytes: &[u8]) -> Sha256 {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

fn parse(bytes: &[u8], what: &str) -> Result<Cert, KeyError> {
    Cert::from_bytes(bytes).map_err(|e| KeyError::Parse {
        path: what.to_string(),
        reason: e.to_string(),
    })
}

fn merge(old: Option<Cert>, cert: &Cert) -> Result<Cert, KeyError> {
    let public = cert.clone().strip_secret_key_material();
    match old {
        Some(old) => old
            .merge_public(public)
            .map_err(|e| KeyError::Crypto(e.to_string())),
        None => Ok(public),
    }
}

fn serialize(cert: &Cert) -> Result<Vec<u8>, KeyError> {
    let mut bytes = Vec::new();
    cert.serialize(&mut bytes)
        .map_err(|e| KeyError::Crypto(e.to_string()))?;
    Ok(bytes)
}
