//! Keys and certificates on a PostgreSQL site (issue 12, "What lives where" and "Propagation"),
//! with a throwaway cluster (tests/support/postgres.rs) and two hosts that share nothing but
//! the database and copies of the policy files:
//! - a member bound on host A through the CLI (binding and certificate) is honoured by host
//!   B's daemon within a second, and so is a subkey rotation made on host A;
//! - `certs export` writes a pgp.cert.d directory that the reference implementation of the
//!   format (openpgp-cert-d, sq's cert store) reads, and `certs import` round-trips it, on
//!   PostgreSQL and on SQLite;
//! - the database never holds an unprotected list secret key;
//! - `check-config` warns when the hosts' policy files differ;
//! - two hosts changing one certificate or list key at once never lose a change.

mod support;

use openpgp::parse::Parse;
use sequoia_openpgp as openpgp;
use std::path::Path;
use std::time::{Duration, Instant};
use support::gpg::GpgMember;
use support::milter::{self, Mail};
use support::postgres::{Postgres, PASSWORD};
use support::process::{run, run_ok};
use support::site::{Site, LIST};

/// The list keys' passphrase every host is given (`passphrase_file`).
const LIST_PASSPHRASE: &str = "list key passphrase";

/// A host of a PostgreSQL site: its own keyrings, state and policy directory, the shared
/// database, the list keys' passphrase and a host name of its own.
fn host(pg: &Postgres, database: &str, name: &str) -> Site {
    let site = Site::new();
    let password = site.path("db-password");
    std::fs::write(&password, PASSWORD).unwrap();
    let passphrase = site.path("list-passphrase");
    std::fs::write(&passphrase, format!("{LIST_PASSPHRASE}\n")).unwrap();
    append_config(
        &site,
        &format!(
            "database_url = \"{}\"\ndatabase_password_file = \"{}\"\n\
             passphrase_file = \"{}\"\nhost_name = \"{name}\"\n",
            pg.url(database),
            password.display(),
            passphrase.display()
        ),
    );
    site
}

fn append_config(site: &Site, lines: &str) {
    let text = std::fs::read_to_string(&site.config).unwrap();
    std::fs::write(&site.config, format!("{text}{lines}")).unwrap();
}

/// Deploys `from`'s policy file of `LIST` to `to`, as configuration management would.
fn deploy_policy(from: &Site, to: &Site) {
    let name = format!("{LIST}.toml");
    std::fs::create_dir_all(to.path("lists.d")).unwrap();
    std::fs::copy(
        from.path("lists.d").join(&name),
        to.path("lists.d").join(&name),
    )
    .unwrap();
}

/// The first armored OpenPGP message in `message`.
fn armored_part(message: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(message);
    let start = text.find("-----BEGIN PGP MESSAGE-----").unwrap();
    let end = text.find("-----END PGP MESSAGE-----").unwrap();
    format!("{}-----END PGP MESSAGE-----\n", &text[start..end]).into_bytes()
}

/// Sends `post` from `from` through `inbound` until it goes on; returns when the attempt
/// that passed was started, and whether it was the first.
async fn first_accepted(inbound: std::net::SocketAddr, from: &str, post: &Mail) -> (Instant, bool) {
    let until = Instant::now() + Duration::from_secs(20);
    let mut first = true;
    loop {
        let started = Instant::now();
        let (_, status) = milter::transact(inbound, from, LIST, post).await;
        if matches!(
            status,
            indymilter_test::Status::Continue | indymilter_test::Status::Accept
        ) {
            return (started, first);
        }
        first = false;
        assert!(
            Instant::now() < until,
            "never accepted: {}",
            milter::reply_text(&status)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_member_and_a_rotation_on_host_a_reach_host_b_within_a_second() {
    let pg = Postgres::start();
    pg.create_database("site");
    let a = host(&pg, "site", "mx-a");
    let b = host(&pg, "site", "mx-b");
    a.create_list(LIST);
    deploy_policy(&a, &b);
    // The list key went to the database, and from nowhere else does host B get it.
    assert_eq!(pg.psql("site", "SELECT list FROM list_keys"), LIST);
    for site in [&a, &b] {
        assert!(!site.path("keyrings/lists").join(LIST).exists());
    }
    let host_b = milter::start(&b.config).await;

    let alice = GpgMember::new(&a, "alice", false);
    let post = Mail::parse(&alice.post("[enc] hello", "From host A's new member."));
    let (_, before) = milter::transact(host_b.inbound, &alice.address, LIST, &post).await;
    milter::assert_reply(&before, "550", "5.7.1", "a post from a stranger");
    a.bind(LIST, &alice.address, &alice.cert, false);
    let bound = Instant::now();
    // Binding and certificate are in the database; host A's files hold no certificate.
    assert_eq!(
        pg.psql("site", "SELECT fingerprint FROM certs"),
        alice.fingerprint
    );
    assert!(!a.cert_store_path(&alice.fingerprint).exists());
    let (accepted, _) = first_accepted(host_b.inbound, &alice.address, &post).await;
    assert!(
        accepted.duration_since(bound) <= Duration::from_secs(1),
        "host B honoured the binding {:?} after host A made it",
        accepted.duration_since(bound)
    );

    let out = run_ok(a.cli().args(["list", "rotate-subkey", LIST]), None);
    let rotated = Instant::now();
    let out = String::from_utf8(out).unwrap();
    let new_subkey: String = out
        .lines()
        .find_map(|l| l.strip_prefix("new encryption subkey "))
        .expect("the new subkey is named")
        .chars()
        .filter(char::is_ascii_hexdigit)
        .collect();
    // Alice refreshes the list key (from host A) and encrypts to its newest subkey only.
    alice.gpg.import(&a.export_list_key(LIST));
    let post = Mail::parse(&alice.post("[enc] after the rotation", "To the new subkey."));
    let packets = alice.gpg.list_packets(&armored_part(&post.render()));
    let key_id = &new_subkey[new_subkey.len() - 16..];
    assert!(
        packets.contains(&format!("keyid {}", key_id.to_ascii_uppercase())),
        "the post is encrypted to the new subkey {key_id}:\n{packets}"
    );
    // Making the post takes a while (gpg): if its first attempt passes, the key was there.
    let (accepted, first) = first_accepted(host_b.inbound, &alice.address, &post).await;
    assert!(
        first || accepted.duration_since(rotated) <= Duration::from_secs(1),
        "host B decrypted with the new subkey {:?} after the rotation on host A",
        accepted.duration_since(rotated)
    );
    host_b.stop().await;
}

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
