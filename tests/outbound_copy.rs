//! What a member finds in an outbound copy, decrypted with their own key: RFC 9788 header
//! protection (real fields inside, `HP-Outer` records, obscured outer Subject per policy),
//! leaking fields gone from the outside, the list's Autocrypt header, Padmé padding inside
//! the encryption, and the list's signature.

use listcrypt::config::{HeaderProtection, Padding, Policy};
use listcrypt::keys::{ListKeys, Member};
use listcrypt::mime::{self, Entity, Shape};
use listcrypt::outbound::{encrypt_message, padme};
use listcrypt::pgp::{decrypt_verify, SigCheck};
use listcrypt::store::Role;
use sequoia_openpgp::cert::prelude::*;
use sequoia_openpgp::Cert;

const POST: &str = "From: Alice Example <alice@example.test>\r\nTo: enc@lists.example.test\r\n\
Subject: [Enc] secret plans\r\nDate: Fri, 27 Nov 2026 15:49:49 +0100\r\nMessage-ID: <p1@example.test>\r\n\
X-Mailman-Rule-Misses: dmarc-mitigation; no-senders\r\nX-MailFrom: alice@example.test\r\n\
User-Agent: Mutt/2.2\r\nAutocrypt: addr=alice@example.test; keydata=AAAA\r\n\
MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nthe plans\r\n";

fn cert(uid: &str) -> Cert {
    CertBuilder::general_purpose(Some(uid))
        .generate()
        .unwrap()
        .0
}

/// Encrypts POST for `member` under `policy`; returns (outer message, decrypted inner entity,
/// whether the list's signature verified).
fn copy(policy: Policy) -> (String, String, bool) {
    let list_key = cert("<enc@lists.example.test>");
    let member = cert("<bob@example.test>");
    let list = ListKeys::new(
        "enc@lists.example.test".into(),
        policy.clone(),
        list_key.clone(),
        vec![Member {
            address: "bob@example.test".into(),
            cert: member.clone(),
            role: Role::Member,
            show_key_id: false,
        }],
    );
    let rewrite =
        encrypt_message(POST.as_bytes(), &list, &["<bob@example.test>".to_string()]).unwrap();
    let outer = rewrite.render(POST.as_bytes());
    // Bob's view: his secret key decrypts; the list key is the signer he knows.
    let bob = ListKeys::new(
        "bob-view".into(),
        Policy::default(),
        member,
        vec![Member {
            address: "enc@lists.example.test".into(),
            cert: list_key.strip_secret_key_material(),
            role: Role::Member,
            show_key_id: false,
        }],
    );
    let Shape::PgpMime { ciphertext } = mime::classify(&outer, 20, 500).unwrap() else {
        panic!("not PGP/MIME: {}", String::from_utf8_lossy(&outer));
    };
    let d = decrypt_verify(&ciphertext, &bob, 10_000, 1 << 20).unwrap();
    let signed = d.signatures.iter().any(|s| matches!(s, SigCheck::Good(_)));
    (
        String::from_utf8(outer).unwrap(),
        String::from_utf8(d.plaintext).unwrap(),
        signed,
    )
}

fn header(message: &str, name: &str) -> Option<String> {
    let e = Entity::parse(message.as_bytes()).unwrap();
    e.get(name).map(mime::header_text)
}

#[test]
fn baseline_copy() {
    let (outer, inner, signed) = copy(Policy::default());
    assert!(signed, "the list's signature verifies");
    assert_eq!(header(&outer, "Subject").as_deref(), Some("[...]"));
    assert!(
        !outer.contains("secret plans"),
        "the Subject travels only inside"
    );
    for leak in ["X-Mailman-Rule-Misses", "X-MailFrom", "User-Agent"] {
        assert!(
            header(&outer, leak).is_none(),
            "{leak} removed from the outside"
        );
    }
    let autocrypt = header(&outer, "Autocrypt").expect("the list's Autocrypt header");
    assert!(
        autocrypt.starts_with("addr=enc@lists.example.test;"),
        "{autocrypt}"
    );
    assert!(
        !outer.contains("addr=alice@example.test"),
        "members' Autocrypt removed"
    );
    // Inside: the real fields, the HP-Outer record and the body.
    assert_eq!(
        header(&inner, "Subject").as_deref(),
        Some("[Enc] secret plans")
    );
    assert!(header(&inner, "Content-Type")
        .unwrap()
        .contains("hp=\"cipher\""));
    assert!(inner.contains("HP-Outer: Subject: [...]\r\n"), "{inner}");
    assert!(
        inner.contains("HP-Outer: From: Alice Example <alice@example.test>\r\n"),
        "{inner}"
    );
    assert!(inner.ends_with("the plans\r\n"));
    // Padmé: the encrypted entity's length is a bucket boundary.
    assert!(header(&inner, "X-Listcrypt-Padding").is_some());
    assert_eq!(
        padme(inner.len()),
        inner.len(),
        "{} is no Padmé length",
        inner.len()
    );
}

#[test]
fn shy_and_no_confidentiality_and_no_padding() {
    let shy = Policy {
        header_protection: HeaderProtection::HcpShy,
        ..Policy::default()
    };
    let (outer, inner, _) = copy(shy);
    assert_eq!(
        header(&outer, "From").as_deref(),
        Some("alice@example.test")
    );
    assert_eq!(
        header(&outer, "Date").as_deref(),
        Some("Fri, 27 Nov 2026 14:49:49 +0000")
    );
    assert!(
        inner.contains("HP-Outer: From: alice@example.test\r\n"),
        "{inner}"
    );
    assert_eq!(
        header(&inner, "From").as_deref(),
        Some("Alice Example <alice@example.test>")
    );

    let open = Policy {
        header_protection: HeaderProtection::HcpNoConfidentiality,
        padding: Padding::None,
        autocrypt: false,
        ..Policy::default()
    };
    let (outer, inner, _) = copy(open);
    assert_eq!(
        header(&outer, "Subject").as_deref(),
        Some("[Enc] secret plans")
    );
    assert!(header(&inner, "X-Listcrypt-Padding").is_none());
    assert!(header(&outer, "Autocrypt").is_none());
}
