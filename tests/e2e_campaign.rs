//! The fault campaign (issue 13): many posts of 10–200 KiB from gpg and sq members of a
//! 20-member list (`batch_size` 5, so three of every four batches are reinjected), some of
//! them hostile (plaintext, non-member, bad signature, replay), through a real Postfix,
//! listcrypt and Mailman 3, while faults strike at seeded random moments:
//!
//! - `kill -9` of listcrypt, which a supervisor loop (as systemd's `Restart=always`) restarts;
//! - a Postfix restart (`postfix stop` … `start`) or `postfix reload`;
//! - on SQLite, a full state disk (listcrypt's state dir is a small tmpfs, filled to the last
//!   byte);
//! - the reinjection listener down (a gate in front of it refuses and cuts connections);
//! - a second milter after listcrypt that tempfails at end of message now and then;
//! - on PostgreSQL, the database stopped for a few seconds and started again (listcrypt
//!   answers 4xx meanwhile and resumes by itself).
//!
//! The posting clients behave as MTAs do: a 4xx or a broken connection is retried later, a 5xx
//! is final. After the queues drain, the ledger: every accepted post reached every member
//! exactly once (by Message-ID per mailbox at the sink), every hostile post got its SMTP
//! refusal and reached nobody, every tempfailed post was delivered once later or is still
//! pending with a reason, no delivered message shows a secret or is not RFC 3156 encrypted,
//! and the in-doubt reinjections listcrypt logged are counted. A report table follows.
//!
//! The CI run is the default (`CAMPAIGN_POSTS=200` on SQLite, then 30 posts on PostgreSQL,
//! `CAMPAIGN_PG_POSTS`, in `campaign_on_postgresql_…`); `contrib/campaign/run` runs the first
//! test with more posts. Settings (environment): CAMPAIGN_POSTS, CAMPAIGN_SEED (printed; it
//! fixes the plan of posts and the order of faults, not their timing), CAMPAIGN_BACKEND
//! (`sqlite` or `postgres`: a throwaway cluster, tests/support/postgres.rs, holds the state,
//! list keys and certificates), CAMPAIGN_CLIENTS, CAMPAIGN_IN_FLIGHT, CAMPAIGN_FAULTS (a
//! subset of `kill,postfix,reload,disk,reinject,pgstop`: `disk` on SQLite only, `pgstop` on
//! PostgreSQL only; a full database disk is not exercised), CAMPAIGN_FAULT_GAP
//! (`MIN-MAX` seconds), CAMPAIGN_TEMPFAIL_RATE, CAMPAIGN_CONFIRM_WINDOW (listcrypt's
//! `replay_confirm_window`), CAMPAIGN_DRAIN and CAMPAIGN_GIVE_UP (seconds),
//! CAMPAIGN_STATE_MIB, CAMPAIGN_STRICT=1 (fail on any duplicate, explained or not). Timings
//! are reported, never asserted. Runs as root (Postfix, Mailman, mount), like the other
//! end-to-end tests.
//!
//! A duplicate is explained only by what listcrypt itself said, or by Postfix's log when
//! Postfix duplicated: listcrypt resends a reinjected batch whose earlier attempt may have been
//! queued (its transaction was cut after the final dot; SMTP cannot tell) and logs
//! `QID: LIST: reinjection in doubt for message-id <ID>: N recipient(s) may get a second copy;
//! resending`; a post's duplicates are explained when they number at most the sum of N over
//! its lines in every daemon's log. Mailman's own transaction queued twice across a Postfix
//! restart (two queue files of the outbound service) is Postfix's at-least-once. Any other
//! duplicate fails the test; CAMPAIGN_STRICT fails on explained ones too.
//!
//! `load_inbound_side` (ignored; `contrib/campaign/load`) measures the inbound accept rate.

mod support;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};
use support::clients::SqUser;
use support::faults::{FlakyMilter, Gate, SmallDisk, FLAKY_TEXT};
use support::files::mkdir;
use support::gpg::{Gpg, GpgUser};
use support::listcrypt::Listcrypt;
use support::mailman::{Mailman, MailmanSettings};
use support::mime;
use support::net::free_ports;
use support::postfix::{make_searchable, Postfix, PostfixSettings};
use support::postgres::{Postgres, PASSWORD};
use support::process::{run, signal};
use support::sink::{Delivery, Sink};
use support::smtp::{self, Dialogue};
use support::text::tail;
use support::world::header_value;

const LIST: &str = "campaign@lists.example.test";
const LIST_BOUNCES: &str = "campaign-bounces";
const OWNER: &str = "owner@example.net";
const STRANGER: &str = "stranger@example.net";
const GPG_MEMBERS: usize = 12;
const SQ_MEMBERS: usize = 8;
const MEMBERS: usize = GPG_MEMBERS + SQ_MEMBERS;
const BATCH_SIZE: usize = 5;
/// Every secret of every post starts so: a delivery that contains it shows plaintext. Not in
/// the base64 alphabet, so it cannot appear by chance inside armor.
const SECRET: &str = "CAMPAIGN-SECRET-";
/// The faults, with their weights when all may strike.
const FAULT_KINDS: [&str; 6] = ["kill", "postfix", "reload", "disk", "reinject", "pgstop"];
const FAULT_WEIGHTS: [u32; 6] = [35, 15, 10, 20, 20, 20];
/// The database of the campaign on PostgreSQL.
const DATABASE: &str = "campaign";

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn setting<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} does not parse")),
        _ => default,
    }
}

/// Where listcrypt keeps its state: `state_dir/state.sqlite`, or a PostgreSQL database
/// (`database_url`) that also holds the list keys and member certificates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Clone, Debug)]
struct Settings {
    posts: usize,
    seed: u64,
    backend: Backend,
    clients: usize,
    /// Accepted posts not yet in every mailbox before the clients wait (the pipeline's depth).
    in_flight: usize,
    /// Seconds between two faults, drawn from this range.
    fault_gap: (u64, u64),
    tempfail_rate: f64,
    /// `limits.replay_confirm_window`: how long a tempfailed post's retries get 451 4.7.1.
    confirm_window: u64,
    drain: Duration,
    /// A client stops retrying a post after this long (it stays pending, with its reason).
    give_up: Duration,
    state_mib: u64,
    /// Fail on any duplicate, explained or not.
    strict: bool,
    /// The kinds of fault that may strike (all by default).
    faults: Vec<String>,
    /// The kind of the first fault, if not drawn.
    first_fault: Option<String>,
}

impl Settings {
    /// The settings from the environment; `backend` overrides CAMPAIGN_BACKEND.
    fn from_env(backend: Option<Backend>) -> Settings {
        let seed = setting(
            "CAMPAIGN_SEED",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                % 1_000_000_007,
        );
        let backend = backend.unwrap_or_else(|| {
            match setting("CAMPAIGN_BACKEND", "sqlite".to_string()).as_str() {
                "sqlite" => Backend::Sqlite,
                "postgres" | "postgresql" => Backend::Postgres,
                other => panic!("CAMPAIGN_BACKEND={other:?}: sqlite or postgres"),
            }
        });
        let gap = setting("CAMPAIGN_FAULT_GAP", "4-12".to_string());
        let (lo, hi) = gap
            .split_once('-')
            .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
            .filter(|(a, b)| a <= b)
            .unwrap_or_else(|| panic!("CAMPAIGN_FAULT_GAP={gap:?}: MIN-MAX seconds"));
        Settings {
            posts: setting("CAMPAIGN_POSTS", 200),
            seed,
            backend,
            clients: setting("CAMPAIGN_CLIENTS", 3),
            in_flight: setting("CAMPAIGN_IN_FLIGHT", 10),
            fault_gap: (lo, hi),
            tempfail_rate: setting("CAMPAIGN_TEMPFAIL_RATE", 0.04),
            confirm_window: setting("CAMPAIGN_CONFIRM_WINDOW", 60),
            drain: Duration::from_secs(setting("CAMPAIGN_DRAIN", 300)),
            give_up: Duration::from_secs(setting("CAMPAIGN_GIVE_UP", 600)),
            state_mib: setting("CAMPAIGN_STATE_MIB", 64),
            strict: setting("CAMPAIGN_STRICT", 0) == 1,
            faults: faults(backend),
            first_fault: None,
        }
    }
}

/// CAMPAIGN_FAULTS, by default every kind the backend has: on PostgreSQL the database stops
/// instead of the state disk filling up (listcrypt's state dir then holds no state).
fn faults(backend: Backend) -> Vec<String> {
    let other = match backend {
        Backend::Sqlite => "pgstop",
        Backend::Postgres => "disk",
    };
    let all: Vec<&str> = FAULT_KINDS.into_iter().filter(|f| *f != other).collect();
    setting("CAMPAIGN_FAULTS", all.join(","))
        .split(',')
        .map(|f| {
            assert!(
                all.contains(&f),
                "CAMPAIGN_FAULTS: {f:?} is none of {all:?} (on {backend:?})"
            );
            f.to_string()
        })
        .collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Kind {
    Gpg,
    Sq,
    Plaintext,
    NonMember,
    BadSignature,
    Replay,
}

impl Kind {
    fn hostile(self) -> bool {
        !matches!(self, Kind::Gpg | Kind::Sq)
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Gpg => "gpg member",
            Kind::Sq => "sq member",
            Kind::Plaintext => "plaintext",
            Kind::NonMember => "non-member",
            Kind::BadSignature => "bad signature",
            Kind::Replay => "replay",
        }
    }

    /// The refusal DESIGN.md's reply table gives (replays: discarded, `duplicate_action`).
    fn expected_refusal(self) -> Option<(u16, &'static str)> {
        match self {
            Kind::Plaintext | Kind::NonMember => Some((550, "5.7.1")),
            Kind::BadSignature => Some((550, "5.7.7")),
            _ => None,
        }
    }
}

enum Client {
    Gpg(GpgUser),
    Sq(SqUser),
}

struct Member {
    email: String,
    client: Client,
}

/// The world of the campaign. Drop stops listcrypt first, then unmounts its state disk and
/// stops the database.
struct Campaign {
    listcrypt: Mutex<Listcrypt>,
    /// The state's database, on PostgreSQL.
    pg: Option<Mutex<Postgres>>,
    postfix: Mutex<Postfix>,
    mailman: Mailman,
    disk: SmallDisk,
    gate: Gate,
    milter: FlakyMilter,
    sink: Sink,
    members: Vec<Member>,
    stranger: GpgUser,
    /// Bound as the list owner; kept so that its gpg-agent is stopped at the end.
    _owner: GpgUser,
    list_cert: PathBuf,
    list_fpr: String,
    inbound_port: u16,
    started: Instant,
    dir: tempfile::TempDir,
}

/// Runs `f` over `items` on `workers` threads; results in the order of `items`.
fn par_map<T: Sync, R: Send>(items: &[T], workers: usize, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let next = AtomicUsize::new(0);
    let mut results: Vec<(usize, R)> = thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        let Some(item) = items.get(i) else { break };
                        out.push((i, f(item)));
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("worker thread"))
            .collect()
    });
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, r)| r).collect()
}

impl Campaign {
    fn start(s: &Settings) -> Campaign {
        let started = Instant::now();
        let dir = tempfile::Builder::new()
            .prefix("listcrypt-campaign.")
            .tempdir_in("/tmp")
            .expect("tempdir in /tmp");
        let base = dir.path().to_path_buf();
        make_searchable(&base);
        eprintln!("campaign: working in {}", base.display());

        let sink = Sink::start();
        let [inbound_port, outbound_port, reinject_port, lmtp_port, rest_port] = free_ports();
        // listcrypt reinjects through the gate, which forwards to Postfix's reinject smtpd.
        let gate = Gate::start(reinject_port);
        let milter = FlakyMilter::start(s.tempfail_rate, s.seed ^ 0x5eed);
        let socket_dir = mkdir(&base.join("run"), 0o755);
        let listcrypt = Listcrypt::configure(&base.join("listcrypt"), &socket_dir, gate.port);
        let pg = (s.backend == Backend::Postgres).then(|| use_postgres(&listcrypt, &base));
        listcrypt.set_limits(&[format!("replay_confirm_window = {}", s.confirm_window)]);
        let state_dir = base.join("listcrypt/state");
        let disk = SmallDisk::mount(&state_dir, s.state_mib);

        let mailman_base = base.join("mailman");
        let mut postfix = Postfix::configure(&PostfixSettings {
            base: base.join("postfix"),
            inbound_port,
            outbound_port,
            reinject_port,
            sink_port: sink.port,
            inbound_socket: listcrypt.inbound_socket.clone(),
            outbound_socket: listcrypt.outbound_socket.clone(),
            mailman_data_dir: mailman_base.join("var/data"),
        });
        postfix.add_inbound_milter_after_listcrypt(&milter.address, inbound_port);
        let mut mailman = Mailman::configure(&MailmanSettings {
            base: mailman_base,
            lmtp_port,
            rest_port,
            smtp_port: outbound_port,
            postfix_etc: postfix.etc.clone(),
        });
        // All 20 members in one Mailman transaction, which listcrypt splits into 4 batches.
        mailman.set_config("mta", "max_recipients", "500");
        // Retry temporary failures every 2 s rather than every 15 min.
        mailman.set_config("runner.retry", "sleep_time", "2s");
        let emails: Vec<String> = (1..=GPG_MEMBERS)
            .map(|i| format!("gpg{i:02}@example.net"))
            .chain((1..=SQ_MEMBERS).map(|i| format!("sq{i:02}@example.net")))
            .collect();
        let refs: Vec<&str> = emails.iter().map(String::as_str).collect();
        mailman.create_list(LIST, OWNER, &refs);
        mailman.apply_encrypted_list_settings(LIST);
        // Mailman's template cache races when its runners first fetch the same template
        // together (see mailman_hooks.py): fetched once here, before they start.
        mailman.hook(LIST, "warm_template_cache", &[]);
        mailman.start();
        postfix.start();

        listcrypt.cli(&["list", "create", LIST]);
        listcrypt.set_policy(LIST, "batch_size", &BATCH_SIZE.to_string());
        let list_cert = base.join("list.asc");
        support::files::write(
            &list_cert,
            listcrypt.cli(&["list", "export-key", LIST]).stdout,
        );
        let homes = mkdir(&base.join("clients"), 0o700);
        let inspector = Gpg::new(homes.join("inspector"));
        let list_fpr = inspector
            .show_fingerprints(&list_cert)
            .first()
            .cloned()
            .expect("list key fingerprint");

        let gpg_users = par_map(&emails[..GPG_MEMBERS], 3, |email| {
            let user = GpgUser::create(&homes, "Member", email);
            user.gpg.import(&list_cert);
            user
        });
        let sq_users = par_map(&emails[GPG_MEMBERS..], 3, |email| {
            SqUser::create(&homes, email)
        });
        let stranger = GpgUser::create(&homes, "Stranger", STRANGER);
        stranger.gpg.import(&list_cert);
        let owner = GpgUser::create(&homes, "Owner", OWNER);
        eprintln!(
            "campaign: {} keys made ({:?})",
            MEMBERS + 2,
            started.elapsed()
        );
        let mut members = Vec::new();
        for user in gpg_users {
            let cert = user.export(&base.join(format!("{}.asc", user.email)));
            listcrypt.cli(&[
                "member",
                "add",
                LIST,
                &user.email,
                &cert.display().to_string(),
            ]);
            members.push(Member {
                email: user.email.clone(),
                client: Client::Gpg(user),
            });
        }
        for user in sq_users {
            let cert = user.cert.display().to_string();
            listcrypt.cli(&["member", "add", LIST, &user.email, &cert]);
            members.push(Member {
                email: user.email.clone(),
                client: Client::Sq(user),
            });
        }
        let owner_cert = owner.export(&base.join("owner.asc"));
        listcrypt.cli(&[
            "member",
            "add",
            LIST,
            OWNER,
            &owner_cert.display().to_string(),
            "--role",
            "owner",
        ]);
        let mut listcrypt = listcrypt;
        listcrypt.serve();
        mailman.wait_until_ready();
        eprintln!(
            "campaign: {MEMBERS} members bound, listcrypt serving, Mailman up ({:?})",
            started.elapsed()
        );
        Campaign {
            listcrypt: Mutex::new(listcrypt),
            pg: pg.map(Mutex::new),
            postfix: Mutex::new(postfix),
            mailman,
            disk,
            gate,
            milter,
            sink,
            members,
            stranger,
            _owner: owner,
            list_cert,
            list_fpr,
            inbound_port,
            started,
            dir,
        }
    }

    /// The queue ids of listcrypt's journal (which batches it knows it reinjected).
    fn journaled(&self) -> HashSet<String> {
        let text = match &self.pg {
            Some(pg) => lock(pg).psql(DATABASE, "SELECT DISTINCT queue_id FROM journal"),
            None => {
                let out = run(
                    Command::new("sqlite3")
                        .arg("-readonly")
                        .arg(self.disk.dir.join("state.sqlite"))
                        .arg("SELECT DISTINCT queue_id FROM journal"),
                    None,
                );
                String::from_utf8_lossy(&out.stdout).into_owned()
            }
        };
        text.lines().map(|l| l.trim().to_string()).collect()
    }

    fn mailman_busy_files(&self) -> Vec<String> {
        self.mailman
            .queued_files()
            .into_iter()
            .filter(|f| !f.starts_with("bad/") && !f.starts_with("shunt/"))
            .collect()
    }

    fn diagnostics(&self) -> String {
        let lc = lock(&self.listcrypt);
        let pf = lock(&self.postfix);
        let pg = match &self.pg {
            Some(pg) => format!(
                "===== PostgreSQL log (last 30 lines)\n{}\n",
                tail(&lock(pg).log(), 30)
            ),
            None => String::new(),
        };
        pg + &format!(
            "===== listcrypt log ({}), last 150 lines\n{}\n\
             ===== Postfix maillog (last 100 lines)\n{}\n\
             ===== Postfix queue\n{}\n\
             ===== Mailman queues\n{:?}\n\
             ===== Mailman logs (last 30 lines each)\n{}\n",
            lc.log.display(),
            tail(&lc.log_text(), 150),
            pf.log_tail(100),
            pf.queue_listing(),
            self.mailman.queued_files(),
            self.mailman.logs_tail(30),
        )
    }
}

impl Drop for Campaign {
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
                "campaign: keeping {} (KEEP_E2E_TMPDIR; the state tmpfs is unmounted)",
                kept.keep().display()
            );
        }
        lock(&self.listcrypt).stop();
        self.disk.unmount();
        lock(&self.postfix).stop();
        self.mailman.stop();
        if let Some(pg) = &self.pg {
            lock(pg).stop();
        }
    }
}

/// One post of the campaign and what became of it.
struct Post {
    kind: Kind,
    size: usize,
    /// Index into the members (None: the stranger).
    author: Option<usize>,
    from: String,
    id: String,
    bytes: Option<Arc<Vec<u8>>>,
    replay_of: Option<usize>,
    attempts: u32,
    /// Why each temporary failure happened, in order.
    tempfails: Vec<String>,
    first_try: Option<Instant>,
    outcome: Outcome,
}

#[derive(Clone, Debug)]
enum Outcome {
    /// Not finally answered (yet): the last temporary reason.
    Pending(String),
    Accepted(Instant),
    Refused {
        stage: String,
        code: u16,
        enhanced: Option<String>,
        text: String,
    },
}

struct Ledger {
    posts: Vec<Post>,
    next: usize,
    retry: Vec<(Instant, usize)>,
    /// Posts a client is working on.
    busy: usize,
    /// Accepted member posts whose bytes are kept, for replays.
    recent: Vec<usize>,
    rng: StdRng,
}

impl Ledger {
    /// The plan of the campaign, all drawn from the seed: kind, size and author of each post.
    fn plan(s: &Settings) -> Ledger {
        let mut rng = StdRng::seed_from_u64(s.seed);
        let posts = (0..s.posts)
            .map(|n| {
                let roll = rng.gen_range(0..100);
                let kind = match roll {
                    0..=47 => Kind::Gpg,
                    48..=79 => Kind::Sq,
                    80..=84 => Kind::Plaintext,
                    85..=89 => Kind::NonMember,
                    90..=94 => Kind::BadSignature,
                    _ => Kind::Replay,
                };
                let author = match kind {
                    Kind::Gpg | Kind::BadSignature => Some(rng.gen_range(0..GPG_MEMBERS)),
                    Kind::Sq => Some(GPG_MEMBERS + rng.gen_range(0..SQ_MEMBERS)),
                    Kind::Plaintext => Some(rng.gen_range(0..MEMBERS)),
                    Kind::NonMember | Kind::Replay => None,
                };
                Post {
                    kind,
                    size: rng.gen_range(10 * 1024..=200 * 1024),
                    author,
                    from: String::new(),
                    id: format!("<campaign-{:x}-{n}@example.net>", s.seed),
                    bytes: None,
                    replay_of: None,
                    attempts: 0,
                    tempfails: Vec::new(),
                    first_try: None,
                    outcome: Outcome::Pending("not sent".into()),
                }
            })
            .collect();
        Ledger {
            posts,
            next: 0,
            retry: Vec::new(),
            busy: 0,
            recent: Vec::new(),
            rng: StdRng::seed_from_u64(s.seed ^ 0xc11e),
        }
    }

    fn accepted_members_posts(&self) -> impl Iterator<Item = (usize, &Post)> {
        self.posts
            .iter()
            .enumerate()
            .filter(|(_, p)| !p.kind.hostile() && matches!(p.outcome, Outcome::Accepted(_)))
    }
}

/// What the subscribers' mail server received, read from the sink as it arrives.
#[derive(Default)]
struct Mailboxes {
    /// Message-ID → recipient → copies.
    copies: HashMap<String, HashMap<String, u32>>,
    /// Message-ID → when the last of the `MEMBERS` mailboxes got its first copy.
    complete: HashMap<String, Instant>,
    /// Message-ID → when its first copy arrived.
    first: HashMap<String, Instant>,
    transactions: usize,
    bytes: u64,
    leaks: Vec<String>,
    /// Deliveries without a campaign Message-ID (Mailman's notices, DSNs): sender and rcpts.
    others: Vec<String>,
    /// One copy per post for a gpg member, decrypted at the end: (rcpt, armored).
    samples: HashMap<String, (String, String)>,
}

impl Mailboxes {
    fn absorb(&mut self, deliveries: Vec<Delivery>, gpg_members: &HashSet<String>) {
        for d in deliveries {
            self.transactions += 1;
            self.bytes += d.data.len() as u64;
            let text = d.text();
            let payload = mime::rfc3156_payload(&text);
            if let Err(why) = &payload {
                self.leaks.push(format!(
                    "delivery from <{}> to {:?} is not RFC 3156 encrypted: {why}",
                    d.mail_from, d.rcpts
                ));
            }
            if text.contains(SECRET) {
                self.leaks.push(format!(
                    "delivery from <{}> to {:?} shows a secret in clear",
                    d.mail_from, d.rcpts
                ));
            }
            let id = header_value(&d.data, "Message-ID").filter(|id| id.contains("campaign-"));
            let Some(id) = id.filter(|_| d.mail_from.starts_with(LIST_BOUNCES)) else {
                self.others
                    .push(format!("<{}> to {:?}", d.mail_from, d.rcpts));
                continue;
            };
            self.first.entry(id.clone()).or_insert(d.at);
            let per = self.copies.entry(id.clone()).or_default();
            for r in &d.rcpts {
                *per.entry(r.to_ascii_lowercase()).or_default() += 1;
            }
            if per.len() >= MEMBERS && !self.complete.contains_key(&id) {
                self.complete.insert(id.clone(), d.at);
            }
            if let Ok(armored) = payload {
                if let Some(r) = d.rcpts.iter().find(|r| gpg_members.contains(*r)) {
                    self.samples.entry(id).or_insert((r.clone(), armored));
                }
            }
        }
    }
}

/// Counters of the faults that struck.
#[derive(Default)]
struct Faults {
    log: Vec<String>,
    kills: usize,
    postfix_restarts: usize,
    postfix_reloads: usize,
    disk_full: usize,
    disk_full_secs: u64,
    reinject_down: usize,
    reinject_down_secs: u64,
    connections_cut: usize,
    pg_stops: usize,
    pg_down_secs: u64,
    /// From when PostgreSQL had stopped to when it was started again.
    pg_down: Vec<(Instant, Instant)>,
    /// What a replay sent while PostgreSQL was down got (`probe_while_down`).
    pg_probes: Vec<String>,
    restarts: usize,
    failed_starts: usize,
    /// The highest VmHWM seen of any listcrypt incarnation, KiB.
    peak_rss_kib: u64,
}

/// The body of post `n`: its secret, then words up to `size` bytes.
fn body(n: usize, seed: u64, size: usize, secret: &str) -> String {
    const WORDS: &[&str] = &[
        "list",
        "crypt",
        "mail",
        "post",
        "member",
        "postfix",
        "mailman",
        "batch",
        "key",
        "signature",
        "reinject",
        "journal",
        "queue",
        "digest",
        "owner",
        "bounce",
        "subject",
        "archive",
        "policy",
        "milter",
    ];
    let mut rng = StdRng::seed_from_u64(seed ^ (n as u64) << 20);
    let mut out = format!("Hello list,\n\npost {n}: {secret}\n\n");
    let mut line = String::new();
    while out.len() < size {
        line.push_str(WORDS[rng.gen_range(0..WORDS.len())]);
        if line.len() > 66 {
            out.push_str(&line);
            out.push('\n');
            line.clear();
        } else {
            line.push(' ');
        }
    }
    out.push_str("\n-- \nthe campaign\n");
    out
}

fn inner_text(body: &str) -> String {
    format!(
        "Content-Type: text/plain; charset=utf-8\r\n\
         Content-Transfer-Encoding: 8bit\r\n\r\n{}",
        body.replace('\n', "\r\n")
    )
}

/// Builds the bytes of post `n` (not a replay).
fn compose(c: &Campaign, s: &Settings, n: usize, post: &Post) -> Vec<u8> {
    let secret = format!("{SECRET}{:x}-{n}", s.seed);
    let subject = format!("Campaign post {n} {SECRET}S{n}");
    let text = body(n, s.seed, post.size, &secret);
    let (name, from) = match post.author {
        Some(i) => ("Member", c.members[i].email.as_str()),
        None => ("Stranger", STRANGER),
    };
    let from_header = format!("{name} <{from}>");
    let headers = [
        ("From", from_header.as_str()),
        ("To", LIST),
        ("Subject", subject.as_str()),
        ("Message-ID", post.id.as_str()),
        ("Date", "Sun, 06 Dec 2026 12:00:00 +0000"),
    ];
    let boundary = "campaign-boundary";
    match post.kind {
        Kind::Plaintext => mime::plain_text(&headers, &text),
        Kind::NonMember => {
            let armored = c
                .stranger
                .sign_encrypt(&c.list_fpr, inner_text(&text).as_bytes());
            mime::pgp_mime_encrypted(&headers, &armored, boundary)
        }
        Kind::Gpg | Kind::Sq => {
            let inner = inner_text(&text);
            let armored = match &c.members[post.author.unwrap()].client {
                Client::Gpg(u) => u.sign_encrypt(&c.list_fpr, inner.as_bytes()),
                Client::Sq(u) => u.sign_encrypt(&c.list_cert, inner.as_bytes()),
            };
            mime::pgp_mime_encrypted(&headers, &armored, boundary)
        }
        Kind::BadSignature => {
            // RFC 3156 §6.1 sign-then-encrypt, with the signed part altered after signing.
            let Client::Gpg(u) = &c.members[post.author.unwrap()].client else {
                unreachable!("bad signatures come from gpg members")
            };
            let part = inner_text(&text);
            let signature = u.gpg.ok(
                &["--armor", "--local-user", &u.fpr, "--detach-sign"],
                Some(part.as_bytes()),
            );
            let altered = part.replacen("Hello list", "Hello LIST", 1);
            let inner = format!(
                "Content-Type: multipart/signed; micalg=pgp-sha512;\r\n \
                 protocol=\"application/pgp-signature\"; boundary=\"sig1\"\r\n\r\n\
                 --sig1\r\n{altered}\r\n--sig1\r\n\
                 Content-Type: application/pgp-signature; name=\"signature.asc\"\r\n\r\n\
                 {}\r\n--sig1--\r\n",
                String::from_utf8_lossy(&signature).replace('\n', "\r\n")
            );
            let armored = u.encrypt(&c.list_fpr, inner.as_bytes());
            mime::pgp_mime_encrypted(&headers, &armored, boundary)
        }
        Kind::Replay => unreachable!("a replay re-sends another post's bytes"),
    }
}

/// What the SMTP dialogue means for the sender: final yes, final no, or try again.
enum Answer {
    Accepted,
    Refused(String, smtp::Reply),
    Tempfail(String),
}

fn judge(d: &Dialogue) -> Answer {
    if d.accepted() {
        return Answer::Accepted;
    }
    if let Some((stage, reply)) = d.first_refusal() {
        if reply.code >= 500 {
            return Answer::Refused(stage.to_string(), reply.clone());
        }
        let who = if reply.text().contains(FLAKY_TEXT) {
            "second milter"
        } else {
            "listcrypt/Postfix"
        };
        return Answer::Tempfail(format!("{stage}: {} {} ({who})", reply.code, reply.text()));
    }
    let last = d
        .stages
        .last()
        .map(|(s, _)| s.as_str())
        .unwrap_or("connect");
    Answer::Tempfail(format!(
        "connection lost after {last}: {}",
        d.io_error.as_deref().unwrap_or("no reply")
    ))
}

/// Shared by the threads of a run.
struct Run<'a> {
    c: &'a Campaign,
    s: &'a Settings,
    ledger: Mutex<Ledger>,
    mailboxes: Mutex<Mailboxes>,
    faults: Mutex<Faults>,
    gpg_members: HashSet<String>,
    sending: AtomicBool,
    watching: AtomicBool,
    sent: AtomicU64,
    /// Every SMTP attempt: when it started and ended, and its answer's class.
    attempts: Mutex<Vec<(Instant, Instant, Class)>>,
}

/// An answer's class, for the attempts made while PostgreSQL was down.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Accepted,
    Refused,
    Temporary,
}

enum Job {
    Send(usize),
    Wait,
    Done,
}

impl Run<'_> {
    fn next_job(&self) -> Job {
        let mut l = lock(&self.ledger);
        let now = Instant::now();
        if let Some(k) = l.retry.iter().position(|(at, _)| *at <= now) {
            let (_, n) = l.retry.remove(k);
            l.busy += 1;
            return Job::Send(n);
        }
        if l.next < l.posts.len() {
            let n = l.next;
            l.next += 1;
            l.busy += 1;
            return Job::Send(n);
        }
        if l.retry.is_empty() && l.busy == 0 {
            Job::Done
        } else {
            Job::Wait
        }
    }

    /// Accepted member posts not yet in every mailbox.
    fn in_flight(&self) -> usize {
        let ids: Vec<String> = lock(&self.ledger)
            .accepted_members_posts()
            .map(|(_, p)| p.id.clone())
            .collect();
        let m = lock(&self.mailboxes);
        ids.iter()
            .filter(|id| !m.complete.contains_key(*id))
            .count()
    }

    /// The bytes to send for post `n`, made on its first attempt.
    fn bytes(&self, n: usize) -> (Arc<Vec<u8>>, String) {
        let (kind, existing) = {
            let l = lock(&self.ledger);
            (l.posts[n].kind, l.posts[n].bytes.clone())
        };
        if let Some(b) = existing {
            return (b, lock(&self.ledger).posts[n].from.clone());
        }
        if kind == Kind::Replay {
            // An earlier member post that is in every mailbox, re-sent by "its author".
            let mut l = lock(&self.ledger);
            let m = lock(&self.mailboxes);
            let done: Vec<usize> = l
                .recent
                .iter()
                .copied()
                .filter(|&i| m.complete.contains_key(&l.posts[i].id))
                .collect();
            drop(m);
            if !done.is_empty() {
                let pick = done[l.rng.gen_range(0..done.len())];
                let (bytes, from, id, author) = {
                    let src = &l.posts[pick];
                    (
                        src.bytes.clone(),
                        src.from.clone(),
                        src.id.clone(),
                        src.author,
                    )
                };
                let bytes = bytes.expect("recent posts keep their bytes");
                let p = &mut l.posts[n];
                p.replay_of = Some(pick);
                p.from = from.clone();
                p.id = id;
                p.author = author;
                p.size = bytes.len();
                p.bytes = Some(bytes.clone());
                return (bytes, from);
            }
            // Nothing to replay yet: a fresh gpg post instead.
            let p = &mut l.posts[n];
            p.kind = Kind::Gpg;
            p.author = Some(n % GPG_MEMBERS);
        }
        let post_view = {
            let l = lock(&self.ledger);
            let p = &l.posts[n];
            Post {
                kind: p.kind,
                size: p.size,
                author: p.author,
                from: String::new(),
                id: p.id.clone(),
                bytes: None,
                replay_of: None,
                attempts: 0,
                tempfails: Vec::new(),
                first_try: None,
                outcome: Outcome::Pending(String::new()),
            }
        };
        let bytes = Arc::new(compose(self.c, self.s, n, &post_view));
        let from = match post_view.author {
            Some(i) => self.c.members[i].email.clone(),
            None => STRANGER.to_string(),
        };
        let mut l = lock(&self.ledger);
        l.posts[n].bytes = Some(bytes.clone());
        l.posts[n].from = from.clone();
        (bytes, from)
    }

    /// One posting client: an MTA that retries 4xx and broken connections, and stops at 5xx.
    fn client(&self) {
        loop {
            let n = match self.next_job() {
                Job::Done => return,
                Job::Wait => {
                    thread::sleep(Duration::from_millis(200));
                    continue;
                }
                Job::Send(n) => n,
            };
            let (bytes, from) = self.bytes(n);
            let waited = Instant::now();
            while self.in_flight() >= self.s.in_flight && waited.elapsed() < Duration::from_secs(90)
            {
                thread::sleep(Duration::from_millis(200));
            }
            let sent_at = Instant::now();
            let d = smtp::send(self.c.inbound_port, &from, &[LIST], &bytes);
            let answer = judge(&d);
            self.sent.fetch_add(1, Ordering::SeqCst);
            let now = Instant::now();
            let class = match answer {
                Answer::Accepted => Class::Accepted,
                Answer::Refused(..) => Class::Refused,
                Answer::Tempfail(_) => Class::Temporary,
            };
            lock(&self.attempts).push((sent_at, now, class));
            let mut l = lock(&self.ledger);
            let first_try = *l.posts[n].first_try.get_or_insert(now);
            l.posts[n].attempts += 1;
            match answer {
                Answer::Accepted => {
                    let p = &mut l.posts[n];
                    p.outcome = Outcome::Accepted(now);
                    if !p.kind.hostile() {
                        l.recent.push(n);
                        if l.recent.len() > 30 {
                            let old = l.recent.remove(0);
                            l.posts[old].bytes = None;
                        }
                    } else {
                        p.bytes = None;
                    }
                }
                Answer::Refused(stage, reply) => {
                    let p = &mut l.posts[n];
                    p.outcome = Outcome::Refused {
                        stage,
                        code: reply.code,
                        enhanced: reply.enhanced().map(str::to_string),
                        text: reply.text(),
                    };
                    p.bytes = None;
                }
                Answer::Tempfail(why) => {
                    let gave_up = now.duration_since(first_try) > self.s.give_up;
                    let p = &mut l.posts[n];
                    p.tempfails.push(why.clone());
                    p.outcome = Outcome::Pending(why);
                    if !gave_up {
                        let pause = Duration::from_millis(l.rng.gen_range(3000..8000));
                        l.retry.push((now + pause, n));
                    }
                }
            }
            l.busy -= 1;
        }
    }

    /// Reads the sink while the run goes on.
    fn watch(&self) {
        while self.watching.load(Ordering::SeqCst) {
            let new = self.c.sink.take();
            lock(&self.mailboxes).absorb(new, &self.gpg_members);
            thread::sleep(Duration::from_millis(250));
        }
        let new = self.c.sink.take();
        lock(&self.mailboxes).absorb(new, &self.gpg_members);
    }

    /// Restarts listcrypt whenever it died, as systemd's `Restart=always` (RestartSec=1);
    /// samples its peak RSS meanwhile.
    fn supervise(&self) {
        while self.watching.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_millis(200));
            let exited = {
                let mut lc = lock(&self.c.listcrypt);
                let exited = lc.exited();
                if exited.is_none() {
                    if let Some(kib) = lc.peak_rss_kib() {
                        let mut f = lock(&self.faults);
                        f.peak_rss_kib = f.peak_rss_kib.max(kib);
                    }
                }
                exited
            };
            let Some(status) = exited else { continue };
            eprintln!(
                "campaign: supervisor: listcrypt exited ({status}) at {:?}; restarting in 1 s",
                self.c.started.elapsed()
            );
            loop {
                thread::sleep(Duration::from_secs(1));
                let started = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    lock(&self.c.listcrypt).serve()
                }));
                let mut f = lock(&self.faults);
                if started.is_ok() {
                    f.restarts += 1;
                    break;
                }
                f.failed_starts += 1;
            }
        }
    }

    /// Sends an accepted post again while PostgreSQL is down: listcrypt cannot look up its
    /// replay record, so it must defer it (a 250 or a 5xx is a problem of the ledger).
    fn probe_while_down(&self) -> String {
        let recent = {
            let l = lock(&self.ledger);
            l.recent.iter().rev().find_map(|&i| {
                let p = &l.posts[i];
                Some((p.bytes.clone()?, p.from.clone()))
            })
        };
        let Some((bytes, from)) = recent else {
            return "none sent (no post accepted yet)".into();
        };
        match judge(&smtp::send(self.c.inbound_port, &from, &[LIST], &bytes)) {
            Answer::Tempfail(why) => format!("deferred ({why})"),
            Answer::Accepted => "ACCEPTED".into(),
            Answer::Refused(stage, reply) => {
                format!("REFUSED at {stage}: {} {}", reply.code, reply.text())
            }
        }
    }

    /// Strikes at random moments while the clients send; every fault is undone before the
    /// next.
    fn strike(&self) {
        let mut rng = StdRng::seed_from_u64(self.s.seed ^ 0xfa17);
        let mut k = 0;
        let c = self.c;
        let pause = |secs: u64| {
            let until = Instant::now() + Duration::from_secs(secs);
            while Instant::now() < until && self.sending.load(Ordering::SeqCst) {
                thread::sleep(Duration::from_millis(100));
            }
        };
        loop {
            pause(rng.gen_range(self.s.fault_gap.0..=self.s.fault_gap.1));
            // Faults strike while new posts go out; the retries after that meet none, so
            // that the tail of tempfailed posts ends.
            let all_sent = {
                let l = lock(&self.ledger);
                l.next == l.posts.len()
            };
            if !self.sending.load(Ordering::SeqCst) || all_sent {
                return;
            }
            k += 1;
            let at = c.started.elapsed();
            let allowed: Vec<usize> = (0..FAULT_KINDS.len())
                .filter(|&i| self.s.faults.iter().any(|f| f == FAULT_KINDS[i]))
                .collect();
            let total: u32 = allowed.iter().map(|&i| FAULT_WEIGHTS[i]).sum();
            let mut roll = rng.gen_range(0..total);
            let mut kind = allowed[0];
            for &i in &allowed {
                if roll < FAULT_WEIGHTS[i] {
                    kind = i;
                    break;
                }
                roll -= FAULT_WEIGHTS[i];
            }
            if k == 1 {
                if let Some(first) = &self.s.first_fault {
                    kind = FAULT_KINDS
                        .iter()
                        .position(|f| f == first)
                        .expect("a fault kind");
                }
            }
            let what = match FAULT_KINDS[kind] {
                "kill" => {
                    let (pid, rss) = {
                        let lc = lock(&c.listcrypt);
                        (lc.pid(), lc.peak_rss_kib())
                    };
                    let Some(pid) = pid else {
                        continue;
                    };
                    signal(pid, "KILL");
                    let mut f = lock(&self.faults);
                    f.kills += 1;
                    f.peak_rss_kib = f.peak_rss_kib.max(rss.unwrap_or(0));
                    format!(
                        "kill -9 listcrypt (pid {pid}, VmHWM {} KiB)",
                        rss.unwrap_or(0)
                    )
                }
                "postfix" => {
                    let down = rng.gen_range(1..=6);
                    lock(&c.postfix).stop();
                    thread::sleep(Duration::from_secs(down));
                    lock(&c.postfix).start();
                    lock(&self.faults).postfix_restarts += 1;
                    format!("postfix stop, start after {down} s")
                }
                "reload" => {
                    let etc = lock(&c.postfix).etc.clone();
                    let out = run(
                        Command::new("postfix").arg("-c").arg(&etc).arg("reload"),
                        None,
                    );
                    lock(&self.faults).postfix_reloads += 1;
                    format!("postfix reload ({})", out.status)
                }
                "disk" => {
                    let secs = rng.gen_range(4..=15);
                    let took = c.disk.fill();
                    thread::sleep(Duration::from_secs(secs));
                    c.disk.empty();
                    let mut f = lock(&self.faults);
                    f.disk_full += 1;
                    f.disk_full_secs += secs;
                    format!("state disk full for {secs} s (filler {} KiB)", took / 1024)
                }
                "pgstop" => {
                    let secs = rng.gen_range(2..=8);
                    let pg = c.pg.as_ref().expect("pgstop only on PostgreSQL");
                    lock(pg).stop();
                    let down = Instant::now();
                    let probe = self.probe_while_down();
                    thread::sleep(Duration::from_secs(secs).saturating_sub(down.elapsed()));
                    let up = Instant::now();
                    lock(pg).run();
                    let mut f = lock(&self.faults);
                    f.pg_down.push((down, up));
                    f.pg_stops += 1;
                    f.pg_down_secs += secs;
                    f.pg_probes.push(probe.clone());
                    format!(
                        "PostgreSQL stopped, started after {secs} s; a replay meanwhile: {probe}"
                    )
                }
                _ => {
                    let secs = rng.gen_range(4..=15);
                    let cut = c.gate.down();
                    thread::sleep(Duration::from_secs(secs));
                    c.gate.up();
                    let mut f = lock(&self.faults);
                    f.reinject_down += 1;
                    f.reinject_down_secs += secs;
                    f.connections_cut += cut;
                    format!("reinjection listener down for {secs} s ({cut} connection(s) cut)")
                }
            };
            let line = format!("fault {k} at {at:.1?}: {what}");
            eprintln!(
                "campaign: {line} (sent so far: {})",
                self.sent.load(Ordering::SeqCst)
            );
            lock(&self.faults).log.push(line);
        }
    }

    /// Until Postfix's and Mailman's queues are empty and the sink got nothing for 5 s, or
    /// the drain time is up. Returns whether it got idle.
    fn drain(&self) -> bool {
        let deadline = Instant::now() + self.s.drain;
        let idle =
            || lock(&self.c.postfix).queue_is_empty() && self.c.mailman_busy_files().is_empty();
        while Instant::now() < deadline {
            if idle() {
                let n = lock(&self.mailboxes).transactions;
                thread::sleep(Duration::from_secs(5));
                if idle() && n == lock(&self.mailboxes).transactions {
                    return true;
                }
            }
            thread::sleep(Duration::from_millis(500));
        }
        false
    }
}

/// What Postfix's log says of one queue file: the smtpd service that received it (`inbound`,
/// `outbound`, `reinject`), its Message-ID and the recipients it was delivered to.
#[derive(Default)]
struct QueueFile {
    service: String,
    message_id: String,
    delivered: Vec<String>,
}

fn queue_files(maillog: &str) -> HashMap<String, QueueFile> {
    let mut files: HashMap<String, QueueFile> = HashMap::new();
    for line in maillog.lines() {
        let Some((head, rest)) = line.split_once("]: ") else {
            continue;
        };
        let Some((qid, what)) = rest.split_once(": ") else {
            continue;
        };
        if qid.is_empty() || !qid.chars().all(|c| c.is_ascii_hexdigit()) {
            continue;
        }
        // `postfix/reinject/smtpd[PID`: the program without its PID.
        let program = head
            .rsplit(' ')
            .next()
            .unwrap_or("")
            .split('[')
            .next()
            .unwrap_or("");
        if let Some(v) = what.strip_prefix("message-id=") {
            files.entry(qid.into()).or_default().message_id = v.trim().to_string();
        } else if what.starts_with("client=") && program.ends_with("/smtpd") {
            // postfix/<syslog_name>/smtpd[pid]
            let service = program
                .trim_start_matches("postfix/")
                .trim_end_matches("/smtpd");
            files.entry(qid.into()).or_default().service = service.to_string();
        } else if let Some(to) = what.strip_prefix("to=<") {
            if what.contains("status=sent") && program == "postfix/smtp" {
                let rcpt = to.split('>').next().unwrap_or("").to_ascii_lowercase();
                files.entry(qid.into()).or_default().delivered.push(rcpt);
            }
        }
    }
    files
}

/// A throwaway PostgreSQL cluster for listcrypt's state, as a site on PostgreSQL configures
/// it (README, "Keys and certificates in PostgreSQL"): `database_url` with the password in a
/// file, and `passphrase_file`, since the database holds list keys only passphrase-protected.
fn use_postgres(listcrypt: &Listcrypt, base: &std::path::Path) -> Postgres {
    let pg = Postgres::start();
    pg.create_database(DATABASE);
    let password_file = base.join("database-password");
    support::files::write(&password_file, format!("{PASSWORD}\n"));
    support::files::chmod(&password_file, 0o600);
    let passphrase_file = base.join("list-passphrase");
    support::files::write(&passphrase_file, "campaign list key passphrase\n");
    support::files::chmod(&passphrase_file, 0o600);
    listcrypt.use_database(&pg.url(DATABASE), &password_file);
    listcrypt.add_setting(
        "passphrase_file",
        &format!("{:?}", passphrase_file.display().to_string()),
    );
    pg
}

/// Queue ids that listcrypt's outbound summary lines name as reinjected: batches of
/// transactions that it finished.
fn reported_reinjections(log: &str) -> HashSet<String> {
    log.lines()
        .filter_map(|l| l.split("; reinjected as ").nth(1))
        .flat_map(|rest| {
            rest.split(';')
                .next()
                .unwrap_or("")
                .split("), ")
                .filter_map(|b| b.split_whitespace().next())
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// What listcrypt said of reinjections it resent because an earlier attempt may have been
/// queued: `QID: LIST: reinjection in doubt for message-id <ID>: N recipient(s) may get a
/// second copy; resending`, from the log every daemon incarnation appended to.
#[derive(Default)]
struct Doubts {
    /// Message-ID → the sum of N over its lines.
    recipients: HashMap<String, usize>,
    /// In-doubt batches: one line each.
    batches: usize,
    /// Lines with the marker that do not read as above.
    unreadable: Vec<String>,
}

fn read_doubts(log: &str) -> Doubts {
    const MARK: &str = ": reinjection in doubt for message-id ";
    const TAIL: &str = " recipient(s) may get a second copy; resending";
    let mut d = Doubts::default();
    for line in log.lines() {
        let Some((_, rest)) = line.split_once(MARK) else {
            continue;
        };
        let parsed = rest
            .trim_end()
            .strip_suffix(TAIL)
            .and_then(|r| r.rsplit_once(": "))
            .filter(|(id, _)| id.starts_with('<') && id.ends_with('>'))
            .and_then(|(id, n)| Some((id.to_string(), n.parse::<usize>().ok()?)));
        match parsed {
            Some((id, n)) => {
                d.batches += 1;
                *d.recipients.entry(id).or_default() += n;
            }
            None => d.unreadable.push(line.to_string()),
        }
    }
    d
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// Counts the listcrypt log lines that contain `needle`.
fn log_count(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

/// One campaign at a time: each runs its own Postfix, Mailman and listcrypt, and the
/// machine's cores are its budget.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The CI run (200 posts on SQLite by default) and `contrib/campaign/run`'s, as the
/// environment says.
#[test]
fn campaign_nothing_lost_duplicated_or_in_clear() {
    let _one = lock(&ONE_AT_A_TIME);
    campaign(&Settings::from_env(None));
}

/// A small campaign on PostgreSQL for CI (`contrib/campaign/run --backend postgres` is the
/// full one): CAMPAIGN_PG_POSTS posts (30), faults every 3-6 s, the first of them a
/// PostgreSQL stop and start.
#[test]
fn campaign_on_postgresql_nothing_lost_duplicated_or_in_clear() {
    let _one = lock(&ONE_AT_A_TIME);
    let s = Settings {
        posts: setting("CAMPAIGN_PG_POSTS", 30),
        fault_gap: (3, 6),
        // A post lost behind listcrypt's yes is retried as new after 30 s, not 60.
        confirm_window: 30,
        first_fault: Some("pgstop".into()),
        ..Settings::from_env(Some(Backend::Postgres))
    };
    campaign(&s);
}

fn campaign(s: &Settings) {
    support::environment::require_environment(&[
        "postfix",
        "postconf",
        "postqueue",
        "postmap",
        "mailman",
        "gpg",
        "gpgconf",
        "sq",
        "sqlite3",
        "mount",
        "umount",
    ]);
    eprintln!(
        "campaign: seed {} (CAMPAIGN_SEED={} replays this plan), {} posts, backend {:?}, \
         {} clients, faults every {}-{} s, second milter tempfails {:.0}%",
        s.seed,
        s.seed,
        s.posts,
        s.backend,
        s.clients,
        s.fault_gap.0,
        s.fault_gap.1,
        s.tempfail_rate * 100.0
    );
    let c = Campaign::start(s);
    let r = Run {
        c: &c,
        s,
        ledger: Mutex::new(Ledger::plan(s)),
        mailboxes: Mutex::new(Mailboxes::default()),
        faults: Mutex::new(Faults::default()),
        gpg_members: c
            .members
            .iter()
            .filter(|m| matches!(m.client, Client::Gpg(_)))
            .map(|m| m.email.clone())
            .collect(),
        sending: AtomicBool::new(true),
        watching: AtomicBool::new(true),
        sent: AtomicU64::new(0),
        attempts: Mutex::new(Vec::new()),
    };
    let run_started = Instant::now();
    let mut drained = false;
    let mut send_time = Duration::ZERO;
    thread::scope(|scope| {
        scope.spawn(|| r.watch());
        scope.spawn(|| r.supervise());
        let striker = scope.spawn(|| r.strike());
        let clients: Vec<_> = (0..s.clients).map(|_| scope.spawn(|| r.client())).collect();
        for client in clients {
            client.join().expect("client thread");
        }
        send_time = run_started.elapsed();
        r.sending.store(false, Ordering::SeqCst);
        striker.join().expect("fault thread");
        eprintln!(
            "campaign: every post answered or given up after {send_time:?}; faults over; draining"
        );
        drained = r.drain();
        r.watching.store(false, Ordering::SeqCst);
    });
    let total_time = run_started.elapsed();

    // ---- the ledger --------------------------------------------------------------------
    let final_rss = lock(&c.listcrypt).peak_rss_kib().unwrap_or(0);
    let ledger = r
        .ledger
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner);
    let mail = r
        .mailboxes
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner);
    let faults = r
        .faults
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner);
    let members: Vec<String> = c.members.iter().map(|m| m.email.clone()).collect();
    let posts = &ledger.posts;

    let mut by_kind: BTreeMap<Kind, [usize; 4]> = BTreeMap::new(); // sent, accepted, refused, pending
    let mut problems: Vec<String> = Vec::new();
    let mut refusals: BTreeMap<String, usize> = BTreeMap::new();
    let (mut expected, mut delivered, mut duplicates, mut lost) = (0usize, 0usize, 0usize, 0usize);
    let mut hostile_copies = 0usize;
    let mut tempfailed = [0usize; 3]; // later accepted, later refused, still pending
    let mut pending_reasons: Vec<String> = Vec::new();
    let mut latencies: Vec<Duration> = Vec::new();
    let mut replays_discarded = 0usize;
    let (mut in_doubt_dups, mut postfix_dups) = (0usize, 0usize);
    let mut explained: Vec<String> = Vec::new();
    let log = lock(&c.listcrypt).log_text();
    let files = queue_files(&lock(&c.postfix).log());
    let journal = c.journaled();
    let doubts = read_doubts(&log);
    for line in &doubts.unreadable {
        problems.push(format!("UNREADABLE IN-DOUBT LINE: {line}"));
    }
    let finished = reported_reinjections(&log);
    let mut qids_of: HashMap<(String, String), Vec<String>> = HashMap::new();
    for (qid, f) in &files {
        for r in &f.delivered {
            qids_of
                .entry((f.message_id.clone(), r.clone()))
                .or_default()
                .push(qid.clone());
        }
    }
    let postfix_restarts = faults.postfix_restarts;
    // The Postfix queue files that delivered post `p` to `rcpt`, each with its service and
    // what listcrypt knew of it.
    let queue_files_of = |p: &Post, rcpt: &str| -> Vec<String> {
        let mut qids = qids_of
            .get(&(p.id.clone(), rcpt.to_string()))
            .cloned()
            .unwrap_or_default();
        qids.sort();
        qids.iter()
            .map(|q| {
                format!(
                    "{q} ({}, journaled {}, reported {})",
                    files[q].service,
                    journal.contains(q),
                    finished.contains(q)
                )
            })
            .collect()
    };
    // Mailman's own transaction (the kept batch) queued twice by Postfix: stopped after
    // queueing it and before its 250 reached Mailman, which sent it again (SMTP's
    // at-least-once, Postfix's doing, seen in its log).
    let queued_twice_by_postfix = |p: &Post, rcpt: &str| -> bool {
        let kept = qids_of
            .get(&(p.id.clone(), rcpt.to_string()))
            .map_or(0, |qids| {
                qids.iter()
                    .filter(|q| files[*q].service == "outbound")
                    .count()
            });
        postfix_restarts > 0 && kept > 1
    };
    for (n, p) in posts.iter().enumerate() {
        let row = by_kind.entry(p.kind).or_default();
        row[0] += 1;
        if !p.tempfails.is_empty() {
            let slot = match p.outcome {
                Outcome::Accepted(_) => 0,
                Outcome::Refused { .. } => 1,
                Outcome::Pending(_) => 2,
            };
            tempfailed[slot] += 1;
        }
        let copies = mail.copies.get(&p.id);
        match &p.outcome {
            Outcome::Accepted(at) => {
                row[1] += 1;
                match p.kind {
                    Kind::Gpg | Kind::Sq => {
                        expected += MEMBERS;
                        for m in &members {
                            let got = copies.and_then(|c| c.get(m)).copied().unwrap_or(0) as usize;
                            delivered += got.min(1);
                            if got == 0 {
                                lost += 1;
                                problems
                                    .push(format!("LOST: post {n} ({}) never reached {m}", p.id));
                            }
                        }
                        if let Some(done) = mail.complete.get(&p.id) {
                            latencies.push(done.saturating_duration_since(*at));
                        }
                    }
                    Kind::Replay => replays_discarded += 1,
                    kind => problems.push(format!(
                        "ACCEPTED HOSTILE: post {n} ({}) was accepted ({} attempts)",
                        kind.name(),
                        p.attempts
                    )),
                }
            }
            Outcome::Refused {
                stage,
                code,
                enhanced,
                text,
            } => {
                row[2] += 1;
                let e = enhanced.clone().unwrap_or_default();
                *refusals
                    .entry(format!("{} {code} {e}", p.kind.name()))
                    .or_default() += 1;
                match p.kind.expected_refusal() {
                    Some((want, want_e)) if (*code, e.as_str()) != (want, want_e) => {
                        problems.push(format!(
                            "WRONG REFUSAL: post {n} ({}) got {code} {e} at {stage} ({text}), \
                             DESIGN.md says {want} {want_e}",
                            p.kind.name()
                        ))
                    }
                    None if !p.kind.hostile() => problems.push(format!(
                        "REFUSED MEMBER POST: post {n} ({}) got {code} {e} at {stage}: {text}",
                        p.kind.name()
                    )),
                    _ => {}
                }
            }
            Outcome::Pending(why) => {
                row[3] += 1;
                pending_reasons.push(format!(
                    "post {n} ({}): {} attempt(s), last: {why}",
                    p.kind.name(),
                    p.attempts
                ));
            }
        }
        // Duplicates: any mailbox with more than one copy of this Message-ID (a replay's
        // copies count against the post it replays, which has the same Message-ID).
        if p.replay_of.is_none() {
            if let Some(per) = copies {
                let mut left: Vec<(&String, u32)> = Vec::new();
                for (rcpt, k) in per.iter().filter(|(_, k)| **k > 1) {
                    duplicates += *k as usize - 1;
                    if queued_twice_by_postfix(p, rcpt) {
                        postfix_dups += *k as usize - 1;
                        explained.push(format!(
                            "POSTFIX QUEUED TWICE: {rcpt} got {k} copies of post {n} ({}): Mailman's \
                             transaction was queued as {:?}: Postfix was stopped after queueing it and \
                             before Mailman read its 250",
                            p.id,
                            queue_files_of(p, rcpt)
                        ));
                    } else {
                        left.push((rcpt, *k));
                    }
                }
                let extra: usize = left.iter().map(|(_, k)| *k as usize - 1).sum();
                let logged = doubts.recipients.get(&p.id).copied().unwrap_or(0);
                if extra > 0 && extra <= logged {
                    in_doubt_dups += extra;
                    explained.push(format!(
                        "IN DOUBT: post {n} ({}): {extra} second copies ({}); listcrypt logged \
                         {logged} recipient(s) in doubt for it and resent",
                        p.id,
                        left.iter()
                            .map(|(r, k)| format!("{r} {k}x"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                } else {
                    for (rcpt, k) in left {
                        problems.push(format!(
                            "DUPLICATE: {rcpt} got {k} copies of post {n} ({}, {} attempt(s), tempfails {:?}; \
                             listcrypt logged {logged} recipient(s) in doubt for it, {extra} second copies in all; \
                             Postfix queue files {:?})",
                            p.id,
                            p.attempts,
                            p.tempfails,
                            queue_files_of(p, rcpt)
                        ));
                    }
                }
                if p.kind.hostile() {
                    let k: u32 = per.values().sum();
                    hostile_copies += k as usize;
                    problems.push(format!(
                        "HOSTILE DELIVERED: post {n} ({}) reached {k} mailbox(es)",
                        p.kind.name()
                    ));
                }
            }
        }
    }
    for leak in &mail.leaks {
        problems.push(format!("LEAK: {leak}"));
    }
    // Attempts made wholly while PostgreSQL was down: nothing may be accepted without the
    // replay check (README, "When the database is down").
    let attempts = r
        .attempts
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner);
    let while_down: Vec<Class> = attempts
        .iter()
        .filter(|(start, end, _)| faults.pg_down.iter().any(|(a, b)| start >= a && end <= b))
        .map(|(_, _, class)| *class)
        .collect();
    let down_count = |c: Class| while_down.iter().filter(|k| **k == c).count();
    for probe in faults
        .pg_probes
        .iter()
        .filter(|p| !p.starts_with("deferred"))
    {
        if !probe.starts_with("none sent") {
            problems.push(format!(
                "A REPLAY WHILE POSTGRESQL WAS DOWN was not deferred: {probe}"
            ));
        }
    }
    if down_count(Class::Accepted) > 0 {
        problems.push(format!(
            "ACCEPTED WHILE POSTGRESQL WAS DOWN: {} attempt(s)",
            down_count(Class::Accepted)
        ));
    }

    // Decrypt one copy of each member post (up to 300) with its recipient's gpg: the copy
    // is the post (its secret inside) and carries the list's signature.
    let gpg_of: HashMap<&str, &GpgUser> = c
        .members
        .iter()
        .filter_map(|m| match &m.client {
            Client::Gpg(u) => Some((m.email.as_str(), u)),
            Client::Sq(_) => None,
        })
        .collect();
    let samples: Vec<(usize, String, String)> = ledger
        .accepted_members_posts()
        .filter_map(|(n, p)| {
            let (rcpt, armored) = mail.samples.get(&p.id)?;
            Some((n, rcpt.clone(), armored.clone()))
        })
        .take(300)
        .collect();
    let opened = par_map(&samples, 2, |(n, rcpt, armored)| {
        let dec = gpg_of[rcpt.as_str()].gpg.decrypt(armored.as_bytes());
        let secret = format!("{SECRET}{:x}-{n}", s.seed);
        let ok = dec.decrypted()
            && dec.text().contains(&secret)
            && dec
                .valid_signers()
                .iter()
                .any(|f| f.eq_ignore_ascii_case(&c.list_fpr));
        (!ok).then(|| format!("BAD COPY: post {n} for {rcpt}: {}", dec.report()))
    });
    let bad_copies: Vec<String> = opened.into_iter().flatten().collect();
    problems.extend(bad_copies.iter().cloned());

    let not_journaled = log_count(&log, "but not journaled");
    // Diagnosis, not explanation: reinjected batches Postfix queued that listcrypt neither
    // journaled nor reported as finished (cut after the final dot).
    let cut_batches = files
        .iter()
        .filter(|(q, f)| f.service == "reinject" && !journal.contains(*q) && !finished.contains(*q))
        .count();
    let queue = lock(&c.postfix).queue_listing();
    let shunted: Vec<String> = c
        .mailman
        .queued_files()
        .into_iter()
        .filter(|f| f.starts_with("bad/") || f.starts_with("shunt/"))
        .collect();
    latencies.sort();
    let peak_rss = faults.peak_rss_kib.max(final_rss);

    // ---- the report ----------------------------------------------------------------------
    let count = |k: Kind| by_kind.get(&k).copied().unwrap_or_default();
    let sum = |i: usize| by_kind.values().map(|r| r[i]).sum::<usize>();
    let hostile_sent: usize = by_kind
        .iter()
        .filter(|(k, _)| k.hostile())
        .map(|(_, r)| r[0])
        .sum();
    let mut report = String::new();
    let mut line = |k: &str, v: String| report.push_str(&format!("| {k:<34} | {v} |\n"));
    line("seed / backend", format!("{} / {:?}", s.seed, s.backend));
    line(
        "posts sent (member gpg / sq; hostile)",
        format!(
            "{} ({} / {}; {hostile_sent}: plaintext {}, non-member {}, bad signature {}, replay {})",
            posts.len(),
            count(Kind::Gpg)[0],
            count(Kind::Sq)[0],
            count(Kind::Plaintext)[0],
            count(Kind::NonMember)[0],
            count(Kind::BadSignature)[0],
            count(Kind::Replay)[0]
        ),
    );
    line(
        "accepted / refused / pending",
        format!(
            "{} (of which replays discarded: {replays_discarded}) / {} / {}",
            sum(1),
            sum(2),
            sum(3)
        ),
    );
    line(
        "refusals",
        refusals
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    line(
        "tempfailed at least once",
        format!(
            "{} (later accepted {}, later refused {}, still pending {}); {} attempts in all",
            tempfailed.iter().sum::<usize>(),
            tempfailed[0],
            tempfailed[1],
            tempfailed[2],
            posts.iter().map(|p| p.attempts as usize).sum::<usize>()
        ),
    );
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for p in posts {
        for t in &p.tempfails {
            // "STAGE: CODE TEXT (WHO)" or "connection lost after STAGE: ERROR"
            let key: String = t
                .split(" (os error")
                .next()
                .unwrap_or(t)
                .chars()
                .take(90)
                .collect();
            *reasons.entry(key).or_default() += 1;
        }
    }
    let mut reasons: Vec<(String, usize)> = reasons.into_iter().collect();
    reasons.sort_by_key(|r| std::cmp::Reverse(r.1));
    line(
        "temporary answers (most frequent)",
        reasons
            .iter()
            .take(6)
            .map(|(k, v)| format!("{v}x {k}"))
            .collect::<Vec<_>>()
            .join("; "),
    );
    line(
        "copies expected / delivered",
        format!("{expected} / {delivered} ({MEMBERS} members each, batch_size {BATCH_SIZE})"),
    );
    line(
        "duplicates",
        format!(
            "{duplicates} (explained by listcrypt's in-doubt lines: {in_doubt_dups}; queued twice by Postfix across a restart: {postfix_dups}; unexplained: {})",
            duplicates - in_doubt_dups - postfix_dups
        ),
    );
    line("lost", lost.to_string());
    line(
        "hostile posts delivered (copies)",
        hostile_copies.to_string(),
    );
    line(
        "leaks",
        format!(
            "{} of {} deliveries ({} MiB); {} of {} sampled copies decrypt to the post, list-signed",
            mail.leaks.len(),
            mail.transactions,
            mail.bytes >> 20,
            samples.len() - bad_copies.len(),
            samples.len()
        ),
    );
    line(
        "other deliveries (notices, DSNs)",
        format!(
            "{}: {}",
            mail.others.len(),
            mail.others
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        ),
    );
    line(
        "faults",
        format!(
            "{} kill -9, {} Postfix restarts, {} reloads, {} disk full ({} s), {} reinjection down ({} s, {} connections cut), {} PostgreSQL stops ({} s), second milter {} tempfails of {} ends of message",
            faults.kills,
            faults.postfix_restarts,
            faults.postfix_reloads,
            faults.disk_full,
            faults.disk_full_secs,
            faults.reinject_down,
            faults.reinject_down_secs,
            faults.connections_cut,
            faults.pg_stops,
            faults.pg_down_secs,
            c.milter.tempfails(),
            c.milter.eoms()
        ),
    );
    if s.backend == Backend::Postgres {
        line(
            "attempts while PostgreSQL was down",
            format!(
                "{} by the clients: {} answered 4xx, {} refused, {} accepted; replays sent meanwhile: {}",
                while_down.len(),
                down_count(Class::Temporary),
                down_count(Class::Refused),
                down_count(Class::Accepted),
                faults
                    .pg_probes
                    .iter()
                    .map(|p| p.chars().take(60).collect::<String>())
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        );
    }
    line(
        "daemon restarts",
        format!(
            "{} ({} failed starts retried)",
            faults.restarts, faults.failed_starts
        ),
    );
    line(
        "in-doubt batches",
        format!(
            "{} logged by listcrypt as `reinjection in doubt` ({} recipients, resent); {cut_batches} reinjected batches queued by Postfix but neither journaled nor reported (found by the ledger); {not_journaled} `not journaled`",
            doubts.batches,
            doubts.recipients.values().sum::<usize>()
        ),
    );
    line(
        "latency accept → 20th mailbox",
        format!(
            "p50 {:.1?}, p99 {:.1?}, max {:.1?} (over {} posts)",
            percentile(&latencies, 0.50),
            percentile(&latencies, 0.99),
            latencies.last().copied().unwrap_or_default(),
            latencies.len()
        ),
    );
    line(
        "peak RSS of listcrypt (VmHWM)",
        format!("{:.1} MiB", peak_rss as f64 / 1024.0),
    );
    line(
        "time",
        format!(
            "{:.0?} sending under faults, {:.0?} in all (+{:.0?} setup); drained: {drained}",
            send_time,
            total_time,
            run_started.duration_since(c.started)
        ),
    );
    let queue_lines: Vec<&str> = queue.lines().filter(|l| !l.trim().is_empty()).collect();
    line(
        "Postfix queue at the end",
        if queue.contains("Mail queue is empty") {
            "empty".into()
        } else {
            format!("{} line(s), see below", queue_lines.len())
        },
    );
    line("Mailman bad/shunt", format!("{shunted:?}"));
    eprintln!(
        "\ncampaign report\n| {:<34} | value |\n|{}|-------|\n{report}",
        "what",
        "-".repeat(36)
    );
    for f in &faults.log {
        eprintln!("campaign: {f}");
    }
    for p in pending_reasons.iter().take(20) {
        eprintln!("campaign: pending: {p}");
    }
    if !queue.contains("Mail queue is empty") {
        eprintln!("campaign: Postfix queue:\n{}", tail(&queue, 40));
    }
    if !shunted.is_empty() {
        // Why Mailman shunted: its runner's traceback, for the report.
        let log = support::files::read_lossy(&c.mailman.var.join("logs/mailman.log"));
        let lines: Vec<&str> = log.lines().collect();
        if let Some(i) = lines
            .iter()
            .position(|l| l.contains("Uncaught runner exception") || l.contains("Traceback"))
        {
            eprintln!(
                "campaign: Mailman's log where it shunted:\n{}",
                lines[i.saturating_sub(3)..(i + 40).min(lines.len())].join("\n")
            );
        }
    }
    for p in explained.iter().take(20) {
        eprintln!("campaign: {p}");
    }
    for p in problems.iter().take(40) {
        eprintln!("campaign: {p}");
    }

    // ---- what must hold (never timings) --------------------------------------------------
    assert!(
        problems.is_empty(),
        "campaign (seed {}): {} problem(s), first: {:#?}",
        s.seed,
        problems.len(),
        problems.iter().take(10).collect::<Vec<_>>()
    );
    assert_eq!((lost, mail.leaks.len()), (0, 0));
    assert!(
        !s.strict || duplicates == 0,
        "CAMPAIGN_STRICT: {duplicates} duplicate(s), all explained:\n{}",
        explained.join("\n")
    );
    assert_eq!(
        delivered, expected,
        "copies delivered against copies expected"
    );
    assert!(
        sum(1) > 0 && expected > 0,
        "no member post was accepted: the campaign measured nothing"
    );
    assert!(
        !samples.is_empty(),
        "no copy was sampled for decryption: the leak check proves nothing"
    );
    assert!(
        shunted.is_empty(),
        "Mailman shunted messages (seed {}): {shunted:?}",
        s.seed
    );
}

// ---- load ------------------------------------------------------------------------------

/// A throwaway Postfix for the load run (delivery to `discard:`, so delivery costs nothing),
/// stopped on drop.
struct LoadPostfix {
    etc: PathBuf,
    spool: PathBuf,
}

impl LoadPostfix {
    /// One smtpd per `(port, smtpd_milters)`.
    fn start(base: &std::path::Path, listeners: &[(u16, String)]) -> LoadPostfix {
        let etc = mkdir(&base.join("etc"), 0o755);
        let spool = mkdir(&base.join("spool"), 0o755);
        let data = mkdir(&base.join("data"), 0o700);
        support::process::run_ok(Command::new("chown").arg("postfix:").arg(&data), None);
        let log = mkdir(&base.join("log"), 0o755);
        let main = format!(
            "compatibility_level = 3.6\nqueue_directory = {spool}\ndata_directory = {data}\n\
             mail_owner = postfix\nsetgid_group = postdrop\nmyhostname = mx.lists.example.test\n\
             mydomain = lists.example.test\ninet_interfaces = 127.0.0.1\ninet_protocols = ipv4\n\
             mynetworks = 127.0.0.0/8\nmydestination =\nlocal_recipient_maps =\nalias_maps =\n\
             alias_database =\nrelay_domains = lists.example.test\nrelay_recipient_maps =\n\
             transport_maps = inline:{{ lists.example.test=discard: }}\n\
             default_transport = discard:\nrelay_transport = discard:\n\
             smtp_dns_support_level = disabled\nsmtpd_peername_lookup = no\n\
             smtpd_tls_security_level = none\nbiff = no\n\
             milter_default_action = tempfail\nmilter_protocol = 6\n\
             smtpd_client_connection_count_limit = 0\nsmtpd_client_connection_rate_limit = 0\n\
             default_process_limit = 200\nmaillog_file = {log}/maillog\nmaillog_file_prefixes = {log}\n",
            spool = spool.display(),
            data = data.display(),
            log = log.display(),
        );
        support::files::write(&etc.join("main.cf"), main);
        let mut master = String::new();
        for line in [
            "pickup    unix  n       -       n       60      1       pickup",
            "cleanup   unix  n       -       n       -       0       cleanup",
            "qmgr      unix  n       -       n       300     1       qmgr",
            "rewrite   unix  -       -       n       -       -       trivial-rewrite",
            "bounce    unix  -       -       n       -       0       bounce",
            "defer     unix  -       -       n       -       0       bounce",
            "trace     unix  -       -       n       -       0       bounce",
            "verify    unix  -       -       n       -       1       verify",
            "flush     unix  n       -       n       1000?   0       flush",
            "proxymap  unix  -       -       n       -       -       proxymap",
            "showq     unix  n       -       n       -       -       showq",
            "error     unix  -       -       n       -       -       error",
            "retry     unix  -       -       n       -       -       error",
            "discard   unix  -       -       n       -       -       discard",
            "anvil     unix  -       -       n       -       1       anvil",
            "scache    unix  -       -       n       -       1       scache",
            "postlog   unix-dgram n  -       n       -       1       postlogd",
        ] {
            master.push_str(line);
            master.push('\n');
        }
        for (port, milters) in listeners {
            master.push_str(&format!(
                "127.0.0.1:{port} inet n - n - 100 smtpd\n  -o syslog_name=postfix/{port}\n  -o {{ smtpd_milters = {milters} }}\n"
            ));
        }
        support::files::write(&etc.join("master.cf"), master);
        support::process::run_ok(
            Command::new("postfix").arg("-c").arg(&etc).arg("start"),
            None,
        );
        for (port, _) in listeners {
            support::net::wait_for_port("a load smtpd", *port, Duration::from_secs(20));
        }
        LoadPostfix { etc, spool }
    }

    fn drain(&self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            let out = run(
                Command::new("postqueue").arg("-c").arg(&self.etc).arg("-p"),
                None,
            );
            if String::from_utf8_lossy(&out.stdout).contains("Mail queue is empty") {
                return;
            }
            thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for LoadPostfix {
    fn drop(&mut self) {
        let pid = std::fs::read_to_string(self.spool.join("pid/master.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok());
        let _ = run(
            Command::new("postfix").arg("-c").arg(&self.etc).arg("stop"),
            None,
        );
        if let Some(pid) = pid {
            support::process::terminate_pid(pid, Duration::from_secs(5));
        }
    }
}

/// `n` distinct posts by `alice` to `LIST` (signed and encrypted in-process with Sequoia, so
/// that making thousands takes seconds): each a fresh signature, so never a replay.
fn load_posts(
    alice: &sequoia_openpgp::Cert,
    list: &sequoia_openpgp::Cert,
    n: usize,
    body_bytes: usize,
) -> Vec<Vec<u8>> {
    use openpgp::policy::StandardPolicy;
    use openpgp::serialize::stream::{
        Armorer, Encryptor, LiteralWriter, Message, Recipient, Signer,
    };
    use openpgp::types::Features;
    use sequoia_openpgp as openpgp;
    use std::io::Write;
    let p = StandardPolicy::new();
    let keys: Vec<_> = list
        .keys()
        .with_policy(&p, None)
        .supported()
        .alive()
        .revoked(false)
        .for_transport_encryption()
        .map(|ka| ka.key().clone())
        .collect();
    let signing = alice
        .keys()
        .with_policy(&p, None)
        .secret()
        .for_signing()
        .next()
        .expect("alice's signing key")
        .key()
        .clone();
    let indices: Vec<usize> = (0..n).collect();
    par_map(&indices, 2, |&i| {
        let recipients: Vec<Recipient> = keys
            .iter()
            .map(|k| Recipient::new(Features::empty().set_seipdv1(), k.key_handle(), k))
            .collect();
        let mut sink = Vec::new();
        let message = Message::new(&mut sink);
        let message = Armorer::new(message)
            .kind(openpgp::armor::Kind::Message)
            .build()
            .unwrap();
        let message = Encryptor::for_recipients(message, recipients)
            .build()
            .unwrap();
        let keypair = signing.clone().into_keypair().unwrap();
        let message = Signer::new(message, keypair).unwrap().build().unwrap();
        let mut w = LiteralWriter::new(message).build().unwrap();
        let text = inner_text(&body(i, 0x10ad, body_bytes, &format!("load post {i}")));
        w.write_all(text.as_bytes()).unwrap();
        w.finalize().unwrap();
        let id = format!("<load-{i}@example.net>");
        mime::pgp_mime_encrypted(
            &[
                ("From", "Alice <alice@example.net>"),
                ("To", LIST),
                ("Subject", "load"),
                ("Message-ID", id.as_str()),
                ("Date", "Sun, 06 Dec 2026 12:00:00 +0000"),
            ],
            &String::from_utf8(sink).unwrap(),
            "load-boundary",
        )
    })
}

/// One timed phase: `sessions` concurrent SMTP sessions (one message each, then the next
/// session) to `port` for `length`; `distinct` posts are never sent twice.
struct Phase {
    accepted: usize,
    refused: usize,
    seconds: f64,
    eom: Vec<Duration>,
    ran_out: bool,
    first_refusal: Option<String>,
}

fn load_phase(
    port: u16,
    posts: &[Vec<u8>],
    distinct: bool,
    sessions: usize,
    length: Duration,
) -> Phase {
    let next = AtomicUsize::new(0);
    let result = Mutex::new(Phase {
        accepted: 0,
        refused: 0,
        seconds: 0.0,
        eom: Vec::new(),
        ran_out: false,
        first_refusal: None,
    });
    let started = Instant::now();
    thread::scope(|s| {
        for _ in 0..sessions {
            s.spawn(|| {
                while started.elapsed() < length {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if distinct && i >= posts.len() {
                        lock(&result).ran_out = true;
                        return;
                    }
                    let post = &posts[i % posts.len()];
                    let (d, eom) = smtp::send_timed(port, "alice@example.net", &[LIST], post);
                    let mut r = lock(&result);
                    if d.accepted() {
                        r.accepted += 1;
                        r.eom.extend(eom);
                    } else {
                        r.refused += 1;
                        if r.first_refusal.is_none() {
                            r.first_refusal = Some(d.to_string());
                        }
                    }
                }
            });
        }
    });
    let mut r = result.into_inner().unwrap();
    r.seconds = started.elapsed().as_secs_f64();
    r.eom.sort();
    r
}

/// The inbound accept rate under load (issue 13): `LOAD_SESSIONS` (50) concurrent SMTP
/// sessions for `LOAD_SECONDS` (30) each against one Postfix with three smtpd listeners —
/// no milter, a no-op milter, listcrypt's inbound milter — in the same run; then the ratios,
/// p99 end-of-message latency and listcrypt's peak RSS. Figures only, never asserted.
/// `contrib/campaign/load` runs it.
#[test]
#[ignore = "a benchmark: contrib/campaign/load runs it"]
fn load_inbound_side() {
    use openpgp::parse::Parse;
    use openpgp::serialize::Serialize;
    use sequoia_openpgp as openpgp;
    support::environment::require_environment(&["postfix", "postconf", "postqueue"]);
    let sessions: usize = setting("LOAD_SESSIONS", 50);
    let length = Duration::from_secs(setting("LOAD_SECONDS", 30));
    let body_bytes: usize = setting("LOAD_BODY_BYTES", 10 * 1024);
    let n_posts: usize = setting("LOAD_POSTS", 4000);
    let dir = tempfile::Builder::new()
        .prefix("listcrypt-load.")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let base = dir.path().to_path_buf();
    make_searchable(&base);
    let socket_dir = mkdir(&base.join("run"), 0o755);
    let mut listcrypt = Listcrypt::configure(&base.join("listcrypt"), &socket_dir, 9);
    listcrypt.cli(&["list", "create", LIST]);
    let list_cert = openpgp::Cert::from_bytes(&listcrypt.cli(&["list", "export-key", LIST]).stdout)
        .expect("the list's key");
    let (alice, _) = openpgp::cert::CertBuilder::general_purpose(Some("Alice <alice@example.net>"))
        .generate()
        .expect("alice's key");
    let mut armored = Vec::new();
    alice.armored().serialize(&mut armored).unwrap();
    support::files::write(&base.join("alice.asc"), &armored);
    listcrypt.cli(&[
        "member",
        "add",
        LIST,
        "alice@example.net",
        &base.join("alice.asc").display().to_string(),
    ]);
    // Only warnings: a line per message at this rate would measure the log.
    let cfg = support::files::read_lossy(&listcrypt.config)
        .replace("log_level = \"info\"", "log_level = \"warn\"");
    support::files::write(&listcrypt.config, cfg);
    let t = Instant::now();
    let posts = load_posts(&alice, &list_cert, n_posts, body_bytes);
    let size = posts.iter().map(Vec::len).sum::<usize>() / posts.len();
    eprintln!(
        "load: {n_posts} distinct posts of {size} bytes made in {:?}",
        t.elapsed()
    );
    listcrypt.serve();
    let noop = FlakyMilter::start(0.0, 0);
    let [plain, with_noop, with_listcrypt] = free_ports();
    let postfix = LoadPostfix::start(
        &base.join("postfix"),
        &[
            (plain, String::new()),
            (with_noop, noop.address.clone()),
            (
                with_listcrypt,
                format!("unix:{}", listcrypt.inbound_socket.display()),
            ),
        ],
    );
    // Warm-up, not counted (the no-op and no-milter listeners may re-send the same posts).
    let _ = load_phase(plain, &posts[..50], false, 10, Duration::from_secs(2));
    let _ = load_phase(with_noop, &posts[..50], false, 10, Duration::from_secs(2));
    postfix.drain();
    let mut phases = Vec::new();
    for (name, port, distinct) in [
        ("no milter", plain, false),
        ("no-op milter", with_noop, false),
        ("listcrypt", with_listcrypt, true),
        ("no milter (again)", plain, false),
    ] {
        let pool = if distinct { &posts[..] } else { &posts[50..] };
        let r = load_phase(port, pool, distinct, sessions, length);
        postfix.drain();
        eprintln!(
            "load: {name:<18} {} accepted, {} refused in {:.1} s{}{}",
            r.accepted,
            r.refused,
            r.seconds,
            if r.ran_out {
                " (ran out of distinct posts: raise LOAD_POSTS)"
            } else {
                ""
            },
            r.first_refusal
                .as_deref()
                .map(|d| format!("; first refusal:\n{d}"))
                .unwrap_or_default()
        );
        phases.push((name, r));
    }
    let rss_kib = listcrypt.peak_rss_kib().unwrap_or(0);
    let rate = |r: &Phase| r.accepted as f64 / r.seconds;
    let base_rate = (rate(&phases[0].1) + rate(&phases[3].1)) / 2.0;
    eprintln!(
        "\nload report: {sessions} concurrent sessions, {}s per listener, posts of {size} bytes, one message per session, nproc {}",
        length.as_secs(),
        thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    eprintln!("| listener | accepted/s | ratio to no milter | ratio to no-op milter | EOM p50 | EOM p99 |");
    eprintln!("|---|---|---|---|---|---|");
    for (name, r) in &phases {
        eprintln!(
            "| {name} | {:.1} | {:.2} | {:.2} | {:.1?} | {:.1?} |",
            rate(r),
            rate(r) / base_rate,
            rate(r) / rate(&phases[1].1),
            percentile(&r.eom, 0.5),
            percentile(&r.eom, 0.99)
        );
    }
    let workers = thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as f64;
    let goal_mib = 64.0 + 3.0 * size as f64 * sessions as f64 / 1048576.0 + 2.0 * workers;
    eprintln!(
        "listcrypt peak RSS (VmHWM): {:.1} MiB; goal 64 MiB + 3 x {size} B x {sessions} + 2 MiB x {workers} workers = {goal_mib:.1} MiB (ratio {:.2})",
        rss_kib as f64 / 1024.0,
        rss_kib as f64 / 1024.0 / goal_mib
    );
    listcrypt.stop();
    drop(postfix);
    drop(noop);
}

/// The in-doubt line as listcrypt writes it (`QID: LIST: reinjection in doubt for message-id
/// <ID>: N recipient(s) may get a second copy; resending`), after the log's own prefix.
#[test]
fn the_ledger_sums_in_doubt_recipients_per_message_id() {
    let log = "\
2026-12-06T20:00:00Z  INFO listcrypt: 4F1A2B: l@x: reinjection in doubt for message-id <a@x>: 5 recipient(s) may get a second copy; resending
2026-12-06T20:00:01Z  INFO listcrypt: 4F1A2B: l@x: batch queued as 77AB; reinjected
2026-12-06T20:00:02Z  INFO listcrypt: 9C0D11: l@x: reinjection in doubt for message-id <a@x>: 2 recipient(s) may get a second copy; resending
2026-12-06T20:00:03Z  INFO listcrypt: 9C0D12: l@x: reinjection in doubt for message-id <b@x>: 1 recipient(s) may get a second copy; resending
2026-12-06T20:00:04Z  INFO listcrypt: 9C0D13: l@x: reinjection in doubt for message-id b@x: 1 recipient(s) may get a second copy; resending
";
    let d = read_doubts(log);
    assert_eq!(d.batches, 3);
    assert_eq!(d.recipients.get("<a@x>"), Some(&7));
    assert_eq!(d.recipients.get("<b@x>"), Some(&1));
    assert_eq!(d.unreadable.len(), 1, "an id without <> is not the format");
}
