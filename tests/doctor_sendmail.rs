//! `listcrypt doctor --sendmail-cf` against the sendmail.cf that m4 builds from Debian's
//! sendmail.mc and `contrib/sendmail/listcrypt.mc` (as tests/e2e_sendmail.rs builds it; not
//! started: doctor reads the .cf), listcrypt's config as the README's Sendmail section sets it,
//! and a mailman.cfg from `contrib/sendmail/mailman.cfg`. The shipped setup gives no FAIL; each
//! deliberate misconfiguration of a copy of the .cf or of the configs gives exactly its line.

mod support;

use std::path::PathBuf;
use support::environment::require_environment;
use support::files::{mkdir, read_lossy, write};
use support::listcrypt::Listcrypt;
use support::net::free_ports;
use support::postfix::make_searchable;
use support::process::run;
use support::sendmail::{mailman_snippet, Sendmail, SendmailSettings, SOCKET_DIR};

const LIST: &str = "enc@lists.example.test";

struct Fixture {
    listcrypt: Listcrypt,
    cf: PathBuf,
    mailman_cfg: PathBuf,
    outbound_port: u16,
    reinject_port: u16,
    /// The warn lines of the shipped setup (no running daemon, no Mailman REST API).
    baseline_warns: Vec<String>,
    _dir: tempfile::TempDir,
}

fn checks<'a>(report: &'a str, level: &str) -> Vec<&'a str> {
    report
        .lines()
        .filter_map(|l| l.strip_prefix(level))
        .map(|l| l.split(':').next().unwrap_or(l))
        .collect()
}

impl Fixture {
    fn new() -> Fixture {
        require_environment(&[]);
        let dir = tempfile::Builder::new()
            .prefix("listcrypt-doctor-sendmail.")
            .tempdir_in("/tmp")
            .expect("tempdir in /tmp");
        let base = dir.path().to_path_buf();
        make_searchable(&base);
        let [inbound_port, submission_port, outbound_port, reinject_port, lmtp_port, sink_port] =
            free_ports();
        let cf = base.join("sendmail.cf");
        {
            let sendmail = Sendmail::configure(&SendmailSettings {
                domain: "lists.example.test".into(),
                inbound_port,
                submission_port,
                outbound_port,
                reinject_port,
                lmtp_port,
                sink_port,
                extra_access: Vec::new(),
                extra_m4: Vec::new(),
            });
            // The support code binds the public listener to loopback for the test; the
            // shipped line listens on every address, as doctor expects of it.
            let text = read_lossy(&sendmail.chroot.path("/etc/mail/sendmail.cf"));
            let test_line = format!("Name=MTA-v4, Port={inbound_port}, Addr=127.0.0.1,");
            assert!(text.contains(&test_line), "the test's MTA-v4 listener");
            write(&cf, text.replace(&test_line, "Name=MTA-v4, Port=smtp,"));
        }
        let socket_dir = mkdir(&base.join("run"), 0o755);
        let listcrypt = Listcrypt::configure(&base.join("listcrypt"), &socket_dir, reinject_port);
        listcrypt.cli(&["list", "create", LIST]);
        // README, "Sendmail": DSNs of decrypted posts go back into Mailman; the sockets where
        // listcrypt.mc's MAIL_FILTER lines look for them (in unix: rather than local: form).
        listcrypt.set_config("inbound_envelope_sender", "\"list-bounces\"");
        for which in ["inbound", "outbound"] {
            listcrypt.set_config(
                &format!("{which}_socket"),
                &format!("\"unix:{SOCKET_DIR}/{which}.sock\""),
            );
        }
        let mut mailman = String::from("[mta]\n");
        for (key, value) in mailman_snippet("mta") {
            let value = if key == "smtp_port" {
                outbound_port.to_string()
            } else {
                value
            };
            mailman.push_str(&format!("{key}: {value}\n"));
        }
        let mailman_cfg = base.join("mailman.cfg");
        write(&mailman_cfg, &mailman);
        let mut fx = Fixture {
            listcrypt,
            cf,
            mailman_cfg,
            outbound_port,
            reinject_port,
            baseline_warns: Vec::new(),
            _dir: dir,
        };
        let (code, report) = fx.doctor();
        assert!(!report.contains("FAIL"), "the shipped setup:\n{report}");
        assert_eq!(code, Some(0), "{report}");
        fx.baseline_warns = checks(&report, "warn ")
            .into_iter()
            .map(String::from)
            .collect();
        fx
    }

    /// doctor's exit code and report.
    fn doctor(&self) -> (Option<i32>, String) {
        let out = run(
            self.listcrypt
                .command(&["doctor", "--sendmail-cf"])
                .arg(&self.cf)
                .arg("--mailman-config")
                .arg(&self.mailman_cfg),
            None,
        );
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            !stdout.is_empty()
                && stdout
                    .lines()
                    .all(|l| ["ok ", "warn ", "FAIL "].iter().any(|p| l.starts_with(p))),
            "one line per check: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), stdout)
    }

    /// Applies `break_it`, runs doctor, restores the files; returns the report.
    fn broken(&self, break_it: impl FnOnce(&Fixture)) -> (Option<i32>, String) {
        let files = [
            self.cf.clone(),
            self.listcrypt.config.clone(),
            self.mailman_cfg.clone(),
        ];
        let saved: Vec<String> = files.iter().map(|f| read_lossy(f)).collect();
        break_it(self);
        let result = self.doctor();
        for (path, text) in files.iter().zip(saved) {
            write(path, text);
        }
        result
    }

    fn expect_only_fail(&self, check: &str, break_it: impl FnOnce(&Fixture)) {
        let (code, report) = self.broken(break_it);
        assert_eq!(
            checks(&report, "FAIL "),
            [check],
            "misconfigured {check}:\n{report}"
        );
        assert_eq!(code, Some(1), "a FAIL exits 1:\n{report}");
    }

    fn expect_only_warn(&self, check: &str, break_it: impl FnOnce(&Fixture)) {
        let (code, report) = self.broken(break_it);
        let mut expected = self.baseline_warns.clone();
        expected.push(check.to_string());
        expected.sort();
        let mut warns = checks(&report, "warn ");
        warns.sort();
        assert_eq!(warns, expected, "misconfigured {check}:\n{report}");
        assert!(checks(&report, "FAIL ").is_empty(), "{report}");
        assert_eq!(code, Some(0), "a warn exits 0:\n{report}");
    }

    /// Replaces `from` by `to` in the .cf; panics if the shipped .cf has no `from`.
    fn edit_cf(&self, from: &str, to: &str) {
        let text = read_lossy(&self.cf);
        assert!(text.contains(from), "sendmail.cf has no {from:?}");
        write(&self.cf, text.replacen(from, to, 1));
    }
}

#[test]
fn doctor_passes_the_shipped_sendmail_setup_and_names_each_misconfiguration() {
    let fx = Fixture::new();
    let (_, report) = fx.doctor();
    for check in [
        "inbound_envelope_sender",
        "sendmail nobodyreturn",
        "sendmail DoubleBounceAddress",
        "sendmail PostmasterCopy",
        "sendmail inbound filter",
        "sendmail outbound filter",
        "sendmail filter timeouts",
        "sendmail public listeners",
        "sendmail outbound listener",
        "sendmail reinjection listener",
        "sendmail InputMailFilters",
    ] {
        assert!(
            report.lines().any(|l| l == format!("ok {check}")),
            "{check}:\n{report}"
        );
    }
    // Postfix is not looked at.
    assert!(!report.contains("postconf"), "{report}");

    fx.expect_only_fail("inbound_envelope_sender", |fx| {
        fx.listcrypt
            .set_config("inbound_envelope_sender", "\"keep\"");
    });
    fx.expect_only_fail("sendmail nobodyreturn", |fx| {
        fx.edit_cf("restrictexpand,nobodyreturn,", "restrictexpand,");
    });
    // Sendmail's default double-bounce address: postmaster.
    fx.expect_only_warn("sendmail DoubleBounceAddress", |fx| {
        fx.edit_cf("\nO DoubleBounceAddress\n", "\n#O DoubleBounceAddress\n");
    });
    // What define(`confCOPY_ERRORS_TO', `postmaster') writes.
    fx.expect_only_warn("sendmail PostmasterCopy", |fx| {
        fx.edit_cf(
            "#O PostmasterCopy=Postmaster",
            "O PostmasterCopy=postmaster",
        );
    });
    fx.expect_only_fail("sendmail inbound filter", |fx| {
        fx.edit_cf(
            "S=local:/run/listcrypt/inbound.sock",
            "S=local:/var/run/other/inbound.sock",
        );
    });
    fx.expect_only_fail("sendmail outbound filter", |fx| {
        fx.edit_cf("outbound.sock, F=T,", "outbound.sock, F=R,");
    });
    fx.expect_only_fail("sendmail filter timeouts", |fx| {
        // E: at Sendmail's default 5m, not above message_timeout 300 s.
        fx.edit_cf(
            "inbound.sock, F=T, T=C:30s;S:10m;R:10m;E:15m",
            "inbound.sock, F=T, T=C:30s;S:10m;R:10m",
        );
    });
    fx.expect_only_fail("sendmail public listeners", |fx| {
        fx.edit_cf(
            "Name=MTA-v4, Port=smtp, InputMailFilters=listcrypt-in",
            "Name=MTA-v4, Port=smtp",
        );
    });
    fx.expect_only_fail("sendmail outbound listener", |fx| {
        fx.edit_cf(
            &format!(
                "Port={}, Addr=127.0.0.1, InputMailFilters=listcrypt-out",
                fx.outbound_port
            ),
            &format!("Port={}, Addr=127.0.0.1", fx.outbound_port),
        );
    });
    fx.expect_only_fail("sendmail outbound listener", |fx| {
        // Mailman sending to port 25 skips the outbound filter.
        let text = read_lossy(&fx.mailman_cfg);
        let line = format!("smtp_port: {}", fx.outbound_port);
        assert!(text.contains(&line));
        write(&fx.mailman_cfg, text.replace(&line, "smtp_port: 25"));
    });
    fx.expect_only_fail("sendmail reinjection listener", |fx| {
        fx.edit_cf(
            &format!("Port={}, Addr=127.0.0.1\n", fx.reinject_port),
            &format!(
                "Port={}, Addr=127.0.0.1, InputMailFilters=listcrypt-in\n",
                fx.reinject_port
            ),
        );
    });
    fx.expect_only_fail("sendmail InputMailFilters", |fx| {
        // What INPUT_MAIL_FILTER writes (listcrypt.mc warns against it).
        fx.edit_cf(
            "\n#O InputMailFilters\n",
            "\nO InputMailFilters=listcrypt-in\n",
        );
    });
}
