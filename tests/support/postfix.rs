//! A throwaway Postfix instance (`postfix -c /ABS/etc start`), configured from the
//! admin-facing snippets `postfix/main.cf` and `postfix/master.cf` plus the settings a test
//! instance needs (own queue, loopback ports, a log file, chroot off).

use super::environment::repo_dir;
use super::files::{chmod, mkdir, read_lossy, write};
use super::process::{pid_alive, run, run_ok, terminate_pid, wait_for};
use super::text::tail;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Where the pieces of the test world live; everything else comes from the snippets.
pub struct PostfixSettings {
    pub base: PathBuf,
    /// Public inbound smtpd (the snippet's "smtp inet").
    pub inbound_port: u16,
    /// Mailman's smtpd (the snippet's "127.0.0.1:10025").
    pub outbound_port: u16,
    /// Reinjection smtpd (the snippet's "127.0.0.1:10026").
    pub reinject_port: u16,
    /// Where the subscribers' mail goes (`default_transport`).
    pub sink_port: u16,
    pub inbound_socket: PathBuf,
    pub outbound_socket: PathBuf,
    /// Mailman's `$data_dir`, where it writes postfix_lmtp and postfix_domains.
    pub mailman_data_dir: PathBuf,
}

pub struct Postfix {
    pub etc: PathBuf,
    pub queue: PathBuf,
    pub maillog: PathBuf,
    running: bool,
}

/// The snippet's admin-facing values and what the test instance uses instead.
fn rewrites(s: &PostfixSettings) -> Vec<(&'static str, String)> {
    vec![
        (
            "unix:/listcrypt/inbound.sock",
            format!("unix:{}", s.inbound_socket.display()),
        ),
        (
            "unix:/listcrypt/outbound.sock",
            format!("unix:{}", s.outbound_socket.display()),
        ),
        (
            "/var/lib/mailman3/data/",
            format!("{}/", s.mailman_data_dir.display()),
        ),
    ]
}

impl Postfix {
    /// Writes main.cf and master.cf under `base/etc` and creates the queue and log dirs.
    pub fn configure(s: &PostfixSettings) -> Postfix {
        let etc = mkdir(&s.base.join("etc"), 0o755);
        // queue_directory: root-owned, 0755; data_directory: owned by postfix.
        let queue = mkdir(&s.base.join("spool"), 0o755);
        let data = mkdir(&s.base.join("data"), 0o700);
        run_ok(Command::new("chown").arg("postfix:").arg(&data), None);
        let log = mkdir(&s.base.join("log"), 0o755);
        let maillog = log.join("maillog");

        let snippet_main = snippet_settings(&repo_dir().join("postfix/main.cf"));
        let own_main = vec![
            ("compatibility_level", "3.6".to_string()),
            ("queue_directory", queue.display().to_string()),
            ("data_directory", data.display().to_string()),
            ("mail_owner", "postfix".into()),
            ("setgid_group", "postdrop".into()),
            ("myhostname", "mx.lists.example.test".into()),
            ("mydomain", "lists.example.test".into()),
            ("myorigin", "$myhostname".into()),
            ("inet_interfaces", "127.0.0.1".into()),
            ("inet_protocols", "ipv4".into()),
            ("mynetworks", "127.0.0.0/8".into()),
            ("mydestination", String::new()),
            ("local_recipient_maps", String::new()),
            ("alias_maps", String::new()),
            ("alias_database", String::new()),
            ("smtp_dns_support_level", "disabled".into()),
            ("smtpd_peername_lookup", "no".into()),
            ("smtpd_tls_security_level", "none".into()),
            ("smtp_tls_security_level", "none".into()),
            ("biff", "no".into()),
            ("queue_run_delay", "5s".into()),
            ("minimal_backoff_time", "5s".into()),
            ("maximal_backoff_time", "10s".into()),
            ("maximal_queue_lifetime", "1h".into()),
            ("bounce_queue_lifetime", "1h".into()),
            (
                "default_transport",
                format!("smtp:[127.0.0.1]:{}", s.sink_port),
            ),
            ("maillog_file", maillog.display().to_string()),
            ("maillog_file_prefixes", log.display().to_string()),
        ];
        let mut main_cf = String::from(
            "# Throwaway Postfix for listcrypt's end-to-end test.\n\
             # Part 1: what a test instance needs.\n",
        );
        for (name, value) in &own_main {
            assert!(
                !snippet_main.iter().any(|(n, _)| n == name),
                "postfix/main.cf sets {name}, which the test harness sets itself; \
                 update tests/support/postfix.rs"
            );
            main_cf.push_str(&format!("{name} = {value}\n"));
        }
        main_cf.push_str("# Part 2: postfix/main.cf, with test paths.\n");
        let subs = rewrites(s);
        let mut used = vec![false; subs.len()];
        for (name, value) in &snippet_main {
            main_cf.push_str(&format!("{name} = {}\n", rewrite(value, &subs, &mut used)));
        }
        write(&etc.join("main.cf"), main_cf);

        let mut master_cf = String::from(
            "# Throwaway Postfix for listcrypt's end-to-end test; every service chroot n.\n",
        );
        for line in BASE_SERVICES {
            master_cf.push_str(line);
            master_cf.push('\n');
        }
        master_cf.push_str("# From postfix/master.cf, with test ports, paths and chroot n.\n");
        let services = [
            ("smtp", format!("127.0.0.1:{}", s.inbound_port)),
            ("127.0.0.1:10025", format!("127.0.0.1:{}", s.outbound_port)),
            ("127.0.0.1:10026", format!("127.0.0.1:{}", s.reinject_port)),
        ];
        let mut seen = vec![false; services.len()];
        for entry in snippet_entries(&repo_dir().join("postfix/master.cf")) {
            let mut fields: Vec<String> = entry[0].split_whitespace().map(String::from).collect();
            assert!(
                fields.len() >= 8,
                "postfix/master.cf: bad entry {:?}",
                entry[0]
            );
            let index = services
                .iter()
                .position(|(name, _)| *name == fields[0])
                .unwrap_or_else(|| {
                    panic!(
                        "postfix/master.cf has service {:?} that the test harness does not \
                         know; update tests/support/postfix.rs",
                        fields[0]
                    )
                });
            seen[index] = true;
            fields[0] = services[index].1.clone();
            fields[4] = "n".into();
            master_cf.push_str(&fields.join(" "));
            master_cf.push('\n');
            for option in &entry[1..] {
                master_cf.push_str(&rewrite(option, &subs, &mut used));
                master_cf.push('\n');
            }
        }
        for ((name, _), seen) in services.iter().zip(seen) {
            assert!(seen, "postfix/master.cf no longer defines {name}");
        }
        for ((from, _), used) in subs.iter().zip(used) {
            assert!(
                used,
                "postfix/main.cf and master.cf no longer mention {from}; \
                 update tests/support/postfix.rs"
            );
        }
        write(&etc.join("master.cf"), master_cf);

        let postfix = Postfix {
            etc,
            queue,
            maillog,
            running: false,
        };
        // Catch syntax errors here rather than as a silent exit of `postfix start`.
        postfix.postconf(&["-n"]);
        postfix
    }

    /// Puts `milter` (e.g. `inet:127.0.0.1:PORT`, tempfail when unreachable) after listcrypt
    /// in the `smtpd_milters` of the inbound listener on `inbound_port` (before `start`).
    pub fn add_inbound_milter_after_listcrypt(&self, milter: &str, inbound_port: u16) {
        let path = self.etc.join("master.cf");
        let text = read_lossy(&path);
        let service = format!("127.0.0.1:{inbound_port} ");
        let mut in_service = false;
        let mut done = false;
        let mut out = Vec::new();
        for line in text.lines() {
            if !line.starts_with([' ', '\t']) {
                in_service = line.starts_with(&service);
            }
            let value = line.trim().strip_prefix("-o smtpd_milters=");
            match value {
                Some(value) if in_service && !done => {
                    // master.cf's `-o { name = value }` form keeps the spaces of both entries.
                    out.push(format!(
                        "  -o {{ smtpd_milters = {value}, {{ {milter}, default_action=tempfail }} }}"
                    ));
                    done = true;
                }
                _ => out.push(line.to_string()),
            }
        }
        assert!(
            done,
            "no smtpd_milters option for the inbound listener in {}",
            path.display()
        );
        write(&path, out.join("\n") + "\n");
        let effective = self.postconf(&[
            "-P",
            &format!("127.0.0.1:{inbound_port}/inet/smtpd_milters"),
        ]);
        assert!(
            effective
                .trim_end()
                .ends_with(&format!("{{ {milter}, default_action=tempfail }}"))
                && effective.contains("inbound.sock"),
            "the inbound listener's smtpd_milters is not listcrypt then {milter}: {effective}"
        );
    }

    pub fn postconf(&self, args: &[&str]) -> String {
        let out = run_ok(
            Command::new("postconf").arg("-c").arg(&self.etc).args(args),
            None,
        );
        String::from_utf8_lossy(&out).into_owned()
    }

    pub fn start(&mut self) {
        let mut cmd = Command::new("postfix");
        cmd.arg("-c").arg(&self.etc).arg("start");
        let out = run(&mut cmd, None);
        // `postfix start` says why it failed (a port taken, a bad setting) only in its log,
        // which goes with the test's directory: give its tail here.
        assert!(
            out.status.success(),
            "{cmd:?} failed ({}):\n--- stdout\n{}\n--- stderr\n{}\n--- maillog (tail)\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log_tail(20)
        );
        self.running = true;
        wait_for(
            "the Postfix master pid file",
            Duration::from_secs(20),
            || self.master_pid(),
        );
    }

    pub fn master_pid(&self) -> Option<u32> {
        fs::read_to_string(self.queue.join("pid/master.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
            .filter(|&pid| pid_alive(pid))
    }

    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        self.running = false;
        let pid = self.master_pid();
        let _ = run(
            Command::new("postfix").arg("-c").arg(&self.etc).arg("stop"),
            None,
        );
        if let Some(pid) = pid {
            terminate_pid(pid, Duration::from_secs(5));
        }
    }

    /// `postqueue -p` output.
    pub fn queue_listing(&self) -> String {
        let out = run(
            Command::new("postqueue").arg("-c").arg(&self.etc).arg("-p"),
            None,
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn queue_is_empty(&self) -> bool {
        self.queue_listing().contains("Mail queue is empty")
    }

    pub fn log(&self) -> String {
        read_lossy(&self.maillog)
    }

    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log(), n)
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Services every Postfix needs, as in Debian's master.cf, all chroot n.
const BASE_SERVICES: &[&str] = &[
    "pickup    unix  n       -       n       60      1       pickup",
    "cleanup   unix  n       -       n       -       0       cleanup",
    "qmgr      unix  n       -       n       300     1       qmgr",
    "tlsmgr    unix  -       -       n       1000?   1       tlsmgr",
    "rewrite   unix  -       -       n       -       -       trivial-rewrite",
    "bounce    unix  -       -       n       -       0       bounce",
    "defer     unix  -       -       n       -       0       bounce",
    "trace     unix  -       -       n       -       0       bounce",
    "verify    unix  -       -       n       -       1       verify",
    "flush     unix  n       -       n       1000?   0       flush",
    "proxymap  unix  -       -       n       -       -       proxymap",
    "proxywrite unix -       -       n       -       1       proxymap",
    "smtp      unix  -       -       n       -       -       smtp",
    "relay     unix  -       -       n       -       -       smtp",
    "showq     unix  n       -       n       -       -       showq",
    "error     unix  -       -       n       -       -       error",
    "retry     unix  -       -       n       -       -       error",
    "discard   unix  -       -       n       -       -       discard",
    "lmtp      unix  -       -       n       -       -       lmtp",
    "anvil     unix  -       -       n       -       1       anvil",
    "scache    unix  -       -       n       -       1       scache",
    "postlog   unix-dgram n  -       n       -       1       postlogd",
];

fn rewrite(text: &str, subs: &[(&str, String)], used: &mut [bool]) -> String {
    let mut text = text.to_string();
    for (i, (from, to)) in subs.iter().enumerate() {
        if text.contains(from) {
            used[i] = true;
            text = text.replace(from, to);
        }
    }
    text
}

/// `name = value` settings of a main.cf file (comments dropped, continuation lines joined).
pub fn snippet_settings(path: &Path) -> Vec<(String, String)> {
    let text = read_lossy(path);
    let mut settings: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with('#') || line.trim().is_empty() {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            let last = settings
                .last_mut()
                .unwrap_or_else(|| panic!("{}: continuation first", path.display()));
            last.1.push(' ');
            last.1.push_str(line.trim());
            continue;
        }
        let (name, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("{}: not a setting: {line:?}", path.display()));
        settings.push((name.trim().to_string(), value.trim().to_string()));
    }
    settings
}

/// The entries of a master.cf file: the service line, then its continuation lines.
pub fn snippet_entries(path: &Path) -> Vec<Vec<String>> {
    let text = read_lossy(path);
    let mut entries: Vec<Vec<String>> = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with('#') || line.trim().is_empty() {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            entries
                .last_mut()
                .unwrap_or_else(|| panic!("{}: continuation first", path.display()))
                .push(line.to_string());
        } else {
            entries.push(vec![line.to_string()]);
        }
    }
    entries
}

/// Makes `dir` readable and searchable by other users (Postfix runs as `postfix`) and checks
/// that its parents are searchable too.
pub fn make_searchable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    chmod(dir, 0o755);
    for d in dir.ancestors().skip(1) {
        let mode = fs::metadata(d).map(|m| m.permissions().mode()).unwrap_or(0);
        assert!(
            mode & 0o001 != 0,
            "{} is not searchable by user postfix (mode {mode:o}); put the test's tempdir elsewhere",
            d.display()
        );
    }
}
