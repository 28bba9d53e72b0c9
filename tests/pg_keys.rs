//! Keys and certificates on a PostgreSQL site (issue 12, "What lives where"), with a throwaway
//! cluster (tests/support/postgres.rs) and hosts that share nothing but the database and
//! copies of the policy files (tests/support/pg_site.rs; propagation timing is in
//! tests/pg_propagation.rs):
//! - `certs export` writes a pgp.cert.d directory that the reference implementation of the
//!   format (openpgp-cert-d, sq's cert store) reads, and `certs import` round-trips it, on
//!   PostgreSQL and on SQLite;
//! - the database never holds an unprotected list secret key;
//! - `check-config` warns when the hosts' policy files differ;
//! - two hosts changing one certificate or list key at once never lose a change;
//! - the key address spans hosts: offered on one, proven and certified on the other.

mod support;

use openpgp::parse::Parse;
use sequoia_openpgp as openpgp;
use std::path::Path;
use std::time::Duration;
use support::gpg::{Gpg, GpgMember};
use support::milter::{self, Mail};
use support::pg_site::{append_config, deploy_policy, first_accepted, host, LIST_PASSPHRASE};
use support::postgres::{Postgres, PASSWORD};
use support::process::{run, run_ok};
use support::sink;
use support::site::{Site, LIST};
use support::text::to_crlf;

/// Every certificate in a pgp.cert.d directory, as the format's reference implementation
/// reads it: fingerprint (upper-case hex) and bytes.
fn cert_d(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let certd = openpgp_cert_d::CertD::with_base_dir(dir).unwrap();
    let mut found: Vec<(String, Vec<u8>)> = certd
        .fingerprints()
        .map(|f| {
            let f = f.unwrap();
            let (_, bytes) = certd.get(&f).unwrap().expect("listed, so present");
            (f.to_ascii_uppercase(), bytes)
        })
        .collect();
    found.sort();
    found
}

#[test]
fn certs_export_is_a_cert_store_and_import_round_trips() {
    let pg = Postgres::start();
    pg.create_database("site");
    pg.create_database("other");
    let a = host(&pg, "site", "mx-a");
    a.create_list(LIST);
    let alice = GpgMember::new(&a, "alice", true);
    let bob = GpgMember::new(&a, "bob", true);
    let mut want = vec![alice.fingerprint.clone(), bob.fingerprint.clone()];
    want.sort();

    let export = a.path("export");
    run_ok(a.cli().arg("certs").arg("export").arg(&export), None);
    let exported = cert_d(&export);
    let fingerprints: Vec<String> = exported.iter().map(|(f, _)| f.clone()).collect();
    assert_eq!(fingerprints, want);
    for (fpr, bytes) in &exported {
        let cert = openpgp::Cert::from_bytes(bytes).unwrap();
        assert_eq!(&cert.fingerprint().to_hex(), fpr);
        assert!(!cert.is_tsk(), "certificates only, no secrets");
    }
    // GnuPG reads what sq would: the member's own key.
    let file = export
        .join(alice.fingerprint[..2].to_ascii_lowercase())
        .join(alice.fingerprint[2..].to_ascii_lowercase());
    let shown = alice.gpg.show_fingerprints(&file);
    assert_eq!(shown.first(), Some(&alice.fingerprint), "{shown:?}");

    // Into another database and back out: the same store.
    let c = host(&pg, "other", "mx-c");
    run_ok(c.cli().arg("certs").arg("import").arg(&export), None);
    assert_eq!(
        pg.psql(
            "other",
            "SELECT string_agg(fingerprint, ',' ORDER BY fingerprint) FROM certs"
        ),
        want.join(",")
    );
    let again = c.path("again");
    run_ok(c.cli().arg("certs").arg("export").arg(&again), None);
    assert_eq!(cert_d(&again), exported);

    // SQLite: between keyring_dir/certs and the directory.
    let local = Site::new();
    run_ok(local.cli().arg("certs").arg("import").arg(&export), None);
    assert!(local.cert_store_path(&alice.fingerprint).exists());
    assert!(local.cert_store_path(&bob.fingerprint).exists());
    let back = local.path("back");
    run_ok(local.cli().arg("certs").arg("export").arg(&back), None);
    assert_eq!(cert_d(&back), exported);
}

/// Whether every secret in the armored key is encrypted (RFC 9580 §5.5.3: S2K usage not 0).
fn all_secrets_encrypted(armored: &str) -> bool {
    let cert = openpgp::Cert::from_bytes(armored.as_bytes()).unwrap();
    cert.is_tsk()
        && cert
            .keys()
            .secret()
            .all(|k| !k.key().has_unencrypted_secret())
}

#[test]
fn the_database_never_holds_an_unprotected_list_key() {
    let pg = Postgres::start();
    pg.create_database("site");
    // A one-host site with an unprotected key, moving to PostgreSQL.
    let site = Site::new();
    site.create_list(LIST);
    std::fs::write(site.path("db-password"), PASSWORD).unwrap();
    append_config(
        &site,
        &format!(
            "database_url = \"{}\"\ndatabase_password_file = \"{}\"\n",
            pg.url("site"),
            site.path("db-password").display()
        ),
    );
    let refused = run(site.cli().args(["list", "upload", LIST]), None);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains(&format!("listcrypt list protect {LIST}")),
        "{stderr}"
    );
    // A new list without a passphrase configured is refused too.
    let other = "other@lists.example.test";
    let refused = run(site.cli().args(["list", "create", other]), None);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_ne!(refused.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("passphrase_file"), "{stderr}");
    assert_eq!(pg.psql("site", "SELECT count(*) FROM list_keys"), "0");

    // Protected where it is, then uploaded.
    let passphrase = site.path("list-passphrase");
    std::fs::write(&passphrase, format!("{LIST_PASSPHRASE}\n")).unwrap();
    run_ok(
        site.cli()
            .args(["list", "protect", LIST, "--new-passphrase-file"])
            .arg(&passphrase),
        None,
    );
    append_config(
        &site,
        &format!("passphrase_file = \"{}\"\n", passphrase.display()),
    );
    run_ok(site.cli().args(["list", "upload", LIST]), None);
    let stored = |list: &str| {
        pg.psql(
            "site",
            &format!("SELECT convert_from(secret, 'UTF8') FROM list_keys WHERE list = '{list}'"),
        )
    };
    assert!(all_secrets_encrypted(&stored(LIST)));
    // Unprotecting it in the database is refused; the stored key stays as it was.
    let before = stored(LIST);
    let refused = run(site.cli().args(["list", "unprotect", LIST]), None);
    assert_ne!(refused.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("only protected"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert_eq!(stored(LIST), before);
    // With the passphrase configured, a new list's key is stored protected.
    run_ok(site.cli().args(["list", "create", other]), None);
    assert!(all_secrets_encrypted(&stored(other)));
    assert!(!site.path("keyrings/lists").join(other).exists());
}

fn check_config_stderr(site: &Site) -> String {
    let out = run(site.cli().arg("check-config"), None);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    stderr
}

#[test]
fn check_config_warns_when_the_hosts_policy_files_differ() {
    let pg = Postgres::start();
    pg.create_database("site");
    let a = host(&pg, "site", "mx-a");
    let b = host(&pg, "site", "mx-b");
    a.create_list(LIST);
    deploy_policy(&a, &b);
    // Each daemon records its digest when it starts.
    for site in [&a, &b] {
        let config = listcrypt::config::Config::load(Some(&site.config)).unwrap();
        drop(listcrypt::Daemon::open(config, None).unwrap());
    }
    assert_eq!(
        pg.psql("site", "SELECT count(DISTINCT policy_sha256) FROM hosts"),
        "1"
    );
    let stderr = check_config_stderr(&a);
    assert!(!stderr.contains("differ"), "{stderr}");
    // Host A's policy changes and host B's does not.
    a.set_batch_size(LIST, 10);
    let stderr = check_config_stderr(&a);
    assert!(
        stderr.contains("policy files differ between hosts") && stderr.contains("mx-b"),
        "{stderr}"
    );
    assert!(!stderr.contains("mx-a recorded"), "{stderr}");
}

/// Two hosts changing one certificate or list key at once: the second writer's stale version
/// is refused (it reads again and merges), never written over the first one's change; a list
/// key change bumps the generation every host reloads on.
#[test]
fn a_stale_version_never_overwrites_a_certificate_or_a_list_key() {
    let pg = Postgres::start();
    pg.create_database("site");
    let a = host(&pg, "site", "mx-a");
    let open = || {
        let config = listcrypt::config::Config::load(Some(&a.config)).unwrap();
        listcrypt::store::open(&config).unwrap()
    };
    let (one, two) = (open(), open());
    assert!(one.keeps_keys());
    assert!(one.cert_put("AB01", b"first", None).unwrap());
    assert!(
        !two.cert_put("AB01", b"second", None).unwrap(),
        "inserted once"
    );
    let seen = two.cert_get("AB01").unwrap().unwrap();
    assert_eq!(seen.bytes, b"first");
    assert!(two.cert_put("AB01", b"merged", Some(seen.version)).unwrap());
    assert!(!one.cert_put("AB01", b"stale", Some(seen.version)).unwrap());
    assert_eq!(one.cert_get("AB01").unwrap().unwrap().bytes, b"merged");

    let generation = two.generation().unwrap();
    assert!(one.list_key_put(LIST, b"pub", b"sec", None).unwrap());
    assert!(two.generation().unwrap() > generation);
    let seen = two.list_key_get(LIST).unwrap().unwrap();
    assert!(two
        .list_key_put(LIST, b"pub2", b"rotated", Some(seen.version))
        .unwrap());
    assert!(!one
        .list_key_put(LIST, b"pub3", b"stale", Some(seen.version))
        .unwrap());
    assert_eq!(one.list_key_get(LIST).unwrap().unwrap().bytes, b"rotated");
}

const KEY_ADDRESS: &str = "enc-key@lists.example.test";

/// A PGP/MIME message to the key address: `inner` signed by `gpg`'s key, encrypted to the list.
fn signed_and_encrypted(gpg: &Gpg, address: &str, subject: &str, inner: &[u8]) -> Vec<u8> {
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
    .into_bytes()
}

async fn to_key_address(daemon: &milter::Running, from: &str, message: &[u8]) {
    let mail = Mail::parse(message);
    let (_, status) = milter::transact(daemon.inbound, from, KEY_ADDRESS, &mail).await;
    assert_eq!(status, indymilter_test::Status::Discard, "consumed");
}

/// The key address spans hosts: a key offered through host A is proven through host B (the
/// offered certificate and the challenge are in the database), the member then posts through
/// host A, and a certification of the list key sent through host B is published by host A.
#[tokio::test(flavor = "multi_thread")]
async fn a_key_offered_through_host_a_is_proven_through_host_b() {
    let pg = Postgres::start();
    pg.create_database("site");
    let a = host(&pg, "site", "mx-a");
    let b = host(&pg, "site", "mx-b");
    a.create_list(LIST);
    deploy_policy(&a, &b);
    let sink = sink::Sink::start();
    a.reinject_to(sink.port);
    b.reinject_to(sink.port);
    let host_a = milter::start(&a.config).await;
    let host_b = milter::start(&b.config).await;

    let dave = GpgMember::new(&a, "dave", false);
    let armored = std::fs::read_to_string(&dave.cert).unwrap();
    let offer = format!(
        "From: dave <{addr}>\nTo: {KEY_ADDRESS}\nSubject: bind\n\n{armored}\n",
        addr = dave.address
    );
    to_key_address(&host_a, &dave.address, offer.as_bytes()).await;
    let challenge = sink.wait_for_deliveries(&dave.address, 1, Duration::from_secs(10));
    let opened = dave.gpg.decrypt(&challenge[0].data);
    assert!(opened.decrypted(), "{}", opened.report());
    let token_line = String::from_utf8(opened.plaintext)
        .unwrap()
        .lines()
        .find(|l| l.starts_with("listcrypt-token: "))
        .expect("the challenge carries a token")
        .to_string();
    let inner = to_crlf(
        format!("Content-Type: text/plain\n\n> {token_line}\nyes, that was me\n").as_bytes(),
    );
    let reply = signed_and_encrypted(&dave.gpg, &dave.address, "Re: [...]", &inner);
    to_key_address(&host_b, &dave.address, &reply).await;
    let members = String::from_utf8(run_ok(b.cli().args(["member", "list", LIST]), None)).unwrap();
    assert!(
        members.lines().any(|l| l.starts_with(&dave.address)
            && l.contains(&dave.fingerprint)
            && l.contains(" active ")),
        "proven through host B: {members}"
    );
    let post = Mail::parse(&dave.post("[enc] hi", "Bound by mail."));
    // Host A reloads on the binding host B made (its first attempts may come before).
    first_accepted(host_a.inbound, &dave.address, &post).await;

    // Dave certifies the list key and sends it through host B; host A publishes it.
    dave.gpg
        .ok(&["--quick-sign-key", &dave.list_fingerprint], None);
    let certified = dave
        .gpg
        .ok(&["--armor", "--export", &dave.list_fingerprint], None);
    let inner = to_crlf(
        format!(
            "Content-Type: multipart/mixed; boundary=\"k\"\n\n--k\nContent-Type: text/plain\n\n\
             I vouch for the list key\n--k\nContent-Type: application/pgp-keys\n\n{}\n--k--\n",
            String::from_utf8(certified).unwrap()
        )
        .as_bytes(),
    );
    let signing = signed_and_encrypted(&dave.gpg, &dave.address, "[...]", &inner);
    to_key_address(&host_b, &dave.address, &signing).await;
    let published = run_ok(a.cli().args(["list", "export-key", LIST]), None);
    let packets = dave.gpg.list_packets(&published);
    assert!(
        packets.contains(&format!("keyid {}", &dave.fingerprint[24..])),
        "dave's certification is published by host A:\n{packets}"
    );
    host_a.stop().await;
    host_b.stop().await;
}
