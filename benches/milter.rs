//! The daemon's outbound end of message, measured through the milter protocol
//! (`cargo bench --bench milter`): a client speaking milter to the real daemon over a unix
//! socket sends Mailman's copy of a 100 KiB post from `LIST-bounces@` to 10 / 100 / 1000
//! X25519 members (certificates already loaded), and times RCPTs and end of message until
//! the encrypted body is back. With the default `batch_size` (50) the extra batches go to a
//! reinjection listener (an SMTP sink in this process), as in production; with `batch_size`
//! 1000 everything is one batch. Timings are printed, never asserted. Under `cargo test` (no
//! `--bench` argument) it runs once with 10 members, as a smoke test.
//!
//! Also printed: the process's CPU time per message (all threads, from /proc/self/stat) and
//! how many PKESKs took the fast X25519 path or sequoia's own. Environment:
//! `LISTCRYPT_BENCH_SECS` (budget per case, default 3), `LISTCRYPT_BENCH_EXPORT=DIR` writes
//! the members' certificates there (`mN.pgp`) so that contrib/bench/outbound-limit.sh can time
//! `gpg` on the same keys. `LISTCRYPT_BENCH_ONLY=BATCH_SIZE:MEMBERS` (e.g. `1000:100`) runs
//! that one case, without the no-op milter beside it: for profiling.
//!
//! `LISTCRYPT_BENCH_MAILMAN=10,100,1000,10000` prints only the growth table (issue 14 item 5)
//! as Mailman sends a post: transactions of at most 500 recipients (Mailman's `max_recipients`
//! default, within Postfix's `smtpd_recipient_limit` of 1000) one after the other, the
//! default `batch_size` (extra batches reinjected into the sink), repeated up to 10,000
//! recipients. Per member count: wall time of all transactions of one post, CPU per recipient
//! (the whole process: daemon, milter client, sink),
//! and the peak RSS above the resident size before the message (the kernel's peak reset).

use indymilter_test::{Actions, ProtoOpts, Status, TestConnection};
use listcrypt::config::{Config, SocketSpec};
use listcrypt::keys::{add_member, create_list_key, RecipientKeyId};
use listcrypt::store::{Role, SqliteStore};
use sequoia_openpgp::cert::prelude::*;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

const LIST: &str = "enc@lists.example.test";
const POST_BYTES: usize = 100 * 1024;

/// An SMTP sink that accepts every transaction and counts them.
fn sink() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut w = conn.try_clone().unwrap();
                let mut r = BufReader::new(conn);
                let _ = w.write_all(b"220 sink\r\n");
                let mut line = String::new();
                let mut in_data = false;
                while r.read_line(&mut line).unwrap_or(0) > 0 {
                    let reply: Option<&[u8]> = if in_data {
                        if line == ".\r\n" {
                            in_data = false;
                            Some(b"250 2.0.0 Ok: queued as SINK\r\n")
                        } else {
                            None
                        }
                    } else if line.starts_with("DATA") {
                        in_data = true;
                        Some(b"354 go\r\n")
                    } else if line.starts_with("QUIT") {
                        let _ = w.write_all(b"221 bye\r\n");
                        break;
                    } else {
                        Some(b"250 ok\r\n")
                    };
                    if let Some(reply) = reply {
                        let _ = w.write_all(reply);
                    }
                    line.clear();
                }
            });
        }
    });
    port
}

/// The post's header fields and body.
type Post = (Vec<(String, String)>, Vec<u8>);

fn post() -> Post {
    let headers = vec![
        ("From".to_string(), " Alice <alice@example.net>".to_string()),
        ("To".to_string(), format!(" {LIST}")),
        ("Subject".to_string(), " [Enc] benchmark".to_string()),
        ("Message-ID".to_string(), " <bench@example.net>".to_string()),
        ("MIME-Version".to_string(), " 1.0".to_string()),
        (
            "Content-Type".to_string(),
            " text/plain; charset=utf-8".to_string(),
        ),
    ];
    let line = "The quick brown fox jumps over the lazy dog, 0123456789 abcdefghij.\r\n";
    let mut body = Vec::with_capacity(POST_BYTES + line.len());
    while body.len() < POST_BYTES {
        body.extend_from_slice(line.as_bytes());
    }
    (headers, body)
}

/// CPU time this process used so far, all threads (utime + stime, in USER_HZ = 100 ticks).
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// A milter that answers Continue at every stage listcrypt's listeners take, holding nothing.
fn noop_callbacks() -> indymilter::Callbacks<()> {
    use indymilter::Status;
    indymilter::Callbacks::new()
        .on_connect(|_, _, _| Box::pin(async { Status::Continue }))
        .on_mail(|_, _| Box::pin(async { Status::Continue }))
        .on_rcpt(|_, _| Box::pin(async { Status::Continue }))
        .on_data(|_| Box::pin(async { Status::Continue }))
        .on_header(|_, _, _| Box::pin(async { Status::Continue }))
        .on_eoh(|_| Box::pin(async { Status::Continue }))
        .on_body(|_, _| Box::pin(async { Status::Continue }))
        .on_eom(|_| Box::pin(async { Status::Continue }))
}

/// Each message's phases, for the per-phase medians: MAIL to DATA (the envelope, one round
/// trip per recipient), header and body, end of message.
static PHASES: std::sync::Mutex<Vec<[Duration; 3]>> = std::sync::Mutex::new(Vec::new());

/// The medians of the phases recorded since the last call, in ms.
fn phase_medians() -> [f64; 3] {
    let mut all = std::mem::take(&mut *PHASES.lock().unwrap());
    let mut out = [0.0; 3];
    for (i, o) in out.iter_mut().enumerate() {
        all.sort_by_key(|p| p[i]);
        *o = all
            .get(all.len() / 2)
            .map_or(0.0, |p| p[i].as_secs_f64() * 1e3);
    }
    out
}

async fn one_message(
    socket: &std::path::Path,
    members: &[String],
    headers: &[(String, String)],
    body: &[u8],
) -> Duration {
    let mut conn = TestConnection::configure()
        .read_timeout(Duration::from_secs(120))
        .write_timeout(Duration::from_secs(120))
        .available_actions(Actions::all())
        .available_opts(ProtoOpts::all())
        .exact_leading_space(true)
        .open_unix(socket)
        .await
        .unwrap();
    conn.connect("localhost", [127, 0, 0, 1]).await.unwrap();
    let start = Instant::now();
    assert_eq!(
        conn.mail(["<enc-bounces@lists.example.test>"])
            .await
            .unwrap(),
        Status::Continue
    );
    for m in members {
        assert_eq!(
            conn.rcpt([format!("<{m}>")]).await.unwrap(),
            Status::Continue
        );
    }
    conn.data().await.unwrap();
    let envelope = start.elapsed();
    // A new post each time (Mailman's distinct posts): the journal must not skip recipients.
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    for (n, v) in headers {
        let v = if n == "Message-ID" {
            format!(" <bench-{seq}@example.net>")
        } else {
            v.clone()
        };
        conn.header(n.as_str(), v.as_str()).await.unwrap();
    }
    if !conn.negotiated_opts().contains(ProtoOpts::NO_EOH) {
        conn.eoh().await.unwrap();
    }
    for chunk in body.chunks(65_535) {
        conn.body(chunk.to_vec()).await.unwrap();
    }
    let content = start.elapsed();
    let (_, status) = conn.eom().await.unwrap();
    let took = start.elapsed();
    PHASES
        .lock()
        .unwrap()
        .push([envelope, content - envelope, took - content]);
    assert!(
        matches!(status, Status::Continue | Status::Accept),
        "{status:?}"
    );
    conn.close().await.unwrap();
    took
}

/// `LISTCRYPT_BENCH_COLD_START=DIR` (contrib/bench/cold-start.sh): the first run sets DIR up
/// (1000 members, batch_size 1000, their certificates in DIR/certs) and stops; every later
/// run is a fresh process that starts the daemon on DIR and times its first outbound message
/// and warm ones. `LISTCRYPT_BENCH_DROP_CACHE=1` empties the certificate cache first.
fn cold_start(dir: &std::path::Path, drop_cache: bool) {
    let config_path = dir.join("c.toml");
    if !config_path.exists() {
        return cold_start_setup(dir);
    }
    let config = Config::load(Some(&config_path)).unwrap();
    let members: Vec<String> = (0..1000).map(|i| format!("m{i}@example.net")).collect();
    if drop_cache {
        let db = rusqlite::Connection::open(config.state_dir.join("state.sqlite")).unwrap();
        db.execute("DELETE FROM cert_cache", []).unwrap();
    }
    let (headers, body) = post();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let start = Instant::now();
    let daemon = Arc::new(listcrypt::Daemon::open(config.clone(), None).unwrap());
    let opened = start.elapsed();
    runtime.block_on(async {
        let socket = dir.join("out.sock");
        let _ = std::fs::remove_file(&socket);
        let _ = std::fs::remove_file(dir.join("in.sock"));
        let running = Running::start(dir, daemon).await;
        let first = one_message(&socket, &members, &headers, &body).await;
        let mut warm = Vec::new();
        for _ in 0..9 {
            warm.push(one_message(&socket, &members, &headers, &body).await);
        }
        warm.sort();
        let warm = warm[warm.len() / 2];
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "cold-start cache={} open_ms={:.1} first_ms={:.1} warm_median_ms={:.1} first/warm={:.2}",
            if drop_cache { "empty" } else { "kept" },
            ms(opened),
            ms(first),
            ms(warm),
            first.as_secs_f64() / warm.as_secs_f64()
        );
        running.stop().await;
    });
}

fn cold_start_setup(dir: &std::path::Path) {
    let sink_port = sink();
    let config_text = format!(
        "inbound_socket = \"unix:{r}/in.sock\"\noutbound_socket = \"unix:{r}/out.sock\"\n\
         reinject_smtp = \"127.0.0.1:{sink_port}\"\npolicy_dir = \"{r}/lists.d\"\n\
         keyring_dir = \"{r}/keyrings\"\nstate_dir = \"{r}/state\"\nlog = \"stderr\"\nlog_level = \"warn\"\n",
        r = dir.display()
    );
    std::fs::write(dir.join("c.toml"), &config_text).unwrap();
    let config = Config::load(Some(&dir.join("c.toml"))).unwrap();
    create_list_key(&config.keyring_dir, LIST).unwrap();
    std::fs::create_dir_all(&config.policy_dir).unwrap();
    std::fs::create_dir_all(dir.join("certs")).unwrap();
    let text = listcrypt::config::Policy::default_file_text(LIST)
        .replace("batch_size = 50", "batch_size = 1000");
    std::fs::write(config.policy_path(LIST), text).unwrap();
    let store = SqliteStore::open(&config.state_dir).unwrap();
    add_members(&config, &store, 1000, Some(&dir.join("certs")));
    println!("cold-start setup: 1000 members in {}", dir.display());
}

/// Binds `count` fresh Cv25519 members `m{i}@example.net` to LIST (their certificates also
/// written to `export/m{i}.pgp` if given); returns their addresses.
fn add_members(
    config: &Config,
    store: &SqliteStore,
    count: usize,
    export: Option<&std::path::Path>,
) -> Vec<String> {
    use sequoia_openpgp::serialize::Serialize;
    let mut members = Vec::with_capacity(count);
    for i in 0..count {
        let address = format!("m{i}@example.net");
        let (cert, _) = CertBuilder::new()
            .set_cipher_suite(CipherSuite::Cv25519)
            .add_userid(format!("<{address}>"))
            .add_transport_encryption_subkey()
            .generate()
            .unwrap();
        add_member(
            config,
            store,
            LIST,
            &address,
            &cert,
            Role::Member,
            RecipientKeyId::Hidden,
        )
        .unwrap();
        if let Some(dir) = export {
            let mut f = std::fs::File::create(dir.join(format!("m{i}.pgp"))).unwrap();
            cert.serialize(&mut f).unwrap();
        }
        members.push(address);
    }
    members
}

/// A `/proc/self/status` field in KiB (VmRSS, VmHWM).
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap_or(0)
}

/// Mailman's `max_recipients` default: one post reaches the MTA in transactions this large.
const MAX_RECIPIENTS: usize = 500;

/// The daemon serving `ROOT/in.sock` and `ROOT/out.sock` until stopped.
struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    async fn start(root: &std::path::Path, daemon: Arc<listcrypt::Daemon>) -> Running {
        let bind = |name: &str| SocketSpec::Unix(root.join(name));
        let inbound = listcrypt::bind(&bind("in.sock"), 0o600, None)
            .await
            .unwrap();
        let outbound = listcrypt::bind(&bind("out.sock"), 0o600, None)
            .await
            .unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(listcrypt::run(inbound, outbound, daemon, async move {
            let _ = stopped.await;
        }));
        Running { stop, task }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// The growth table through the milter: one warm post per member count, as Mailman sends it.
async fn growth(
    root: &std::path::Path,
    daemon: Arc<listcrypt::Daemon>,
    sizes: &[usize],
    members: &[String],
    headers: &[(String, String)],
    body: &[u8],
) {
    let running = Running::start(root, daemon).await;
    let socket = root.join("out.sock");
    println!(
        "| members | transactions | time | CPU/recipient | peak RSS above start | RSS at start |"
    );
    println!("|---|---|---|---|---|---|");
    for &n in sizes {
        let post = |socket: std::path::PathBuf| async move {
            for chunk in members[..n].chunks(MAX_RECIPIENTS) {
                one_message(&socket, chunk, headers, body).await;
            }
        };
        // Warm-up: each member's keys validated once per keyring snapshot, as in production.
        post(socket.clone()).await;
        // Resets the kernel's peak RSS (VmHWM) to the current RSS (proc(5), clear_refs 5).
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        // Small lists repeat the post: 10,000 recipients in all, for the 10 ms CPU clock.
        let reps = (10_000 / n.max(1)).max(1);
        let (rss, cpu, t) = (status_kib("VmRSS"), cpu_time(), Instant::now());
        for _ in 0..reps {
            post(socket.clone()).await;
        }
        let took = t.elapsed() / reps as u32;
        let used = cpu_time().zip(cpu).map_or(Duration::ZERO, |(b, a)| b - a);
        let peak = status_kib("VmHWM").saturating_sub(rss);
        println!(
            "| {n} | {} | {:.1} ms | {:.1} us | {:.1} MiB | {:.1} MiB |",
            n.div_ceil(MAX_RECIPIENTS),
            took.as_secs_f64() * 1e3,
            used.as_secs_f64() * 1e6 / (n * reps) as f64,
            peak as f64 / 1024.0,
            rss as f64 / 1024.0
        );
    }
    println!("(MAIL to end of message of every transaction of one post in turn; batch_size 50, extra batches reinjected into a local sink; CPU over 10,000 recipients)");
    running.stop().await;
}

/// The bench's environment (`LISTCRYPT_BENCH_*`), removed once read: `Config::load` would
/// take every other `LISTCRYPT_*` variable for a configuration key.
struct Args {
    /// `cargo test --all-targets` runs this once, without `--bench`, as a smoke test.
    smoke: bool,
    secs: f64,
    export: Option<std::ffi::OsString>,
    /// `LISTCRYPT_BENCH_MAILMAN`: the growth table's member counts.
    sizes: Vec<usize>,
    /// `LISTCRYPT_BENCH_ONLY=BATCH_SIZE:MEMBERS`.
    only: Option<(u32, usize)>,
}

impl Args {
    fn from_env() -> Args {
        let args = Args {
            smoke: !std::env::args().any(|a| a == "--bench"),
            secs: std::env::var("LISTCRYPT_BENCH_SECS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(3.0),
            export: std::env::var_os("LISTCRYPT_BENCH_EXPORT"),
            sizes: std::env::var("LISTCRYPT_BENCH_MAILMAN")
                .iter()
                .flat_map(|s| s.split(','))
                .filter_map(|s| s.trim().parse().ok())
                .collect(),
            only: std::env::var("LISTCRYPT_BENCH_ONLY").ok().map(|s| {
                s.split_once(':')
                    .and_then(|(b, n)| Some((b.parse().ok()?, n.parse().ok()?)))
                    .expect("LISTCRYPT_BENCH_ONLY=BATCH_SIZE:MEMBERS")
            }),
        };
        for k in [
            "LISTCRYPT_BENCH_SECS",
            "LISTCRYPT_BENCH_EXPORT",
            "LISTCRYPT_BENCH_MAILMAN",
            "LISTCRYPT_BENCH_ONLY",
        ] {
            std::env::remove_var(k);
        }
        args
    }

    fn runs(&self, batch_size: u32, members: usize) -> bool {
        self.only
            .is_none_or(|(b, n)| b == batch_size && n == members)
    }
}

fn main() {
    if let Some(dir) = std::env::var_os("LISTCRYPT_BENCH_COLD_START") {
        let drop_cache = std::env::var_os("LISTCRYPT_BENCH_DROP_CACHE").is_some();
        // Config::load takes every other LISTCRYPT_* variable for a configuration key.
        std::env::remove_var("LISTCRYPT_BENCH_COLD_START");
        std::env::remove_var("LISTCRYPT_BENCH_DROP_CACHE");
        return cold_start(std::path::Path::new(&dir), drop_cache);
    }
    let args = Args::from_env();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let sink_port = sink();
    let config_text = format!(
        "inbound_socket = \"unix:{r}/in.sock\"\noutbound_socket = \"unix:{r}/out.sock\"\n\
         reinject_smtp = \"127.0.0.1:{sink_port}\"\npolicy_dir = \"{r}/lists.d\"\n\
         keyring_dir = \"{r}/keyrings\"\nstate_dir = \"{r}/state\"\nlog = \"stderr\"\nlog_level = \"warn\"\n",
        r = root.display()
    );
    std::fs::write(root.join("c.toml"), &config_text).unwrap();
    // The benchmark's own LISTCRYPT_* overrides would change the numbers: ignore them.
    let config = Config::load(Some(&root.join("c.toml"))).unwrap();
    create_list_key(&config.keyring_dir, LIST).unwrap();
    std::fs::create_dir_all(&config.policy_dir).unwrap();
    let policy_path = config.policy_path(LIST);
    let store = SqliteStore::open(&config.state_dir).unwrap();
    let t = Instant::now();
    let count = match args.sizes.iter().max() {
        Some(&most) => most,
        None if args.smoke => 10,
        None => 1000,
    };
    std::fs::write(
        &policy_path,
        listcrypt::config::Policy::default_file_text(LIST),
    )
    .unwrap();
    let members = add_members(
        &config,
        &store,
        count,
        args.export.as_deref().map(std::path::Path::new),
    );
    println!("listcrypt milter bench: outbound end of message, 100 KiB post, X25519 members, unix socket, {} cores", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    println!(
        "setup: {count} members generated and bound in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let post = post();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if !args.sizes.is_empty() {
        let daemon = Arc::new(listcrypt::Daemon::open(config.clone(), None).unwrap());
        let (headers, body) = &post;
        return runtime.block_on(growth(root, daemon, &args.sizes, &members, headers, body));
    }
    for batch_size in [50u32, 1000] {
        if !MEMBER_COUNTS.iter().any(|&n| args.runs(batch_size, n)) {
            continue;
        }
        let text = listcrypt::config::Policy::default_file_text(LIST)
            .replace("batch_size = 50", &format!("batch_size = {batch_size}"));
        std::fs::write(&policy_path, text).unwrap();
        let daemon = Arc::new(listcrypt::Daemon::open(config.clone(), None).unwrap());
        runtime.block_on(serve_and_time(
            root, daemon, batch_size, &members, &post, &args,
        ));
    }
    println!("(MAIL + RCPTs + header + body + end of message, as the MTA would see it; includes SMTP reinjection of extra batches to a local sink)");
    let (fast, sequoia) = listcrypt::pgp::pkesk_paths();
    println!("PKESKs made: {fast} on the fast X25519 path, {sequoia} on sequoia's own path");
    println!(
        "of the fast ones, {} from key encapsulations made during the envelope",
        listcrypt::pgp::pkesks_ahead()
    );
}

/// The member counts timed at each batch size.
const MEMBER_COUNTS: [usize; 3] = [10, 100, 1000];

/// Runs the daemon (and, beside it, the no-op milter) under ROOT and times 10, 100 and 1000
/// members at `batch_size`.
async fn serve_and_time(
    root: &std::path::Path,
    daemon: Arc<listcrypt::Daemon>,
    batch_size: u32,
    members: &[String],
    post: &Post,
    args: &Args,
) {
    let running = Running::start(root, daemon).await;
    // The milter protocol's own cost in this run: a milter that answers Continue to
    // everything (examples/noop_milter.rs's callbacks), driven by the same client.
    let noop = root.join("noop.sock");
    let _ = std::fs::remove_file(&noop);
    let (noop_tx, noop_rx) = tokio::sync::oneshot::channel::<()>();
    let noop_task = tokio::spawn(indymilter::run(
        tokio::net::UnixListener::bind(&noop).unwrap(),
        noop_callbacks(),
        Default::default(),
        async move {
            let _ = noop_rx.await;
        },
    ));
    for n in MEMBER_COUNTS
        .into_iter()
        .filter(|&n| n <= members.len() && args.runs(batch_size, n))
    {
        let rcpts = &members[..n];
        time_listcrypt(&root.join("out.sock"), batch_size, rcpts, post, args).await;
        if batch_size == 1000 && args.only.is_none() {
            time_noop(&noop, rcpts, post, args).await;
        }
    }
    let _ = noop_tx.send(());
    let _ = noop_task.await;
    running.stop().await;
}

/// Warm-up, then as many messages as fit the budget (at least 3, at most 200): one line.
async fn time_listcrypt(
    socket: &std::path::Path,
    batch_size: u32,
    rcpts: &[String],
    (headers, body): &Post,
    args: &Args,
) {
    let n = rcpts.len();
    one_message(socket, rcpts, headers, body).await;
    let mut times = Vec::new();
    phase_medians();
    let (fast0, ahead0) = (
        listcrypt::pgp::pkesk_paths().0,
        listcrypt::pgp::pkesks_ahead(),
    );
    let budget = Instant::now();
    let cpu_start = cpu_time();
    while times.len() < 3 || (!args.smoke && budget.elapsed().as_secs_f64() < args.secs) {
        times.push(one_message(socket, rcpts, headers, body).await);
        if times.len() >= 200 {
            break;
        }
    }
    let cpu = match (cpu_start, cpu_time()) {
        (Some(a), Some(b)) => format!(
            "  cpu {:>8.3} ms/message",
            (b - a).as_secs_f64() * 1e3 / times.len() as f64
        ),
        _ => String::new(),
    };
    times.sort();
    let median = times[times.len() / 2];
    let [envelope, content, eom] = phase_medians();
    let fast = listcrypt::pgp::pkesk_paths().0 - fast0;
    let ahead = listcrypt::pgp::pkesks_ahead() - ahead0;
    let ahead = 100.0 * ahead as f64 / fast.max(1) as f64;
    println!(
        "batch_size {batch_size:>4}  {n:>4} members: median {:>9.3} ms  min {:>9.3}  max {:>9.3}  n={:<4} {:>6.1} us/member{cpu}  phases: envelope {envelope:.3} content {content:.3} eom {eom:.3} ms  made ahead {ahead:.0}%",
        median.as_secs_f64() * 1e3,
        times[0].as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3,
        times.len(),
        median.as_secs_f64() * 1e6 / n as f64
    );
}

/// The same client against the no-op milter (50 messages): one line.
async fn time_noop(
    socket: &std::path::Path,
    rcpts: &[String],
    (headers, body): &Post,
    args: &Args,
) {
    let mut times = Vec::new();
    phase_medians();
    while times.len() < 3 || (!args.smoke && times.len() < 50) {
        times.push(one_message(socket, rcpts, headers, body).await);
    }
    times.sort();
    let [envelope, content, eom] = phase_medians();
    println!(
        "no-op milter     {:>4} members: median {:>9.3} ms  phases: envelope {envelope:.3} content {content:.3} eom {eom:.3} ms",
        rcpts.len(),
        times[times.len() / 2].as_secs_f64() * 1e3
    );
}
