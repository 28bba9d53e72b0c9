//! End to end, several MX hosts on one PostgreSQL (README "Several MX hosts"): a throwaway
//! PostgreSQL cluster (Debian's binaries, `initdb`, a unix socket in a tempdir), two Postfix
//! inbound instances, host A and host B, each with its own listcrypt daemon, in front of one
//! Mailman 3. Mailman sends through host A, whose daemon also runs the outbound side: inbound on
//! every MX, outbound on the Mailman host. Both daemons keep bindings, the replay record,
//! pending challenges, rate limits and the reinjection journal in the one database.
//!
//! Keys: the list key (passphrase-protected, both hosts have the passphrase file) and the
//! member certificates live in the database too, so each host has its own, empty at the
//! start, `keyring_dir`. Policy files are files on each host: copied from A to B, as
//! configuration management deploys them.
//!
//! Scenarios, one after the other (`limits.replay_confirm_window` keeps its default, one hour):
//! - R: alice's signed post through A (250), then the same post through B: B answers
//!   `451 4.7.1` while the replay record is tentative, and the retry after Mailman's outbound
//!   copy confirmed it is `250` and discarded as a duplicate (never a 4xx that repeats); every
//!   member gets exactly one copy;
//! - P: a binding made with the CLI on A reaches B's keyring: 20 `member add` (and `member
//!   remove` between them), timed until B's log says it reloaded; median and maximum printed;
//! - K: dave binds his key through A's key address (the challenge encrypted to his key, his
//!   signed reply with the token); B lists the binding as active, and dave's post through B is
//!   accepted and distributed, with nothing copied to B;
//! - D: `check-config` on B is quiet while both hosts have the same policy files, and warns,
//!   naming A, once B's copy differs (each daemon records its policy digest in the database);
//! - C: `kill -9` of A's daemon while it reinjects a post's batches (`batch_size = 1`, the
//!   second reinjection hangs in a proxy); after the restart and Mailman's retry every member
//!   has exactly one copy; batches in doubt (queued by Postfix but not journaled) are counted;
//! - C2: the same, killed after Postfix queued a reinjected batch and before that session's
//!   QUIT (the batch is journaled right after the 250, so it is not in doubt);
//! - L: every message the subscribers' server received is RFC 3156 encrypted and shows no
//!   marker of any post, and every expected copy arrived.
//!
//! Runs as root (Postfix, Mailman, PostgreSQL as `nobody`), like `e2e_postfix_mailman`.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};
use support::files::{mkdir, read_lossy, write};
use support::gpg::GpgUser;
use support::listcrypt::Listcrypt;
use support::mailman::{Mailman, MailmanSettings};
use support::mime;
use support::net::free_ports;
use support::postfix::{make_searchable, Postfix, PostfixSettings};
use support::postgres::{Postgres, PASSWORD};
use support::process::{run_ok, wait_for};
use support::proxy::StallProxy;
use support::sink::{Delivery, Sink};
use support::smtp::{self, Dialogue};
use support::text::tail;
use support::world::{
    bind, create_list, encrypted_post, header_value, unique_marker, DELIVERY_TIMEOUT, LIST,
    LIST_BOUNCES, MEMBERS, OWNER,
};

const KEY_ADDRESS: &str = "enc-key@lists.example.test";
const DATABASE: &str = "listcrypt";
/// The list's `batch_size`: every recipient of Mailman's transaction past the first is a
/// reinjected batch, so every post exercises the journal.
const BATCH_SIZE: u32 = 1;
/// How long B's answers to the duplicate may stay `451 4.7.1`: Mailman emits a post within
/// seconds, and its outbound copy makes the record final.
const TENTATIVE_LIMIT: Duration = Duration::from_secs(120);
const PROPAGATION_TRIALS: usize = 20;
/// Log line of a daemon whose keyring followed a binding change (src/state.rs).
const RELOADED: &str = "bindings changed; reloaded";

/// One MX host: its Postfix and its listcrypt daemon.
struct Host {
    name: &'static str,
    listcrypt: Listcrypt,
    postfix: Postfix,
    inbound_port: u16,
}

impl Host {
    fn base(&self) -> PathBuf {
        self.listcrypt.config.parent().unwrap().to_path_buf()
    }

    fn keyring_dir(&self) -> PathBuf {
        self.base().join("keyrings")
    }

    /// Lines of its log containing `needle`.
    fn log_count(&self, needle: &str) -> usize {
        self.listcrypt
            .log_text()
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }
}

struct TwoMx {
    a: Host,
    b: Host,
    mailman: Mailman,
    /// Between A's daemon and A's reinjection smtpd, to stop the daemon at a known point.
    proxy: StallProxy,
    sink: Sink,
    pg: Postgres,
    alice: GpgUser,
    bob: GpgUser,
    carol: GpgUser,
    /// Bound as the list owner; kept so that its gpg-agent is stopped at the end.
    #[allow(dead_code)]
    owner: GpgUser,
    dave: GpgUser,
    erin: GpgUser,
    list_fpr: String,
    started: Instant,
    dir: tempfile::TempDir,
}

/// Copies `from` over `to` (`cp -a from/. to/`): what configuration management does.
fn deploy(from: &Path, to: &Path) {
    mkdir(to, 0o700);
    run_ok(
        Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", from.display()))
            .arg(to),
        None,
    );
}

/// Whether `dir` or a directory below it holds a file.
fn dir_has_files(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            let path = e.path();
            if path.is_dir() {
                dir_has_files(&path)
            } else {
                true
            }
        })
    })
}

impl TwoMx {
    fn start() -> TwoMx {
        let started = Instant::now();
        let dir = tempfile::Builder::new()
            .prefix("listcrypt-two-mx.")
            .tempdir_in("/tmp")
            .expect("tempdir in /tmp");
        let base = dir.path().to_path_buf();
        make_searchable(&base);
        eprintln!("two-mx: working in {}", base.display());

        let pg = Postgres::start();
        pg.create_database(DATABASE);
        let password_file = base.join("database-password");
        write(&password_file, format!("{PASSWORD}\n"));
        support::files::chmod(&password_file, 0o600);
        // The database holds list keys only passphrase-protected; every host reads this file.
        let passphrase_file = base.join("list-passphrase");
        write(&passphrase_file, "two mx hosts, one list key\n");
        support::files::chmod(&passphrase_file, 0o600);
        eprintln!("two-mx: PostgreSQL up ({:?})", started.elapsed());

        let sink = Sink::start();
        let [a_in, a_out, a_reinject, b_in, b_out, b_reinject, lmtp_port, rest_port] = free_ports();
        let proxy = StallProxy::start(a_reinject);
        let mailman_base = base.join("mailman");
        let host = |name: &'static str, ports: [u16; 3], reinject_via: u16| {
            let root = mkdir(&base.join(name), 0o755);
            let socket_dir = mkdir(&root.join("run"), 0o755);
            let listcrypt =
                Listcrypt::configure(&root.join("listcrypt"), &socket_dir, reinject_via);
            listcrypt.use_database(&pg.url(DATABASE), &password_file);
            listcrypt.add_setting("host_name", &format!("{name:?}"));
            listcrypt.add_setting(
                "passphrase_file",
                &format!("{:?}", passphrase_file.display().to_string()),
            );
            let postfix = Postfix::configure(&PostfixSettings {
                base: root.join("postfix"),
                inbound_port: ports[0],
                outbound_port: ports[1],
                reinject_port: ports[2],
                sink_port: sink.port,
                inbound_socket: listcrypt.inbound_socket.clone(),
                outbound_socket: listcrypt.outbound_socket.clone(),
                mailman_data_dir: mailman_base.join("var/data"),
            });
            // postfix/main.cf lists the sample domain's key address; this site's instead.
            let maps = postfix.postconf(&["-h", "relay_recipient_maps"]);
            let maps = maps
                .trim()
                .replace("enc-key@lists.example.org", KEY_ADDRESS);
            assert!(maps.contains(KEY_ADDRESS), "relay_recipient_maps: {maps}");
            postfix.postconf(&["-e", &format!("relay_recipient_maps = {maps}")]);
            Host {
                name,
                listcrypt,
                postfix,
                inbound_port: ports[0],
            }
        };
        let mut a = host("mx-a", [a_in, a_out, a_reinject], proxy.port);
        let mut b = host("mx-b", [b_in, b_out, b_reinject], b_reinject);

        // One Mailman, sending through A (whose Postfix also runs postmap for the maps that
        // both Postfix instances read from Mailman's data dir).
        let mut mailman = Mailman::configure(&MailmanSettings {
            base: mailman_base,
            lmtp_port,
            rest_port,
            smtp_port: a_out,
            postfix_etc: a.postfix.etc.clone(),
        });
        // Retry temporary failures every 2 s rather than every 15 min (scenario C).
        mailman.set_config("runner.retry", "sleep_time", "2s");
        let members: Vec<&str> = MEMBERS.iter().map(|(_, email)| *email).collect();
        mailman.create_list(LIST, OWNER, &members);
        mailman.apply_encrypted_list_settings(LIST);
        mailman.start();
        a.postfix.start();
        b.postfix.start();
        eprintln!(
            "two-mx: Mailman starting, both Postfix up ({:?})",
            started.elapsed()
        );

        let homes = mkdir(&base.join("gnupg"), 0o700);
        let [alice, bob, carol] = MEMBERS.map(|(n, email)| GpgUser::create(&homes, n, email));
        let owner = GpgUser::create(&homes, "Owner", OWNER);
        let dave = GpgUser::create(&homes, "Dave", "dave@example.net");
        let erin = GpgUser::create(&homes, "Erin", "erin@example.net");

        // The list and its bindings are made on A; the bindings land in the database.
        let list_key = create_list(&a.listcrypt, LIST, &base);
        a.listcrypt
            .set_policy(LIST, "batch_size", &BATCH_SIZE.to_string());
        for user in [&alice, &bob, &carol] {
            bind(&a.listcrypt, LIST, user, "member", &base);
        }
        bind(&a.listcrypt, LIST, &owner, "owner", &base);
        let mut list_fpr = String::new();
        for user in [&alice, &bob, &carol, &owner, &dave] {
            list_fpr = user
                .gpg
                .import(&list_key)
                .expect("gpg imported the list key");
        }
        dave.export(&base.join("dave@example.net.asc"));
        // Host B: the policy files as configuration management deploys them; its keys come
        // from the database.
        deploy(&a.listcrypt.policy_dir, &b.listcrypt.policy_dir);

        a.listcrypt.serve();
        b.listcrypt.serve();
        mailman.wait_until_ready();
        eprintln!(
            "two-mx: both daemons serving, Mailman up, list key {list_fpr} ({:?})",
            started.elapsed()
        );
        TwoMx {
            a,
            b,
            mailman,
            proxy,
            sink,
            pg,
            alice,
            bob,
            carol,
            owner,
            dave,
            erin,
            list_fpr,
            started,
            dir,
        }
    }

    /// The list's copies to `rcpt` of the post with `message_id`.
    fn copies_of(&self, rcpt: &str, message_id: &str) -> Vec<Delivery> {
        self.sink
            .deliveries_to(rcpt)
            .into_iter()
            .filter(|d| d.mail_from.starts_with("enc-bounces"))
            .filter(|d| header_value(&d.data, "Message-ID").as_deref() == Some(message_id))
            .collect()
    }

    /// Waits until both Postfix queues and Mailman's working queues are empty and the sink
    /// got nothing new for 3 s (at most 90 s), so that a copy still on its way would show.
    fn settle(&self) {
        let deadline = Instant::now() + Duration::from_secs(90);
        while Instant::now() < deadline {
            if self.idle() {
                let n = self.sink.deliveries().len();
                thread::sleep(Duration::from_secs(3));
                if n == self.sink.deliveries().len() && self.idle() {
                    return;
                }
            }
            thread::sleep(Duration::from_millis(250));
        }
        eprintln!(
            "two-mx: still busy after 90 s: A's queue:\n{}\nB's queue:\n{}\nMailman: {:?}",
            self.a.postfix.queue_listing(),
            self.b.postfix.queue_listing(),
            self.mailman_busy_files()
        );
    }

    fn idle(&self) -> bool {
        self.a.postfix.queue_is_empty()
            && self.b.postfix.queue_is_empty()
            && self.mailman_busy_files().is_empty()
    }

    fn mailman_busy_files(&self) -> Vec<String> {
        self.mailman
            .queued_files()
            .into_iter()
            .filter(|f| !f.starts_with("bad/") && !f.starts_with("shunt/"))
            .collect()
    }

    /// Waits until each of `rcpts` has a copy of `id`, lets everything settle, then asserts
    /// exactly one copy each; `author` gets at most one (Mailman may skip the poster).
    fn exactly_one_copy_each(&self, id: &str, rcpts: &[&str], author: &str, what: &str) {
        let deadline = Instant::now() + DELIVERY_TIMEOUT;
        for rcpt in rcpts {
            while self.copies_of(rcpt, id).is_empty() {
                assert!(
                    Instant::now() < deadline,
                    "{what}: no copy of {id} for {rcpt} within {DELIVERY_TIMEOUT:?}"
                );
                thread::sleep(Duration::from_millis(250));
            }
        }
        self.settle();
        for rcpt in rcpts {
            let n = self.copies_of(rcpt, id).len();
            assert_eq!(n, 1, "{what}: {rcpt} got {n} copies of {id}");
        }
        let own = self.copies_of(author, id).len();
        assert!(own <= 1, "{what}: the author {author} got {own} copies");
    }

    /// The journal's rows, as `queue_id:recipients` per reinjected batch, oldest first.
    fn journal(&self) -> Vec<String> {
        let rows = self.pg.psql(
            DATABASE,
            "SELECT queue_id || ':' || count(*) FROM journal GROUP BY queue_id ORDER BY min(sent), queue_id",
        );
        rows.lines().map(str::to_string).collect()
    }

    fn diagnostics(&self) -> String {
        let mut out = String::new();
        for h in [&self.a, &self.b] {
            out.push_str(&format!(
                "===== {} listcrypt log\n{}\n===== {} Postfix maillog (last 80 lines)\n{}\n\
                 ===== {} Postfix queue\n{}\n",
                h.name,
                tail(&h.listcrypt.log_text(), 150),
                h.name,
                h.postfix.log_tail(80),
                h.name,
                h.postfix.queue_listing(),
            ));
        }
        out.push_str(&format!(
            "===== Mailman logs (last 40 lines each)\n{}\n===== PostgreSQL log\n{}\n\
             ===== SMTP sink\n{}\n",
            self.mailman.logs_tail(40),
            tail(&self.pg.log(), 40),
            self.sink.summary()
        ));
        out
    }
}

impl Drop for TwoMx {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("\n{}", self.diagnostics());
        }
        if std::env::var_os("KEEP_E2E_TMPDIR").is_some() {
            let kept = std::mem::replace(
                &mut self.dir,
                tempfile::tempdir().expect("replacement tempdir"),
            );
            eprintln!(
                "two-mx: keeping {} (KEEP_E2E_TMPDIR)",
                kept.keep().display()
            );
        }
        eprintln!("two-mx: stopping (ran {:?})", self.started.elapsed());
        self.a.listcrypt.stop();
        self.b.listcrypt.stop();
        self.a.postfix.stop();
        self.b.postfix.stop();
        self.mailman.stop();
        self.pg.stop();
    }
}

/// One post: its bytes, Message-ID (which Mailman keeps) and the markers that must never
/// show on the wire.
struct Post {
    bytes: Vec<u8>,
    id: String,
    body_marker: String,
    subject_marker: String,
}

fn new_post(w: &TwoMx, tag: &str, author: &GpgUser) -> Post {
    let body_marker = unique_marker(tag);
    let subject_marker = unique_marker(&format!("{tag}subject"));
    let bytes = encrypted_post(
        author,
        LIST,
        &w.list_fpr,
        &format!("Two MX {tag} {subject_marker}"),
        &format!("Hello list,\n\nthe word is {body_marker}.\n"),
    );
    let id = header_value(&bytes, "Message-ID").expect("the post has a Message-ID");
    Post {
        bytes,
        id,
        body_marker,
        subject_marker,
    }
}

/// Decrypts `rcpt`'s copy of `post` with `reader`'s gpg: the list's signature and the
/// author's marker must be inside.
fn check_copy(w: &TwoMx, reader: &GpgUser, post: &Post, what: &str) {
    let copy = &w.copies_of(&reader.email, &post.id)[0];
    let armored = mime::rfc3156_payload(&copy.text())
        .unwrap_or_else(|why| panic!("{what}: {}'s copy is not RFC 3156 ({why})", reader.email));
    let plain = reader.gpg.decrypt(armored.as_bytes());
    assert!(
        plain.decrypted()
            && plain.text().contains(&post.body_marker)
            && plain
                .valid_signers()
                .iter()
                .any(|f| f.eq_ignore_ascii_case(&w.list_fpr)),
        "{what}: {}'s copy does not decrypt to the post, signed by the list:\n{}",
        reader.email,
        plain.report()
    );
}

fn end_of_data(d: &Dialogue, what: &str) -> (u16, Option<String>) {
    let r = d
        .end_of_data()
        .unwrap_or_else(|| panic!("{what}: the transaction did not reach the end of DATA:\n{d}"));
    (r.code, r.enhanced().map(str::to_string))
}

/// R: the same post through A, then through B.
fn same_post_through_both_hosts(w: &TwoMx) -> Post {
    let post = new_post(w, "R", &w.alice);
    let first = smtp::send(w.a.inbound_port, &w.alice.email, &[LIST], &post.bytes);
    assert!(first.accepted(), "R: A did not accept the post:\n{first}");
    let accepted_at = Instant::now();
    let discards = w.b.log_count("discarded: duplicate post");
    let mut answers = Vec::new();
    let settled = loop {
        let d = smtp::send(w.b.inbound_port, &w.alice.email, &[LIST], &post.bytes);
        let (code, enhanced) = end_of_data(&d, "R: through B");
        answers.push(format!(
            "{code} {} after {:.1} s",
            enhanced.as_deref().unwrap_or("-"),
            accepted_at.elapsed().as_secs_f64()
        ));
        match code {
            250 | 500..=599 => break code,
            451 if enhanced.as_deref() == Some("4.7.1") => {}
            _ => panic!("R: B answered neither 250, 5xx nor the tentative 451 4.7.1:\n{d}"),
        }
        assert!(
            accepted_at.elapsed() < TENTATIVE_LIMIT,
            "R: B still answers 451 4.7.1 after {TENTATIVE_LIMIT:?}: {answers:?}"
        );
        thread::sleep(Duration::from_secs(1));
    };
    eprintln!(
        "two-mx: R: replay check across hosts: A 250, then B: {}",
        answers.join(", ")
    );
    if settled == 250 {
        assert_eq!(
            w.b.log_count("discarded: duplicate post"),
            discards + 1,
            "R: B's 250 was not a discarded duplicate"
        );
    }
    w.exactly_one_copy_each(
        &post.id,
        &[&w.bob.email, &w.carol.email],
        &w.alice.email,
        "R",
    );
    check_copy(w, &w.bob, &post, "R");
    // Mailman got the post once, through A: B's Postfix delivered nothing over LMTP.
    let to_mailman = |h: &Host| {
        h.postfix
            .log()
            .lines()
            .filter(|l| l.contains("/lmtp[") && l.contains("status=sent"))
            .count()
    };
    assert_eq!(
        (to_mailman(&w.a), to_mailman(&w.b)),
        (1, 0),
        "R: LMTP deliveries to Mailman by A and by B"
    );
    post
}

/// Seconds since midnight UTC of a log line's timestamp (`2026-12-06T16:57:05.227928Z …`).
fn line_time_of_day(line: &str) -> Option<f64> {
    let stamp = line.split_whitespace().next()?;
    let time = stamp.split_once('T')?.1.strip_suffix('Z')?;
    let mut hms = time.split(':').map(|f| f.parse::<f64>().ok());
    let (h, m, s) = (hms.next()??, hms.next()??, hms.next()??);
    Some(h * 3600.0 + m * 60.0 + s)
}

fn now_time_of_day() -> f64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    now.as_secs_f64() % 86400.0
}

/// `later - earlier` in milliseconds, for times of day (a trial across midnight wraps).
fn ms_between(earlier: f64, later: f64) -> f64 {
    let d = later - earlier;
    let d = if d < -43200.0 {
        d + 86400.0
    } else if d > 43200.0 {
        d - 86400.0
    } else {
        d
    };
    d * 1000.0
}

/// P: `member add` on A, until B's keyring follows; 20 adds with a remove between them.
/// Timed by the clock of this machine and B's log timestamps (one clock, both hosts here).
fn binding_propagation(w: &TwoMx) {
    let cert = w.erin.export(&w.dir.path().join("erin@example.net.asc"));
    let cert = cert.display().to_string();
    // (from the command's start, from its exit) to B's reload line, in ms.
    let trial = |args: &[&str]| -> (f64, f64) {
        let before = w.b.log_count(RELOADED);
        let start = now_time_of_day();
        let out = support::process::run(&mut w.a.listcrypt.command(args), None);
        let exit = now_time_of_day();
        assert!(
            out.status.success(),
            "P: `{}` failed: {out:?}",
            args.join(" ")
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        let line = loop {
            let log = w.b.listcrypt.log_text();
            if let Some(line) = log.lines().filter(|l| l.contains(RELOADED)).nth(before) {
                break line.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "P: B did not reload within 20 s of `{}`",
                args.join(" ")
            );
            thread::sleep(Duration::from_millis(10));
        };
        let seen = line_time_of_day(&line)
            .unwrap_or_else(|| panic!("P: no timestamp on B's log line {line:?}"));
        // A change may be read in two steps; let stragglers in before the next trial.
        thread::sleep(Duration::from_millis(300));
        (ms_between(start, seen), ms_between(exit, seen))
    };
    let mut adds = Vec::new();
    let mut removes = Vec::new();
    for _ in 0..PROPAGATION_TRIALS {
        adds.push(trial(&["member", "add", LIST, &w.erin.email, &cert]));
        removes.push(trial(&["member", "remove", LIST, &w.erin.email]));
    }
    let summary = |what: &str, runs: &[(f64, f64)]| {
        let sorted = |f: fn(&(f64, f64)) -> f64| {
            let mut v: Vec<f64> = runs.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            v
        };
        let (from_start, from_exit) = (sorted(|r| r.0), sorted(|r| r.1));
        let median = |v: &[f64]| (v[(v.len() - 1) / 2] + v[v.len() / 2]) / 2.0;
        eprintln!(
            "two-mx: P: {what} on A, B's keyring reloaded, {} trials: from the command's start \
             median {:.0} ms, max {:.0} ms; from its exit median {:.0} ms, max {:.0} ms (min {:.0})",
            runs.len(),
            median(&from_start),
            from_start[from_start.len() - 1],
            median(&from_exit),
            from_exit[from_exit.len() - 1],
            from_exit[0],
        );
    };
    summary("member add", &adds);
    summary("member remove", &removes);
}

/// The first line of `text` starting with `listcrypt-token: `.
fn token_line(text: &str) -> Option<String> {
    text.lines()
        .map(|l| l.trim_start_matches("> ").trim_end())
        .find(|l| l.starts_with("listcrypt-token: "))
        .map(str::to_string)
}

/// Sends `message` from `from` to the key address through host `h`; must be 250 (the key
/// address consumes what it answers).
fn to_key_address(h: &Host, from: &str, message: &[u8], what: &str) {
    let d = smtp::send(h.inbound_port, from, &[KEY_ADDRESS], message);
    assert!(d.accepted(), "{what}: {} did not take it:\n{d}", h.name);
}

/// K: dave binds his key through A's key address; B honours the binding.
fn key_bound_through_a_honoured_by_b(w: &TwoMx) -> Post {
    let dave = &w.dave;
    let armored = read_lossy(&w.dir.path().join("dave@example.net.asc"));
    let offer = format!(
        "From: Dave <{addr}>\r\nTo: {KEY_ADDRESS}\r\nSubject: bind\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n\
         my key\r\n--b\r\nContent-Type: application/pgp-keys; name=\"dave.asc\"\r\n\r\n{armored}\r\n--b--\r\n",
        addr = dave.email,
        armored = armored.replace('\n', "\r\n").replace("\r\r\n", "\r\n"),
    );
    to_key_address(&w.a, &dave.email, offer.as_bytes(), "K: the key offer");
    let challenge = wait_for("K: the challenge to dave", DELIVERY_TIMEOUT, || {
        w.sink.deliveries_to(&dave.email).into_iter().next()
    });
    assert_eq!(
        challenge.mail_from, "",
        "K: automatic replies have a null sender"
    );
    let armored = mime::rfc3156_payload(&challenge.text())
        .unwrap_or_else(|why| panic!("K: the challenge is not encrypted ({why})"));
    let opened = dave.gpg.decrypt(armored.as_bytes());
    assert!(opened.decrypted(), "K: dave cannot read the challenge");
    let token = token_line(&opened.text())
        .unwrap_or_else(|| panic!("K: no token in the challenge:\n{}", opened.text()));

    let inner =
        format!("Content-Type: text/plain; charset=utf-8\r\n\r\n> {token}\r\nyes, that was me\r\n");
    let reply = mime::pgp_mime_encrypted(
        &[
            ("From", &format!("Dave <{}>", dave.email)),
            ("To", KEY_ADDRESS),
            ("Subject", "Re: bind"),
        ],
        &dave.sign_encrypt(&w.list_fpr, inner.as_bytes()),
        "listcrypt-e2e-reply",
    );
    to_key_address(&w.a, &dave.email, &reply, "K: the signed reply");

    // The binding is in the database: B's CLI sees it active.
    let listed = String::from_utf8(w.b.listcrypt.cli(&["member", "list", LIST]).stdout).unwrap();
    let line = listed
        .lines()
        .find(|l| l.starts_with(&dave.email))
        .unwrap_or_else(|| panic!("K: B does not list dave:\n{listed}"));
    assert!(
        line.contains(&dave.fpr) && line.contains(" active "),
        "K: B lists dave's binding as {line:?}"
    );
    assert!(
        !dir_has_files(&w.b.keyring_dir()),
        "K: B's keyring_dir holds files; its keys should come from the database"
    );
    run_ok(
        &mut w.mailman.command(&["addmembers", "-W", "-", LIST]),
        Some(format!("{}\n", dave.email).as_bytes()),
    );

    let post = new_post(w, "K", dave);
    let d = smtp::send(w.b.inbound_port, &dave.email, &[LIST], &post.bytes);
    assert!(d.accepted(), "K: B refused dave's post:\n{d}");
    w.exactly_one_copy_each(
        &post.id,
        &[&w.alice.email, &w.bob.email, &w.carol.email],
        &dave.email,
        "K",
    );
    check_copy(w, &w.carol, &post, "K");
    eprintln!(
        "two-mx: K: dave bound through A's key address, active on B, his post through B \
         delivered once to each member ({:?})",
        w.started.elapsed()
    );
    post
}

/// `check-config` on `h`: exit status and both outputs.
fn check_config(h: &Host) -> (bool, String) {
    let out = support::process::run(&mut h.listcrypt.command(&["check-config"]), None);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// D: the hosts' policy digests: the same files on both, no warning; a file that differs on
/// B, a warning naming A.
fn policy_digests(w: &TwoMx) {
    const DIFFER: &str = "policy files differ between hosts";
    let (ok, text) = check_config(&w.b);
    assert!(
        ok && !text.contains(DIFFER),
        "D: check-config on B with A's policy files:\n{text}"
    );
    let path = w.b.listcrypt.policy_path(LIST);
    let deployed = read_lossy(&path);
    write(&path, format!("{deployed}# edited on mx-b only\n"));
    let (_, text) = check_config(&w.b);
    write(&path, deployed);
    let warning = text
        .lines()
        .find(|l| l.contains(DIFFER))
        .unwrap_or_else(|| panic!("D: no warning with a policy file edited on B:\n{text}"));
    assert!(
        warning.contains("mx-a"),
        "D: the warning names no host: {warning}"
    );
    eprintln!("two-mx: D: check-config on B after a local edit: {warning}");
}

/// C: A's daemon killed while its second reinjected batch hangs; restarted; Mailman retries.
fn crash_during_reinjection(w: &mut TwoMx) -> Post {
    let journal_before = w.journal();
    let (forwarded_before, _) = w.proxy.forwarded();
    let stalled_before = w.proxy.stalled();
    w.proxy.stall_after(1);
    let post = new_post(w, "C", &w.alice);
    let d = smtp::send(w.a.inbound_port, &w.alice.email, &[LIST], &post.bytes);
    assert!(d.accepted(), "C: A did not accept the post:\n{d}");
    wait_for(
        "C: A's second reinjection to hang in the proxy",
        DELIVERY_TIMEOUT,
        || (w.proxy.stalled() > stalled_before).then_some(()),
    );
    let forwarded = wait_for(
        "C: the reinjection before the stall to end",
        Duration::from_secs(10),
        || {
            let (forwarded, finished) = w.proxy.forwarded();
            (forwarded == finished).then_some(forwarded)
        },
    );
    let sent = forwarded - forwarded_before;
    assert_eq!(sent, 1, "C: one reinjection should have gone through");
    let status = w.a.listcrypt.kill();
    let journal_at_kill = w.journal();
    let journaled: Vec<&String> = journal_at_kill
        .iter()
        .filter(|r| !journal_before.contains(r))
        .collect();
    // A batch whose SMTP session ended (Postfix queued it) but has no journal row would be
    // sent again by the retry: in doubt. The stalled one never got a greeting, so it was
    // not sent and is not in doubt.
    let in_doubt = sent.saturating_sub(journaled.len());
    eprintln!(
        "two-mx: C: A's daemon killed ({status:?}) with {sent} batch reinjected and journaled \
         as {journaled:?}, one hanging before the greeting; in doubt: {in_doubt} ({:?})",
        w.started.elapsed()
    );
    assert_eq!(
        in_doubt, 0,
        "C: a reinjected batch is not in the journal: {journaled:?}"
    );
    w.proxy.release();
    w.a.listcrypt.serve();

    let rcpts = [&w.bob.email, &w.carol.email, &w.dave.email].map(String::as_str);
    w.exactly_one_copy_each(&post.id, &rcpts, &w.alice.email, "C");
    check_copy(w, &w.dave, &post, "C");
    let lost =
        w.a.postfix
            .log()
            .lines()
            .any(|l| l.contains("outbound.sock") && l.contains("SMFIC_BODYEOB"));
    let retried = read_lossy(&w.mailman.var.join("logs/smtp.log")).contains("(451");
    let lines: Vec<String> =
        w.a.listcrypt
            .log_text()
            .lines()
            .filter(|l| l.contains(&format!("message from {LIST_BOUNCES} encrypted to")))
            .map(str::to_string)
            .collect();
    eprintln!(
        "two-mx: C: Postfix lost the milter at the end of the message: {lost}; Mailman \
         retried after a 451: {retried}; A's last outbound line: {}; journal now: {:?}",
        lines.last().map(String::as_str).unwrap_or("-"),
        w.journal()
    );
    post
}

/// C2: A's daemon killed after Postfix queued (250) its first reinjected batch of a post,
/// while the proxy holds that session's QUIT; restarted; Mailman retries.
fn crash_after_batch_queued(w: &mut TwoMx) -> Post {
    let journal_before = w.journal();
    let quits_before = w.proxy.quits_held();
    w.proxy.hold_quit();
    let post = new_post(w, "C2", &w.alice);
    let d = smtp::send(w.a.inbound_port, &w.alice.email, &[LIST], &post.bytes);
    assert!(d.accepted(), "C2: A did not accept the post:\n{d}");
    wait_for(
        "C2: A's first reinjection queued and its QUIT held",
        DELIVERY_TIMEOUT,
        || (w.proxy.quits_held() > quits_before).then_some(()),
    );
    let queued = w.proxy.quits_held() - quits_before;
    let status = w.a.listcrypt.kill();
    let journal_at_kill = w.journal();
    let journaled: Vec<&String> = journal_at_kill
        .iter()
        .filter(|r| !journal_before.contains(r))
        .collect();
    // Queued by Postfix without a journal row: the retry would send it a second time.
    let in_doubt = queued.saturating_sub(journaled.len());
    eprintln!(
        "two-mx: C2: A's daemon killed ({status:?}) waiting for the 221 of {queued} batch \
         Postfix had queued; journaled: {journaled:?}; in doubt: {in_doubt} ({:?})",
        w.started.elapsed()
    );
    assert_eq!(
        in_doubt, 0,
        "C2: a batch Postfix queued is not in the journal: {journaled:?}"
    );
    w.proxy.release();
    w.a.listcrypt.serve();
    let rcpts = [&w.bob.email, &w.carol.email, &w.dave.email].map(String::as_str);
    w.exactly_one_copy_each(&post.id, &rcpts, &w.alice.email, "C2");
    check_copy(w, &w.bob, &post, "C2");
    post
}

/// L: every delivery is encrypted and shows no marker; every expected copy arrived.
fn leak_check(w: &TwoMx, posts: &[(&Post, Vec<&str>)]) {
    let deliveries = w.sink.deliveries();
    let mut leaks = Vec::new();
    for (i, d) in deliveries.iter().enumerate() {
        let text = d.text();
        if let Err(why) = mime::rfc3156_payload(&text) {
            leaks.push(format!(
                "delivery {i} to {:?} is not encrypted: {why}",
                d.rcpts
            ));
        }
        for (post, _) in posts {
            for m in [&post.body_marker, &post.subject_marker] {
                if text.contains(m.as_str()) {
                    leaks.push(format!("delivery {i} to {:?} shows {m:?}", d.rcpts));
                }
            }
        }
    }
    assert!(leaks.is_empty(), "LEAK:\n{}", leaks.join("\n"));
    for (post, rcpts) in posts {
        for rcpt in rcpts {
            assert_eq!(
                w.copies_of(rcpt, &post.id).len(),
                1,
                "L: {rcpt} should have exactly one copy of {}",
                post.id
            );
        }
    }
    let bad: Vec<String> = w
        .mailman
        .queued_files()
        .into_iter()
        .filter(|f| f.starts_with("bad/") || f.starts_with("shunt/"))
        .collect();
    assert!(bad.is_empty(), "L: Mailman shunted messages: {bad:?}");
    eprintln!(
        "two-mx: L: {} messages at the sink, all RFC 3156 encrypted, no marker of {} posts \
         outside the encryption; every expected copy arrived once",
        deliveries.len(),
        posts.len()
    );
}

#[test]
fn two_mx_hosts_on_one_postgresql() {
    support::environment::require_environment(&[
        "postfix",
        "postconf",
        "postqueue",
        "postmap",
        "mailman",
        "gpg",
        "gpgconf",
    ]);
    let mut w = TwoMx::start();
    let r = same_post_through_both_hosts(&w);
    eprintln!("two-mx: R ok ({:?})", w.started.elapsed());
    binding_propagation(&w);
    eprintln!("two-mx: P ok ({:?})", w.started.elapsed());
    let k = key_bound_through_a_honoured_by_b(&w);
    policy_digests(&w);
    let c = crash_during_reinjection(&mut w);
    eprintln!("two-mx: C ok ({:?})", w.started.elapsed());
    let c2 = crash_after_batch_queued(&mut w);
    eprintln!("two-mx: C2 ok ({:?})", w.started.elapsed());
    let (bob, carol, dave, alice) = (
        w.bob.email.as_str(),
        w.carol.email.as_str(),
        w.dave.email.as_str(),
        w.alice.email.as_str(),
    );
    leak_check(
        &w,
        &[
            (&r, vec![bob, carol]),
            (&k, vec![alice, bob, carol]),
            (&c, vec![bob, carol, dave]),
            (&c2, vec![bob, carol, dave]),
        ],
    );
    eprintln!("two-mx: all ok ({:?})", w.started.elapsed());
}
