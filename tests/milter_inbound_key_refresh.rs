//! Members' keys kept fresh (issue 15 item 6): the `Autocrypt` header of a member's verified
//! post updates that member's bound key in the background (new subkeys, later expiry,
//! revocation), and nothing else gets in: not another primary key, not a third party's
//! certification or a new user ID, not a header on an unverified post. A revocation holds for
//! the next outbound batch and the owners are told. The SMTP reply never waits for any of it.
//! A network refresh from the member's WKD (here a loopback server) works the same way.

mod support;

use indymilter_test::Status;
use listcrypt::pgp::usable_until;
use sequoia_openpgp::parse::Parse;
use sequoia_openpgp::Cert;
use std::fs;
use std::time::{Duration, Instant};
use support::gpg::{Gpg, GpgMember};
use support::milter::{self, Mail, Running};
use support::site::{Site, LIST, LIST_BOUNCES};

/// `Autocrypt: addr=…; prefer-encrypt=mutual; keydata=…` (Autocrypt Level 1 §2.3), folded.
fn autocrypt(address: &str, keydata: &[u8]) -> String {
    let b64 = data_encoding::BASE64.encode(keydata);
    let folded: Vec<&str> = b64
        .as_bytes()
        .chunks(76)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "Autocrypt: addr={address}; prefer-encrypt=mutual; keydata=\n {}\n",
        folded.join("\n ")
    )
}

/// GnuPG's export of `who` with only the key's own signatures (binary, as Autocrypt wants).
fn minimal(gpg: &Gpg, who: &str, extra: &[&str]) -> Vec<u8> {
    let mut args = vec!["--export", "--export-options", "export-minimal"];
    args.extend(extra);
    args.push(who);
    gpg.ok(&args, None)
}

fn add_subkey(m: &GpgMember) -> String {
    m.gpg.ok(
        &[
            "--passphrase",
            "",
            "--quick-add-key",
            &m.fingerprint,
            "cv25519",
            "encr",
            "never",
        ],
        None,
    );
    let out = String::from_utf8(
        m.gpg
            .ok(&["--with-colons", "--list-keys", &m.fingerprint], None),
    )
    .unwrap();
    // The last `fpr` line is the newest subkey's.
    out.lines()
        .rev()
        .find_map(|l| l.strip_prefix("fpr:"))
        .and_then(|l| l.split(':').find(|f| f.len() == 40))
        .unwrap()
        .to_string()
}

/// The member's key as listcrypt stores it (pgp.cert.d under keyring_dir/certs).
fn stored(site: &Site, fpr: &str) -> Cert {
    Cert::from_file(site.cert_store_path(fpr)).unwrap()
}

fn has_subkey(cert: &Cert, subkey: &str) -> bool {
    cert.keys()
        .subkeys()
        .any(|k| k.key().fingerprint().to_hex().eq_ignore_ascii_case(subkey))
}

/// A signed post of `m` with `header` (if any) in its outer header; the milter's status.
async fn post(daemon: &Running, m: &GpgMember, header: &str, sign: bool) -> Status {
    // Distinct texts: two equal posts in one second would be one replayed signature.
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let text = m.compose("[...]", &format!("post number {n}"), sign, "");
    let mail = Mail::parse(format!("{header}{}", String::from_utf8(text).unwrap()).as_bytes());
    let (_, status) = milter::transact(daemon.inbound, &m.address, LIST, &mail).await;
    status
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn handled(daemon: &Running, n: u64) {
    let q = daemon.daemon.key_updates();
    wait_for(&format!("{n} handled key update(s)"), || q.handled() >= n).await;
}

/// A member whose key (Ed25519/Cv25519, GnuPG's default) expires after `expire`.
fn member_expiring(site: &Site, name: &str, expire: &str) -> GpgMember {
    let address = format!("{name}@example.test");
    let gpg = Gpg::new(site.path(&format!("gnupg-{name}")));
    let uid = format!("{name} <{address}>");
    gpg.ok(
        &[
            "--passphrase",
            "",
            "--quick-gen-key",
            &uid,
            "future-default",
            "default",
            expire,
        ],
        None,
    );
    let fingerprint = gpg.fingerprint(&uid);
    let cert = site.path(&format!("{name}.asc"));
    gpg.export(&fingerprint, &cert);
    gpg.import(&site.export_list_key(LIST));
    let list_fingerprint = gpg.fingerprint(LIST);
    site.bind(LIST, &address, &cert, false);
    GpgMember {
        gpg,
        address,
        fingerprint,
        cert,
        list_fingerprint,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_subkey_and_a_later_expiry_are_applied_without_the_smtp_reply_waiting() {
    let site = Site::new();
    site.create_list(LIST);
    let alice = member_expiring(&site, "alice", "30d");
    let before = usable_until(&stored(&site, &alice.fingerprint))
        .flatten()
        .unwrap();
    let daemon = milter::start(&site.config).await;

    // The refresh task is held: the post is answered all the same, and nothing changed yet.
    let subkey = add_subkey(&alice);
    let held = daemon.daemon.key_updates().pause().await;
    let header = autocrypt(
        &alice.address,
        &minimal(&alice.gpg, &alice.fingerprint, &[]),
    );
    let status = tokio::time::timeout(
        Duration::from_secs(60),
        post(&daemon, &alice, &header, true),
    )
    .await
    .expect("the SMTP reply does not wait for the refresh");
    milter::assert_goes_on(&status, "a verified post with an Autocrypt header");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!has_subkey(&stored(&site, &alice.fingerprint), &subkey));
    assert_eq!(daemon.daemon.key_updates().handled(), 0);
    drop(held);
    handled(&daemon, 1).await;
    assert!(
        has_subkey(&stored(&site, &alice.fingerprint), &subkey),
        "the new subkey is applied"
    );

    // A later expiry (new self-signatures on the user ID and subkeys).
    alice
        .gpg
        .ok(&["--quick-set-expire", &alice.fingerprint, "2y"], None);
    alice
        .gpg
        .ok(&["--quick-set-expire", &alice.fingerprint, "2y", "*"], None);
    let header = autocrypt(
        &alice.address,
        &minimal(&alice.gpg, &alice.fingerprint, &[]),
    );
    milter::assert_goes_on(&post(&daemon, &alice, &header, true).await, "post");
    handled(&daemon, 2).await;
    let after = usable_until(&stored(&site, &alice.fingerprint))
        .flatten()
        .unwrap();
    assert!(
        after > before + Duration::from_secs(300 * 86_400),
        "expiry extended: {before:?} -> {after:?}"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revocation_holds_for_the_next_batch_and_the_owners_are_told() {
    let site = Site::new();
    site.create_list(LIST);
    let sink = support::sink::Sink::start();
    site.reinject_to(sink.port);
    let alice = GpgMember::new(&site, "alice", true);
    let owner = GpgMember::new(&site, "owner", false);
    site.bind(LIST, &owner.address, &owner.cert, true);
    let daemon = milter::start(&site.config).await;
    let mut conn = milter::connect(daemon.outbound).await;
    conn.mail([format!("<{LIST_BOUNCES}>")]).await.unwrap();
    let rcpt = conn.rcpt([format!("<{}>", alice.address)]).await.unwrap();
    assert_eq!(rcpt, Status::Continue, "alice's key is good before");
    conn.close().await.unwrap();

    // The post is signed before the revocation is imported (GnuPG signs with no revoked key);
    // the outer header is added afterwards, as it is not signed.
    let text = alice.compose("[...]", "last words", true, "");
    let rev = fs::read_to_string(
        alice
            .gpg
            .home
            .join("openpgp-revocs.d")
            .join(format!("{}.rev", alice.fingerprint)),
    )
    .unwrap()
    .replace(":-----BEGIN", "-----BEGIN");
    alice.gpg.ok(&["--import"], Some(rev.as_bytes()));
    let header = autocrypt(
        &alice.address,
        &minimal(&alice.gpg, &alice.fingerprint, &[]),
    );
    let mail = Mail::parse(format!("{header}{}", String::from_utf8(text).unwrap()).as_bytes());
    let (_, status) = milter::transact(daemon.inbound, &alice.address, LIST, &mail).await;
    milter::assert_goes_on(&status, "the last post of alice's key");
    handled(&daemon, 1).await;

    let mut conn = milter::connect(daemon.outbound).await;
    conn.mail([format!("<{LIST_BOUNCES}>")]).await.unwrap();
    let rcpt = conn.rcpt([format!("<{}>", alice.address)]).await.unwrap();
    milter::assert_reply(&rcpt, "550", "5.7.1", "a revoked key gets no copy");
    conn.close().await.unwrap();

    let told = sink.wait_for_deliveries(&owner.address, 1, Duration::from_secs(30));
    assert_eq!(told.len(), 1, "one notice to the owner");
    let text = told[0].text();
    let start = text.find("-----BEGIN PGP MESSAGE-----").expect("encrypted");
    let end = text.find("-----END PGP MESSAGE-----").unwrap() + 25;
    let opened = owner.gpg.decrypt(&text.as_bytes()[start..end]);
    assert!(opened.decrypted(), "{}", opened.report());
    assert!(
        opened.text().contains(&alice.address) && opened.text().contains("revoked"),
        "{}",
        opened.text()
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn other_keys_foreign_signatures_new_user_ids_and_unverified_posts_are_ignored() {
    let site = Site::new();
    site.create_list(LIST);
    // Unsigned posts are accepted (for moderation) here: accepted, yet not verified.
    let policy = site.path("lists.d").join(format!("{LIST}.toml"));
    let text = fs::read_to_string(&policy).unwrap();
    fs::write(
        &policy,
        text.replace("unsigned_action = \"reject\"", "unsigned_action = \"hold\""),
    )
    .unwrap();
    let alice = GpgMember::new(&site, "alice", true);
    let mallory = GpgMember::new(&site, "mallory", false);
    let daemon = milter::start(&site.config).await;
    let subkey = add_subkey(&alice);
    let good = minimal(&alice.gpg, &alice.fingerprint, &[]);
    let unchanged = |what: &str| {
        let cert = stored(&site, &alice.fingerprint);
        assert!(!has_subkey(&cert, &subkey), "{what}: applied");
        assert_eq!(cert.userids().count(), 1, "{what}: user IDs");
    };

    // An unsigned (so unverified) post is held, not refused; its header is not offered.
    let status = post(&daemon, &alice, &autocrypt(&alice.address, &good), false).await;
    milter::assert_goes_on(&status, "unsigned post held");
    // Another primary key under alice's address.
    let other = minimal(&mallory.gpg, &mallory.fingerprint, &[]);
    let status = post(&daemon, &alice, &autocrypt(&alice.address, &other), true).await;
    milter::assert_goes_on(&status, "post");
    handled(&daemon, 1).await;
    unchanged("unverified post, or another primary key");
    assert!(!site.cert_store_path(&mallory.fingerprint).exists());

    // Alice's key with the new subkey and mallory's certification of her user ID.
    let tmp = site.path("alice-updated.pgp");
    fs::write(&tmp, &good).unwrap();
    mallory.gpg.import(&tmp);
    mallory
        .gpg
        .ok(&["--quick-sign-key", &alice.fingerprint], None);
    let certified = mallory.gpg.ok(&["--export", &alice.fingerprint], None);
    let status = post(
        &daemon,
        &alice,
        &autocrypt(&alice.address, &certified),
        true,
    )
    .await;
    milter::assert_goes_on(&status, "post");
    handled(&daemon, 2).await;
    unchanged("a third party's certification");

    // A new (self-signed) user ID.
    alice.gpg.ok(
        &[
            "--quick-add-uid",
            &alice.fingerprint,
            "alice <alice@elsewhere.example>",
        ],
        None,
    );
    let more = minimal(&alice.gpg, &alice.fingerprint, &[]);
    let status = post(&daemon, &alice, &autocrypt(&alice.address, &more), true).await;
    milter::assert_goes_on(&status, "post");
    handled(&daemon, 3).await;
    unchanged("a new user ID");

    // The same subkey alone is applied: the refusals above were about what came with it.
    let only = minimal(
        &alice.gpg,
        &alice.fingerprint,
        &["--export-filter", "keep-uid=mbox = alice@example.test"],
    );
    let status = post(&daemon, &alice, &autocrypt(&alice.address, &only), true).await;
    milter::assert_goes_on(&status, "post");
    handled(&daemon, 4).await;
    let cert = stored(&site, &alice.fingerprint);
    assert!(has_subkey(&cert, &subkey));
    assert_eq!(cert.userids().count(), 1);
    assert_eq!(
        cert.userids().next().unwrap().certifications().count(),
        0,
        "no third-party certification"
    );
    daemon.stop().await;
}

/// An HTTP server on loopback that answers `GET path` with `key` and anything else with 404:
/// a member's WKD (draft §3.1 direct method) or a VKS keyserver.
async fn key_server(path: String, key: Vec<u8>) -> (u16, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = vec![0u8; 4096];
            let n = s.read(&mut buf).await.unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]).into_owned();
            let wanted = request.starts_with(&format!("GET {path} HTTP/1.1\r\n"));
            let head = if wanted {
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n",
                    key.len()
                )
            } else {
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into()
            };
            let _ = s.write_all(head.as_bytes()).await;
            if wanted {
                let _ = s.write_all(&key).await;
            }
            let _ = s.shutdown().await;
        }
    });
    (port, task)
}

/// Alice with a new subkey, as a key server would serve her key: with mallory's
/// certification of her user ID too (which must stay out). Returns (alice, subkey, served).
fn served_update(site: &Site) -> (GpgMember, String, Vec<u8>) {
    let alice = GpgMember::new(site, "alice", true);
    let subkey = add_subkey(&alice);
    let mallory = GpgMember::new(site, "mallory", false);
    let tmp = site.path("alice-updated.pgp");
    fs::write(&tmp, minimal(&alice.gpg, &alice.fingerprint, &[])).unwrap();
    mallory.gpg.import(&tmp);
    mallory
        .gpg
        .ok(&["--quick-sign-key", &alice.fingerprint], None);
    let served = mallory.gpg.ok(&["--export", &alice.fingerprint], None);
    (alice, subkey, served)
}

/// Starts the daemon with `[key_refresh]` set to `table` and waits for the subkey to arrive.
async fn refreshed_from(site: &Site, alice: &GpgMember, subkey: &str, table: &str) {
    let config = fs::read_to_string(&site.config).unwrap();
    fs::write(&site.config, format!("{config}[key_refresh]\n{table}")).unwrap();
    assert!(!has_subkey(&stored(site, &alice.fingerprint), subkey));
    let daemon = milter::start(&site.config).await;
    wait_for("the network refresh", || {
        has_subkey(&stored(site, &alice.fingerprint), subkey)
    })
    .await;
    let cert = stored(site, &alice.fingerprint);
    assert_eq!(
        cert.userids().next().unwrap().certifications().count(),
        0,
        "only the key's own signatures are taken"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_network_refresh_fetches_the_members_wkd() {
    let site = Site::new();
    site.create_list(LIST);
    let (alice, subkey, served) = served_update(&site);
    let path = format!(
        "/.well-known/openpgpkey/hu/{}?l=alice",
        listcrypt::wkd::hash_local("alice")
    );
    let (port, server) = key_server(path, served).await;
    let table =
        format!("interval = 1\nsources = [\"wkd\"]\nwkd_base_url = \"http://127.0.0.1:{port}\"\n");
    refreshed_from(&site, &alice, &subkey, &table).await;
    server.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_network_refresh_fetches_from_a_vks_keyserver() {
    let site = Site::new();
    site.create_list(LIST);
    let (alice, subkey, served) = served_update(&site);
    let path = format!(
        "/vks/v1/by-fingerprint/{}",
        alice.fingerprint.to_ascii_uppercase()
    );
    let (port, server) = key_server(path, served).await;
    let table =
        format!("interval = 1\nsources = [\"vks\"]\nvks_url = \"http://127.0.0.1:{port}\"\n");
    refreshed_from(&site, &alice, &subkey, &table).await;
    server.abort();
}
