//! `listcrypt doctor` against a throwaway Postfix built from the shipped snippets (as the
//! end-to-end tests build it; not started: doctor reads `postconf`), listcrypt's config and a
//! mailman.cfg from `postfix/mailman.cfg`. The guide's setup gives no FAIL; each deliberate
//! misconfiguration, made with Postfix's own `postconf -e`/`-P`/`-F`, gives exactly its FAIL.

mod support;

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use support::environment::{repo_dir, require_environment};
use support::files::{mkdir, read_lossy, write};
use support::listcrypt::Listcrypt;
use support::mailman::{snippet_section, Mailman, MailmanSettings};
use support::net::free_ports;
use support::postfix::{make_searchable, Postfix, PostfixSettings};
use support::process::{run, run_ok};

const LIST: &str = "enc@lists.example.test";
const KEY_ADDRESS: &str = "enc-key@lists.example.test";

struct Fixture {
    postfix: Postfix,
    listcrypt: Listcrypt,
    mailman_cfg: PathBuf,
    inbound: String,
    outbound: String,
    reinject: String,
    _dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        require_environment(&["postconf", "postmap"]);
        let dir = tempfile::Builder::new()
            .prefix("listcrypt-doctor.")
            .tempdir_in("/tmp")
            .expect("tempdir in /tmp");
        let base = dir.path().to_path_buf();
        make_searchable(&base);
        let [inbound_port, outbound_port, reinject_port, sink_port] = free_ports();
        let socket_dir = mkdir(&base.join("run"), 0o755);
        let listcrypt = Listcrypt::configure(&base.join("listcrypt"), &socket_dir, reinject_port);
        listcrypt.cli(&["list", "create", LIST]);
        mkdir(&base.join("mailman"), 0o755);
        // Where the throwaway Mailman core below keeps its data (and writes Postfix's maps).
        let mailman_data_dir = base.join("mailman-core/var/data");
        let postfix = Postfix::configure(&PostfixSettings {
            base: base.join("postfix"),
            inbound_port,
            outbound_port,
            reinject_port,
            sink_port,
            inbound_socket: listcrypt.inbound_socket.clone(),
            outbound_socket: listcrypt.outbound_socket.clone(),
            mailman_data_dir: mailman_data_dir.clone(),
        });
        // What postfix/main.cf asks the admin to edit: its example key address replaced by
        // this list's (its message_size_limit is used as shipped).
        let lmtp_map = format!("hash:{}/postfix_lmtp", mailman_data_dir.display());
        postfix.postconf(&[
            "-e",
            &format!("relay_recipient_maps = {lmtp_map}, inline:{{ {KEY_ADDRESS}=OK }}"),
        ]);
        // Mailman's own Postfix maps for the list, written by `mailman create` (no Mailman
        // runs: its LMTP port is the default 8024 that the mailman.cfg below implies).
        let mailman = Mailman::configure(&MailmanSettings {
            base: base.join("mailman-core"),
            lmtp_port: 8024,
            rest_port: 8001,
            smtp_port: outbound_port,
            postfix_etc: postfix.etc.clone(),
        });
        mailman.create_list(LIST, "owner@example.net", &[]);
        // mailman.cfg from the admin snippet, Mailman pointed at the outbound listener.
        let snippet = |section: &str, key: &str| {
            snippet_section(&repo_dir().join("postfix/mailman.cfg"), section)
                .into_iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v)
                .unwrap_or_else(|| panic!("postfix/mailman.cfg: [{section}] has {key}"))
        };
        let sender_headers = snippet("mailman", "sender_headers");
        let max_recipients = snippet("mta", "max_recipients");
        let mailman_cfg = base.join("mailman/mailman.cfg");
        write(
            &mailman_cfg,
            format!(
                "[mailman]\nsender_headers: {sender_headers}\n\n[mta]\nsmtp_port: {outbound_port}\nmax_recipients: {max_recipients}\n"
            ),
        );
        Fixture {
            postfix,
            listcrypt,
            mailman_cfg,
            inbound: format!("127.0.0.1:{inbound_port}"),
            outbound: format!("127.0.0.1:{outbound_port}"),
            reinject: format!("127.0.0.1:{reinject_port}"),
            _dir: dir,
        }
    }

    /// doctor's exit code and report.
    fn doctor(&self) -> (Option<i32>, String) {
        let out = run(
            self.listcrypt
                .command(&["doctor", "--postfix-config"])
                .arg(&self.postfix.etc)
                .arg("--mailman-config")
                .arg(&self.mailman_cfg),
            None,
        );
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            stdout
                .lines()
                .all(|l| ["ok ", "warn ", "FAIL "].iter().any(|p| l.starts_with(p))),
            "one line per check: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), stdout)
    }

    fn files(&self) -> Vec<PathBuf> {
        vec![
            self.postfix.etc.join("main.cf"),
            self.postfix.etc.join("master.cf"),
            self.listcrypt.config.clone(),
            self.mailman_cfg.clone(),
        ]
    }

    /// Applies `break_it`, checks that doctor FAILs exactly `check`, then restores the files.
    fn expect_only_fail(&self, check: &str, break_it: impl FnOnce(&Fixture)) {
        let saved: Vec<(PathBuf, String)> = self
            .files()
            .into_iter()
            .map(|f| (f.clone(), read_lossy(&f)))
            .collect();
        break_it(self);
        let (code, report) = self.doctor();
        let fails: Vec<&str> = report
            .lines()
            .filter_map(|l| l.strip_prefix("FAIL "))
            .map(|l| l.split(':').next().unwrap_or(l))
            .collect();
        assert_eq!(fails, [check], "misconfigured {check}:\n{report}");
        assert_eq!(code, Some(1), "a FAIL exits 1:\n{report}");
        for (path, text) in saved {
            write(&path, text);
        }
    }

    fn postconf(&self, args: &[&str]) {
        self.postfix.postconf(args);
    }
}

fn set_listcrypt(fx: &Fixture, key: &str, value: &str) {
    let text = read_lossy(&fx.listcrypt.config);
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with(&format!("{key} =")))
        .collect();
    write(
        &fx.listcrypt.config,
        format!("{key} = {value}\n{}\n", kept.join("\n")),
    );
}

#[test]
fn doctor_passes_the_guide_setup_and_names_each_misconfiguration() {
    let fx = Fixture::new();
    let (code, report) = fx.doctor();
    assert!(!report.contains("FAIL"), "the guide's setup:\n{report}");
    assert_eq!(code, Some(0), "{report}");
    for check in [
        "inbound milter",
        "inbound milter last",
        "outbound milter",
        "non_smtpd_milters",
        "internal_mail_filter_classes",
        "milter socket chroot",
        "key address",
        "message_size_limit",
        "reinjection service",
        "reinjection loopback",
        "mailman smtp_port",
        "mailman sender_headers",
    ] {
        assert!(
            report.lines().any(|l| l == format!("ok {check}")),
            "{check}:\n{report}"
        );
    }
    // listcrypt is not running: its sockets are absent, but the configured group may write.
    assert!(report.contains("warn milter socket access:"), "{report}");

    let inbound_socket = format!("unix:{}", fx.listcrypt.inbound_socket.display());
    fx.expect_only_fail("inbound milter", |fx| {
        fx.postconf(&["-P", &format!("{}/inet/smtpd_milters=", fx.inbound)]);
    });
    fx.expect_only_fail("inbound milter last", |fx| {
        let port = fx.inbound.rsplit_once(':').unwrap().1.parse().unwrap();
        fx.postfix
            .add_inbound_milter_after_listcrypt("inet:127.0.0.1:9", port);
    });
    fx.expect_only_fail("inbound milter_default_action", |fx| {
        // The entry without its own default_action, the service's default accept.
        fx.postconf(&[
            "-P",
            &format!("{}/inet/smtpd_milters={inbound_socket}", fx.inbound),
            &format!("{}/inet/milter_default_action=accept", fx.inbound),
        ]);
    });
    fx.expect_only_fail("outbound milter", |fx| {
        fx.postconf(&["-P", &format!("{}/inet/smtpd_milters=", fx.outbound)]);
    });
    fx.expect_only_fail("non_smtpd_milters", |fx| {
        fx.postconf(&["-e", "non_smtpd_milters ="]);
    });
    fx.expect_only_fail("internal_mail_filter_classes", |fx| {
        fx.postconf(&["-e", "internal_mail_filter_classes = notify"]);
    });
    fx.expect_only_fail("milter socket chroot", |fx| {
        // Chrooted, the listener looks for the socket under its queue directory.
        fx.postconf(&["-F", &format!("{}/inet/chroot=y", fx.inbound)]);
    });
    fx.expect_only_fail("milter socket access", |_| {
        set_listcrypt(&fx, "socket_mode", "\"0600\"");
    });
    fx.expect_only_fail("key address", |fx| {
        // The snippet's active line: Mailman's map only.
        let main = fx.postconf_value("relay_recipient_maps");
        let lmtp_map = main.split(',').next().unwrap().trim().to_string();
        fx.postconf(&["-e", &format!("relay_recipient_maps = {lmtp_map}")]);
    });
    fx.expect_only_fail("message_size_limit", |fx| {
        // Postfix's default.
        fx.postconf(&["-X", "message_size_limit"]);
    });
    fx.expect_only_fail("reinjection service", |fx| {
        fx.postconf(&[
            "-P",
            &format!("{}/inet/smtpd_milters={inbound_socket}", fx.reinject),
            &format!("{}/inet/receive_override_options=", fx.reinject),
        ]);
    });
    fx.expect_only_fail("reinjection loopback", |fx| {
        // A bare port listens on every inet_interfaces address.
        let master = fx.postfix.etc.join("master.cf");
        let port = fx.reinject.rsplit_once(':').unwrap().1;
        let text = read_lossy(&master).replace(&format!("{} ", fx.reinject), &format!("{port} "));
        write(&master, text);
        fx.postconf(&["-e", "inet_interfaces = all"]);
    });
    fx.expect_only_fail("mailman smtp_port", |fx| {
        let text = read_lossy(&fx.mailman_cfg);
        let port = fx.outbound.rsplit_once(':').unwrap().1;
        write(
            &fx.mailman_cfg,
            text.replace(&format!("smtp_port: {port}"), "smtp_port: 25"),
        );
    });
    fx.expect_only_fail("mailman sender_headers", |fx| {
        // Mailman's default: from from_ reply-to sender.
        let text = read_lossy(&fx.mailman_cfg);
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with("sender_headers"))
            .collect();
        write(&fx.mailman_cfg, kept.join("\n") + "\n");
    });
}

impl Fixture {
    fn postconf_value(&self, name: &str) -> String {
        let out = run_ok(
            Command::new("postconf")
                .arg("-c")
                .arg(&self.postfix.etc)
                .arg("-h")
                .arg(name),
            None,
        );
        String::from_utf8_lossy(&out).trim().to_string()
    }
}

/// Without a Postfix configuration doctor still reports, as one FAIL line.
#[test]
fn doctor_without_postfix_fails_with_a_fix() {
    let fx = Fixture::new();
    let missing = fx.postfix.etc.join("nowhere");
    fs::create_dir_all(&missing).unwrap();
    let out = run(
        fx.listcrypt
            .command(&["doctor", "--postfix-config"])
            .arg(&missing)
            .arg("--mailman-config")
            .arg(&fx.mailman_cfg),
        None,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.starts_with("FAIL postconf:"), "{stdout}");
}

/// With listcrypt serving, the sockets themselves are judged: the configured group postfix
/// may write them, and a socket only its owner may write is a FAIL.
#[test]
fn doctor_judges_the_running_daemons_sockets() {
    let mut fx = Fixture::new();
    fx.listcrypt.serve();
    let (code, report) = fx.doctor();
    assert!(
        report.lines().any(|l| l == "ok milter socket access"),
        "{report}"
    );
    assert_eq!(code, Some(0), "{report}");
    support::files::chmod(&fx.listcrypt.outbound_socket, 0o600);
    let (code, report) = fx.doctor();
    let fails: Vec<&str> = report.lines().filter(|l| l.starts_with("FAIL ")).collect();
    assert_eq!(fails.len(), 1, "{report}");
    assert!(
        fails[0].starts_with("FAIL milter socket access: ")
            && fails[0].contains("outbound.sock")
            && !fails[0].contains("inbound.sock"),
        "{report}"
    );
    assert_eq!(code, Some(1), "{report}");
}
