//! Every use of sequoia lives here: decrypt and verify (inbound), encrypt to a batch and sign
//! (outbound).

mod decrypt;
mod encrypt;

pub use decrypt::{decrypt_verify, verify_detached, Decrypted, Failure, GoodSignature, SigCheck};
pub use encrypt::{
    encrypt_sign, encrypt_sign_keys, sign_detached, BatchRecipient, EncryptError, KeyedRecipient,
};
