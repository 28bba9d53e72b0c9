//! A throwaway Sendmail (Debian's sendmail-bin 8.17) in a debootstrap root, configured from
//! Debian's own sendmail.mc plus the admin snippets in `contrib/sendmail/` with loopback ports
//! swapped in. It shares the host's network: its listeners, Mailman's LMTP port and the SMTP
//! sink are all on 127.0.0.1; listcrypt's sockets live under the root's /run/listcrypt. Its
//! syslog lines are read from the root's /dev/log.

use super::debootstrap::{root_with_packages, Chroot};
use super::environment::repo_dir;
use super::files::{mkdir, read_lossy, write};
use super::mailman::snippet_section;
use super::net::wait_for_port;
use super::process::{run, terminate_pid};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The cached root: minbase plus Sendmail and what builds its .cf.
pub const CACHE_NAME: &str = "debootstrap-bookworm-sendmail";
pub const PACKAGES: [&str; 3] = ["sendmail-bin", "sendmail-cf", "m4"];
/// Where listcrypt.mc's MAIL_FILTER lines look for the sockets, inside the root.
pub const SOCKET_DIR: &str = "/run/listcrypt";
/// The list domain of `contrib/sendmail/`'s examples, replaced by the test's.
const EXAMPLE_DOMAIN: &str = "lists.example.org";
/// listcrypt.mc's line that drops double bounces.
const DROP_DOUBLE_BOUNCES: &str = "define(`confDOUBLE_BOUNCE_ADDRESS', `')";
/// Where `double-bounce-offhost.cf` sends double bounces: the sink.
pub const OFFHOST_POSTMASTER: &str = "postmaster@example.net";

pub struct SendmailSettings {
    pub domain: String,
    pub inbound_port: u16,
    pub submission_port: u16,
    pub outbound_port: u16,
    pub reinject_port: u16,
    pub lmtp_port: u16,
    pub sink_port: u16,
    /// Extra `To:ADDRESS RELAY` lines for the access map (lists beyond the snippet's).
    pub extra_access: Vec<String>,
    /// Test-only m4 lines, before the snippet.
    pub extra_m4: Vec<String>,
}

pub struct Sendmail {
    pub chroot: Chroot,
    pub inbound_port: u16,
    pub outbound_port: u16,
    pub reinject_port: u16,
    log: Arc<Mutex<Vec<String>>>,
    running: bool,
}

/// A copy of `contrib/sendmail/NAME`.
pub fn snippet(name: &str) -> String {
    read_lossy(&repo_dir().join("contrib/sendmail").join(name))
}

/// `key: value` of one section of `contrib/sendmail/mailman.cfg`.
pub fn mailman_snippet(section: &str) -> Vec<(String, String)> {
    snippet_section(&repo_dir().join("contrib/sendmail/mailman.cfg"), section)
}

/// Replaces `from` by `to` in `text`; panics if the snippet no longer has it.
fn swap(text: &str, from: &str, to: &str, what: &str) -> String {
    assert!(
        text.contains(from),
        "contrib/sendmail/{what} no longer contains {from:?}"
    );
    text.replace(from, to)
}

impl Sendmail {
    /// A fresh root from the cache (built on first use), configured; not yet started.
    pub fn configure(s: &SendmailSettings) -> Sendmail {
        let cache = root_with_packages(CACHE_NAME, &PACKAGES);
        let chroot = Chroot::fresh(&cache, "listcrypt-sendmail.");
        let mc = chroot.path("/etc/mail/sendmail.mc");
        let debian = read_lossy(&mc);

        let listcrypt = snippet("listcrypt.mc");
        let listcrypt = swap(
            &listcrypt,
            "Port=smtp,",
            &format!("Port={}, Addr=127.0.0.1,", s.inbound_port),
            "listcrypt.mc",
        );
        let listcrypt = swap(
            &listcrypt,
            "Port=submission,",
            &format!("Port={},", s.submission_port),
            "listcrypt.mc",
        );
        let listcrypt = swap(
            &listcrypt,
            "Port=10025,",
            &format!("Port={},", s.outbound_port),
            "listcrypt.mc",
        );
        let listcrypt = swap(
            &listcrypt,
            "Port=10026,",
            &format!("Port={},", s.reinject_port),
            "listcrypt.mc",
        );
        let listcrypt = swap(
            &listcrypt,
            "A=TCP $h 8024",
            &format!("A=TCP $h {}", s.lmtp_port),
            "listcrypt.mc",
        );

        // As listcrypt.mc says: its access_db line in place of Debian's, Debian's listeners
        // out, every other line of it before MAILER_DEFINITIONS.
        let (access_line, rest): (Vec<&str>, Vec<&str>) = listcrypt
            .lines()
            .partition(|l| l.starts_with("FEATURE(`access_db'"));
        assert_eq!(
            access_line.len(),
            1,
            "contrib/sendmail/listcrypt.mc: one access_db line"
        );
        let listcrypt = rest.join("\n");
        let mut out = Vec::new();
        let (mut daemons, mut access_db, mut inserted) = (0, 0, false);
        for line in debian.lines() {
            if line.starts_with("DAEMON_OPTIONS(") {
                daemons += 1;
                continue;
            }
            if line.starts_with("FEATURE(`access_db'") {
                access_db += 1;
                out.push(access_line[0].to_string());
                continue;
            }
            if line.starts_with("MAILER_DEFINITIONS") && !inserted {
                out.push("dnl --- test only: offline, loopback, deliveries to the sink".into());
                out.push("define(`confDOMAIN_NAME', `mx.lists.example.test')dnl".into());
                out.push("FEATURE(`accept_unresolvable_domains')dnl".into());
                out.push(format!(
                    "define(`ESMTP_MAILER_ARGS', `TCP $h {}')dnl",
                    s.sink_port
                ));
                out.extend(s.extra_m4.iter().cloned());
                out.push("dnl --- contrib/sendmail/listcrypt.mc".into());
                out.push(listcrypt.clone());
                inserted = true;
                continue;
            }
            out.push(line.to_string());
        }
        assert_eq!(
            (daemons, access_db, inserted),
            (2, 1, true),
            "Debian's sendmail.mc changed: DAEMON_OPTIONS, FEATURE(`access_db') or \
             MAILER_DEFINITIONS lines are not where contrib/sendmail/listcrypt.mc expects them"
        );
        let mc_text = out.join("\n") + "\n";
        write(&mc, &mc_text);
        // The same minus nobodyreturn, to show what that flag prevents.
        assert!(
            mc_text.contains("nobodyreturn,"),
            "listcrypt.mc sets no nobodyreturn"
        );
        write(
            &chroot.path("/etc/mail/without-nobodyreturn.mc"),
            mc_text.replace("nobodyreturn,", ""),
        );
        // Also double bounces to an address off the host (as a postmaster alias might forward
        // them) instead of dropped, to show what dropping them prevents without nobodyreturn.
        write(
            &chroot.path("/etc/mail/double-bounce-offhost.mc"),
            swap(
                &mc_text.replace("nobodyreturn,", ""),
                DROP_DOUBLE_BOUNCES,
                &format!("define(`confDOUBLE_BOUNCE_ADDRESS', `{OFFHOST_POSTMASTER}')"),
                "listcrypt.mc",
            ),
        );

        let mailertable = swap(
            &snippet("mailertable"),
            EXAMPLE_DOMAIN,
            &s.domain,
            "mailertable",
        );
        // Everything else goes to the subscribers' mail server, the sink.
        write(
            &chroot.path("/etc/mail/mailertable"),
            format!("{mailertable}.\tesmtp:[127.0.0.1]\n"),
        );
        let access = swap(&snippet("access"), EXAMPLE_DOMAIN, &s.domain, "access");
        let debian_access = read_lossy(&chroot.path("/etc/mail/access"));
        write(
            &chroot.path("/etc/mail/access"),
            format!(
                "{debian_access}\n{access}{}\n",
                s.extra_access
                    .iter()
                    .map(|a| format!("To:{a}\tRELAY\n"))
                    .collect::<String>()
            ),
        );
        // Offline: names from /etc/hosts only.
        write(
            &chroot.path("/etc/mail/service.switch"),
            "passwd files\nhosts files\naliases files\n",
        );
        let hosts = read_lossy(&chroot.path("/etc/hosts"));
        write(
            &chroot.path("/etc/hosts"),
            format!("127.0.0.1\tmx.lists.example.test\n{hosts}"),
        );
        mkdir(&chroot.path(SOCKET_DIR), 0o755);

        chroot.run_ok(&[
            "sh",
            "-c",
            "m4 /etc/mail/sendmail.mc > /etc/mail/sendmail.cf \
             && m4 /etc/mail/without-nobodyreturn.mc > /etc/mail/without-nobodyreturn.cf \
             && m4 /etc/mail/double-bounce-offhost.mc > /etc/mail/double-bounce-offhost.cf \
             && makemap hash /etc/mail/access < /etc/mail/access \
             && makemap hash /etc/mail/mailertable < /etc/mail/mailertable",
        ]);
        Sendmail {
            chroot,
            inbound_port: s.inbound_port,
            outbound_port: s.outbound_port,
            reinject_port: s.reinject_port,
            log: Arc::new(Mutex::new(Vec::new())),
            running: false,
        }
    }

    /// The directory inside the root where listcrypt must create its sockets, seen from the host.
    pub fn socket_dir(&self) -> PathBuf {
        self.chroot.path(SOCKET_DIR)
    }

    /// `sendmail -bd -q5s` in the root, its syslog read from the root's /dev/log.
    pub fn start(&mut self) {
        self.start_with_cf("/etc/mail/sendmail.cf");
    }

    /// Stops Sendmail and starts it again with another .cf of the root.
    pub fn restart_with_cf(&mut self, cf: &str) {
        self.stop();
        // Until the old daemon's listeners are gone, the new one cannot bind them.
        for port in [self.inbound_port, self.outbound_port, self.reinject_port] {
            super::process::wait_for("Sendmail's ports to close", Duration::from_secs(30), || {
                (!super::net::port_open(port)).then_some(())
            });
        }
        self.start_with_cf(cf);
    }

    fn start_with_cf(&mut self, cf: &str) {
        let dev_log = self.chroot.path("/dev/log");
        let _ = std::fs::remove_file(&dev_log);
        let socket = UnixDatagram::bind(&dev_log).expect("bind the root's /dev/log");
        let log = self.log.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 8192];
            while let Ok(n) = socket.recv(&mut buf) {
                log.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        });
        self.chroot.run_ok(&[
            "/usr/sbin/sendmail-mta",
            "-bd",
            "-q5s",
            "-OMilter.LogLevel=12",
            &format!("-C{cf}"),
        ]);
        self.running = true;
        for port in [self.inbound_port, self.outbound_port, self.reinject_port] {
            wait_for_port("Sendmail", port, Duration::from_secs(60));
        }
    }

    pub fn master_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.chroot.path("/run/sendmail/mta/sendmail.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        self.running = false;
        if let Some(pid) = self.master_pid() {
            terminate_pid(pid, Duration::from_secs(5));
        }
        for pid in self.chroot.pids() {
            terminate_pid(pid, Duration::from_secs(3));
        }
    }

    /// `mailq` in the root.
    pub fn queue_listing(&self) -> String {
        let out = run(
            &mut self.chroot.command(&["/usr/sbin/sendmail-mta", "-bp"]),
            None,
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn queue_is_empty(&self) -> bool {
        self.queue_listing().contains("is empty")
    }

    /// Every syslog line so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    pub fn log_tail(&self, n: usize) -> String {
        super::text::tail(&self.log(), n)
    }
}

impl Drop for Sendmail {
    fn drop(&mut self) {
        self.stop();
    }
}
