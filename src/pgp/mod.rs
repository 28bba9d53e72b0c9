//! Every use of sequoia lives here: decrypt and verify (inbound), encrypt to a batch and sign
//! (outbound), the list key's life (create, rotate, certifications), member certificates'
//! validity, the pgp.cert.d store and the key forms the list publishes. Other modules name
//! only the types re-exported below.

mod cert;
mod certcache;
mod certstore;
mod dearmor;
mod decrypt;
#[cfg(feature = "crypto-openssl")]
mod ecdh;
mod encrypt;
mod export;
mod list;
mod listkey;
mod offered;
mod prekey;
mod protect;
#[cfg(test)]
pub(crate) mod testkit;

pub use cert::{
    cert_policy_ok, certification_count, check_member_cert, has_key, key_ids, names_address,
    parse_certs, primary_expiry, read_cert_file, serialized_len, usable_until, EncryptionKey,
    EncryptionKeys, KeyProblem,
};
pub use certcache::{cache_tag, CacheUse, CertCache, Wanted};
pub use certstore::{CertDir, CertStore, Sha256};
pub use decrypt::{decrypt_verify, verify_detached, Decrypted, Failure, GoodSignature, SigCheck};
pub use encrypt::{
    encrypt_sign, encrypt_sign_keys, encrypt_signed, encrypt_signed_ahead, pkesk_paths,
    pkesks_ahead, sign_content, sign_detached, BatchRecipient, EncryptError, KeyedRecipient,
    SignedContent,
};
pub use export::{armored_public, autocrypt_keydata, binary_public, only_userid_for, sha1};
pub use list::{KeyError, ListKeys, Member};
pub use listkey::{
    armored_secret, generate_list_key, insert_certifications, keep_encrypted_secrets,
    parse_list_key, read_list_key, rotate, unlock_reusing, OpenedSecrets, RotateMode, Rotation,
};
pub use offered::{member_certifications, own_signatures_only};
pub use prekey::Prekeys;
pub use protect::{protect, protection, unlock, Protection};
pub use sequoia_openpgp::crypto::Password;
pub use sequoia_openpgp::packet::Signature;
pub use sequoia_openpgp::{Cert, Fingerprint, KeyHandle, KeyID};

use sequoia_openpgp::policy::StandardPolicy;

/// The policy every validity judgement uses. Configuring it differently must change
/// `certcache::POLICY_NAME` too, or cached validations made under the old one are used.
pub static POLICY: StandardPolicy<'static> = StandardPolicy::new();
