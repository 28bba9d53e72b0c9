//! Issue 10 §5: the 160-part `>From ` message (about 88 KB, every part author-signed with `>From`
//! lines its signature never matches) through `process outbound` with 5 recipients in
//! `batch_size = 1`. It checks that every batch gets its copy and prints (never asserts) the CPU
//! the process used, for the before/after note; `FROM_COST_BIN` points it at another
//! build (e.g. the one before the change) to compare.

mod support;

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use support::gpg::GpgMember;
use support::process::run_ok;
use support::site::{Site, LIST, LIST_BOUNCES};

/// Signed parts in the message, and `>From` lines in each (the restoration's old bound).
const PARTS: usize = 160;
const FROM_LINES: usize = 8;

/// CPU seconds (user + system) of this process's waited-for children, from /proc (proc(5):
/// fields 16 and 17 of `stat`, in clock ticks of 1/100 s on Linux).
fn children_cpu() -> f64 {
    let stat = fs::read_to_string("/proc/self/stat").unwrap();
    // The command name may hold spaces: fields are counted after its closing parenthesis.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = fields[13].parse::<u64>().unwrap() + fields[14].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

/// The message: multipart/mixed of `PARTS` multipart/signed parts, each signed by `alice`
/// over other text, so no combination of undone `>From` lines ever verifies.
fn message(alice: &GpgMember) -> Vec<u8> {
    let sig = alice.gpg.ok(
        &[
            "--armor",
            "--detach-sign",
            "--local-user",
            &alice.fingerprint,
        ],
        Some(b"not the signed part"),
    );
    let sig = String::from_utf8(sig).unwrap().replace("\r\n", "\n");
    let mut text = String::from("Content-Type: text/plain; charset=us-ascii\n\n");
    for i in 1..=FROM_LINES {
        text.push_str(&format!(">From line {i}\n"));
    }
    let mut m = format!(
        "From: alice <{}>\nTo: {LIST}\nSubject: many signed parts\n\
         Message-ID: <cost@example.test>\nMIME-Version: 1.0\n\
         Content-Type: multipart/mixed; boundary=\"mix\"\n\n",
        alice.address
    );
    for i in 0..PARTS {
        m.push_str(&format!(
            "--mix\nContent-Type: multipart/signed; boundary=\"s{i}\"; micalg=pgp-sha256;\n \
             protocol=\"application/pgp-signature\"\n\n--s{i}\n{text}\n--s{i}\n\
             Content-Type: application/pgp-signature\n\n{sig}\n--s{i}--\n"
        ));
    }
    m.push_str("--mix--\n");
    m.into_bytes()
}

#[test]
fn many_mangled_signed_parts_through_process_outbound() {
    let site = Site::new();
    site.create_list(LIST);
    let policy = site.path("lists.d").join(format!("{LIST}.toml"));
    let text = fs::read_to_string(&policy).unwrap();
    assert!(text.contains("\nbatch_size = 50\n"), "{text}");
    fs::write(
        &policy,
        text.replace("\nbatch_size = 50\n", "\nbatch_size = 1\n"),
    )
    .unwrap();
    let alice = GpgMember::new(&site, "alice", true);
    let rcpts: Vec<GpgMember> = (1..=5)
        .map(|i| GpgMember::new(&site, &format!("m{i}"), true))
        .collect();
    let post = message(&alice);
    println!("message: {} bytes, {PARTS} signed parts", post.len());

    let bin = std::env::var_os("FROM_COST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(support::listcrypt::listcrypt_bin);
    let out = site.path("out");
    let mut cmd = Command::new(&bin);
    cmd.arg("-c").arg(&site.config).args([
        "process",
        "outbound",
        "--list",
        LIST,
        "--from",
        LIST_BOUNCES,
    ]);
    for r in &rcpts {
        cmd.args(["--rcpt", &r.address]);
    }
    cmd.arg("--out").arg(&out);
    let before = children_cpu();
    let started = std::time::Instant::now();
    run_ok(&mut cmd, Some(&post));
    println!(
        "{}: process outbound, 5 batches: {:.2} s CPU, {:.2} s wall",
        bin.display(),
        children_cpu() - before,
        started.elapsed().as_secs_f64()
    );
    for b in 1..=5 {
        assert!(out.join(format!("batch-{b}.eml")).exists(), "batch {b}");
    }
}
