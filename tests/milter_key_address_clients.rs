//! Binding by email at the key address (`LIST-key@`) with subscribers on OpenPGP clients other
//! than GnuPG: Sequoia's `sq` (0.27) and RNP's `rnp` (0.16). Each offers its key, decrypts the
//! challenge with its own client (the token never travels in the clear), and proves the key
//! with a reply signed — and encrypted to the list key — by that client. Each then changes
//! keys: sq announces the new key in a top-level multipart/signed (`sq sign --detached` with
//! the old key) and confirms in PGP/MIME; rnp announces in PGP/MIME (`rnp -e -s` with the old
//! key) and confirms in a multipart/signed (`rnp --sign --detach` with the new key). Client
//! outcomes are judged from what the clients print, not only from their exit status (rnp exits
//! 0 on some failures).

mod support;

use indymilter_test::Status;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::clients::{ClientOutcome, RnpUser, SqUser};
use support::milter::{self, Mail};
use support::process::{run, run_ok};
use support::sink;
use support::site::{Site, LIST};
use support::text::to_crlf;

const KEY_ADDRESS: &str = "enc-key@lists.example.test";

/// The sq subscriber: offer, challenge, signed and encrypted confirmation, then a key change
/// announced in a multipart/signed made with the old key and confirmed with the new one.
#[tokio::test(flavor = "multi_thread")]
async fn sq_subscriber_binds_and_changes_keys_by_email() {
    let (site, sink, daemon) = start().await;
    let list_cert = site.export_list_key(LIST);
    let list_fprs = sq_key_fingerprints(&list_cert);

    let address = "sam@example.test";
    let sam = SqUser::create(&site.path("sq"), address);
    let fpr = sq_fingerprint(&sam.cert);
    let armored = fs::read_to_string(&sam.cert).unwrap();
    assert!(armored.contains("BEGIN PGP PUBLIC KEY BLOCK"), "{armored}");

    // 1. The offer: the certificate attached as application/pgp-keys.
    let offer = format!(
        "From: sam <{address}>\nTo: {KEY_ADDRESS}\nSubject: bind\nMIME-Version: 1.0\n\
         Content-Type: multipart/mixed; boundary=\"b\"\n\n--b\nContent-Type: text/plain\n\nmy key\n\
         --b\nContent-Type: application/pgp-keys; name=\"sam.asc\"\n\n{armored}\n--b--\n"
    );
    assert_eq!(
        send(&daemon, address, offer.as_bytes()).await,
        Status::Discard
    );

    // 2. The challenge: encrypted to sam's key, signed by the list, token only inside.
    let challenge = wait_for(&sink, address, 1);
    assert_eq!(challenge.len(), 1, "{}", sink.summary());
    assert_eq!(challenge[0].mail_from, "", "automatic replies: null sender");
    let challenge = challenge[0].text();
    assert_encrypted_reply(&challenge);
    let opened = sam.decrypt(armored_message(&challenge).as_bytes(), &[&list_cert], 1);
    assert_sq_opened(&opened, &list_fprs, "the challenge");
    let token_line = token_of(&opened);
    assert!(
        member_line(&site, address)
            .is_some_and(|l| l.contains(&format!("{address} {fpr} member pending"))),
        "pending until proven: {}",
        members(&site)
    );

    // 3. The confirmation: `sq encrypt --recipient-cert LIST --signer-key SAM` with the token.
    let reply = sq_encrypt_sign(&site, &sam.key, &list_cert, &reply_entity(&token_line));
    assert_eq!(
        send(&daemon, address, &pgp_mime(address, "Re: [...]", &reply)).await,
        Status::Discard
    );
    assert_active(&site, address, &fpr);
    let confirmations = wait_for(&sink, address, 2);
    assert_eq!(confirmations.len(), 2, "{}", sink.summary());
    let opened = sam.decrypt(
        armored_message(&confirmations[1].text()).as_bytes(),
        &[&list_cert],
        1,
    );
    assert_sq_opened(&opened, &list_fprs, "the confirmation");
    assert!(opened.text().contains("is now bound"), "{}", opened.text());

    // 4. Key change: a new sq key (same address), announced in a top-level multipart/signed
    // whose detached signature `sq sign --detached --signer-key OLD` made.
    let new = SqUser::create(&site.path("sq-new"), address);
    let new_fpr = sq_fingerprint(&new.cert);
    assert_ne!(new_fpr, fpr);
    let new_armored = fs::read_to_string(&new.cert).unwrap();
    let signed_part = to_crlf(
        format!(
            "Content-Type: multipart/mixed; boundary=\"k\"\n\n--k\nContent-Type: text/plain\n\n\
             my new key\n--k\nContent-Type: application/pgp-keys; name=\"new.asc\"\n\n\
             {new_armored}\n--k--"
        )
        .as_bytes(),
    );
    let signature = sq_sign_detached(&site, &sam.key, &signed_part);
    // The signature is good for sam's current key by sq's own account.
    let checked = sam.verify_detached(&signed_part, signature.as_bytes(), &sam.cert);
    assert!(
        checked.signed_by(&sq_key_fingerprints(&sam.cert)) && checked.signature_problems.is_empty(),
        "sq verifies its own detached signature: {}",
        checked.report()
    );
    let announcement = multipart_signed(address, "new key", &signed_part, &signature);
    let before = sink.deliveries_to(address).len();
    assert_eq!(send(&daemon, address, &announcement).await, Status::Discard);
    let got = wait_for(&sink, address, before + 1);
    assert_eq!(got.len(), before + 1, "{}", sink.summary());
    let challenge = got.last().unwrap().text();
    assert_encrypted_reply(&challenge);
    // Only the new key reads it.
    let by_old = sam.decrypt(armored_message(&challenge).as_bytes(), &[&list_cert], 1);
    assert!(
        !by_old.text().contains("listcrypt-token"),
        "the old key cannot read the new key's challenge: {}",
        by_old.report()
    );
    let opened = new.decrypt(armored_message(&challenge).as_bytes(), &[&list_cert], 1);
    assert_sq_opened(&opened, &list_fprs, "the key-change challenge");
    let token_line = token_of(&opened);
    assert_active(&site, address, &fpr);

    let reply = sq_encrypt_sign(&site, &new.key, &list_cert, &reply_entity(&token_line));
    assert_eq!(
        send(&daemon, address, &pgp_mime(address, "Re: [...]", &reply)).await,
        Status::Discard
    );
    assert_active(&site, address, &new_fpr);
    assert!(
        !members(&site).contains(&fpr),
        "the old key is gone: {}",
        members(&site)
    );

    daemon.stop().await;
}

/// The rnp subscriber: offer (inline armored), challenge decrypted by `rnp --decrypt`,
/// confirmation made by `rnp -e -s`; then a key change announced in PGP/MIME with the old key
/// and proven in a multipart/signed with the new one.
#[tokio::test(flavor = "multi_thread")]
async fn rnp_subscriber_binds_and_changes_keys_by_email() {
    let (site, sink, daemon) = start().await;
    let list_cert = site.export_list_key(LIST);

    let address = "rita@example.test";
    let rita = RnpUser::create(&site.path("rnp"), address);
    rita.import(&list_cert);
    let fpr = rnp_primary_fingerprint(&rita, &format!("<{address}>"));
    let list_fpr = rnp_primary_fingerprint(&rita, LIST);
    let list_fprs = sq_key_fingerprints(&list_cert);
    assert_eq!(list_fprs[0], list_fpr, "rnp and sq agree on the list key");
    let armored = fs::read_to_string(&rita.cert).unwrap();

    // 1. The offer: the armored certificate in the text of the message.
    let offer = format!(
        "From: rita <{address}>\nTo: {KEY_ADDRESS}\nSubject: my key\n\nHere is my key:\n\n{armored}\n"
    );
    assert_eq!(
        send(&daemon, address, offer.as_bytes()).await,
        Status::Discard
    );

    // 2. The challenge, read with rnp (its PKESK names the key: RNP 0.16 cannot try keys
    // against a wildcard key id).
    let challenge = wait_for(&sink, address, 1);
    assert_eq!(challenge.len(), 1, "{}", sink.summary());
    assert_eq!(challenge[0].mail_from, "", "automatic replies: null sender");
    let challenge = challenge[0].text();
    assert_encrypted_reply(&challenge);
    let packets = rnp_list_packets(&armored_message(&challenge));
    let subkey = rnp_encryption_subkey_id(&rita, address);
    assert!(
        packets.contains(&format!("key id: 0x{subkey}")),
        "the challenge's PKESK names rita's encryption subkey {subkey}:\n{packets}"
    );
    let opened = rita.decrypt(armored_message(&challenge).as_bytes());
    assert_rnp_opened(&opened, &list_fprs, "the challenge");
    let token_line = token_of(&opened);
    assert!(
        member_line(&site, address)
            .is_some_and(|l| l.contains(&format!("{address} {fpr} member pending"))),
        "pending until proven: {}",
        members(&site)
    );

    // 3. The confirmation: `rnp -e -s -r LIST -u RITA --armor`.
    let reply = rnp_encrypt_sign(&rita, &list_fpr, address, &reply_entity(&token_line));
    assert_eq!(
        send(&daemon, address, &pgp_mime(address, "Re: [...]", &reply)).await,
        Status::Discard
    );
    assert_active(&site, address, &fpr);
    let confirmations = wait_for(&sink, address, 2);
    assert_eq!(confirmations.len(), 2, "{}", sink.summary());
    let opened = rita.decrypt(armored_message(&confirmations[1].text()).as_bytes());
    assert_rnp_opened(&opened, &list_fprs, "the confirmation");
    assert!(opened.text().contains("is now bound"), "{}", opened.text());

    // 4. Key change the other way round: the new key announced inside a PGP/MIME message
    // `rnp -e -s` made with the old key, and proven with a top-level multipart/signed whose
    // detached signature `rnp --sign --detach` made with the new key.
    let new = RnpUser::create(&site.path("rnp-new"), address);
    new.import(&list_cert);
    let new_fpr = rnp_primary_fingerprint(&new, &format!("<{address}>"));
    assert_ne!(new_fpr, fpr);
    let new_armored = fs::read_to_string(&new.cert).unwrap();
    let inner = to_crlf(
        format!(
            "Content-Type: multipart/mixed; boundary=\"k\"\n\n--k\nContent-Type: text/plain\n\n\
             my new key\n--k\nContent-Type: application/pgp-keys; name=\"new.asc\"\n\n\
             {new_armored}\n--k--\n"
        )
        .as_bytes(),
    );
    let announcement = rnp_encrypt_sign(&rita, &list_fpr, address, &inner);
    let before = sink.deliveries_to(address).len();
    assert_eq!(
        send(&daemon, address, &pgp_mime(address, "[...]", &announcement)).await,
        Status::Discard
    );
    let got = wait_for(&sink, address, before + 1);
    assert_eq!(got.len(), before + 1, "{}", sink.summary());
    let challenge = got.last().unwrap().text();
    assert_encrypted_reply(&challenge);
    let by_old = rita.decrypt(armored_message(&challenge).as_bytes());
    assert!(
        !by_old.text().contains("listcrypt-token"),
        "the old key cannot read the new key's challenge: {}",
        by_old.report()
    );
    let opened = new.decrypt(armored_message(&challenge).as_bytes());
    assert_rnp_opened(&opened, &list_fprs, "the key-change challenge");
    let token_line = token_of(&opened);
    assert_active(&site, address, &fpr);

    let signed_part = reply_entity(&token_line);
    let signature = rnp_sign_detached(&new, address, &signed_part);
    let checked = new.verify_detached(&signed_part, signature.as_bytes());
    assert!(
        checked.signed_by(std::slice::from_ref(&new_fpr)) && checked.signature_problems.is_empty(),
        "rnp verifies its own detached signature: {}",
        checked.report()
    );
    // A signed part altered after signing proves nothing.
    let mut altered = signed_part.clone();
    altered.extend_from_slice(b"P.S. added later\r\n");
    let tampered = multipart_signed(address, "Re: [...]", &altered, &signature);
    assert_eq!(send(&daemon, address, &tampered).await, Status::Discard);
    assert_active(&site, address, &fpr);

    let confirm = multipart_signed(address, "Re: [...]", &signed_part, &signature);
    assert_eq!(send(&daemon, address, &confirm).await, Status::Discard);
    assert_active(&site, address, &new_fpr);
    assert!(
        !members(&site).contains(&fpr),
        "the old key is gone: {}",
        members(&site)
    );

    daemon.stop().await;
}

// --- the site and the daemon ---------------------------------------------------------------

async fn start() -> (Site, sink::Sink, milter::Running) {
    let site = Site::new();
    site.create_list(LIST);
    let sink = sink::Sink::start();
    site.reinject_to(sink.port);
    let daemon = milter::start(&site.config).await;
    (site, sink, daemon)
}

fn wait_for(sink: &sink::Sink, rcpt: &str, count: usize) -> Vec<sink::Delivery> {
    sink.wait_for_deliveries(rcpt, count, Duration::from_secs(10))
}

async fn send(daemon: &milter::Running, from: &str, message: &[u8]) -> Status {
    let mail = Mail::parse(message);
    milter::transact(daemon.inbound, from, KEY_ADDRESS, &mail)
        .await
        .1
}

fn members(site: &Site) -> String {
    String::from_utf8(run_ok(site.cli().args(["member", "list", LIST]), None)).unwrap()
}

fn member_line(site: &Site, address: &str) -> Option<String> {
    members(site)
        .lines()
        .find(|l| l.starts_with(&format!("{address} ")))
        .map(str::to_string)
}

fn assert_active(site: &Site, address: &str, fingerprint: &str) {
    let line = member_line(site, address).unwrap_or_else(|| panic!("{}", members(site)));
    assert!(
        line.starts_with(&format!("{address} {fingerprint} member active")),
        "expected {address} bound to {fingerprint}: {line}"
    );
}

// --- messages -------------------------------------------------------------------------------

/// A challenge or notice from the key address: PGP/MIME, nothing of the token outside.
fn assert_encrypted_reply(message: &str) {
    assert!(message.contains("multipart/encrypted"), "{message}");
    assert!(
        message.contains("Auto-Submitted: auto-replied"),
        "{message}"
    );
    assert!(
        !message.contains("listcrypt-token"),
        "the token never travels in the clear: {message}"
    );
}

/// The armored OpenPGP message in a PGP/MIME reply.
fn armored_message(message: &str) -> String {
    let begin = message
        .find("-----BEGIN PGP MESSAGE-----")
        .unwrap_or_else(|| panic!("no armored message in {message}"));
    let end = message[begin..]
        .find("-----END PGP MESSAGE-----")
        .map(|e| begin + e + "-----END PGP MESSAGE-----".len())
        .unwrap_or_else(|| panic!("unterminated armor in {message}"));
    format!("{}\n", message[begin..end].replace("\r\n", "\n"))
}

fn token_of(opened: &ClientOutcome) -> String {
    opened
        .text()
        .lines()
        .find(|l| l.starts_with("listcrypt-token: "))
        .unwrap_or_else(|| panic!("no token line in {}", opened.text()))
        .trim_end()
        .to_string()
}

/// The inner entity of a confirmation: quoted token, canonical CRLF.
fn reply_entity(token_line: &str) -> Vec<u8> {
    to_crlf(
        format!("Content-Type: text/plain; charset=utf-8\n\n> {token_line}\nyes, that was me\n")
            .as_bytes(),
    )
}

/// An RFC 3156 multipart/encrypted message around `armored`.
fn pgp_mime(address: &str, subject: &str, armored: &str) -> Vec<u8> {
    format!(
        "From: {address}\nTo: {KEY_ADDRESS}\nSubject: {subject}\nMIME-Version: 1.0\n\
         Content-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\"; boundary=\"e\"\n\n\
         --e\nContent-Type: application/pgp-encrypted\n\nVersion: 1\n\n--e\n\
         Content-Type: application/octet-stream; name=\"encrypted.asc\"\n\n{armored}\n--e--\n"
    )
    .into_bytes()
}

/// An RFC 3156 top-level multipart/signed: `signed_part` (canonical CRLF; the CRLF before the
/// next delimiter belongs to the delimiter) and its armored detached signature.
fn multipart_signed(address: &str, subject: &str, signed_part: &[u8], signature: &str) -> Vec<u8> {
    let mut message = to_crlf(
        format!(
            "From: {address}\nTo: {KEY_ADDRESS}\nSubject: {subject}\nMIME-Version: 1.0\n\
             Content-Type: multipart/signed; micalg=pgp-sha256; protocol=\"application/pgp-signature\";\n \
             boundary=\"s\"\n\n--s\n"
        )
        .as_bytes(),
    );
    message.extend_from_slice(signed_part);
    message.extend_from_slice(&to_crlf(
        format!(
            "\n--s\nContent-Type: application/pgp-signature; name=\"signature.asc\"\n\n\
                 {signature}\n--s--\n"
        )
        .as_bytes(),
    ));
    message
}

// --- sq -------------------------------------------------------------------------------------

fn sq_fingerprint(cert: &Path) -> String {
    sq_key_fingerprints(cert).remove(0)
}

/// The primary and subkey fingerprints `sq inspect` shows for a certificate (primary first).
fn sq_key_fingerprints(cert: &Path) -> Vec<String> {
    let out = run_ok(Command::new("sq").arg("inspect").arg(cert), None);
    let fprs: Vec<String> = String::from_utf8_lossy(&out)
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            l.strip_prefix("Fingerprint: ")
                .or_else(|| l.strip_prefix("Subkey: "))
        })
        .map(|f| f.trim().to_string())
        .filter(|f| f.len() == 40)
        .collect();
    assert!(
        !fprs.is_empty(),
        "sq inspect shows no fingerprint for {}",
        cert.display()
    );
    fprs
}

fn assert_sq_opened(opened: &ClientOutcome, list_fprs: &[String], what: &str) {
    assert_eq!(
        opened.exit_code,
        Some(0),
        "sq decrypts {what}: {}",
        opened.report()
    );
    assert!(
        opened.signed_by(list_fprs) && opened.signature_problems.is_empty(),
        "{what} is signed by the list key {list_fprs:?} by sq's account: {}",
        opened.report()
    );
    assert!(!opened.plaintext.is_empty(), "{}", opened.report());
}

fn scratch(site: &Site, name: &str, contents: &[u8]) -> PathBuf {
    let path = site.path(name);
    fs::write(&path, contents).unwrap();
    path
}

/// `sq encrypt --recipient-cert LIST --signer-key KEY` of `entity` (armored).
fn sq_encrypt_sign(site: &Site, key: &Path, list_cert: &Path, entity: &[u8]) -> String {
    let input = scratch(site, "sq-reply.txt", entity);
    let out = run(
        Command::new("sq")
            .arg("encrypt")
            .arg("--recipient-cert")
            .arg(list_cert)
            .arg("--signer-key")
            .arg(key)
            .arg(&input),
        None,
    );
    let armored = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && armored.starts_with("-----BEGIN PGP MESSAGE-----"),
        "sq encrypt: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    armored
}

/// `sq sign --detached --signer-key KEY` of `data` (armored).
fn sq_sign_detached(site: &Site, key: &Path, data: &[u8]) -> String {
    let input = scratch(site, "sq-signed.txt", data);
    let out = run(
        Command::new("sq")
            .args(["sign", "--detached", "--signer-key"])
            .arg(key)
            .arg(&input),
        None,
    );
    let armored = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && armored.starts_with("-----BEGIN PGP SIGNATURE-----"),
        "sq sign: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    armored
}

// --- rnp ------------------------------------------------------------------------------------

/// The primary key fingerprint `rnpkeys --list-keys WHO` shows (upper case).
fn rnp_primary_fingerprint(user: &RnpUser, who: &str) -> String {
    let out = run_ok(
        Command::new("rnpkeys")
            .arg("--homedir")
            .arg(&user.home)
            .args(["--list-keys", who]),
        None,
    );
    let text = String::from_utf8_lossy(&out);
    // `pub …` then the fingerprint on the next line.
    let mut lines = text.lines();
    lines
        .find(|l| l.starts_with("pub "))
        .and_then(|_| lines.next())
        .map(|l| l.trim().to_ascii_uppercase())
        .filter(|f| f.len() == 40 && f.chars().all(|c| c.is_ascii_hexdigit()))
        .unwrap_or_else(|| panic!("rnpkeys shows no fingerprint for {who}:\n{text}"))
}

fn assert_rnp_opened(opened: &ClientOutcome, list_fprs: &[String], what: &str) {
    assert_eq!(
        opened.exit_code,
        Some(0),
        "rnp decrypts {what}: {}",
        opened.report()
    );
    assert!(
        opened.signed_by(list_fprs) && opened.signature_problems.is_empty(),
        "{what} is signed by the list key {list_fprs:?} by rnp's account: {}",
        opened.report()
    );
    assert!(!opened.plaintext.is_empty(), "{}", opened.report());
}

/// The key id (lower-case hex) of `address`'s encryption subkey, as `rnpkeys` lists it.
fn rnp_encryption_subkey_id(user: &RnpUser, address: &str) -> String {
    let out = run_ok(
        Command::new("rnpkeys")
            .arg("--homedir")
            .arg(&user.home)
            .args(["--list-keys", &format!("<{address}>")]),
        None,
    );
    let text = String::from_utf8_lossy(&out);
    text.lines()
        .filter(|l| l.starts_with("sub ") && l.contains("[E]"))
        .find_map(|l| l.split_whitespace().nth(2))
        .map(str::to_ascii_lowercase)
        .unwrap_or_else(|| panic!("rnpkeys shows no encryption subkey for {address}:\n{text}"))
}

/// `rnp --list-packets` of an armored message.
fn rnp_list_packets(armored: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("message.asc");
    fs::write(&input, armored).unwrap();
    let out = run_ok(Command::new("rnp").arg("--list-packets").arg(&input), None);
    String::from_utf8_lossy(&out).into_owned()
}

/// `rnp --sign --detach -u ADDRESS --armor` of `data`.
fn rnp_sign_detached(user: &RnpUser, address: &str, data: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("signed.txt");
    fs::write(&input, data).unwrap();
    let out = run(
        Command::new("rnp")
            .arg("--homedir")
            .arg(&user.home)
            .args(["--notty", "--password", "", "--sign", "--detach"])
            .args(["--userid", &format!("<{address}>"), "--armor"])
            .arg(&input)
            .args(["--output", "-"]),
        None,
    );
    let armored = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success()
            && armored.starts_with("-----BEGIN PGP SIGNATURE-----")
            && !stderr.to_ascii_lowercase().contains("fail"),
        "rnp --sign --detach: {}\n--- stderr\n{stderr}",
        out.status
    );
    armored
}

/// `rnp -e -s -r LIST -u ADDRESS --armor` of `entity`.
fn rnp_encrypt_sign(user: &RnpUser, list_fpr: &str, address: &str, entity: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("reply.txt");
    fs::write(&input, entity).unwrap();
    let out = run(
        Command::new("rnp")
            .arg("--homedir")
            .arg(&user.home)
            .args(["--notty", "--password", "", "--encrypt", "--sign"])
            .args(["--recipient", list_fpr, "--userid", &format!("<{address}>")])
            .arg("--armor")
            .arg(&input)
            .args(["--output", "-"]),
        None,
    );
    let armored = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success()
            && armored.starts_with("-----BEGIN PGP MESSAGE-----")
            && !stderr.to_ascii_lowercase().contains("fail"),
        "rnp -e -s: {}\n--- stderr\n{stderr}",
        out.status
    );
    armored
}
