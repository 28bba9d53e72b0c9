//! Golden corpus for the inbound pipeline, run through `listcrypt process inbound` (the same
//! pipeline the milter drives), every case with LF and with CRLF line endings.
//!
//! Layout of `tests/corpus/inbound/<case>/` (see tests/corpus/README.md):
//! `message.eml` (LF; `{{name}}` placeholders are replaced by blobs built at test time),
//! `case.toml` (how to build the blobs, extra environment), `sender`, `expected`,
//! optional `policy.toml`, `expect-header`, `expect-body-contains`, `expect-no-header`.
//!
//! Keys are generated per run (the list key comes from `listcrypt list create`), so every
//! encrypted input is built here with real clients: GnuPG, sq, RNP, and sequoia-openpgp for
//! packets no client writes on purpose. Expectations come from DESIGN.md's reply table, not from
//! what the daemon prints.

mod support;

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use support::corpus::{build, case_config, load_cases, Case, Cast};
use support::process::run;
use support::site::{Site, LIST};
use support::text::{contains, to_crlf};

/// Cases whose expectation (from the spec) the daemon does not meet yet. Temporary: each entry
/// is reported to whoever owns src/, and removed when fixed. A listed case that passes is
/// reported so the entry can go.
const KNOWN_FAILURES: &[&str] = &[];

/// What one run of `listcrypt process inbound` showed.
struct Outcome {
    code: Option<i32>,
    stdout: Vec<u8>,
    stderr: String,
}

impl Outcome {
    fn first_line(&self) -> String {
        let text = String::from_utf8_lossy(&self.stdout);
        text.lines().next().unwrap_or("").trim_end().to_string()
    }
}

fn process(site: &Site, case: &Case, config: &Path, message: &[u8]) -> Outcome {
    let mut cmd = support::listcrypt::listcrypt_cmd();
    cmd.arg("-c")
        .arg(config)
        .args(["process", "inbound", "--list", LIST, "--from", &case.sender]);
    for r in &case.rcpts() {
        cmd.args(["--rcpt", r]);
    }
    cmd.env_remove("LISTCRYPT_CONFIG")
        .current_dir(site.dir.path())
        .envs(case.env());
    let out = run(&mut cmd, Some(message));
    Outcome {
        code: out.status.code(),
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The top-level header fields of a message, unfolded.
fn top_headers(message: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(message);
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            break;
        }
        if line.starts_with([' ', '\t']) {
            if let Some(last) = fields.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
        } else if let Some((n, v)) = line.split_once(':') {
            fields.push((n.trim().to_string(), v.trim().to_string()));
        }
    }
    fields
}

fn lines_of(dir: &Path, file: &str) -> Vec<String> {
    fs::read_to_string(dir.join(file))
        .map(|t| {
            t.lines()
                .map(|l| l.trim_end().to_string())
                .filter(|l| !l.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// Judges one outcome against the case's expectations; `Err` says why it fails.
fn judge(case: &Case, out: &Outcome) -> Result<(), String> {
    let first = out.first_line();
    let shown = || {
        format!(
            "exit {:?}, first line {first:?}, stderr {:?}",
            out.code,
            out.stderr.trim()
        )
    };
    if case.expected == "accept" {
        if out.code != Some(0) {
            return Err(format!("expected accept (exit 0), got {}", shown()));
        }
        // DESIGN.md: output messages use CRLF.
        if out
            .stdout
            .windows(2)
            .any(|w| w[1] == b'\n' && w[0] != b'\r')
            || out.stdout.first() == Some(&b'\n')
        {
            return Err("accepted message has bare LF line endings (must be CRLF)".into());
        }
        let headers = top_headers(&out.stdout);
        for want in lines_of(&case.dir, "expect-header") {
            let (name, value) = want.split_once(':').ok_or("bad expect-header line")?;
            let value = value.trim();
            if !headers
                .iter()
                .any(|(n, v)| n.eq_ignore_ascii_case(name.trim()) && v.starts_with(value))
            {
                return Err(format!(
                    "expected header {want:?}; top-level header has {:?}",
                    headers
                        .iter()
                        .filter(|(n, _)| n.eq_ignore_ascii_case(name.trim()))
                        .collect::<Vec<_>>()
                ));
            }
        }
        for name in lines_of(&case.dir, "expect-no-header") {
            if let Some((n, v)) = headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(&name)) {
                return Err(format!("header {n}: {v} must not reach Mailman"));
            }
        }
        for want in lines_of(&case.dir, "expect-body-contains") {
            if !contains(&out.stdout, want.as_bytes()) {
                return Err(format!("output does not contain {want:?}"));
            }
        }
        return Ok(());
    }
    if out.code != Some(1) {
        return Err(format!(
            "expected `{}` (exit 1), got {}",
            case.expected,
            shown()
        ));
    }
    let want: Vec<&str> = case.expected.split_whitespace().collect();
    let got: Vec<&str> = first.split_whitespace().collect();
    if got.len() < want.len() || got[..want.len()] != want[..] {
        return Err(format!("expected `{}`, got {}", case.expected, shown()));
    }
    if want.len() == 1 && got.len() < 2 {
        return Err(format!("`{}` without a reason: {first:?}", case.expected));
    }
    Ok(())
}

#[test]
fn inbound_corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/inbound");
    let cases = load_cases(&root);
    for k in KNOWN_FAILURES {
        assert!(
            cases.iter().any(|c| c.name == *k),
            "KNOWN_FAILURES names {k}, which is no case"
        );
    }

    let site = Site::new();
    site.create_list(LIST);
    let cast = Cast::generate(&site);
    let work = site.path("built");
    fs::create_dir_all(&work).unwrap();

    // Every post is made first (erin's and rita's while their keys are still good) ...
    let built: Vec<Result<Vec<u8>, String>> =
        cases.iter().map(|c| build(c, &cast, &work)).collect();
    // ... then keys age, as they do between a post and its delivery.
    cast.age_keys(&site);

    let mut report = String::new();
    let (mut passed, mut failed, mut known, mut fixed) = (0, 0, 0, Vec::new());
    for (case, message) in cases.iter().zip(&built) {
        let is_known = KNOWN_FAILURES.contains(&case.name.as_str());
        let config = case_config(&site, case);
        let variants: Vec<(&str, Result<Vec<u8>, String>)> = match message {
            Ok(lf) => vec![("lf", Ok(lf.clone())), ("crlf", Ok(to_crlf(lf)))],
            Err(e) => vec![("build", Err(e.clone()))],
        };
        let mut case_ok = true;
        for (variant, message) in variants {
            let verdict = message.and_then(|m| {
                fs::write(work.join(format!("{}.{variant}.eml", case.name)), &m).unwrap();
                judge(case, &process(&site, case, &config, &m))
            });
            let tag = match (&verdict, is_known) {
                (Ok(()), _) => "ok  ",
                (Err(_), true) => "KNOWN",
                (Err(_), false) => "FAIL",
            };
            let _ = write!(
                report,
                "{tag} {variant:<5} {:<40} {}",
                case.name, case.expected
            );
            if let Err(why) = &verdict {
                let _ = write!(report, " -- {why}");
                case_ok = false;
            }
            report.push('\n');
            match (verdict.is_ok(), is_known) {
                (true, _) => passed += 1,
                (false, true) => known += 1,
                (false, false) => failed += 1,
            }
        }
        if case_ok && is_known {
            fixed.push(case.name.clone());
        }
    }
    let _ = writeln!(
        report,
        "inbound corpus: {} cases, {} runs: {passed} passed, {failed} failed, {known} known failures",
        cases.len(),
        passed + failed + known
    );
    if !fixed.is_empty() {
        let _ = writeln!(
            report,
            "now passing, remove from KNOWN_FAILURES: {}",
            fixed.join(", ")
        );
    }
    println!("{report}");
    drop(cast);
    if std::env::var_os("CORPUS_KEEP_DIR").is_some() {
        // Built messages are under built/, one per case and line-ending variant.
        println!("kept {}", site.dir.keep().display());
    }
    assert_eq!(failed, 0, "inbound corpus failures:\n{report}");
}
