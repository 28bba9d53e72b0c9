//! The OpenPGP view of one list: its secret key and its members' certificates, indexed by
//! address and key id, with each member's encryption keys worked out once per snapshot; and
//! the error type of key handling.

use super::{has_key, key_ids, Cert, EncryptionKeys, KeyHandle, KeyID, KeyProblem};
use crate::config::{ConfigError, Policy};
use crate::store::{Role, StoreError};
use std::collections::HashMap;

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
    /// A protected list key without its passphrase, or with a wrong one.
    #[error("{0}")]
    Passphrase(String),
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
    /// (at load, through the certificate cache; else on first use) so that the RCPT path
    /// and encryption do not re-validate certificates per message.
    encryption: Vec<std::sync::OnceLock<Result<EncryptionKeys, KeyProblem>>>,
    /// Why the list key's secrets could not be opened (a wrong or missing passphrase):
    /// every transaction of the list is then refused with 451, never passed on.
    locked: Option<String>,
    /// The list key's primary key alone, without secrets (see [`ListKeys::identity`]).
    identity: Cert,
}

impl ListKeys {
    pub fn new(address: String, policy: Policy, secret: Cert, members: Vec<Member>) -> ListKeys {
        let mut by_address = HashMap::new();
        let mut by_keyid: HashMap<KeyID, Vec<usize>> = HashMap::new();
        for (i, m) in members.iter().enumerate() {
            by_address.insert(m.address.clone(), i);
            for keyid in key_ids(&m.cert) {
                by_keyid.entry(keyid).or_default().push(i);
            }
        }
        let encryption = members.iter().map(|_| std::sync::OnceLock::new()).collect();
        let identity = secret
            .clone()
            .strip_secret_key_material()
            .retain_userids(|_| false)
            .retain_user_attributes(|_| false)
            .retain_subkeys(|_| false);
        ListKeys {
            address,
            policy,
            secret,
            members,
            by_address,
            by_keyid,
            encryption,
            locked: None,
            identity,
        }
    }

    /// The list key's primary key without user IDs, subkeys or secrets: what a decryptor
    /// names as the certificate that decrypted (sequoia compares Intended Recipient
    /// subpackets with its fingerprint), cheap to clone for every message.
    pub fn identity(&self) -> &Cert {
        &self.identity
    }

    /// This list with its members' encryption keys worked out already (same order as
    /// `members`; the certificate cache's answers at load).
    pub fn with_encryption(mut self, keys: Vec<Result<EncryptionKeys, KeyProblem>>) -> ListKeys {
        // Any other length cannot be matched to members: they are then worked out on use.
        if keys.len() == self.members.len() {
            self.encryption = keys.into_iter().map(std::sync::OnceLock::from).collect();
        }
        self
    }

    /// A list whose key stays encrypted (`secret` as read from disk) for `why`.
    pub fn new_locked(
        address: String,
        policy: Policy,
        secret: Cert,
        members: Vec<Member>,
        why: String,
    ) -> ListKeys {
        ListKeys {
            locked: Some(why),
            ..ListKeys::new(address, policy, secret, members)
        }
    }

    /// Why the list key is locked (its mail gets 451), or `None` when it works.
    pub fn locked(&self) -> Option<&str> {
        self.locked.as_deref()
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
            .filter(|m| has_key(&m.cert, handle))
            .collect()
    }

    /// The list's address parts: (`local`, `domain`).
    pub fn parts(&self) -> (&str, &str) {
        self.address.split_once('@').unwrap_or((&self.address, ""))
    }
}
