//! The OpenPGP entry point: arbitrary bytes as the encrypted part of a post to a list with one
//! member, through the whole inbound pipeline (decrypt, verify, rebuild) within the limits.
#![no_main]
use libfuzzer_sys::fuzz_target;
use listcrypt::config::{Limits, Policy};
use listcrypt::keys::{ListKeys, Member};
use listcrypt::store::Role;
use sequoia_openpgp::cert::prelude::*;
use std::sync::OnceLock;

fn list() -> &'static ListKeys {
    static LIST: OnceLock<ListKeys> = OnceLock::new();
    LIST.get_or_init(|| {
        let (list_key, _) = CertBuilder::general_purpose(Some("<enc@l.test>")).generate().unwrap();
        let (member, _) = CertBuilder::general_purpose(Some("<a@m.test>")).generate().unwrap();
        let member = Member {
            address: "a@m.test".into(),
            cert: member,
            role: Role::Member,
            show_key_id: false,
        };
        ListKeys::new("enc@l.test".into(), Policy::default(), list_key, vec![member])
    })
}

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_plaintext_bytes: 1 << 20,
        ..Limits::default()
    };
    let mut msg = b"From: a@m.test\r\nContent-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\"; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n--b\r\nContent-Type: application/octet-stream\r\n\r\n".to_vec();
    msg.extend_from_slice(data);
    msg.extend_from_slice(b"\r\n--b--\r\n");
    let env = listcrypt::inbound::Envelope { sender: "a@m.test" };
    let _ = listcrypt::inbound::process(&env, &msg, list(), &limits);
    let _ = listcrypt::pgp::decrypt_verify(data, list(), 10_000, 1 << 20);
});
