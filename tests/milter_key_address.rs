//! listcrypt's key address (`LIST-key@`): the list key on request (signed, rate-limited), and
//! proven key binding — a challenge only the offered key can read, activated only by a reply
//! signed with that key carrying the token. Replies leave through a real SMTP exchange with the
//! reinjection listener (here a capture sink); nothing reaches Mailman.

mod support;

use indymilter_test::Status;
use std::fs;
use std::time::Duration;
use support::gpg::{Gpg, GpgMember, GpgOutcome};
use support::milter::{self, Mail};
use support::process::{run, run_ok};
use support::sink;
use support::site::{Site, LIST};
use support::text::to_crlf;

const KEY_ADDRESS: &str = "enc-key@lists.example.test";

fn wait_for(sink: &sink::Sink, rcpt: &str, count: usize) -> Vec<sink::Delivery> {
    sink.wait_for_deliveries(rcpt, count, Duration::from_secs(10))
}

async fn send(daemon: &milter::Running, from: &str, message: &[u8]) -> Status {
    let mail = Mail::parse(message);
    milter::transact(daemon.inbound, from, KEY_ADDRESS, &mail)
        .await
        .1
}

#[tokio::test(flavor = "multi_thread")]
async fn list_key_requests_and_proven_binding() {
    let site = Site::new();
    site.create_list(LIST);
    let sink = sink::Sink::start();
    site.reinject_to(sink.port);
    let daemon = milter::start(&site.config).await;

    // 1. Anyone may ask for the list key: a multipart/signed reply from the list with the key.
    let eve = GpgMember::new(&site, "eve", false);
    let ask = format!(
        "From: eve <{}>\nTo: {KEY_ADDRESS}\nSubject: key please\n\nhi\n",
        eve.address
    );
    let status = send(&daemon, &eve.address, ask.as_bytes()).await;
    assert_eq!(status, Status::Discard, "consumed, never passed to Mailman");
    let replies = wait_for(&sink, &eve.address, 1);
    assert_eq!(replies.len(), 1, "{}", sink.summary());
    assert_eq!(
        replies[0].mail_from, "",
        "automatic replies have a null sender"
    );
    let reply = replies[0].text();
    assert!(reply.contains("Content-Type: multipart/signed"), "{reply}");
    assert!(reply.contains("application/pgp-keys"));
    assert!(reply.contains("Auto-Submitted: auto-replied"));
    // The signature verifies with the list key (eve imported it).
    let parts = support::mime::multipart_parts(
        reply.split_once("\r\n\r\n").unwrap().1.as_bytes(),
        &support::mime::boundary_of(
            reply
                .split("Content-Type: multipart/signed")
                .nth(1)
                .unwrap(),
        )
        .unwrap(),
    );
    let sig = String::from_utf8_lossy(&parts[1]);
    let sig = sig.split_once("\r\n\r\n").unwrap().1;
    fs::write(site.path("reply.sig"), sig).unwrap();
    fs::write(site.path("reply.signed"), &parts[0]).unwrap();
    let out = run(
        eve.gpg
            .cmd()
            .args(["--status-fd", "1", "--verify"])
            .arg(site.path("reply.sig"))
            .arg(site.path("reply.signed")),
        None,
    );
    let status_lines = String::from_utf8_lossy(&out.stdout);
    assert!(
        status_lines.contains(&format!("VALIDSIG {}", eve.list_fingerprint))
            || status_lines.contains("GOODSIG"),
        "{status_lines}"
    );
    // Rate limit: a second request within the hour gets no reply.
    assert_eq!(
        send(&daemon, &eve.address, ask.as_bytes()).await,
        Status::Discard
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(sink.deliveries_to(&eve.address).len(), 1, "rate limited");

    // 2. Dave offers his key (as an attachment): the challenge is encrypted to that key.
    let dave = GpgMember::new(&site, "dave", false);
    let armored = fs::read_to_string(&dave.cert).unwrap();
    let offer = format!(
        "From: dave <{addr}>\nTo: {KEY_ADDRESS}\nSubject: bind\nMIME-Version: 1.0\n\
         Content-Type: multipart/mixed; boundary=\"b\"\n\n--b\nContent-Type: text/plain\n\nmy key\n\
         --b\nContent-Type: application/pgp-keys; name=\"dave.asc\"\n\n{armored}\n--b--\n",
        addr = dave.address
    );
    assert_eq!(
        send(&daemon, &dave.address, offer.as_bytes()).await,
        Status::Discard
    );
    let challenge = wait_for(&sink, &dave.address, 1);
    assert_eq!(challenge.len(), 1, "{}", sink.summary());
    let challenge = challenge[0].text();
    assert!(
        !challenge.contains("listcrypt-token"),
        "the token never travels in the clear"
    );
    assert!(challenge.contains("multipart/encrypted"));
    let GpgOutcome {
        status: status_lines,
        plaintext: plain,
        ..
    } = dave.gpg.decrypt(challenge.as_bytes());
    assert!(status_lines.contains("DECRYPTION_OKAY"), "{status_lines}");
    let plain = String::from_utf8(plain).unwrap();
    let token_line = plain
        .lines()
        .find(|l| l.starts_with("listcrypt-token: "))
        .expect("token line")
        .to_string();
    // Not bound yet.
    let members =
        String::from_utf8(run_ok(site.cli().args(["member", "list", LIST]), None)).unwrap();
    assert!(
        members.contains(&format!(
            "{} {} member pending",
            dave.address, dave.fingerprint
        )),
        "pending until proven: {members}"
    );
    assert!(!members
        .lines()
        .any(|l| l.starts_with(&dave.address) && l.contains(" active ")));

    // A reply with the token but signed by another key does not bind.
    let mallory = Gpg::new(site.path("gnupg-mallory"));
    mallory.gen_key("dave <dave@example.test>", None);
    mallory.import(&site.path(&format!("{LIST}.asc")));
    let forged = encrypted_reply(&mallory, &dave.address, &token_line);
    assert_eq!(send(&daemon, &dave.address, &forged).await, Status::Discard);
    let members =
        String::from_utf8(run_ok(site.cli().args(["member", "list", LIST]), None)).unwrap();
    assert!(
        !members
            .lines()
            .any(|l| l.starts_with(&dave.address) && l.contains(" active ")),
        "a token alone proves nothing"
    );

    // 3. Dave's signed (and encrypted) reply with the token activates the binding.
    let reply = encrypted_reply(&dave.gpg, &dave.address, &token_line);
    assert_eq!(send(&daemon, &dave.address, &reply).await, Status::Discard);
    let members =
        String::from_utf8(run_ok(site.cli().args(["member", "list", LIST]), None)).unwrap();
    let line = members
        .lines()
        .find(|l| l.starts_with(&dave.address))
        .unwrap_or_else(|| panic!("{members}"));
    assert!(
        line.contains(&dave.fingerprint) && line.contains(" active "),
        "{line}"
    );
    let confirmations = wait_for(&sink, &dave.address, 2);
    let GpgOutcome {
        status: status_lines,
        plaintext: plain,
        ..
    } = dave
        .gpg
        .decrypt(confirmations.last().unwrap().data.as_slice());
    assert!(status_lines.contains("DECRYPTION_OKAY"), "{status_lines}");
    assert!(String::from_utf8_lossy(&plain).contains("is now bound"));

    // Key signing: dave certifies the list key and sends it back, signed with his bound key;
    // the certification is merged and published with the list key.
    dave.gpg
        .ok(&["--quick-sign-key", &dave.list_fingerprint], None);
    let certified = dave
        .gpg
        .ok(&["--armor", "--export", &dave.list_fingerprint], None);
    let inner = to_crlf(
        format!(
            "Content-Type: multipart/mixed; boundary=\"k\"\n\n--k\nContent-Type: text/plain\n\nI vouch for the list key\n\
             --k\nContent-Type: application/pgp-keys\n\n{}\n--k--\n",
            String::from_utf8(certified).unwrap()
        )
        .as_bytes(),
    );
    let signing = signed_and_encrypted(&dave.gpg, &dave.address, "[...]", &inner);
    assert_eq!(
        send(&daemon, &dave.address, signing.as_bytes()).await,
        Status::Discard
    );
    let exported = run_ok(site.cli().args(["list", "export-key", LIST]), None);
    fs::write(site.path("published.asc"), &exported).unwrap();
    let packets = run(
        eve.gpg
            .cmd()
            .arg("--list-packets")
            .arg(site.path("published.asc")),
        None,
    );
    let dave_keyid = &dave.fingerprint[24..];
    assert!(
        String::from_utf8_lossy(&packets.stdout).contains(&format!("keyid {dave_keyid}")),
        "dave's certification is published with the list key"
    );

    // The confirmation, replayed, counts for nothing.
    let before = sink.deliveries().len();
    assert_eq!(send(&daemon, &dave.address, &reply).await, Status::Discard);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        sink.deliveries().len(),
        before,
        "a replayed command gets no answer"
    );

    // Key change: a new key offered without the bound key's signature is refused (and the
    // refusal goes to the bound key); announced with the bound key's signature, it is
    // challenged and, once proven, replaces the old binding.
    let new_home = Gpg::new(site.path("gnupg-dave-new"));
    let new_fpr = new_home.gen_key("dave <dave@example.test>", None);
    new_home.import(&site.path(&format!("{LIST}.asc")));
    new_home.export(&new_fpr, &site.path("dave-new.asc"));
    let new_armored = fs::read_to_string(site.path("dave-new.asc")).unwrap();
    let unannounced = format!(
        "From: {addr}\nTo: {KEY_ADDRESS}\nSubject: new key\n\n{new_armored}\n",
        addr = dave.address
    );
    let before = sink.deliveries_to(&dave.address).len();
    assert_eq!(
        send(&daemon, &dave.address, unannounced.as_bytes()).await,
        Status::Discard
    );
    let refusal = wait_for(&sink, &dave.address, before + 1);
    let GpgOutcome {
        status: status_lines,
        plaintext: plain,
        ..
    } = dave.gpg.decrypt(refusal.last().unwrap().data.as_slice());
    assert!(
        status_lines.contains("DECRYPTION_OKAY"),
        "the refusal is for the bound key: {status_lines}"
    );
    assert!(String::from_utf8_lossy(&plain).contains("already bound"));
    let members =
        String::from_utf8(run_ok(site.cli().args(["member", "list", LIST]), None)).unwrap();
    assert!(members.contains(&dave.fingerprint), "unchanged: {members}");

    let inner = to_crlf(
        format!(
            "Content-Type: multipart/mixed; boundary=\"k\"\n\n--k\nContent-Type: text/plain\n\nmy new key\n\
             --k\nContent-Type: application/pgp-keys\n\n{new_armored}\n--k--\n"
        )
        .as_bytes(),
    );
    let announced = signed_and_encrypted(&dave.gpg, &dave.address, "[...]", &inner);
    let before = sink.deliveries_to(&dave.address).len();
    assert_eq!(
        send(&daemon, &dave.address, announced.as_bytes()).await,
        Status::Discard
    );
    let challenge = wait_for(&sink, &dave.address, before + 1);
    let GpgOutcome {
        status: status_lines,
        plaintext: plain,
        ..
    } = new_home.decrypt(challenge.last().unwrap().data.as_slice());
    assert!(
        status_lines.contains("DECRYPTION_OKAY"),
        "challenge for the new key: {status_lines}"
    );
    let plain = String::from_utf8(plain).unwrap();
    let token_line = plain
        .lines()
        .find(|l| l.starts_with("listcrypt-token: "))
        .expect("token")
        .to_string();
    let members =
        String::from_utf8(run_ok(site.cli().args(["member", "list", LIST]), None)).unwrap();
    assert!(
        members.contains(&dave.fingerprint),
        "the old key stays valid until confirmed: {members}"
    );
    let confirm = encrypted_reply(&new_home, &dave.address, &token_line);
    assert_eq!(
        send(&daemon, &dave.address, &confirm).await,
        Status::Discard
    );
    let members =
        String::from_utf8(run_ok(site.cli().args(["member", "list", LIST]), None)).unwrap();
    assert!(
        members.contains(&new_fpr) && !members.contains(&dave.fingerprint),
        "switched: {members}"
    );

    // 4. A key without a user ID for the sender is refused with a reason.
    let frank = GpgMember::new(&site, "frank", false);
    let other = Gpg::new(site.path("gnupg-other"));
    other.gen_key("someone else <else@example.test>", None);
    other.export("else@example.test", &site.path("else.asc"));
    let armored = fs::read_to_string(site.path("else.asc")).unwrap();
    let offer = format!(
        "From: {addr}\nTo: {KEY_ADDRESS}\nSubject: bind\n\n{armored}\n",
        addr = frank.address
    );
    assert_eq!(
        send(&daemon, &frank.address, offer.as_bytes()).await,
        Status::Discard
    );
    let answer = wait_for(&sink, &frank.address, 1);
    assert_eq!(answer.len(), 1);
    // A key for another address is no offer for frank: he gets the list key instead.
    assert!(answer[0].text().contains("application/pgp-keys"));

    // 5. The key address is never mixed with other recipients.
    let mut conn = milter::connect(daemon.inbound).await;
    assert_eq!(
        conn.mail([format!("<{}>", eve.address)]).await.unwrap(),
        Status::Continue
    );
    assert_eq!(
        conn.rcpt([format!("<{LIST}>")]).await.unwrap(),
        Status::Continue
    );
    let status = conn.rcpt([format!("<{KEY_ADDRESS}>")]).await.unwrap();
    milter::assert_reply(&status, "452", "4.5.3", "key address mixed with the list");
    conn.close().await.unwrap();

    daemon.stop().await;
}

/// A reply to the challenge, signed by `gpg`'s key and encrypted to the list, with the token.
fn encrypted_reply(gpg: &Gpg, address: &str, token_line: &str) -> Vec<u8> {
    let inner = to_crlf(
        format!("Content-Type: text/plain\n\n> {token_line}\nyes, that was me\n").as_bytes(),
    );
    signed_and_encrypted(gpg, address, "Re: [...]", &inner).into_bytes()
}

/// A PGP/MIME message to the key address: `inner` signed by `gpg`'s key, encrypted to the list.
fn signed_and_encrypted(gpg: &Gpg, address: &str, subject: &str, inner: &[u8]) -> String {
    let armored = gpg.ok(
        &["--armor", "--sign", "--encrypt", "--recipient", LIST],
        Some(inner),
    );
    let armored = String::from_utf8(armored).unwrap();
    format!(
        "From: {address}\nTo: {KEY_ADDRESS}\nSubject: {subject}\nMIME-Version: 1.0\n\
         Content-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\"; boundary=\"e\"\n\n\
         --e\nContent-Type: application/pgp-encrypted\n\nVersion: 1\n\n--e\n\
         Content-Type: application/octet-stream\n\n{armored}\n--e--\n"
    )
}
