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
    copy_of(POST, policy)
}

fn copy_of(post: &str, policy: Policy) -> (String, String, bool) {
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
        encrypt_message(post.as_bytes(), &list, &["<bob@example.test>".to_string()]).unwrap();
    let outer = rewrite.render(post.as_bytes());
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
    // Autocrypt Level 1 §2.3: a header whose addr is not the From address is invalid, so a
    // copy From the author carries no list key (and the author's own header was removed).
    assert!(
        header(&outer, "Autocrypt").is_none(),
        "no Autocrypt header on a copy From the author"
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

/// Mailman's DMARC mitigation `munge_from` (or mail the list sends as itself) puts the list
/// address in From: then the list's key is announced, with `addr` equal to From as
/// Autocrypt Level 1 §2.3 requires, so replies to the list can be encrypted.
#[test]
fn the_list_key_is_announced_when_from_is_the_list() {
    let munged = POST.replace(
        "From: Alice Example <alice@example.test>",
        "From: Alice Example via Enc <enc@lists.example.test>",
    );
    let (outer, _, _) = copy_of(&munged, Policy::default());
    let autocrypt = header(&outer, "Autocrypt").expect("the list's Autocrypt header");
    assert!(
        autocrypt.starts_with("addr=enc@lists.example.test;"),
        "{autocrypt}"
    );
    assert!(autocrypt.contains("keydata="), "{autocrypt}");
    let off = Policy {
        autocrypt: false,
        ..Policy::default()
    };
    let (outer, _, _) = copy_of(&munged, off);
    assert!(header(&outer, "Autocrypt").is_none(), "autocrypt = false");
}

/// A post as Mailman hands it to the outbound smtpd: the poster's Received lines and client
/// fields, informational fields, listcrypt's hold marker, Mailman's own fields. Each field that
/// must not travel in clear carries a marker of its own.
const MAILMAN_POST: &str = "Received: from mua.example.test (SECRET-RCVD-1 [192.0.2.7])\r\n\
\tby mx.example.test with ESMTPSA id 4Abc; Fri, 27 Nov 2026 15:49:40 +0100\r\n\
Received: from [10.1.2.3] (SECRET-RCVD-2) by mua.example.test; Fri, 27 Nov 2026 15:49:39 +0100\r\n\
From: Alice Example <alice@example.test>\r\nTo: enc@lists.example.test\r\n\
Subject: [Enc] secret plans\r\nDate: Fri, 27 Nov 2026 15:49:49 +0100\r\n\
Message-ID: <p2@example.test>\r\nIn-Reply-To: <p1@example.test>\r\n\
References: <p0@example.test> <p1@example.test>\r\n\
Keywords: SECRET-KEYWORDS\r\nComments: SECRET-COMMENTS\r\nThread-Topic: SECRET-TOPIC\r\n\
X-Listcrypt-Hold: SECRET-HOLD\r\nX-Unknown-Field: SECRET-UNKNOWN\r\n\
X-Mailman-Version: 3.3.8 SECRET-MMVERSION\r\nX-Mailman-Rule-Misses: SECRET-MISSES\r\n\
Sender: SECRET-SENDER <alice@example.test>\r\n\
Precedence: list\r\n\
List-Id: Enc <enc.lists.example.test>\r\n\
List-Post: <mailto:enc@lists.example.test>\r\n\
List-Unsubscribe: <mailto:enc-leave@lists.example.test>\r\n\
MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nthe plans\r\n";

/// Issue 9 §3 "Outbound copies" and RFC 9788 §3: only what transport and list handling need
/// travels in clear; hcp_baseline removes Keywords and Comments from the outside (they travel
/// inside), and fields nobody vouched for never leave in clear.
#[test]
fn outer_header_is_an_allow_list() {
    let (outer, inner, signed) = copy_of(MAILMAN_POST, Policy::default());
    assert!(signed, "the list's signature verifies");
    let head = &outer[..outer.find("\r\n\r\n").expect("header ends")];
    for name in [
        "Received",
        "Keywords",
        "Comments",
        "Thread-Topic",
        "X-Listcrypt-Hold",
        "X-Unknown-Field",
        "X-Mailman-Version",
        "X-Mailman-Rule-Misses",
        "Sender",
    ] {
        assert!(
            header(&outer, name).is_none(),
            "{name} travels in clear:\n{head}"
        );
    }
    assert!(
        !outer.contains("SECRET-"),
        "a marker travels in clear:\n{head}"
    );
    // What clients and MTAs need stays (RFC 5322 originator and threading fields, RFC 2369
    // and RFC 2919 list fields, RFC 2076/3834 Precedence), with the Subject obscured.
    assert_eq!(header(&outer, "Subject").as_deref(), Some("[...]"));
    for (name, value) in [
        ("From", "Alice Example <alice@example.test>"),
        ("To", "enc@lists.example.test"),
        ("Date", "Fri, 27 Nov 2026 15:49:49 +0100"),
        ("Message-ID", "<p2@example.test>"),
        ("In-Reply-To", "<p1@example.test>"),
        ("References", "<p0@example.test> <p1@example.test>"),
        ("List-Id", "Enc <enc.lists.example.test>"),
        ("List-Post", "<mailto:enc@lists.example.test>"),
        ("List-Unsubscribe", "<mailto:enc-leave@lists.example.test>"),
        ("Precedence", "list"),
        ("MIME-Version", "1.0"),
    ] {
        assert_eq!(header(&outer, name).as_deref(), Some(value), "{name}");
    }
    assert!(header(&outer, "Content-Type")
        .unwrap()
        .starts_with("multipart/encrypted"));
    // The member finds the user-facing fields inside (RFC 9788 §2: the Cryptographic Payload
    // carries them), and the outside record says Keywords and Comments were removed.
    for (name, value) in [
        ("Subject", "[Enc] secret plans"),
        ("From", "Alice Example <alice@example.test>"),
        ("Message-ID", "<p2@example.test>"),
        ("In-Reply-To", "<p1@example.test>"),
        ("References", "<p0@example.test> <p1@example.test>"),
        ("Keywords", "SECRET-KEYWORDS"),
        ("Comments", "SECRET-COMMENTS"),
    ] {
        assert_eq!(
            header(&inner, name).as_deref(),
            Some(value),
            "{name} inside"
        );
    }
    assert!(!inner.contains("HP-Outer: Keywords"), "{inner}");
    assert!(inner.ends_with("the plans\r\n"));
}

/// RFC 9788 §3.2: hcp_no_confidentiality keeps every user-facing field's value in clear, but
/// the trace and bookkeeping fields stay outside the allow-list whatever the policy.
#[test]
fn no_confidentiality_keeps_informational_fields_only() {
    let open = Policy {
        header_protection: HeaderProtection::HcpNoConfidentiality,
        ..Policy::default()
    };
    let (outer, _, _) = copy_of(MAILMAN_POST, open);
    assert_eq!(
        header(&outer, "Keywords").as_deref(),
        Some("SECRET-KEYWORDS")
    );
    assert_eq!(
        header(&outer, "Subject").as_deref(),
        Some("[Enc] secret plans")
    );
    for name in [
        "Received",
        "X-Listcrypt-Hold",
        "Thread-Topic",
        "X-Unknown-Field",
    ] {
        assert!(header(&outer, name).is_none(), "{name} travels in clear");
    }
}
