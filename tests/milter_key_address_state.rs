//! The key address (`LIST-key@`) records state only once its reply has left, and bounds what
//! outsiders can make it do: a reply that could not be reinjected leaves nothing behind (the
//! sender's retry is answered, not taken for a replay or rate-limited), an offered key is kept
//! without third-party or issuer-less signatures, the list answers at most
//! `LIST_REPLIES_PER_HOUR` requests an hour whoever asks, and a dry run writes nothing.

mod support;

use indymilter_test::Status;
use listcrypt::key_address::LIST_REPLIES_PER_HOUR;
use sequoia_openpgp as openpgp;
use std::fs;
use std::time::{Duration, Instant};
use support::gpg::{Gpg, GpgMember};
use support::milter::{self, Mail};
use support::process::{run, run_ok};
use support::sink;
use support::site::{Site, LIST};
use support::text::to_crlf;

const KEY_ADDRESS: &str = "enc-key@lists.example.test";

fn wait_for(sink: &sink::Sink, rcpt: &str, count: usize) -> Vec<sink::Delivery> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = sink.deliveries_to(rcpt);
        if got.len() >= count || Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn send(daemon: &milter::Running, from: &str, message: &[u8]) -> Status {
    let mut conn = milter::connect(daemon.inbound).await;
    assert_eq!(
        conn.mail([format!("<{from}>")]).await.unwrap(),
        Status::Continue
    );
    assert_eq!(
        conn.rcpt([format!("<{KEY_ADDRESS}>")]).await.unwrap(),
        Status::Continue
    );
    let (_, status) = milter::send(&mut conn, &Mail::parse(message)).await;
    conn.close().await.unwrap();
    status
}

/// The site's configuration with replies reinjected to `port`.
fn reinject_to(site: &Site, port: u16) {
    let base = Site::config_text(site.dir.path(), &site.path("lists.d"));
    fs::write(
        &site.config,
        format!("{base}reinject_smtp = \"127.0.0.1:{port}\"\n"),
    )
    .unwrap();
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn ask_for_key(address: &str) -> String {
    format!("From: {address}\nTo: {KEY_ADDRESS}\nSubject: key please\n\nhi\n")
}

fn member_line(site: &Site, address: &str) -> String {
    let members =
        String::from_utf8(run_ok(site.cli().args(["member", "list", LIST]), None)).unwrap();
    members
        .lines()
        .find(|l| l.starts_with(address))
        .unwrap_or_default()
        .to_string()
}

/// `gpg --sign --encrypt` of a reply quoting the token, to the list, as PGP/MIME.
fn confirmation(gpg: &Gpg, address: &str, token_line: &str) -> Vec<u8> {
    let inner = to_crlf(format!("Content-Type: text/plain\n\n> {token_line}\nyes\n").as_bytes());
    let armored = gpg.ok(
        &["--armor", "--sign", "--encrypt", "--recipient", LIST],
        Some(&inner),
    );
    format!(
        "From: {address}\nTo: {KEY_ADDRESS}\nSubject: Re: [...]\nMIME-Version: 1.0\n\
         Content-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\"; boundary=\"e\"\n\n\
         --e\nContent-Type: application/pgp-encrypted\n\nVersion: 1\n\n--e\n\
         Content-Type: application/octet-stream\n\n{}\n--e--\n",
        String::from_utf8(armored).unwrap()
    )
    .into_bytes()
}

fn offer(address: &str, armored: &str) -> String {
    format!(
        "From: {address}\nTo: {KEY_ADDRESS}\nSubject: bind\nMIME-Version: 1.0\n\
         Content-Type: multipart/mixed; boundary=\"b\"\n\n--b\nContent-Type: text/plain\n\nmy key\n\
         --b\nContent-Type: application/pgp-keys; name=\"key.asc\"\n\n{armored}\n--b--\n"
    )
}

/// A reply that never reached the MTA records nothing: the retry of a list-key request is not
/// rate-limited, and the retry of a signed confirmation is not a replay (nor was the binding
/// activated by the attempt whose confirmation could not be sent).
#[tokio::test(flavor = "multi_thread")]
async fn a_reply_that_was_not_reinjected_leaves_nothing_behind() {
    let site = Site::new();
    site.create_list(LIST);
    let sink = sink::Sink::start();
    let eve = GpgMember::new(&site, "eve", false);
    let dave = GpgMember::new(&site, "dave", false);

    // Dave's offer is challenged while reinjection works.
    reinject_to(&site, sink.port);
    let daemon = milter::start(&site.config).await;
    let armored = fs::read_to_string(&dave.cert).unwrap();
    let status = send(
        &daemon,
        &dave.address,
        offer(&dave.address, &armored).as_bytes(),
    )
    .await;
    assert_eq!(status, Status::Discard);
    let challenge = wait_for(&sink, &dave.address, 1);
    assert_eq!(challenge.len(), 1, "{}", sink.summary());
    let plain = dave.gpg.decrypt(&challenge[0].data).plaintext;
    let token_line = String::from_utf8(plain)
        .unwrap()
        .lines()
        .find(|l| l.starts_with("listcrypt-token: "))
        .expect("token line")
        .to_string();
    daemon.stop().await;

    // Reinjection refused: the request and the confirmation are tempfailed (RFC 5321 4.2.1:
    // the client retries), and neither leaves state behind.
    reinject_to(&site, closed_port());
    let daemon = milter::start(&site.config).await;
    let ask = ask_for_key(&eve.address);
    let status = send(&daemon, &eve.address, ask.as_bytes()).await;
    milter::assert_reply(&status, "451", "4.3.0", "reply not reinjected");
    let confirm = confirmation(&dave.gpg, &dave.address, &token_line);
    let status = send(&daemon, &dave.address, &confirm).await;
    milter::assert_reply(&status, "451", "4.3.0", "confirmation not reinjected");
    assert!(
        member_line(&site, &dave.address).contains(" pending"),
        "not bound while its confirmation could not be sent: {}",
        member_line(&site, &dave.address)
    );
    daemon.stop().await;

    // The retries, once reinjection works again, are answered.
    reinject_to(&site, sink.port);
    let daemon = milter::start(&site.config).await;
    assert_eq!(
        send(&daemon, &eve.address, ask.as_bytes()).await,
        Status::Discard
    );
    let replies = wait_for(&sink, &eve.address, 1);
    assert_eq!(replies.len(), 1, "the retry is not rate-limited");
    assert!(replies[0].text().contains("application/pgp-keys"));
    assert_eq!(
        send(&daemon, &dave.address, &confirm).await,
        Status::Discard
    );
    let line = member_line(&site, &dave.address);
    assert!(
        line.contains(&dave.fingerprint) && line.contains(" active "),
        "the retried confirmation is no replay: {line}"
    );
    let confirmations = wait_for(&sink, &dave.address, 2);
    assert_eq!(confirmations.len(), 2, "{}", sink.summary());
    let plain = dave.gpg.decrypt(&confirmations[1].data).plaintext;
    assert!(String::from_utf8_lossy(&plain).contains("is now bound"));

    // Once answered, the same confirmation is a replay and the request rate-limited.
    let before = sink.deliveries().len();
    assert_eq!(
        send(&daemon, &dave.address, &confirm).await,
        Status::Discard
    );
    assert_eq!(
        send(&daemon, &eve.address, ask.as_bytes()).await,
        Status::Discard
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(sink.deliveries().len(), before, "{}", sink.summary());
    daemon.stop().await;
}

/// An offered key keeps only what its owner signed: a certification by another key and a
/// signature with no issuer (RFC 9580 5.2.3.12, 5.2.3.35) are not stored.
#[tokio::test(flavor = "multi_thread")]
async fn an_offered_key_is_stored_without_foreign_signatures() {
    use openpgp::cert::prelude::*;
    use openpgp::packet::signature::subpacket::{Subpacket, SubpacketTag, SubpacketValue};
    use openpgp::packet::signature::SignatureBuilder;
    use openpgp::parse::Parse;
    use openpgp::serialize::Serialize;
    use openpgp::types::SignatureType;
    use openpgp::{Cert, Packet};

    let site = Site::new();
    site.create_list(LIST);
    let sink = sink::Sink::start();
    reinject_to(&site, sink.port);
    let dave = GpgMember::new(&site, "dave", false);
    let cert = Cert::from_file(&dave.cert).unwrap();
    let uid = cert.userids().next().unwrap().userid().clone();

    // Mallory certifies dave's user ID twice: once as usual, once with no issuer subpacket.
    let (mallory, _) = CertBuilder::general_purpose(Some("mallory@example.test"))
        .generate()
        .unwrap();
    let mut signer = mallory
        .primary_key()
        .key()
        .clone()
        .parts_into_secret()
        .unwrap()
        .into_keypair()
        .unwrap();
    let third_party = SignatureBuilder::new(SignatureType::GenericCertification)
        .sign_userid_binding(&mut signer, cert.primary_key().key(), &uid)
        .unwrap();
    // An unhashed Issuer keeps the builder from adding hashed ones; then it goes.
    let mut builder = SignatureBuilder::new(SignatureType::PositiveCertification);
    builder
        .unhashed_area_mut()
        .add(Subpacket::new(SubpacketValue::Issuer(mallory.keyid()), false).unwrap())
        .unwrap();
    let mut no_issuer = builder
        .sign_userid_binding(&mut signer, cert.primary_key().key(), &uid)
        .unwrap();
    no_issuer
        .unhashed_area_mut()
        .remove_all(SubpacketTag::Issuer);
    assert!(no_issuer.get_issuers().is_empty());

    // The offer: dave's packets with both signatures after his user ID.
    let mut packets: Vec<Packet> = Vec::new();
    for p in cert.clone().into_packets() {
        let after_uid = matches!(&p, Packet::UserID(u) if *u == uid);
        packets.push(p);
        if after_uid {
            packets.push(third_party.clone().into());
            packets.push(no_issuer.clone().into());
        }
    }
    let mut armored = Vec::new();
    {
        let mut w =
            openpgp::armor::Writer::new(&mut armored, openpgp::armor::Kind::PublicKey).unwrap();
        for p in &packets {
            p.serialize(&mut w).unwrap();
        }
        w.finalize().unwrap();
    }
    let armored = String::from_utf8(armored).unwrap();
    assert_eq!(
        foreign_signatures(armored.as_bytes(), &cert),
        2,
        "the offer carries both"
    );

    let daemon = milter::start(&site.config).await;
    let status = send(
        &daemon,
        &dave.address,
        offer(&dave.address, &armored).as_bytes(),
    )
    .await;
    assert_eq!(status, Status::Discard);
    let challenge = wait_for(&sink, &dave.address, 1);
    assert_eq!(challenge.len(), 1, "challenged: {}", sink.summary());
    daemon.stop().await;

    let stored = site.cert_store_path(&dave.fingerprint);
    let stored = fs::read(&stored).unwrap_or_else(|e| panic!("{}: {e}", stored.display()));
    assert_eq!(foreign_signatures(&stored, &cert), 0, "stored without them");
    let stored = Cert::from_bytes(&stored).unwrap();
    assert!(
        stored.userids().any(|u| u.userid() == &uid),
        "dave's self-signed user ID is kept"
    );
    assert!(stored.keys().subkeys().count() > 0, "and his subkey");
}

/// Signature packets in `data` (armored or binary) not issued by `own`'s primary key, or
/// with no issuer.
fn foreign_signatures(data: &[u8], own: &openpgp::Cert) -> usize {
    use openpgp::parse::Parse;
    let handle = openpgp::KeyHandle::from(own.fingerprint());
    openpgp::PacketPile::from_bytes(data)
        .unwrap()
        .into_children()
        .filter(|p| match p {
            openpgp::Packet::Signature(s) => !s.get_issuers().iter().any(|h| h.aliases(&handle)),
            _ => false,
        })
        .count()
}

/// Whoever asks, under however many addresses, the list sends at most
/// `LIST_REPLIES_PER_HOUR` replies an hour.
#[tokio::test(flavor = "multi_thread")]
async fn the_list_answers_a_bounded_number_of_requests_an_hour() {
    let site = Site::new();
    site.create_list(LIST);
    let sink = sink::Sink::start();
    reinject_to(&site, sink.port);
    let daemon = milter::start(&site.config).await;
    let budget = LIST_REPLIES_PER_HOUR as usize;
    for i in 0..=budget {
        let address = format!("asker{i}@example.test");
        let status = send(&daemon, &address, ask_for_key(&address).as_bytes()).await;
        assert_eq!(status, Status::Discard, "request {i}");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while sink.deliveries().len() < budget && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(sink.deliveries().len(), budget, "{}", sink.summary());
    assert!(
        sink.deliveries_to(&format!("asker{budget}@example.test"))
            .is_empty(),
        "the request over the budget gets no reply"
    );
    daemon.stop().await;
}

/// `process inbound --rcpt LIST-key@…` keeps its first line, shows the reply it would send,
/// and records nothing: the same request asked twice is answered twice, and then by the
/// daemon too.
#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_shows_the_reply_and_records_nothing() {
    let site = Site::new();
    site.create_list(LIST);
    let sink = sink::Sink::start();
    reinject_to(&site, sink.port);
    let address = "ann@example.test";
    let ask = ask_for_key(address);
    for _ in 0..2 {
        let out = run(
            site.cli().args([
                "process",
                "inbound",
                "--list",
                LIST,
                "--from",
                address,
                "--rcpt",
                KEY_ADDRESS,
            ]),
            Some(ask.as_bytes()),
        );
        assert_eq!(out.status.code(), Some(1), "not processed");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            text.starts_with(
                "discard mail to the key address is answered by the daemon, not passed on\r\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(&format!("To: {address}\r\n")),
            "the reply: {text}"
        );
        assert!(text.contains("application/pgp-keys"), "{text}");
    }
    let daemon = milter::start(&site.config).await;
    assert_eq!(
        send(&daemon, address, ask.as_bytes()).await,
        Status::Discard
    );
    assert_eq!(wait_for(&sink, address, 1).len(), 1, "{}", sink.summary());
    daemon.stop().await;
}

/// The list's Autocrypt header (Autocrypt Level 1 `keydata`), on copies From the list (here
/// Mailman's DMARC `munge_from`), carries the list key without the certifications members
/// published at the key address.
#[test]
fn the_autocrypt_header_carries_the_list_key_without_certifications() {
    use listcrypt::config::Policy;
    use listcrypt::keys::{ListKeys, Member};
    use listcrypt::store::Role;
    use openpgp::cert::prelude::*;
    use openpgp::packet::signature::SignatureBuilder;
    use openpgp::parse::Parse;
    use openpgp::serialize::SerializeInto;
    use openpgp::types::SignatureType;

    let (list_key, _) = CertBuilder::general_purpose(Some("<enc@lists.example.test>"))
        .generate()
        .unwrap();
    let (bob, _) = CertBuilder::general_purpose(Some("<bob@example.test>"))
        .generate()
        .unwrap();
    let mut signer = bob
        .primary_key()
        .key()
        .clone()
        .parts_into_secret()
        .unwrap()
        .into_keypair()
        .unwrap();
    let uid = list_key.userids().next().unwrap().userid().clone();
    let certification = SignatureBuilder::new(SignatureType::GenericCertification)
        .sign_userid_binding(&mut signer, list_key.primary_key().key(), &uid)
        .unwrap();
    let certified = list_key.insert_packets([certification]).unwrap().0;
    let list = ListKeys::new(
        LIST.into(),
        Policy::default(),
        certified.clone(),
        vec![Member {
            address: "bob@example.test".into(),
            cert: bob.strip_secret_key_material(),
            role: Role::Member,
            show_key_id: false,
        }],
    );
    let post = "From: Alice via Enc <enc@lists.example.test>\r\nTo: enc@lists.example.test\r\n\
                Subject: hi\r\nMessage-ID: <p1@example.test>\r\nMIME-Version: 1.0\r\n\
                Content-Type: text/plain; charset=utf-8\r\n\r\nhello\r\n";
    let rewrite = listcrypt::outbound::encrypt_message(
        post.as_bytes(),
        &list,
        &["<bob@example.test>".to_string()],
    )
    .unwrap();
    let (_, value) = rewrite
        .add
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("Autocrypt"))
        .expect("the list's Autocrypt header");
    let keydata: String = value
        .split("keydata=")
        .nth(1)
        .unwrap()
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let keydata = data_encoding::BASE64.decode(keydata.as_bytes()).unwrap();
    assert_eq!(foreign_signatures(&keydata, &certified), 0);
    let published = openpgp::Cert::from_bytes(&keydata).unwrap();
    assert_eq!(published.fingerprint(), certified.fingerprint());
    assert!(published.userids().any(|u| u.userid() == &uid));
    assert!(
        published.keys().subkeys().count() > 0,
        "the encryption subkey"
    );
    assert_eq!(
        foreign_signatures(&certified.armored().to_vec().unwrap(), &certified),
        1,
        "the list key itself carries bob's certification"
    );
}
