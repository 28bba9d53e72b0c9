//! The CLI contract of DESIGN.md: exit codes, `-c` before or after the subcommand,
//! diagnostics with file:line:column, every help example runs, and the daemon's signals
//! (SIGHUP keeps a good configuration when the new one is bad; SIGTERM stops cleanly).

mod support;

use std::fs;
use support::gpg::Gpg;
use support::listcrypt::listcrypt_cmd;
use support::process::run;
use support::site::{Site, LIST};

#[test]
fn exit_codes_and_config_placement() {
    let site = Site::new();
    // Bad usage: 64, message on stderr.
    let out = run(site.cli().args(["member", "add", LIST]), None);
    assert_eq!(out.status.code(), Some(64), "missing arguments");
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("listcrypt: usage: "));
    let out = run(site.cli().args(["list", "create", "not an address"]), None);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("listcrypt: "));

    // -c before and after the subcommand.
    let out = run(site.cli().args(["list", "create", LIST]), None);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = run(
        listcrypt_cmd()
            .args(["list", "export-key", LIST, "-c"])
            .arg(&site.config),
        None,
    );
    assert_eq!(out.status.code(), Some(0));
    assert!(out
        .stdout
        .starts_with(b"-----BEGIN PGP PUBLIC KEY BLOCK-----"));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("PRIVATE"));

    // An existing list is a usage error, not an overwrite.
    let out = run(site.cli().args(["list", "create", LIST]), None);
    assert_eq!(out.status.code(), Some(64));

    // Bad configuration: 78 with file:line:column.
    let bad = site.path("bad.toml");
    fs::write(
        &bad,
        "log = \"stderr\"\nlimits = { max_packets = \"many\" }\n",
    )
    .unwrap();
    let out = run(
        listcrypt_cmd().arg("-c").arg(&bad).arg("check-config"),
        None,
    );
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:2:", bad.display())), "{err}");

    // A broken policy file is reported by check-config with its position.
    let policy = site.path("lists.d").join(format!("{LIST}.toml"));
    let good = fs::read_to_string(&policy).unwrap();
    fs::write(&policy, format!("{good}\nunsigned_action = \"maybe\"\n")).unwrap();
    let out = run(site.cli().arg("check-config"), None);
    assert_eq!(out.status.code(), Some(78));
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains(&format!("{}:", policy.display())), "{text}");
    fs::write(&policy, good).unwrap();
    let out = run(site.cli().arg("check-config"), None);
    assert_eq!(out.status.code(), Some(0), "{out:?}");

    // Binding a key without a matching user ID is refused as bad data (65).
    let gpg = Gpg::new(site.path("gnupg"));
    gpg.gen_key("Eve <eve@example.net>", None);
    let cert = site.path("eve.asc");
    gpg.export("eve@example.net", &cert);
    let out = run(
        site.cli()
            .args(["member", "add", LIST, "alice@example.net"])
            .arg(&cert),
        None,
    );
    assert_eq!(out.status.code(), Some(65), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no valid user ID"));
}

/// Every `Example:` line of every subcommand's help runs successfully, in order.
#[test]
fn help_examples_run() {
    let site = Site::new();
    let gpg = Gpg::new(site.path("gnupg"));
    gpg.gen_key("Alice <alice@example.org>", None);
    gpg.gen_key("Bob <bob@example.org>", None);
    gpg.export("alice@example.org", &site.path("alice.asc"));

    let mut examples = Vec::new();
    let subcommands: &[&[&str]] = &[
        &["list", "create"],
        &["list", "export-key"],
        &["list", "rotate-subkey"],
        &["wkd", "export"],
        &["member", "add"],
        &["member", "list"],
        &["token", "create"],
        &["token", "list"],
        &["certs", "export"],
        &["certs", "import"],
        &["check-config"],
        &["notify-expiry"],
        &["process", "outbound"],
        &["process", "inbound"],
        &["member", "remove"],
        &["doctor"],
        &["backup"],
        &["restore"],
    ];
    for sub in subcommands {
        let out = run(listcrypt_cmd().args(*sub).arg("--help"), None);
        assert_eq!(out.status.code(), Some(0));
        let help = String::from_utf8_lossy(&out.stdout).into_owned();
        let example = help
            .lines()
            .find_map(|l| l.trim().strip_prefix("Example: "))
            .unwrap_or_else(|| panic!("no example in the help of {sub:?}"))
            .to_string();
        examples.push(example);
    }
    for example in examples {
        // `listcrypt ARGS [< IN] [> OUT]`, run in the site directory with its config.
        let (cmdline, stdout_to) = match example.split_once(" > ") {
            Some((c, f)) => (c.to_string(), Some(f.trim().to_string())),
            None => (example.clone(), None),
        };
        let (cmdline, stdin_from) = match cmdline.split_once(" < ") {
            Some((c, f)) => (c.to_string(), Some(f.trim().to_string())),
            None => (cmdline, None),
        };
        let mut words = cmdline.split_whitespace();
        assert_eq!(words.next(), Some("listcrypt"));
        let args: Vec<&str> = words.collect();
        if let Some(f) = &stdin_from {
            // A post for the process examples: unencrypted, so inbound answers with a decision.
            fs::write(
                site.path(f),
                "From: alice@example.org\r\nTo: enc@lists.example.org\r\nSubject: hi\r\n\r\nhello\r\n",
            )
            .unwrap();
        }
        let stdin = stdin_from.map(|f| fs::read(site.path(&f)).unwrap());
        let out = run(
            site.cli().current_dir(site.dir.path()).args(&args),
            stdin.as_deref(),
        );
        let code = out.status.code();
        // process inbound of a plaintext post is a decision (exit 1), not a failure.
        let expected = if args.starts_with(&["process", "inbound"]) {
            1
        } else {
            0
        };
        if args.starts_with(&["doctor"]) {
            // A report on this machine's Postfix (exit 1 on a FAIL), never an error to run.
            let report = String::from_utf8_lossy(&out.stdout);
            assert!(matches!(code, Some(0 | 1)), "example {example:?}: {out:?}");
            assert!(
                !report.is_empty()
                    && report
                        .lines()
                        .all(|l| ["ok ", "warn ", "FAIL "].iter().any(|p| l.starts_with(p))),
                "example {example:?}: {out:?}"
            );
            continue;
        }
        assert_eq!(code, Some(expected), "example {example:?}: {out:?}");
        if let Some(f) = stdout_to {
            fs::write(site.path(&f), &out.stdout).unwrap();
        }
    }
    assert!(site.path("out").join("batch-1.eml").exists());
}

#[test]
fn sighup_keeps_a_good_configuration_and_sigterm_stops() {
    let site = Site::new();
    run(site.cli().args(["list", "create", LIST]), None);
    let config = fs::read_to_string(&site.config)
        .unwrap()
        .replace("log_level = \"warn\"", "log_level = \"info\"");
    fs::write(&site.config, config).unwrap();
    let mut serving = site.serve();
    serving.wait_for_line("serving 1 list(s)");
    let inbound = site.dir.path().join("run/inbound.sock");
    assert!(inbound.exists());

    let policy = site.path("lists.d").join(format!("{LIST}.toml"));
    let good = fs::read_to_string(&policy).unwrap();
    fs::write(&policy, "batch_size = 0\n").unwrap();
    serving.signal("-HUP");
    let line = serving.wait_for_line("reload failed, keeping the running configuration");
    assert!(
        line.contains("batch_size"),
        "the reason is given: {:?}",
        serving.log
    );

    fs::write(&policy, good).unwrap();
    serving.signal("-HUP");
    serving.wait_for_line("configuration reloaded: 1 list(s)");

    let status = serving.stop();
    assert_eq!(status.code(), Some(0));
    assert!(!inbound.exists(), "the socket is removed on exit");
}

/// A missing `policy_dir` or a stray file in it is a configuration error (78): a typo must not
/// leave a list unmanaged. No list at all only warns. Relative paths in the file are read
/// against the file's directory, whatever the working directory.
#[test]
fn policy_dir_problems_are_configuration_errors() {
    let site = Site::new();
    let out = run(site.cli().arg("check-config"), None);
    assert_eq!(out.status.code(), Some(78), "missing policy_dir: {out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("lists.d"));

    let dir = site.path("lists.d");
    fs::create_dir_all(&dir).unwrap();
    let out = run(site.cli().arg("check-config"), None);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("warning: no lists"),
        "{out:?}"
    );

    for stray in ["README", "enc@lists.example.test.toml~", "notes.toml"] {
        fs::write(dir.join(stray), "x").unwrap();
        let out = run(site.cli().arg("check-config"), None);
        assert_eq!(out.status.code(), Some(78), "{stray}: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(stray),
            "{out:?}"
        );
        fs::remove_file(dir.join(stray)).unwrap();
    }

    // The same site with relative paths, checked from another working directory.
    let run_ok = run(site.cli().args(["list", "create", LIST]), None);
    assert_eq!(run_ok.status.code(), Some(0), "{run_ok:?}");
    let relative = site.path("relative.toml");
    fs::write(
        &relative,
        "policy_dir = \"lists.d\"\nkeyring_dir = \"keyrings\"\nstate_dir = \"state\"\n\
         log = \"stderr\"\n",
    )
    .unwrap();
    let out = run(
        listcrypt_cmd()
            .arg("-c")
            .arg(&relative)
            .arg("check-config")
            .current_dir("/"),
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 list(s)"),
        "{out:?}"
    );
}

/// The test's throwaway system user, created once; `None` (with the reason printed) when the
/// test does not run as root and so cannot create it nor start serve as root.
fn throwaway_user() -> Option<(String, u32)> {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: switching users needs root, and this test runs as a normal user");
        return None;
    }
    let name = "listcrypt-drop-test";
    if nix::unistd::User::from_name(name).unwrap().is_none() {
        // A parallel run may create it meanwhile: the lookup below decides, not this status.
        let _ = run(
            std::process::Command::new("useradd").args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                name,
            ]),
            None,
        );
    }
    let user = nix::unistd::User::from_name(name)
        .unwrap()
        .expect("useradd");
    Some((name.to_string(), user.uid.as_raw()))
}

/// The real, effective, saved and filesystem uids of a running process.
fn uids(pid: u32) -> Vec<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace()
        .skip(1)
        .map(|u| u.parse().unwrap())
        .collect()
}

fn chown_tree(path: &std::path::Path, uid: u32) {
    std::os::unix::fs::chown(path, Some(uid), None).unwrap();
    if path.is_dir() {
        for entry in fs::read_dir(path).unwrap() {
            chown_tree(&entry.unwrap().path(), uid);
        }
    }
}

/// Started as root with `user` set, serve binds, then runs as that user (all four uids, so
/// root cannot come back); the CLI run as root writes the list key as that user too.
#[test]
fn serve_and_cli_started_as_root_run_as_the_configured_user() {
    let Some((name, uid)) = throwaway_user() else {
        return;
    };
    let site = Site::new();
    chown_tree(site.dir.path(), uid);
    let config = fs::read_to_string(&site.config)
        .unwrap()
        .replace("log_level = \"warn\"", "log_level = \"info\"");
    fs::write(&site.config, format!("user = \"{name}\"\n{config}")).unwrap();

    let out = run(site.cli().args(["list", "create", LIST]), None);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let key = site.path("keyrings/lists").join(LIST).join("secret.pgp");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        fs::metadata(&key).unwrap().uid(),
        uid,
        "written as the user"
    );

    let mut serving = site.serve();
    serving.wait_for_line("serving 1 list(s)");
    assert_eq!(uids(serving.pid()), vec![uid; 4]);
    assert!(!serving.log.iter().any(|l| l.contains("running as root")));
    let inbound = site.dir.path().join("run/inbound.sock");
    assert_eq!(fs::metadata(&inbound).unwrap().uid(), uid);
    assert_eq!(serving.stop().code(), Some(0));
    assert!(!inbound.exists(), "the user removes its socket on exit");
}

/// Without `user`, serve started as root says so at every start.
#[test]
fn serve_as_root_without_user_warns() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: the warning is for root, and this test runs as a normal user");
        return;
    }
    let site = Site::new();
    let mut serving = site.serve();
    let line = serving.wait_for_line("running as root");
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("`user`"), "{line}");
}

/// A state directory the user cannot write stops serve with a message naming it.
#[test]
fn serve_refuses_a_state_dir_the_user_cannot_write() {
    let Some((name, _)) = throwaway_user() else {
        return;
    };
    let site = Site::new();
    fs::create_dir_all(site.path("state")).unwrap();
    let config = fs::read_to_string(&site.config).unwrap();
    fs::write(&site.config, format!("user = \"{name}\"\n{config}")).unwrap();
    let out = run(site.cli().arg("serve"), None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("state_dir") || stderr.contains("keyring_dir"),
        "{stderr}"
    );
    assert!(stderr.contains("not writable by user"), "{stderr}");
}
