//! Outbound copies as GnuPG, sq and RNP members open them (`process outbound`, the daemon's
//! Transaction): a gpg member and an sq member share one copy whose PKESKs hide their key ids
//! (each client finds its own packet by trying), an RNP 0.16 member, who needs its key id
//! shown (reference/openpgp.md), gets a copy of its own. Every PKESK is made for a v4 Cv25519
//! key, as these clients generate them. Each client decrypts its copy and finds the list's
//! signature good.

mod support;

use sequoia_openpgp::parse::Parse;
use sequoia_openpgp::Cert;
use std::path::Path;
use support::clients::{ClientOutcome, RnpUser, SqUser};
use support::gpg::GpgMember;
use support::mime::{boundary_of, multipart_parts};
use support::process::run;
use support::site::{Site, LIST, LIST_BOUNCES};
use support::text::contains;

const SECRET: &str = "The merger closes on Friday; tell no one.";

#[test]
fn gpg_sq_and_rnp_members_open_their_copies() {
    let site = Site::new();
    site.create_list(LIST);
    let list_cert = site.export_list_key(LIST);
    let list_fprs = key_fingerprints(&list_cert);

    let gerda = GpgMember::new(&site, "gerda", true);
    let sam = SqUser::create(&site.path("sq"), "sam@example.test");
    site.bind(LIST, &sam.email, &sam.cert, false);
    let rita = RnpUser::create(&site.path("rnp"), "rita@example.test");
    rita.import(&list_cert);
    let mut add = site.cli();
    add.args(["member", "add", LIST, &rita.email])
        .arg(&rita.cert)
        .arg("--show-key-id");
    assert!(run(&mut add, None).status.success(), "bind rita");

    let post = format!(
        "From: Gerda <gerda@example.test>\r\nTo: {LIST}\r\nSubject: [Enc] plans\r\n\
         Message-ID: <clients-1@example.test>\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\n{SECRET}\r\n"
    );
    let out = site.path("out");
    let mut cmd = site.cli();
    cmd.args([
        "process",
        "outbound",
        "--list",
        LIST,
        "--from",
        LIST_BOUNCES,
    ]);
    for r in [&gerda.address, &sam.email, &rita.email] {
        cmd.args(["--rcpt", r]);
    }
    cmd.arg("--out").arg(&out);
    let done = run(&mut cmd, Some(post.as_bytes()));
    assert!(
        done.status.success(),
        "process outbound: {}",
        String::from_utf8_lossy(&done.stderr)
    );

    let copy_for = |address: &str| -> Vec<u8> {
        for n in 1.. {
            let rcpt = out.join(format!("batch-{n}.rcpt"));
            let Ok(list) = std::fs::read_to_string(&rcpt) else {
                panic!("no batch for {address}");
            };
            if list.lines().any(|l| l.trim() == address) {
                return encrypted_part(&std::fs::read(out.join(format!("batch-{n}.eml"))).unwrap());
            }
        }
        unreachable!()
    };
    let shared = copy_for(&gerda.address);
    assert_eq!(shared, copy_for(&sam.email), "gpg and sq share a copy");
    let own = copy_for(&rita.email);
    assert_ne!(own, shared, "rnp gets a copy of its own");

    let g = gerda.gpg.decrypt(&shared);
    assert!(
        g.status.contains("[GNUPG:] DECRYPTION_OKAY"),
        "gpg decrypts: {}",
        g.report()
    );
    assert!(
        g.status
            .lines()
            .any(|l| l.starts_with("[GNUPG:] VALIDSIG") && l.ends_with(&gerda.list_fingerprint)),
        "gpg finds the list signature good: {}",
        g.report()
    );
    assert!(contains(&g.plaintext, SECRET.as_bytes()));

    let s = sam.decrypt(&shared, &[&list_cert], 1);
    assert_opened(&s, &list_fprs, "sq");
    let r = rita.decrypt(&own);
    assert_opened(&r, &list_fprs, "rnp");
}

/// The armored OpenPGP message of an RFC 3156 multipart/encrypted copy.
fn encrypted_part(eml: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(eml);
    // The Content-Type field with its folded continuation lines.
    let mut lines = text
        .lines()
        .take_while(|l| !l.is_empty())
        .skip_while(|l| !l.to_ascii_lowercase().starts_with("content-type:"));
    let mut ct = lines.next().expect("Content-Type").to_string();
    for l in lines.take_while(|l| l.starts_with([' ', '\t'])) {
        ct.push_str(l);
    }
    let boundary = boundary_of(&ct).expect("boundary");
    let body = &eml[text.find("\r\n\r\n").expect("header end") + 4..];
    let parts = multipart_parts(body, &boundary);
    assert_eq!(parts.len(), 2, "version part and encrypted part");
    parts[1].clone()
}

fn key_fingerprints(cert: &Path) -> Vec<String> {
    Cert::from_file(cert)
        .expect("list certificate")
        .keys()
        .map(|k| k.key().fingerprint().to_hex())
        .collect()
}

fn assert_opened(opened: &ClientOutcome, list_fprs: &[String], client: &str) {
    assert!(
        contains(&opened.plaintext, SECRET.as_bytes()),
        "{client} decrypts its copy: {}",
        opened.report()
    );
    assert!(
        opened.signed_by(list_fprs) && opened.signature_problems.is_empty(),
        "{client} finds the list signature good: {}",
        opened.report()
    );
}
