//! A short, deterministic smoke run of the two fuzz targets' entry points (fuzz/), inside the
//! normal test suite: seed inputs mutated by a fixed PRNG, so CI exercises hostile input
//! without building the sanitizer toolchain. The long runs use `cargo fuzz` (fuzz/README.md).

use listcrypt::config::{Limits, Policy};
use listcrypt::keys::{ListKeys, Member};
use listcrypt::store::Role;
use sequoia_openpgp::cert::prelude::*;
use std::path::Path;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\n\n",
    b"--b\r\n",
    b"--b--\r\n",
    b"Content-Type: multipart/mixed; boundary=b\r\n",
    b"Content-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\"; boundary=b\r\n",
    b"Content-Type: message/rfc822\r\n",
    b"-----BEGIN PGP MESSAGE-----\r\n",
    b"-----END PGP MESSAGE-----\r\n",
    b"\t",
    b":",
    b"\xc1\x0c",
    b"\xd2",
    b"\x00\x00\x00\x00",
];

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..=rng.below(8) {
        let pos = rng.below(v.len() + 1);
        match rng.below(5) {
            0 if !v.is_empty() => {
                let p = pos.min(v.len() - 1);
                v[p] ^= 1 << rng.below(8);
            }
            1 => {
                let t = TOKENS[rng.below(TOKENS.len())];
                v.splice(pos..pos, t.iter().copied());
            }
            2 if pos < v.len() => {
                let end = (pos + rng.below(64)).min(v.len());
                v.drain(pos..end);
            }
            3 if !v.is_empty() => {
                // Duplicate a slice (nesting, repeated parts).
                let a = rng.below(v.len());
                let b = (a + rng.below(512)).min(v.len());
                let chunk = v[a..b].to_vec();
                v.splice(pos..pos, chunk);
            }
            _ => v.truncate(pos),
        }
    }
    v
}

fn seeds() -> Vec<Vec<u8>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();
    for dir in ["fuzz/corpus/mime", "fuzz/corpus/openpgp"] {
        for e in std::fs::read_dir(root.join(dir)).expect("seed corpus") {
            out.push(std::fs::read(e.unwrap().path()).unwrap());
        }
    }
    for e in std::fs::read_dir(root.join("tests/corpus/inbound")).expect("inbound corpus") {
        let p = e.unwrap().path().join("message.eml");
        if let Ok(b) = std::fs::read(p) {
            out.push(b);
        }
    }
    out
}

#[test]
fn mime_entry_points_survive_mutated_input() {
    let seeds = seeds();
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    for _ in 0..20_000 {
        let seed = &seeds[rng.below(seeds.len())];
        let input = mutate(&mut rng, seed);
        let _ = listcrypt::mime::classify(&input, 20, 500);
        let _ = listcrypt::mime::walk_entity(&input, 20, 500);
    }
}

#[test]
fn inbound_pipeline_survives_mutated_input() {
    let (list_key, _) = CertBuilder::general_purpose(Some("<enc@l.test>"))
        .generate()
        .unwrap();
    let (member, _) = CertBuilder::general_purpose(Some("<a@m.test>"))
        .generate()
        .unwrap();
    let member = Member {
        address: "a@m.test".into(),
        cert: member,
        role: Role::Member,
        show_key_id: false,
    };
    let list = ListKeys::new(
        "enc@l.test".into(),
        Policy::default(),
        list_key,
        vec![member],
    );
    let limits = Limits {
        max_plaintext_bytes: 1 << 20,
        ..Limits::default()
    };
    // A real post to this list, signed by the member: the seed that reaches decryption.
    let inner = b"Content-Type: text/plain\r\n\r\nhello\r\n";
    let recipients = [listcrypt::pgp::BatchRecipient {
        cert: &list.secret,
        show_key_id: false,
    }];
    let armored =
        listcrypt::pgp::encrypt_sign(inner, &recipients, Some(&list.members[0].cert)).unwrap();
    let (ct, body) = listcrypt::mime::multipart_encrypted(&armored);
    let mut post = format!("From: a@m.test\r\nTo: enc@l.test\r\nContent-Type: {ct}\r\n\r\n")
        .replace('\n', "\r\n")
        .replace("\r\r\n", "\r\n")
        .into_bytes();
    post.extend_from_slice(&body);
    let env = listcrypt::inbound::Envelope { sender: "a@m.test" };
    let good = listcrypt::inbound::process(&env, &post, &list, &limits);
    assert!(
        matches!(
            good,
            listcrypt::inbound::Verdict::Deliver {
                hold: None,
                replay: Some(_),
                ..
            }
        ),
        "the unmutated seed is a good post: {good:?}"
    );
    let mut seeds = seeds();
    for _ in 0..8 {
        seeds.push(post.clone());
    }
    let mut rng = Rng(0x5eed_1234_abcd_0002);
    for _ in 0..3_000 {
        let seed = &seeds[rng.below(seeds.len())];
        let input = mutate(&mut rng, seed);
        let verdict = listcrypt::inbound::process(&env, &input, &list, &limits);
        // Whatever the input, a decision comes back (no panic, no hang); a delivered post was
        // either signed (and carries the replay digest) or could only be one the default
        // policy never delivers.
        if let listcrypt::inbound::Verdict::Deliver {
            replay, summary, ..
        } = &verdict
        {
            assert!(replay.is_some(), "delivered without a signature: {summary}");
        }
        let _ = listcrypt::pgp::decrypt_verify(&input, &list, 10_000, 1 << 20);
    }
    // The deep path stays reachable: a header-only change still decrypts and verifies.
    let mut tweaked = b"X-Fuzz: header only\r\n".to_vec();
    tweaked.extend_from_slice(&post);
    let verdict = listcrypt::inbound::process(&env, &tweaked, &list, &limits);
    assert!(
        matches!(
            verdict,
            listcrypt::inbound::Verdict::Deliver {
                replay: Some(_),
                ..
            }
        ),
        "{verdict:?}"
    );
}

/// The `address` fuzz target's entry points (fuzz/fuzz_targets/address.rs): RCPT spellings
/// mutated with the characters that carry meaning in addresses.
#[test]
fn address_entry_points_survive_mutated_input() {
    use listcrypt::address::{self, AddressConfig, ListDirectory};
    struct OneList;
    impl ListDirectory for OneList {
        type List = ();
        fn find(&self, address: &str) -> Option<()> {
            (address == "enc@lists.example.test").then_some(())
        }
        fn key_suffix<'a>(&'a self, _: &'a ()) -> &'a str {
            "key"
        }
        fn hosts_domain(&self, domain: &str) -> bool {
            domain == "lists.example.test"
        }
    }
    const SEEDS: &[&str] = &[
        "<enc@lists.example.test>",
        "<@relay.test,@b.test:\"enc+x\"@LISTS.example.test.>",
        "enc-bounces+member=example.org@lists.example.test",
        "<\"enc@lists.example.test\"@mx.example.test>",
        "enc-key+x@[192.0.2.1]",
    ];
    const BITS: &[&str] = &[
        "\"", "\\", "@", "<", ">", ":", ",", ".", "+", "-", "%", "!", "[", "]", "(", " ", "\r\n",
        "\u{212A}", "\u{0}", "\u{a0}",
    ];
    let cfg = AddressConfig {
        recipient_delimiter: "+-".into(),
        ..AddressConfig::default()
    };
    let mut rng = Rng(0x5eed_1234_abcd_0002);
    for _ in 0..20_000 {
        let mut s: Vec<char> = SEEDS[rng.below(SEEDS.len())].chars().collect();
        for _ in 0..=rng.below(4) {
            let pos = rng.below(s.len() + 1);
            if rng.below(2) == 0 && pos < s.len() {
                s.remove(pos);
            } else {
                let bit = BITS[rng.below(BITS.len())];
                s.splice(pos..pos, bit.chars());
            }
        }
        let text: String = s.into_iter().collect();
        if let Some(n) = address::normalize(&text) {
            // What the daemon stores and compares must read back as the same address.
            assert_eq!(
                address::normalize(&n.to_string()).as_ref(),
                Some(&n),
                "{text:?}"
            );
            assert!(!n.local.is_empty() && !n.domain.is_empty(), "{text:?}");
            let _ = address::classify(&n, &OneList, &cfg);
            let _ = address::classify_sender(&n, &OneList, &AddressConfig::default());
            let _ = address::is_in_list_domain(&n, &OneList);
        }
    }
}
