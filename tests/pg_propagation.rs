//! Propagation between two MX hosts on one PostgreSQL (issue 12, "Propagation"): a member
//! bound on host A through the CLI (binding and certificate) is honoured by host B's daemon
//! within a second, and so is a subkey rotation made on host A. In a file of its own so that
//! nothing else runs beside it while it measures.

mod support;

use std::time::{Duration, Instant};
use support::gpg::GpgMember;
use support::milter::{self, Mail};
use support::pg_site::{deploy_policy, first_accepted, host};
use support::postgres::Postgres;
use support::process::run_ok;
use support::site::LIST;

/// The first armored OpenPGP message in `message`.
fn armored_part(message: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(message);
    let start = text.find("-----BEGIN PGP MESSAGE-----").unwrap();
    let end = text.find("-----END PGP MESSAGE-----").unwrap();
    format!("{}-----END PGP MESSAGE-----\n", &text[start..end]).into_bytes()
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
