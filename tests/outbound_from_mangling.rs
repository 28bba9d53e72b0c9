//! Mailman (Python's smtplib) writes a body line `From …` as `>From …`, which breaks the
//! author's multipart/signed signature. Outbound undoes exactly that when it makes the
//! signature verify again (issue: "Mailman's >From mangling of a signed part is detected and
//! undone"), and leaves a genuine `>From` alone.

mod support;

use std::fs;
use support::gpg::{GpgMember, GpgOutcome};
use support::mime::{boundary_of, multipart_parts};
use support::process::{run, run_ok};
use support::site::{Site, LIST, LIST_BOUNCES};

fn header<'a>(message: &'a str, name: &str) -> Option<&'a str> {
    let head = message.split("\r\n\r\n").next()?;
    let mut value = None;
    for line in head.split("\r\n") {
        if let Some(v) = line.strip_prefix(&format!("{name}: ")) {
            value = Some(v);
        }
    }
    value
}

/// The author's signature in the copy `bob` decrypts: (signed part, GnuPG status of --verify).
fn author_signature(bob: &GpgMember, site: &Site, copy: &[u8]) -> (Vec<u8>, String) {
    let GpgOutcome {
        status,
        plaintext: plain,
        ..
    } = bob.gpg.decrypt(copy);
    assert!(status.contains("DECRYPTION_OKAY"), "{status}");
    let plain = String::from_utf8(plain).unwrap();
    // The inner entity's header is folded: unfold Content-Type to find the boundary.
    let head = plain
        .split("\r\n\r\n")
        .next()
        .unwrap()
        .replace("\r\n\t", " ")
        .replace("\r\n ", " ");
    let ct = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Type: "))
        .unwrap();
    assert!(ct.starts_with("multipart/signed"), "{ct}");
    let body = plain.split_once("\r\n\r\n").unwrap().1.as_bytes().to_vec();
    let parts = multipart_parts(&body, &boundary_of(ct).unwrap());
    let signed = parts[0].clone();
    let sig = parts[1]
        .split(|&b| b == b'\n')
        .skip_while(|l| l != b"\r")
        .skip(1)
        .collect::<Vec<_>>()
        .join(&b'\n');
    let sig_path = site.path("sig.asc");
    let data_path = site.path("signed.bin");
    fs::write(&sig_path, sig).unwrap();
    fs::write(&data_path, &signed).unwrap();
    let out = run(
        bob.gpg
            .cmd()
            .args(["--status-fd", "1", "--verify"])
            .arg(&sig_path)
            .arg(&data_path),
        None,
    );
    (signed, String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn mangled_from_lines_are_restored_and_the_author_signature_verifies() {
    let site = Site::new();
    site.create_list(LIST);
    let alice = GpgMember::new(&site, "alice", true);
    let bob = GpgMember::new(&site, "bob", true);
    bob.gpg.import(&alice.cert);

    let post = alice.post(
        "from lines",
        "From the start\n>From a quote\nand From mid-line",
    );
    let inbound = run_ok(
        site.cli().args([
            "process",
            "inbound",
            "--list",
            LIST,
            "--from",
            &alice.address,
        ]),
        Some(&post),
    );
    let text = String::from_utf8(inbound.clone()).unwrap();
    assert!(header(&text, "Content-Type")
        .unwrap()
        .starts_with("multipart/signed"));
    // What Mailman's smtplib does to the body on its way out.
    let mangled = text.replace("\r\nFrom the start", "\r\n>From the start");
    assert_ne!(mangled, text);

    let out = site.path("out");
    run_ok(
        site.cli()
            .args([
                "process",
                "outbound",
                "--list",
                LIST,
                "--from",
                LIST_BOUNCES,
                "--rcpt",
                &bob.address,
                "--out",
            ])
            .arg(&out),
        Some(mangled.as_bytes()),
    );
    let copy = fs::read(out.join("batch-1.eml")).unwrap();
    let (signed, status) = author_signature(&bob, &site, &copy);
    assert!(
        status.contains(&format!("VALIDSIG {}", alice.fingerprint)),
        "{status}"
    );
    let signed = String::from_utf8(signed).unwrap();
    assert!(signed.contains("\r\nFrom the start"), "restored: {signed}");
    assert!(
        signed.contains("\r\n>From a quote"),
        "a genuine >From stays: {signed}"
    );

    // Unmangled input passes untouched and verifies too.
    let out2 = site.path("out2");
    run_ok(
        site.cli()
            .args([
                "process",
                "outbound",
                "--list",
                LIST,
                "--from",
                LIST_BOUNCES,
                "--rcpt",
                &bob.address,
                "--out",
            ])
            .arg(&out2),
        Some(&inbound),
    );
    let copy = fs::read(out2.join("batch-1.eml")).unwrap();
    let (_, status) = author_signature(&bob, &site, &copy);
    assert!(
        status.contains(&format!("VALIDSIG {}", alice.fingerprint)),
        "{status}"
    );
}
