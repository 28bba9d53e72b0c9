//! Issue 8: the milter and `listcrypt process inbound` drive the same transaction, so every
//! case of the inbound corpus must get the same decision from each: the same reply (code,
//! enhanced code and text) for a refusal, accept from both, hold from both, discard from both.
//! What the decision should be is inbound_corpus's business; this test only compares.
//!
//! The milter path is the real daemon in-process on 127.0.0.1:0, driven as Postfix drives it
//! (MAIL, one RCPT per recipient, headers, body, end of message).

mod support;

use indymilter_test::Status;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use support::corpus::{build, case_config, load_cases, Case, Cast};
use support::milter::{self, Mail};
use support::process::run;
use support::site::{Site, LIST};
use support::text::to_crlf;

/// What one path decided about a message.
#[derive(Debug, PartialEq)]
enum Decision {
    Accept,
    Hold,
    Discard,
    /// The whole SMTP reply, e.g. `550 5.7.1 …`.
    Reject(String),
    Tempfail(String),
}

/// `listcrypt process inbound`: exit 0 delivers; exit 1's first line is the decision
/// (DESIGN.md, "Exit codes and output of `process`").
fn process_decision(
    case: &Case,
    config: &Path,
    site: &Site,
    message: &[u8],
) -> Result<Decision, String> {
    let mut cmd = support::listcrypt::listcrypt_cmd();
    cmd.arg("-c")
        .arg(config)
        .args(["process", "inbound", "--list", LIST, "--from", &case.sender]);
    for r in &case.rcpts() {
        cmd.args(["--rcpt", r]);
    }
    // The case's limits are in its configuration file, which the daemon reads too.
    cmd.env_remove("LISTCRYPT_CONFIG")
        .current_dir(site.dir.path());
    let out = run(&mut cmd, Some(message));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let first = stdout.lines().next().unwrap_or("").trim_end();
    match out.status.code() {
        Some(0) => Ok(Decision::Accept),
        Some(1) => {
            let (kind, rest) = first.split_once(' ').unwrap_or((first, ""));
            match kind {
                "hold" => Ok(Decision::Hold),
                "discard" => Ok(Decision::Discard),
                "reject" => Ok(Decision::Reject(rest.to_string())),
                "tempfail" => Ok(Decision::Tempfail(rest.to_string())),
                _ => Err(format!("process: unknown decision line {first:?}")),
            }
        }
        code => Err(format!(
            "process: exit {code:?}, stderr {:?}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

/// The decision a milter status carries; `mail` and the actions tell accept from hold (a held
/// post goes on with listcrypt's X-Listcrypt-Hold header, DESIGN.md).
fn status_decision(status: &Status, delivered: Option<&Mail>) -> Result<Decision, String> {
    match status {
        Status::Reject { .. } => Ok(Decision::Reject(milter::reply_text(status))),
        Status::Tempfail { .. } => Ok(Decision::Tempfail(milter::reply_text(status))),
        Status::Discard => Ok(Decision::Discard),
        Status::Continue | Status::Accept => match delivered {
            Some(m) if m.header("X-Listcrypt-Hold").is_some() => Ok(Decision::Hold),
            _ => Ok(Decision::Accept),
        },
        other => Err(format!("milter: unexpected status {other:?}")),
    }
}

/// One SMTP transaction through the inbound milter, stopping where the milter refuses.
async fn milter_decision(addr: SocketAddr, case: &Case, mail: &Mail) -> Result<Decision, String> {
    let mut conn = milter::connect(addr).await;
    let status = conn
        .mail([format!("<{}>", case.sender)])
        .await
        .map_err(|e| e.to_string())?;
    if !goes_on(&status) {
        return status_decision(&status, None);
    }
    for r in case.rcpts() {
        let status = conn
            .rcpt([format!("<{r}>")])
            .await
            .map_err(|e| e.to_string())?;
        if !goes_on(&status) {
            return status_decision(&status, None);
        }
    }
    let (actions, status) = milter::send(&mut conn, mail).await;
    let _ = conn.close().await;
    status_decision(&status, Some(&mail.apply(&actions)))
}

/// Continue, or no reply where the milter negotiated none for the stage.
fn goes_on(status: &Status) -> bool {
    matches!(status, Status::Continue | Status::Noreply)
}

/// The case's configuration (its policy, its extra environment such as
/// `LISTCRYPT_LIMITS__MAX_PACKETS` written into the file, so that the in-process daemon and
/// `process` read the same settings) over a fresh copy of the site's state. The copy gives the
/// case an empty replay record: identical signed texts in different cases (EdDSA signatures
/// made in the same second are identical) would otherwise be duplicates for the milter.
fn parity_config(site: &Site, case: &Case) -> PathBuf {
    let mut text = fs::read_to_string(case_config(site, case)).unwrap();
    let state = site.path("state");
    let fresh = site.path("parity-state").join(&case.name);
    copy_dir(&state, &fresh);
    let from = format!("state_dir = \"{}\"", state.display());
    assert!(
        text.contains(&from),
        "{}: the config names the site's state",
        case.name
    );
    text = text.replace(&from, &format!("state_dir = \"{}\"", fresh.display()));

    let mut tables: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in &case.env() {
        let key = name
            .strip_prefix("LISTCRYPT_")
            .unwrap_or_else(|| panic!("{}: env {name} is no listcrypt setting", case.name));
        let (table, key) = key
            .split_once("__")
            .unwrap_or_else(|| panic!("{}: env {name} is no table setting", case.name));
        let value = if value.parse::<u64>().is_ok() {
            value.clone()
        } else {
            format!("{value:?}")
        };
        tables
            .entry(table.to_ascii_lowercase())
            .or_default()
            .push(format!("{} = {value}", key.to_ascii_lowercase()));
    }
    assert!(
        !text.contains("\n["),
        "{}: the base config has tables already",
        case.name
    );
    for (table, lines) in tables {
        let _ = write!(text, "[{table}]\n{}\n", lines.join("\n"));
    }
    let path = site.path(&format!("parity-{}.listcrypt.toml", case.name));
    fs::write(&path, text).unwrap();
    path
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[test]
fn milter_and_process_decide_alike() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/inbound");
    let cases = load_cases(&root);
    let site = Site::new();
    site.create_list(LIST);
    let cast = Cast::generate(&site);
    let work = site.path("built");
    fs::create_dir_all(&work).unwrap();
    // As in inbound_corpus: every post is made, then keys age before delivery.
    let built: Vec<Result<Vec<u8>, String>> =
        cases.iter().map(|c| build(c, &cast, &work)).collect();
    cast.age_keys(&site);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut report = String::new();
    let mut failed = 0;
    for (case, message) in cases.iter().zip(&built) {
        let compared = message.clone().and_then(|lf| {
            // Each message goes through each path once, in the MTA's CRLF form, `process`
            // first: it only peeks at the replay record, the daemon records.
            let message = to_crlf(&lf);
            let config = parity_config(&site, case);
            let by_process = process_decision(case, &config, &site, &message)?;
            let by_milter = runtime.block_on(async {
                let daemon = milter::start(&config).await;
                let decision = milter_decision(daemon.inbound, case, &Mail::parse(&message)).await;
                daemon.stop().await;
                decision
            })?;
            if by_process == by_milter {
                Ok(by_process)
            } else {
                Err(format!("process {by_process:?}, milter {by_milter:?}"))
            }
        });
        match &compared {
            Ok(d) => {
                let _ = writeln!(report, "same {:<40} {d:?}", case.name);
            }
            Err(why) => {
                failed += 1;
                let _ = writeln!(report, "DIFF {:<40} {why}", case.name);
            }
        }
    }
    let _ = writeln!(report, "parity: {} cases, {failed} differ", cases.len());
    println!("{report}");
    assert_eq!(failed, 0, "milter and process disagree:\n{report}");
}
