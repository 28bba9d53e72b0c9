//! Member and owner certificates on disk, in the pgp.cert.d layout.

use super::KeyError;
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
        let path = self.path(&cert.fingerprint());
        crate::atomic_file::write(&path, &bytes, 0o644).map_err(|source| KeyError::Io {
            path: path.display().to_string(),
            source,
        })
    }
}
