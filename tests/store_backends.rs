//! The state store's contract, run the same way against SQLite (two handles on one file, as
//! the CLI and the daemon share it) and PostgreSQL (two `PgStore`s on one database, as two MX
//! hosts share it): what one handle writes the other sees, a replay is recorded by exactly one
//! of many concurrent claims, an automatic reply is allowed once, the journal keeps each
//! recipient once. PostgreSQL also: migrations once and idempotent, a newer schema refused,
//! the password from a file, NOTIFY on a change, and an outage answered with an error that
//! clears by itself when the database returns; and two milter daemons on one database, as two
//! MX hosts, sharing the replay record and answering 451 while the database is down.
//!
//! PostgreSQL is a throwaway cluster on a unix socket (tests/support/postgres.rs).

mod support;

use listcrypt::config::Config;
use listcrypt::store::{
    AuditRecord, Binding, BindingState, PgStore, ReplayClaim, ReplayState, Role, Store, StoreError,
    Timeouts, TokenRecord,
};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant, SystemTime};
use support::postgres::{Postgres, PASSWORD};

/// Two handles on one store.
type Pair = (Arc<dyn Store>, Arc<dyn Store>);

fn binding(address: &str, fingerprint: &str) -> Binding {
    Binding {
        list: "enc@lists.example.org".into(),
        address: address.into(),
        fingerprint: fingerprint.into(),
        role: Role::Member,
        state: BindingState::Active,
        show_key_id: false,
    }
}

fn bindings_written_by_one_are_seen_by_the_other((a, b): Pair) {
    let g0 = b.generation().unwrap();
    let alice = binding("alice@example.org", "AAAA");
    a.bind(&alice).unwrap();
    assert!(
        b.generation().unwrap() > g0,
        "the bump is visible to the other"
    );
    assert_eq!(b.bindings("enc@lists.example.org").unwrap(), vec![alice]);
    // Rebinding replaces the key; it does not add a second binding.
    let rebound = binding("alice@example.org", "BBBB");
    b.bind(&rebound).unwrap();
    assert_eq!(a.bindings("enc@lists.example.org").unwrap(), vec![rebound]);
    let g1 = a.generation().unwrap();
    assert!(b
        .unbind("enc@lists.example.org", "alice@example.org")
        .unwrap());
    assert!(!a
        .unbind("enc@lists.example.org", "alice@example.org")
        .unwrap());
    assert!(a.generation().unwrap() > g1);
    assert!(a.bindings("enc@lists.example.org").unwrap().is_empty());
    let g2 = b.generation().unwrap();
    a.touch().unwrap();
    assert_eq!(b.generation().unwrap(), g2 + 1);
}

/// `threads` callers at once, alternating between the two handles; returns their results.
fn at_once<T: Send + 'static>(
    (a, b): &Pair,
    threads: usize,
    work: impl Fn(&dyn Store) -> T + Send + Sync + 'static,
) -> Vec<T> {
    let work = Arc::new(work);
    let start = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let store = if i % 2 == 0 { a.clone() } else { b.clone() };
            let (work, start) = (work.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                work(&*store)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

fn a_replay_is_recorded_by_exactly_one_of_many_concurrent_claims(pair: Pair) {
    let firsts = at_once(&pair, 8, |s| {
        !s.replay_record("enc@lists.example.org", b"command", 3600)
            .unwrap()
    });
    assert_eq!(firsts.iter().filter(|f| **f).count(), 1, "{firsts:?}");
    let now = SystemTime::now();
    let claims = at_once(&pair, 8, move |s| {
        let claim = ReplayClaim {
            scope: "*",
            digest: b"post",
            list: "enc@lists.example.org",
            message_id: Some("<p1@example.org>"),
            retain_secs: 14 * 86_400,
            confirm_secs: 3600,
        };
        s.replay_claim(&claim, now).unwrap()
    });
    let new = claims.iter().filter(|c| c.is_none()).count();
    assert_eq!(new, 1, "exactly one host distributes the post: {claims:?}");
    assert!(claims
        .iter()
        .flatten()
        .all(|c| *c == ReplayState::Tentative));
    // Mailman emitting it, seen by either host, makes it final for both.
    let (a, b) = &pair;
    let ids = ["<p1@example.org>".to_string()];
    assert_eq!(
        a.replay_confirm("enc@lists.example.org", &ids, now)
            .unwrap(),
        1
    );
    assert_eq!(
        b.replay_state("*", b"post").unwrap(),
        Some(ReplayState::Final)
    );
    assert!(b.replay_seen("*", b"post").unwrap());
    assert!(!b.replay_seen("*", b"other").unwrap());
}

/// Finding F2 of the fault campaign: Mailman (or Postfix) is down for longer than the
/// confirmation window, so the post's first copy leaves Mailman late. Other posts meanwhile
/// must not make the evidence find nothing: the late confirmation makes the record final and a
/// replay after it is a replay (README, "The replay rule").
fn a_confirmation_after_the_window_makes_the_lapsed_record_final((a, b): Pair) {
    let t0 = SystemTime::now();
    let at = |s: u64| t0 + Duration::from_secs(s);
    let claim = |digest: &'static [u8], id: &'static str| ReplayClaim {
        scope: "*",
        digest,
        list: "enc@lists.example.org",
        message_id: Some(id),
        retain_secs: 14 * 86_400,
        confirm_secs: 3600,
    };
    let late = claim(b"late", "<late@example.org>");
    assert_eq!(a.replay_claim(&late, at(0)).unwrap(), None);
    // Another post past the window, on the other host: the store tidies up on the way.
    let other = claim(b"other", "<other@example.org>");
    assert_eq!(b.replay_claim(&other, at(3601)).unwrap(), None);
    let ids = ["<late@example.org>".to_string()];
    assert_eq!(
        b.replay_confirm("enc@lists.example.org", &ids, at(3700))
            .unwrap(),
        1,
        "Mailman's first copy, an hour late, is evidence all the same"
    );
    assert_eq!(
        a.replay_claim(&late, at(3800)).unwrap(),
        Some(ReplayState::Final),
        "a replay after the late first copy is a replay"
    );
    // Otherwise the window is unchanged: past it without evidence, the retry counts as new,
    // and its record is tentative again until Mailman emits the post.
    let lost = claim(b"lost", "<lost@example.org>");
    assert_eq!(a.replay_claim(&lost, at(0)).unwrap(), None);
    assert_eq!(
        b.replay_claim(&lost, at(3600)).unwrap(),
        Some(ReplayState::Tentative)
    );
    assert_eq!(b.replay_claim(&lost, at(3601)).unwrap(), None);
    assert_eq!(
        a.replay_claim(&lost, at(3602)).unwrap(),
        Some(ReplayState::Tentative)
    );
    let ids = ["<lost@example.org>".to_string()];
    assert_eq!(
        a.replay_confirm("enc@lists.example.org", &ids, at(3700))
            .unwrap(),
        1
    );
    assert_eq!(
        b.replay_state("*", b"lost").unwrap(),
        Some(ReplayState::Final)
    );
}

fn one_automatic_reply_per_interval_whichever_host_asks(pair: Pair) {
    let allowed = at_once(&pair, 8, |s| {
        s.rate_allow("enc@lists.example.org", "bob@example.org", "key", 3600)
            .unwrap()
    });
    assert_eq!(allowed.iter().filter(|a| **a).count(), 1, "{allowed:?}");
    let (a, b) = &pair;
    assert!(b
        .rate_last("enc@lists.example.org", "bob@example.org", "key")
        .unwrap()
        .is_some());
    a.rate_forget("enc@lists.example.org", "bob@example.org", "key")
        .unwrap();
    assert!(b
        .rate_allow("enc@lists.example.org", "bob@example.org", "key", 3600)
        .unwrap());
    let now = SystemTime::now();
    a.list_reply_record("enc@lists.example.org", now).unwrap();
    b.list_reply_record("enc@lists.example.org", now).unwrap();
    let hour_ago = now - Duration::from_secs(3600);
    assert_eq!(
        a.list_replies_since("enc@lists.example.org", hour_ago)
            .unwrap(),
        2
    );
}

fn the_journal_keeps_each_recipient_once_whoever_records_it(pair: Pair) {
    // Two workers record overlapping batches of the same post at once.
    at_once(&pair, 4, |s| {
        let rcpts: Vec<String> = ["a@x", "b@x", "c@x"].map(String::from).to_vec();
        s.journal_record("enc-bounces@lists.example.org", b"d1", &rcpts, "Q1", 3600)
            .unwrap()
    });
    let (a, b) = &pair;
    let mut sent = b
        .journal_sent("enc-bounces@lists.example.org", b"d1")
        .unwrap();
    sent.sort();
    assert_eq!(sent, ["a@x", "b@x", "c@x"]);
    assert!(a
        .journal_sent("enc-bounces@lists.example.org", b"d2")
        .unwrap()
        .is_empty());
}

/// F1 of the fault campaign: an intent written before a batch's final dot makes its
/// recipients in doubt until the batch is journaled as queued; intents expire like the journal.
fn an_intent_is_in_doubt_until_its_batch_is_journaled((a, b): Pair) {
    const SENDER: &str = "enc-bounces@lists.example.org";
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let sorted = |mut batches: Vec<Vec<String>>| {
        batches.iter_mut().for_each(|b| b.sort());
        batches.sort();
        batches
    };
    assert!(b.journal_in_doubt(SENDER, b"d1").unwrap().is_empty());
    a.journal_intent(SENDER, b"d1", &strings(&["a@x", "b@x"]), 3600)
        .unwrap();
    a.journal_intent(SENDER, b"d1", &strings(&["c@x", "d@x"]), 3600)
        .unwrap();
    // The other handle (the retry, maybe on another host) sees two batches in doubt.
    assert_eq!(
        sorted(b.journal_in_doubt(SENDER, b"d1").unwrap()),
        [strings(&["a@x", "b@x"]), strings(&["c@x", "d@x"])]
    );
    assert!(b.journal_in_doubt(SENDER, b"d2").unwrap().is_empty());
    // The first batch's 250 came back: journaled, no longer in doubt; nor sent twice.
    b.journal_record(SENDER, b"d1", &strings(&["a@x", "b@x"]), "Q1", 3600)
        .unwrap();
    assert_eq!(
        a.journal_in_doubt(SENDER, b"d1").unwrap(),
        [strings(&["c@x", "d@x"])]
    );
    // A recipient journaled by a listcrypt that writes no intents is not in doubt either.
    b.journal_record(SENDER, b"d1", &strings(&["d@x"]), "Q2", 3600)
        .unwrap();
    assert_eq!(
        a.journal_in_doubt(SENDER, b"d1").unwrap(),
        [strings(&["c@x"])]
    );
    // Past the retention an intent is dropped (the clock has a one-second grain).
    a.journal_intent(SENDER, b"d3", &strings(&["e@x"]), 3600)
        .unwrap();
    std::thread::sleep(Duration::from_millis(2100));
    b.journal_intent(SENDER, b"d4", &strings(&["f@x"]), 1)
        .unwrap();
    assert!(a.journal_in_doubt(SENDER, b"d3").unwrap().is_empty());
    assert!(a.journal_in_doubt(SENDER, b"d1").unwrap().is_empty());
    assert_eq!(
        a.journal_in_doubt(SENDER, b"d4").unwrap(),
        [strings(&["f@x"])]
    );
}

fn a_challenge_made_on_one_host_is_proven_on_the_other((a, b): Pair) {
    const TOKEN: &str = "mfrggzdfmztwq2lknnwg23tpobyxe43u";
    a.pending_put(
        "enc@lists.example.org",
        "carol@example.org",
        "CCCC",
        TOKEN,
        3600,
    )
    .unwrap();
    assert_eq!(
        b.pending_for("enc@lists.example.org", "carol@example.org")
            .unwrap(),
        ["CCCC"]
    );
    assert_eq!(
        b.pending_list("enc@lists.example.org").unwrap(),
        [("carol@example.org".to_string(), "CCCC".to_string())]
    );
    assert!(b
        .pending_token_matches("enc@lists.example.org", "carol@example.org", "CCCC", TOKEN)
        .unwrap());
    assert!(!b
        .pending_token_matches(
            "enc@lists.example.org",
            "carol@example.org",
            "CCCC",
            "wrong"
        )
        .unwrap());
    b.pending_remove("enc@lists.example.org", "carol@example.org", "CCCC")
        .unwrap();
    assert!(a
        .pending_for("enc@lists.example.org", "carol@example.org")
        .unwrap()
        .is_empty());
}

/// An API token made on one host is found, and its revocation seen, on the other; audit
/// records come back newest first, per list.
fn tokens_and_the_audit_log_are_shared((a, b): Pair) {
    let at = |s: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
    let token = TokenRecord {
        id: "abcdefghijklmnop".into(),
        sha256: "00".repeat(32),
        site_admin: false,
        list: "enc@lists.example.org".into(),
        scopes: "members read".into(),
        created: at(1_700_000_000),
        expires: Some(at(1_800_000_000)),
        revoked: None,
    };
    let record = |seq: i64, list: &str, action: &str| AuditRecord {
        seq,
        at: at(1_700_000_000 + seq as u64),
        token_id: "cli".into(),
        list: list.into(),
        action: action.into(),
        detail: "d".into(),
    };
    a.token_create(&token, &record(0, "enc@lists.example.org", "token.create"))
        .unwrap();
    assert_eq!(b.token_get(&token.id).unwrap(), Some(token.clone()));
    assert_eq!(b.token_get("nosuchtokenidxxx").unwrap(), None);
    assert!(
        b.token_create(&token, &record(0, "enc@lists.example.org", "again"))
            .is_err(),
        "ids are unique"
    );
    let revoke = record(0, "enc@lists.example.org", "token.revoke");
    assert!(b.token_revoke(&token.id, &revoke).unwrap());
    assert!(!a.token_revoke(&token.id, &revoke).unwrap(), "revoked once");
    assert_eq!(
        a.token_get(&token.id).unwrap().unwrap().revoked,
        Some(revoke.at)
    );
    assert_eq!(a.tokens().unwrap().len(), 1);
    b.audit_record(&record(0, "other@lists.example.org", "member.unbind"))
        .unwrap();
    let log = a.audit(Some("enc@lists.example.org"), 10).unwrap();
    let actions: Vec<&str> = log.iter().map(|r| r.action.as_str()).collect();
    assert_eq!(actions, ["token.revoke", "token.create"]);
    assert!(log[0].seq > log[1].seq);
    assert_eq!(a.audit(None, 10).unwrap().len(), 3);
    assert_eq!(a.audit(None, 1).unwrap()[0].action, "member.unbind");
}

// ---- certificate cache (issue 14) ----------------------------------------------------------

/// A member's keys validated through one handle are answered from the cache through the
/// other, byte for byte; rewriting an entry replaces it; the cache never bumps the generation
/// (which would make every daemon reload its keyring again).
fn the_certificate_cache_is_shared_and_changes_no_binding((a, b): Pair) {
    use listcrypt::pgp::{CertCache, Wanted};
    use sequoia_openpgp::cert::prelude::*;
    use sequoia_openpgp::serialize::MarshalInto;
    use sha2::Digest;
    let (cert, _) = CertBuilder::new()
        .set_cipher_suite(CipherSuite::Cv25519)
        .add_userid("<carol@example.org>")
        .add_transport_encryption_subkey()
        .generate()
        .unwrap();
    let sha256: [u8; 32] = sha2::Sha256::digest(cert.to_vec().unwrap()).into();
    let wanted = [Wanted {
        address: "carol@example.org",
        cert: &cert,
        sha256: &sha256,
    }];
    let g0 = a.generation().unwrap();
    let now = SystemTime::now();
    let (first, used) = CertCache::new(&*a).encryption_keys(&wanted, now);
    assert_eq!((used.validated, used.written), (1, 1));
    let (second, used) = CertCache::new(&*b).encryption_keys(&wanted, now);
    assert_eq!(used.hits, 1, "the other handle reads the entry");
    let packets = |r: &Result<listcrypt::pgp::EncryptionKeys, _>| -> Vec<Vec<u8>> {
        let keys = r.as_ref().unwrap();
        keys.keys.iter().map(|k| k.to_vec().unwrap()).collect()
    };
    assert_eq!(packets(&first[0]), packets(&second[0]));
    assert_eq!(packets(&first[0]).len(), 1);
    let fpr = cert.fingerprint().to_hex();
    let mut row = b
        .cert_cache_get(std::slice::from_ref(&fpr))
        .unwrap()
        .remove(0);
    row.valid_until -= 1;
    a.cert_cache_put(std::slice::from_ref(&row)).unwrap();
    assert_eq!(
        b.cert_cache_get(std::slice::from_ref(&fpr)).unwrap(),
        vec![row.clone()]
    );
    // A row whose window ended is dropped by the next write.
    let mut ended = row.clone();
    ended.address = "gone@example.org".into();
    ended.valid_until = 1;
    a.cert_cache_put(&[ended]).unwrap();
    assert_eq!(
        b.cert_cache_get(std::slice::from_ref(&fpr)).unwrap().len(),
        2
    );
    b.cert_cache_put(std::slice::from_ref(&row)).unwrap();
    assert_eq!(a.cert_cache_get(&[fpr]).unwrap(), vec![row]);
    assert_eq!(b.generation().unwrap(), g0, "no binding changed");
}

// ---- end certificate cache ------------------------------------------------------------------
// --- encrypted archive (issue 15 item 5) ---
fn a_post_is_archived_once_whoever_records_it(pair: Pair) {
    let (a, b) = &pair;
    assert!(!b.archived("enc@lists.example.org", b"p1").unwrap());
    at_once(&pair, 4, |s| {
        s.archive_record("enc@lists.example.org", b"p1", 3600)
            .unwrap()
    });
    assert!(b.archived("enc@lists.example.org", b"p1").unwrap());
    assert!(!a.archived("other@lists.example.org", b"p1").unwrap());
    assert!(!a.archived("enc@lists.example.org", b"p2").unwrap());
    // Archive keys live in the store only where it keeps keys (PostgreSQL).
    if a.keeps_keys() {
        assert_eq!(b.archive_key_get("enc@lists.example.org").unwrap(), None);
        a.archive_key_put("enc@lists.example.org", Some(b"cert"))
            .unwrap();
        assert_eq!(
            b.archive_key_get("enc@lists.example.org")
                .unwrap()
                .as_deref(),
            Some(&b"cert"[..])
        );
        b.archive_key_put("enc@lists.example.org", None).unwrap();
        assert_eq!(a.archive_key_get("enc@lists.example.org").unwrap(), None);
    }
}
// --- end encrypted archive ---

/// The whole contract, each part on a fresh store from `fresh`.
fn contract(mut fresh: impl FnMut(&str) -> Pair) {
    bindings_written_by_one_are_seen_by_the_other(fresh("bindings"));
    a_replay_is_recorded_by_exactly_one_of_many_concurrent_claims(fresh("replay"));
    a_confirmation_after_the_window_makes_the_lapsed_record_final(fresh("replay_late"));
    one_automatic_reply_per_interval_whichever_host_asks(fresh("rate"));
    the_journal_keeps_each_recipient_once_whoever_records_it(fresh("journal"));
    an_intent_is_in_doubt_until_its_batch_is_journaled(fresh("intent"));
    a_challenge_made_on_one_host_is_proven_on_the_other(fresh("pending"));
    tokens_and_the_audit_log_are_shared(fresh("tokens"));
    the_certificate_cache_is_shared_and_changes_no_binding(fresh("certcache"));
    a_post_is_archived_once_whoever_records_it(fresh("archive"));
}

#[test]
fn sqlite_keeps_the_store_contract() {
    let dir = tempfile::tempdir().unwrap();
    contract(|name| {
        let path = dir.path().join(name);
        let a = listcrypt::store::SqliteStore::open(&path).unwrap();
        let b = listcrypt::store::SqliteStore::open(&path).unwrap();
        (Arc::new(a), Arc::new(b))
    });
}

fn connect(pg: &Postgres, database: &str, timeouts: Timeouts) -> Result<PgStore, StoreError> {
    let mut settings = listcrypt::config::database_settings(&pg.url(database)).unwrap();
    settings.password(PASSWORD);
    PgStore::connect(settings, timeouts)
}

fn timeouts() -> Timeouts {
    Timeouts::within(Duration::from_secs(30))
}

#[test]
fn postgres_keeps_the_store_contract_between_two_hosts() {
    let pg = Postgres::start();
    contract(|name| {
        pg.create_database(name);
        let a = connect(&pg, name, timeouts()).unwrap();
        let b = connect(&pg, name, timeouts()).unwrap();
        (Arc::new(a), Arc::new(b))
    });

    // Hosts starting together migrate once; starting again applies nothing.
    pg.create_database("migrations");
    let opened: Vec<_> = (0..3)
        .map(|_| {
            let url = pg.url("migrations");
            std::thread::spawn(move || {
                let mut s = listcrypt::config::database_settings(&url).unwrap();
                s.password(PASSWORD);
                PgStore::connect(s, timeouts()).map(drop)
            })
        })
        .collect();
    for o in opened {
        o.join().unwrap().unwrap();
    }
    drop(connect(&pg, "migrations", timeouts()).unwrap());
    let recorded = pg.psql(
        "migrations",
        "SELECT version || ' ' || name FROM schema_migrations ORDER BY version",
    );
    let want: Vec<String> = listcrypt::store::schema_versions()
        .iter()
        .map(|(v, n)| format!("{v} {n}"))
        .collect();
    assert_eq!(recorded, want.join("\n"));
    // The generation counter, untouched; min_reader is the newest non-additive migration (4).
    assert_eq!(
        pg.psql(
            "migrations",
            "SELECT key || ' ' || value FROM meta ORDER BY key"
        ),
        "generation 0\nmin_reader 4"
    );

    // sslmode=require is never downgraded: this test server has no TLS, so no connection.
    let mut required = listcrypt::config::database_settings(
        &pg.url("migrations")
            .replace("sslmode=disable", "sslmode=require"),
    )
    .unwrap();
    required.password(PASSWORD);
    match PgStore::connect(required, timeouts()) {
        Err(e) => assert!(e.to_string().contains("TLS"), "{e}"),
        Ok(_) => panic!("connected without TLS under sslmode=require"),
    }
    let mut preferred = listcrypt::config::database_settings(
        &pg.url("migrations")
            .replace("sslmode=disable", "sslmode=prefer"),
    )
    .unwrap();
    preferred.password(PASSWORD);
    drop(PgStore::connect(preferred, timeouts()).unwrap());

    // A database a newer listcrypt migrated only by additive migrations is used as it is
    // (hosts upgraded one at a time); one whose newer migration is not additive is refused.
    let next = want.len() + 1;
    pg.psql(
        "migrations",
        &format!("INSERT INTO schema_migrations VALUES ({next}, 'future', 0)"),
    );
    drop(connect(&pg, "migrations", timeouts()).expect("an additive future schema is used"));
    pg.psql(
        "migrations",
        &format!("UPDATE meta SET value = {next} WHERE key = 'min_reader'"),
    );
    match connect(&pg, "migrations", timeouts()) {
        Err(e @ StoreError::SchemaTooNew { .. }) => {
            assert!(
                e.to_string().contains(&format!("version {next} is newer")),
                "{e}"
            )
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a newer schema was used"),
    }

    // The daemon's way in: database_url and the password from database_password_file.
    pg.create_database("configured");
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("db-password");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
    let config = Config {
        database_url: pg.url("configured"),
        database_password_file: password_file,
        ..Config::default()
    };
    let a = listcrypt::store::open(&config).unwrap();
    a.bind(&binding("dave@example.org", "DDDD")).unwrap();
    assert_eq!(
        pg.psql("configured", "SELECT address FROM bindings"),
        "dave@example.org"
    );
    let skew = a
        .now()
        .unwrap()
        .duration_since(SystemTime::now())
        .unwrap_or_else(|e| e.duration());
    assert!(
        skew < Duration::from_secs(5),
        "the database's clock: {skew:?}"
    );
    let wrong = Config {
        database_password_file: dir.path().join("missing"),
        ..config.clone()
    };
    assert!(
        listcrypt::store::open(&wrong).is_err(),
        "no password, no store"
    );

    // A record the code cannot read is an error, never a guess.
    pg.psql("configured", "UPDATE bindings SET state = 'revoked'");
    assert!(matches!(
        a.bindings("enc@lists.example.org"),
        Err(StoreError::Corrupt(_))
    ));
    pg.psql("configured", "UPDATE bindings SET state = 'active'");

    // The daemon on PostgreSQL: a binding made by another host reaches its keyring snapshot.
    let site = tempfile::tempdir().unwrap();
    let daemon_config = Config {
        policy_dir: site.path().join("lists.d"),
        keyring_dir: site.path().join("keyrings"),
        state_dir: site.path().join("state"),
        ..config.clone()
    };
    std::fs::create_dir_all(&daemon_config.policy_dir).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let d = Arc::new(listcrypt::state::Daemon::open(daemon_config, None).unwrap());
        let g0 = d.keyring().unwrap().generation;
        assert_eq!(
            g0,
            pg.psql(
                "configured",
                "SELECT value FROM meta WHERE key = 'generation'"
            )
            .parse::<i64>()
            .unwrap()
        );
        let other = a.clone();
        tokio::task::spawn_blocking(move || other.touch().unwrap())
            .await
            .unwrap();
        let until = Instant::now() + Duration::from_secs(10);
        while d.keyring().unwrap().generation == g0 {
            assert!(Instant::now() < until, "the daemon never saw the change");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!std::path::Path::new(&site.path().join("state/state.sqlite")).exists());
    });
    drop(runtime);

    // A change on one host wakes the other at once (NOTIFY), without waiting for a poll.
    let b = connect(&pg, "configured", timeouts()).unwrap();
    let wakes = Arc::new(AtomicUsize::new(0));
    let w = wakes.clone();
    b.on_change(Arc::new(move || {
        w.fetch_add(1, Ordering::SeqCst);
    }));
    // The listener wakes once when it is connected (changes before it were missed).
    wait("the listener to connect", || {
        wakes.load(Ordering::SeqCst) >= 1
    });
    let before = wakes.load(Ordering::SeqCst);
    a.bind(&binding("erin@example.org", "EEEE")).unwrap();
    wait("a NOTIFY of the binding", || {
        wakes.load(Ordering::SeqCst) > before
    });
}

fn wait(what: &str, mut done: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn postgres_outage_is_an_error_and_service_resumes_by_itself() {
    let mut pg = Postgres::start();
    pg.create_database("outage");
    let short = Timeouts {
        connect: Duration::from_secs(1),
        statement: Duration::from_secs(2),
        call: Duration::from_secs(3),
    };
    let s = connect(&pg, "outage", short).unwrap();
    s.bind(&binding("alice@example.org", "AAAA")).unwrap();
    pg.stop();
    let started = Instant::now();
    match s.replay_record("enc@lists.example.org", b"d", 3600) {
        Err(e @ StoreError::Unavailable(_)) => {
            assert!(e.to_string().contains("database unavailable"), "{e}")
        }
        other => panic!("expected unavailable, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "bounded by the call timeout: {:?}",
        started.elapsed()
    );
    assert!(matches!(s.generation(), Err(StoreError::Unavailable(_))));
    // The CLI meanwhile: a temporary failure (75) that names the cause.
    let site = tempfile::tempdir().unwrap();
    std::fs::create_dir(site.path().join("lists.d")).unwrap();
    std::fs::write(site.path().join("lists.d/enc@lists.example.org.toml"), "").unwrap();
    std::fs::write(site.path().join("pw"), PASSWORD).unwrap();
    let url = pg.url("outage");
    std::fs::write(
        site.path().join("listcrypt.toml"),
        format!(
            "database_url = \"{url}\"\ndatabase_password_file = \"pw\"\n\
             policy_dir = \"lists.d\"\nkeyring_dir = \"keyrings\"\nstate_dir = \"state\"\n"
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_listcrypt"))
        .arg("-c")
        .arg(site.path().join("listcrypt.toml"))
        .args(["member", "list", "enc@lists.example.org"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(75), "{stderr}");
    assert!(stderr.contains("database unavailable"), "{stderr}");
    assert!(!stderr.contains(PASSWORD), "{stderr}");
    pg.run();
    // The pool reconnects on demand: the same store works again, its data intact.
    let until = Instant::now() + Duration::from_secs(10);
    let bindings = loop {
        match s.bindings("enc@lists.example.org") {
            Ok(b) => break b,
            Err(e) => assert!(Instant::now() < until, "never recovered: {e}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(bindings, vec![binding("alice@example.org", "AAAA")]);
    assert!(!s
        .replay_record("enc@lists.example.org", b"d", 3600)
        .unwrap());
}

/// The milter on PostgreSQL, as two MX hosts: two daemons on one database. The same post
/// through the second host is held back (451 4.7.1) while the first copy is not known to be
/// with Mailman, and discarded once Mailman emitted it; with the database down, a new post
/// gets 451 4.3.0, and goes through once it is back.
#[tokio::test(flavor = "multi_thread")]
async fn two_milters_on_postgres_share_the_replay_record_and_defer_during_an_outage() {
    use support::gpg::GpgMember;
    use support::milter::{self, Mail};
    use support::site::{Site, LIST, LIST_BOUNCES};

    let mut pg = Postgres::start();
    pg.create_database("site");
    let site = Site::new();
    let password_file = site.path("db-password");
    std::fs::write(&password_file, PASSWORD).unwrap();
    // The database holds list keys only passphrase-protected.
    let passphrase_file = site.path("list-passphrase");
    std::fs::write(&passphrase_file, "list key passphrase\n").unwrap();
    let text = std::fs::read_to_string(&site.config).unwrap();
    let text = format!(
        "{text}database_url = \"{}\"\ndatabase_password_file = \"{}\"\n\
         passphrase_file = \"{}\"\n",
        pg.url("site"),
        password_file.display(),
        passphrase_file.display()
    );
    std::fs::write(&site.config, text).unwrap();
    site.create_list(LIST);
    // Bound through the CLI, so into PostgreSQL (the certificate too).
    let alice = GpgMember::new(&site, "alice", true);
    assert_eq!(
        pg.psql("site", "SELECT address FROM bindings"),
        alice.address
    );

    let host_a = milter::start(&site.config).await;
    let host_b = milter::start(&site.config).await;
    let post = Mail::parse(&alice.post("[enc] once", "Only once, please."));
    let (for_mailman, first) = milter::transact(host_a.inbound, &alice.address, LIST, &post).await;
    milter::assert_goes_on(&first, "the post through host A");
    let for_mailman = post.apply(&for_mailman);
    let (_, early) = milter::transact(host_b.inbound, &alice.address, LIST, &post).await;
    milter::assert_reply(
        &early,
        "451",
        "4.7.1",
        "the same post through host B, first copy not yet with Mailman",
    );
    let (_, out) =
        milter::transact(host_a.outbound, LIST_BOUNCES, &alice.address, &for_mailman).await;
    milter::assert_goes_on(&out, "Mailman's copy through host A's outbound listener");
    let (_, late) = milter::transact(host_b.inbound, &alice.address, LIST, &post).await;
    assert_eq!(
        late,
        indymilter_test::Status::Discard,
        "the same post through host B once Mailman has it: {}",
        milter::reply_text(&late)
    );

    pg.stop();
    let second = Mail::parse(&alice.post("[enc] during the outage", "Later, please."));
    let (_, down) = milter::transact(host_b.inbound, &alice.address, LIST, &second).await;
    milter::assert_reply(&down, "451", "4.3.0", "a post while the database is down");
    pg.run();
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, again) = milter::transact(host_b.inbound, &alice.address, LIST, &second).await;
        if matches!(
            again,
            indymilter_test::Status::Continue | indymilter_test::Status::Accept
        ) {
            break;
        }
        milter::assert_reply(
            &again,
            "451",
            "4.3.0",
            "a retry while the database comes back",
        );
        assert!(Instant::now() < until, "service never resumed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    host_a.stop().await;
    host_b.stop().await;
}
