//! In-process pipeline benchmarks (`cargo bench --bench pipeline`).
//!
//! Plain `std::time`: each case gets a warm-up, then a number of iterations sized to a time
//! budget, and the median is printed with min/max. Timings are printed, never asserted.
//!
//! * outbound: `listcrypt::outbound::encrypt_message` of a 100 KiB post to 10 / 100 / 1000
//!   X25519 members (one batch, wildcard key ids, list-signed, armored), and the daemon's
//!   path for 1000 members: `plan_batches` (default batch_size) + `encrypt_batches` (all cores);
//! * inbound: `listcrypt::inbound::process` (MIME classify, decrypt, verify, rewrite) of
//!   100 KiB and 10 KiB posts signed by a member and encrypted to the list key, each measured
//!   post a new one (sequoia caches verified signatures process-wide);
//! * components, to show where the outbound time goes: validating the recipients'
//!   certificates (done per message), bare PKESK generation by sequoia's own path, and
//!   listcrypt's PKESKs (the fast X25519 path); the counts of PKESKs on each path are printed.
//!
//! Members are v4 certificates generated once, in-process (Ed25519 primary for certify+sign,
//! Cv25519 subkey for transport+storage encryption, user ID `<mN@example.net>`), i.e. the shape
//! of `gpg --quick-gen-key … ed25519 sign` + `--quick-add-key … cv25519 encr`. They advertise
//! SEIPDv1 only, as GnuPG 2.2 keys do, so the batch is SEIPDv1 like in production; one extra
//! case shows SEIPDv2 (sequoia's default features) for reference.
//!
//! Environment: `LISTCRYPT_BENCH_SECS` = measuring budget per case in seconds (default 1.5).
//! `LISTCRYPT_BENCH_GROWTH=10,100,1000,10000` prints only the growth table (issue 14 item 5):
//! per member count, the daemon's path (`plan_batches` with the default batch_size, then
//! `encrypt_batches` on all cores) warm, repeated up to 10,000 recipients: wall time per
//! message, CPU per recipient (all threads), and
//! the peak RSS above the resident size before the run (the kernel's peak is reset first).

use listcrypt::config::{Limits, Policy};
use listcrypt::inbound::{self, Envelope, Verdict};
use listcrypt::keys::{create_list_key, ListKeys, Member};
use listcrypt::outbound::{encrypt_batches, encrypt_message, plan_batches};
use listcrypt::store::Role;
use sequoia_openpgp as openpgp;
use sequoia_openpgp::packet::signature::cache::SignatureVerificationCache;

use openpgp::cert::prelude::*;
use openpgp::policy::StandardPolicy;
use openpgp::serialize::stream::{Armorer, Encryptor, LiteralWriter, Message, Recipient, Signer};
use openpgp::types::{Features, KeyFlags};
use openpgp::Cert;
use std::hint::black_box;
use std::io::Write;
use std::time::{Duration, Instant};

const LIST: &str = "enc@lists.example.test";
const POST_BYTES: usize = 100 * 1024;
const MAX_MEMBERS: usize = 1000;

static P: StandardPolicy<'static> = StandardPolicy::new();

struct Stats {
    median: Duration,
    min: Duration,
    max: Duration,
    n: usize,
}

/// Warm-up (at least 3 runs and 200 ms), then as many runs as fit the budget (11..=501, odd
/// so that the median is one sample).
fn measure<R>(budget: Duration, mut f: impl FnMut() -> R) -> Stats {
    let start = Instant::now();
    let mut warm = 0u32;
    while warm < 3 || start.elapsed() < Duration::from_millis(200) {
        black_box(f());
        warm += 1;
    }
    let estimate = start.elapsed() / warm;
    let n = (budget.as_nanos() / estimate.as_nanos().max(1)).clamp(11, 501) as usize | 1;
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        black_box(f());
        samples.push(t.elapsed());
    }
    samples.sort();
    Stats {
        median: samples[n / 2],
        min: samples[0],
        max: samples[n - 1],
        n,
    }
}

/// One run per input, each input once (the first three warm up): for work that must not
/// repeat on the same input.
fn measure_each<T, R>(inputs: &[T], mut f: impl FnMut(&T) -> R) -> Stats {
    assert!(inputs.len() >= 14, "too few inputs to measure");
    for input in &inputs[..3] {
        black_box(f(input));
    }
    let inputs = &inputs[3..];
    let n = (inputs.len() - 1) | 1;
    let mut samples: Vec<Duration> = inputs[..n]
        .iter()
        .map(|input| {
            let t = Instant::now();
            black_box(f(input));
            t.elapsed()
        })
        .collect();
    samples.sort();
    Stats {
        median: samples[n / 2],
        min: samples[0],
        max: samples[n - 1],
        n,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn report(name: &str, s: &Stats, extra: &str) {
    println!(
        "{name:<44} median {:>9.3} ms   min {:>9.3}   max {:>9.3}   n={:<4} {extra}",
        ms(s.median),
        ms(s.min),
        ms(s.max),
        s.n
    );
}

/// A member certificate shaped like GnuPG's `ed25519 sign` + `cv25519 encr`.
fn member_cert(i: usize, features: Features) -> Cert {
    let (cert, _rev) = CertBuilder::new()
        .set_cipher_suite(CipherSuite::Cv25519)
        .set_profile(openpgp::Profile::RFC4880)
        .expect("RFC4880 profile")
        .set_features(features)
        .expect("features")
        .set_primary_key_flags(KeyFlags::empty().set_certification().set_signing())
        .add_userid(format!("<m{i}@example.net>"))
        .add_subkey(
            KeyFlags::empty()
                .set_transport_encryption()
                .set_storage_encryption(),
            None,
            None,
        )
        .generate()
        .expect("generate member certificate");
    cert
}

/// Generates `n` certificates on all cores.
fn member_certs(n: usize, features: Features) -> Vec<Cert> {
    let threads = std::thread::available_parallelism().map_or(1, |p| p.get());
    let mut out: Vec<Option<Cert>> = vec![None; n];
    std::thread::scope(|s| {
        for (t, chunk) in out.chunks_mut(n.div_ceil(threads)).enumerate() {
            let features = features.clone();
            let base = t * n.div_ceil(threads);
            s.spawn(move || {
                for (j, slot) in chunk.iter_mut().enumerate() {
                    *slot = Some(member_cert(base + j, features.clone()));
                }
            });
        }
    });
    out.into_iter().map(|c| c.expect("generated")).collect()
}

fn members(certs: &[Cert]) -> Vec<Member> {
    certs
        .iter()
        .enumerate()
        .map(|(i, c)| Member {
            address: format!("m{i}@example.net"),
            // The daemon holds public certificates only.
            cert: c.clone().strip_secret_key_material(),
            role: Role::Member,
            show_key_id: false,
        })
        .collect()
}

/// 100 KiB of 72-column text lines plus LF, deterministic.
fn body(len: usize) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "list",
        "crypt",
        "milter",
        "mailman",
        "postfix",
        "openpgp",
        "sequoia",
        "member",
        "encrypted",
        "signature",
        "batch",
        "subscriber",
        "archive",
        "digest",
        "the",
        "of",
        "and",
        "a",
        "to",
        "is",
    ];
    let mut out = Vec::with_capacity(len + 80);
    let mut line = String::new();
    let mut x: u32 = 0x2545_f491;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let w = WORDS[(x as usize) % WORDS.len()];
        if line.len() + w.len() + 1 > 72 {
            out.extend_from_slice(line.as_bytes());
            out.push(b'\n');
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(w);
    }
    out.truncate(len - 1);
    out.push(b'\n');
    out
}

/// The plaintext post as Mailman hands it to the outbound listener.
fn outbound_post(body: &[u8]) -> Vec<u8> {
    let mut m = format!(
        "From: m0@example.net\nTo: {LIST}\nSubject: benchmark post\n\
         Date: Thu, 01 Jan 2026 00:00:00 +0000\nMessage-ID: <bench-out@example.net>\n\
         List-Id: <enc.lists.example.test>\nMIME-Version: 1.0\n\
         Content-Type: text/plain; charset=us-ascii\nContent-Transfer-Encoding: 7bit\n\n"
    )
    .into_bytes();
    m.extend_from_slice(body);
    m
}

/// A post as a GnuPG 2.2 member sends it: a MIME entity signed by the author and encrypted
/// (SEIPDv1, key id visible) to the list key, in RFC 3156 multipart/encrypted.
fn inbound_post(body: &[u8], author: &Cert, list_cert: &Cert) -> Vec<u8> {
    let mut inner = b"Content-Type: text/plain; charset=us-ascii\r\n\
                      Content-Transfer-Encoding: 7bit\r\n\r\n"
        .to_vec();
    inner.extend_from_slice(&listcrypt::mime::to_crlf(body));

    let recipients: Vec<Recipient> = list_cert
        .keys()
        .with_policy(&P, None)
        .supported()
        .alive()
        .revoked(false)
        .for_transport_encryption()
        .map(|ka| {
            Recipient::new(
                Features::empty().set_seipdv1(),
                Some(ka.key().keyid().into()),
                ka.key(),
            )
        })
        .collect();
    let signer = author
        .keys()
        .with_policy(&P, None)
        .secret()
        .for_signing()
        .next()
        .expect("author signing key")
        .key()
        .clone()
        .into_keypair()
        .expect("keypair");
    let mut armored = Vec::new();
    {
        let m = Message::new(&mut armored);
        let m = Armorer::new(m).build().expect("armorer");
        let m = Encryptor::for_recipients(m, recipients)
            .build()
            .expect("encryptor");
        let m = Signer::new(m, signer)
            .expect("signer")
            .build()
            .expect("signer");
        let mut w = LiteralWriter::new(m).build().expect("literal");
        w.write_all(&inner).expect("write");
        w.finalize().expect("finalize");
    }
    let (content_type, mime_body) = listcrypt::mime::multipart_encrypted(&armored);
    let mut msg = format!(
        "From: m0@example.net\r\nTo: {LIST}\r\nSubject: ...\r\n\
         Date: Thu, 01 Jan 2026 00:00:00 +0000\r\nMessage-ID: <bench-in@example.net>\r\n\
         MIME-Version: 1.0\r\nContent-Type: {}\r\n\r\n",
        content_type.replace('\n', "\r\n")
    )
    .into_bytes();
    msg.extend_from_slice(&mime_body);
    msg
}

/// Per-message certificate validation as `pgp::encrypt_sign` does it.
fn validate_recipients(list: &ListKeys, n: usize) -> usize {
    let mut keys = 0;
    for m in &list.members[..n] {
        let vc = m.cert.with_policy(&P, None).expect("valid");
        let _ = vc.features();
        keys += vc
            .keys()
            .for_transport_encryption()
            .alive()
            .revoked(false)
            .supported()
            .count();
    }
    keys
}

/// Bare PKESKs: the session key encrypted to `n` wildcard X25519 recipients, one byte of data,
/// no signature, no armor.
fn bare_pkesks(list: &ListKeys, n: usize) -> Vec<u8> {
    bare_pkesks_of(&list.members[..n])
}

/// listcrypt's own PKESKs (`pgp::encrypt_signed` of one unsigned byte, wildcard key ids): the
/// fast X25519 path for these keys in OpenSSL builds, on the cores its crypto pool has free.
fn listcrypt_pkesks(list: &ListKeys, n: usize) -> Vec<u8> {
    let content = listcrypt::pgp::sign_content(b"x", None).expect("literal");
    let keys: Vec<(Features, Vec<_>)> = list.members[..n]
        .iter()
        .map(|m| {
            let keys = m
                .cert
                .keys()
                .with_policy(&P, None)
                .for_transport_encryption()
                .map(|ka| ka.key().clone().role_into_unspecified())
                .collect();
            (Features::empty().set_seipdv1(), keys)
        })
        .collect();
    let recipients: Vec<listcrypt::pgp::KeyedRecipient<'_>> = keys
        .iter()
        .map(|(features, keys)| listcrypt::pgp::KeyedRecipient {
            features,
            keys,
            show_key_id: false,
        })
        .collect();
    listcrypt::pgp::encrypt_signed(&content, &recipients).expect("encrypt")
}

fn bare_pkesks_of(members: &[Member]) -> Vec<u8> {
    let keys: Vec<Recipient> = members
        .iter()
        .flat_map(|m| {
            m.cert
                .keys()
                .with_policy(&P, None)
                .for_transport_encryption()
                .map(|ka| Recipient::new(Features::empty().set_seipdv1(), None, ka.key()))
                .collect::<Vec<_>>()
        })
        .collect();
    let mut out = Vec::new();
    let m = Message::new(&mut out);
    let m = Encryptor::for_recipients(m, keys)
        .build()
        .expect("encryptor");
    let mut w = LiteralWriter::new(m).build().expect("literal");
    w.write_all(b"x").expect("write");
    w.finalize().expect("finalize");
    out
}

/// Share of CPU time used during one second, from /proc/stat (Linux only).
fn busy_percent() -> Option<u64> {
    fn sample() -> Option<(u64, u64)> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let v: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .take(8)
            .filter_map(|x| x.parse().ok())
            .collect();
        (v.len() == 8).then(|| (v.iter().sum(), v[3] + v[4]))
    }
    let (t0, i0) = sample()?;
    std::thread::sleep(Duration::from_secs(1));
    let (t1, i1) = sample()?;
    let total = t1.checked_sub(t0)?.max(1);
    Some(100 * (total - (i1 - i0).min(total)) / total)
}

/// This process's CPU time so far, all threads (utime + stime, USER_HZ = 100 ticks).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = stat.rfind(')').map_or("", |i| &stat[i + 2..]);
    let f: Vec<&str> = rest.split(' ').collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Duration::from_millis((tick(11) + tick(12)) * 10)
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

/// The growth table: member counts from `spec`, the daemon's batching, one warm message each.
fn growth(spec: &str) {
    let sizes: Vec<usize> = spec
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let most = sizes.iter().copied().max().unwrap_or(0);
    let keyring = tempfile::tempdir().expect("tempdir");
    let list_cert = create_list_key(keyring.path(), LIST).expect("list key");
    let t = Instant::now();
    let certs = member_certs(most, Features::empty().set_seipdv1());
    let list = ListKeys::new(
        LIST.to_string(),
        Policy::default(),
        list_cert,
        members(&certs),
    );
    drop(certs);
    let recipients: Vec<String> = (0..most).map(|i| format!("m{i}@example.net")).collect();
    let post = outbound_post(&body(POST_BYTES));
    println!(
        "growth (in-process: plan_batches + encrypt_batches, batch_size {}, 100 KiB post, {} cores); {most} members made in {:.1} s",
        list.policy.batch_size,
        std::thread::available_parallelism().map_or(1, |p| p.get()),
        t.elapsed().as_secs_f64()
    );
    println!("| members | batches | time | CPU/recipient | output | peak RSS above start | RSS at start |");
    println!("|---|---|---|---|---|---|---|");
    for n in sizes {
        let batches = plan_batches(&list, &recipients[..n]);
        // Warm-up: each member's keys validated once per keyring snapshot, as in the daemon.
        drop(encrypt_batches(&post, &list, &batches).expect("encrypt"));
        // Resets the kernel's peak RSS (VmHWM) to the current RSS (proc(5), clear_refs 5).
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        // Small lists repeat the message: 10,000 recipients in all, for the 10 ms CPU clock.
        let reps = (10_000 / n.max(1)).max(1);
        let (rss, cpu, t) = (status_kib("VmRSS"), cpu_time(), Instant::now());
        let mut bytes = 0;
        for _ in 0..reps {
            let out = encrypt_batches(&post, &list, &batches).expect("encrypt");
            bytes = out
                .iter()
                .filter_map(|r| r.body.as_ref())
                .map(Vec::len)
                .sum();
        }
        let (took, used) = (t.elapsed() / reps as u32, cpu_time() - cpu);
        let peak = status_kib("VmHWM").saturating_sub(rss);
        println!(
            "| {n} | {} | {:.1} ms | {:.1} us | {:.1} MiB | {:.1} MiB | {:.1} MiB |",
            batches.len(),
            ms(took),
            used.as_secs_f64() * 1e6 / (n * reps) as f64,
            bytes as f64 / (1 << 20) as f64,
            peak as f64 / 1024.0,
            rss as f64 / 1024.0
        );
    }
    println!("(time per message; CPU from /proc/self/stat over 10,000 recipients, small lists repeating the message; after a warm-up)");
}

fn main() {
    if let Ok(spec) = std::env::var("LISTCRYPT_BENCH_GROWTH") {
        return growth(&spec);
    }
    let budget = Duration::from_secs_f64(
        std::env::var("LISTCRYPT_BENCH_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1.5),
    );
    let total = Instant::now();
    println!(
        "listcrypt pipeline bench: 100 KiB post, X25519 members, median of N runs \
         (budget {:.1} s per case), {} cores",
        budget.as_secs_f64(),
        std::thread::available_parallelism().map_or(1, |p| p.get())
    );

    if let Some(busy) = busy_percent() {
        println!(
            "{busy}% CPU used by other processes in the second before the run{}",
            if busy >= 15 {
                " -- WARNING: busy machine, numbers are skewed"
            } else {
                ""
            }
        );
    }

    let keyring = tempfile::tempdir().expect("tempdir");
    let list_cert = create_list_key(keyring.path(), LIST).expect("list key");

    let t = Instant::now();
    let certs = member_certs(MAX_MEMBERS, Features::empty().set_seipdv1());
    println!(
        "setup: generated {MAX_MEMBERS} member certificates in {:.2} s (once)",
        t.elapsed().as_secs_f64()
    );
    let list = ListKeys::new(
        LIST.to_string(),
        Policy::default(),
        list_cert.clone(),
        members(&certs),
    );
    let recipients: Vec<String> = (0..MAX_MEMBERS)
        .map(|i| format!("m{i}@example.net"))
        .collect();
    let body = body(POST_BYTES);
    let post = outbound_post(&body);

    println!();
    println!("== outbound: encrypt_message (one batch, SEIPDv1, wildcard key ids, list-signed) ==");
    let mut medians = Vec::new();
    for &n in &[10usize, 100, 1000] {
        let rw = encrypt_message(&post, &list, &recipients[..n]).expect("encrypt");
        let out_len = rw.body.as_ref().map_or(0, |b| b.len());
        let s = measure(budget, || {
            encrypt_message(&post, &list, &recipients[..n]).expect("encrypt")
        });
        report(
            &format!("outbound {n:>4} members"),
            &s,
            &format!(
                "{:>7.1} us/member  out {} KiB",
                s.median.as_secs_f64() * 1e6 / n as f64,
                out_len / 1024
            ),
        );
        medians.push((n, s.median));
    }
    let (n0, t0) = medians[0];
    let (n2, t2) = medians[2];
    println!(
        "outbound marginal cost per member ({n0}->{n2}): {:.1} us",
        (t2.as_secs_f64() - t0.as_secs_f64()) * 1e6 / (n2 - n0) as f64
    );

    // The daemon's path: batches of the default batch_size, encrypted on all cores.
    let default_batches = plan_batches(&list, &recipients);
    let s = measure(budget, || {
        encrypt_batches(&post, &list, &default_batches).expect("encrypt batches")
    });
    report(
        &format!(
            "outbound 1000 members, {} batches of {}",
            default_batches.len(),
            list.policy.batch_size
        ),
        &s,
        &format!(
            "{:>7.1} us/member  (encrypt_batches, all cores)",
            s.median.as_secs_f64() * 1e6 / MAX_MEMBERS as f64
        ),
    );

    // Reference: the same 100 members advertising SEIPDv2 (sequoia's default features).
    let v2_certs = member_certs(100, Features::sequoia());
    let v2_list = ListKeys::new(
        LIST.to_string(),
        Policy::default(),
        list_cert.clone(),
        members(&v2_certs),
    );
    let s = measure(budget, || {
        encrypt_message(&post, &v2_list, &recipients[..100]).expect("encrypt")
    });
    report(
        "outbound  100 members, SEIPDv2 (reference)",
        &s,
        &format!("{:>7.1} us/member", s.median.as_secs_f64() * 1e6 / 100.0),
    );

    let (fast, sequoia) = listcrypt::pgp::pkesk_paths();
    println!("PKESKs made so far: {fast} on the fast X25519 path, {sequoia} on sequoia's own path");

    println!();
    println!("== outbound components (where the time goes) ==");
    for &n in &[100usize, 1000] {
        let s = measure(budget / 2, || validate_recipients(&list, n));
        report(
            &format!("validate {n:>4} recipient certs"),
            &s,
            &format!("{:>7.1} us/cert", s.median.as_secs_f64() * 1e6 / n as f64),
        );
        let s = measure(budget / 2, || bare_pkesks(&list, n));
        report(
            &format!("bare PKESKs, {n:>4} X25519 recipients"),
            &s,
            &format!("{:>7.1} us/PKESK", s.median.as_secs_f64() * 1e6 / n as f64),
        );
    }
    // Ours: 10 recipients stay on one thread (one core's cost per PKESK); 1000 spread out.
    for &n in &[10usize, 1000] {
        let s = measure(budget / 2, || listcrypt_pkesks(&list, n));
        report(
            &format!("listcrypt PKESKs, {n:>4} X25519 recipients"),
            &s,
            &format!(
                "{:>7.1} us/PKESK wall",
                s.median.as_secs_f64() * 1e6 / n as f64
            ),
        );
    }
    let (fast, sequoia) = listcrypt::pgp::pkesk_paths();
    println!("PKESKs made in all: {fast} on the fast X25519 path, {sequoia} on sequoia's own path");
    // Do PKESKs scale across cores? The same 1000 recipients split over all threads.
    let threads = std::thread::available_parallelism().map_or(1, |p| p.get());
    if threads > 1 {
        let s = measure(budget / 2, || {
            std::thread::scope(|sc| {
                let handles: Vec<_> = list.members[..MAX_MEMBERS]
                    .chunks(MAX_MEMBERS.div_ceil(threads))
                    .map(|chunk| sc.spawn(move || bare_pkesks_of(chunk)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("thread").len())
                    .sum::<usize>()
            })
        });
        report(
            &format!("bare PKESKs, 1000 recipients, {threads} threads"),
            &s,
            &format!(
                "{:>7.1} us/PKESK wall",
                s.median.as_secs_f64() * 1e6 / MAX_MEMBERS as f64
            ),
        );
    }
    let s = measure(budget / 2, || bare_pkesks(&list, 1));
    report("bare encrypt, 1 recipient, 1 byte", &s, "");

    println!();
    println!("== inbound: process (classify, decrypt, verify, rewrite) ==");
    let limits = Limits::default();
    let env = Envelope {
        sender: "m0@example.net",
    };
    // Each measured post is new: sequoia keeps every verified signature in a process-wide
    // cache, so the same post processed again skips the signature check a daemon makes.
    let cached = SignatureVerificationCache::insertions();
    let mut processed = 0;
    for (size, count) in [(POST_BYTES, 61), (10 * 1024, 201)] {
        processed += count;
        let posts: Vec<Vec<u8>> = (0..count)
            .map(|i| {
                let mut text = body[..size].to_vec();
                text.extend_from_slice(format!("\npost {i}\n").as_bytes());
                inbound_post(&text, &certs[0], &list_cert)
            })
            .collect();
        for post in &posts[..1] {
            match inbound::process(&env, post, &list, &limits) {
                Verdict::Deliver { hold: None, .. } => {}
                other => panic!("inbound post was not accepted: {}", other.decision_line()),
            }
        }
        let s = measure_each(&posts[1..], |post| {
            inbound::process(&env, post, &list, &limits)
        });
        report(
            &format!(
                "inbound {:>3} KiB, {MAX_MEMBERS} members bound",
                size / 1024
            ),
            &s,
            &format!("in {} KiB, each post new", posts[0].len() / 1024),
        );
    }
    // Sequoia 2.4 keeps every signature it verified, process-wide and without bound.
    println!(
        "sequoia's signature verification cache: {} entries added for {processed} posts",
        SignatureVerificationCache::insertions() - cached
    );

    if let Some(busy) = busy_percent() {
        println!();
        println!(
            "{busy}% CPU used by other processes in the second after the run{}",
            if busy >= 15 {
                " -- WARNING: busy machine, numbers are skewed"
            } else {
                ""
            }
        );
    }
    println!(
        "total bench time {:.1} s (timings are in-process: no process start-up, no keyring load)",
        total.elapsed().as_secs_f64()
    );
}
