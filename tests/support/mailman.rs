//! A throwaway Mailman 3 core (Debian's `mailman3`): SQLite, its own var dir, LMTP and REST on
//! free loopback ports, and the `[mta]` section taken from the admin snippet
//! `postfix/mailman.cfg`.

use super::environment::repo_dir;
use super::files::{mkdir, read_lossy, write};
use super::net::port_open;
use super::process::{pids_mentioning, run, run_ok, terminate_pid, wait_for_exit};
use super::text::tail;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub struct MailmanSettings {
    pub base: PathBuf,
    pub lmtp_port: u16,
    pub rest_port: u16,
    /// Where Mailman sends: Postfix's outbound smtpd.
    pub smtp_port: u16,
    /// Postfix's config directory, for the `postmap -c` Mailman runs on its maps.
    pub postfix_etc: PathBuf,
}

pub struct Mailman {
    pub config: PathBuf,
    pub var: PathBuf,
    pub lmtp_port: u16,
    running: bool,
}

/// `key: value` pairs of one `[section]` of an INI file such as `postfix/mailman.cfg`.
pub fn snippet_section(path: &Path, section: &str) -> Vec<(String, String)> {
    let text = read_lossy(path);
    let mut current = String::new();
    let mut pairs = Vec::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || trimmed.is_empty() {
            continue;
        }
        if let Some(name) = trimmed.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
            current = name.to_string();
        } else if current == section {
            let (key, value) = trimmed
                .split_once(':')
                .unwrap_or_else(|| panic!("{}: not a setting: {line:?}", path.display()));
            pairs.push((key.trim().to_string(), value.trim().to_string()));
        }
    }
    pairs
}

impl Mailman {
    pub fn configure(s: &MailmanSettings) -> Mailman {
        let etc = mkdir(&s.base.join("etc"), 0o755);
        let var = mkdir(&s.base.join("var"), 0o755);
        let mta_cfg = etc.join("postfix-mta.cfg");
        write(
            &mta_cfg,
            format!(
                "[postfix]\n\
                 # The test's Postfix has no /etc/postfix/main.cf to find.\n\
                 postmap_command: /usr/sbin/postmap -c {}\n\
                 transport_file_type: hash\n",
                s.postfix_etc.display()
            ),
        );

        // The [mta] section of the snippet, with the test's ports. The snippet's ports must
        // agree with postfix/master.cf (outbound smtpd 127.0.0.1:10025).
        let snippet = snippet_section(&repo_dir().join("postfix/mailman.cfg"), "mta");
        let get = |key: &str| {
            snippet
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
                .unwrap_or_else(|| panic!("postfix/mailman.cfg: [mta] has no {key}"))
        };
        assert_eq!(
            (get("smtp_host"), get("smtp_port")),
            ("127.0.0.1", "10025"),
            "postfix/mailman.cfg must send to the outbound smtpd of postfix/master.cf"
        );
        assert_eq!(get("incoming"), "mailman.mta.postfix.LMTP");
        let mut mta = String::new();
        for (key, value) in &snippet {
            let value = match key.as_str() {
                "lmtp_port" => s.lmtp_port.to_string(),
                "smtp_port" => s.smtp_port.to_string(),
                "configuration" => mta_cfg.display().to_string(),
                _ => value.clone(),
            };
            mta.push_str(&format!("{key}: {value}\n"));
        }

        // Who counts as the poster, from the admin snippet too (`sender_headers`).
        let sender_headers = snippet_section(&repo_dir().join("postfix/mailman.cfg"), "mailman")
            .into_iter()
            .find(|(k, _)| k == "sender_headers")
            .map(|(_, v)| v)
            .expect("postfix/mailman.cfg: [mailman] has sender_headers");
        let config = etc.join("mailman.cfg");
        write(
            &config,
            format!(
                "# Throwaway Mailman 3 core for listcrypt's end-to-end test.\n\
                 [mailman]\n\
                 site_owner: postmaster@example.test\n\
                 layout: e2e\n\
                 sender_headers: {sender_headers}\n\
                 \n\
                 [paths.e2e]\n\
                 var_dir: {var}\n\
                 queue_dir: $var_dir/queue\n\
                 bin_dir: /usr/lib/mailman3/bin\n\
                 list_data_dir: $var_dir/lists\n\
                 log_dir: $var_dir/logs\n\
                 lock_dir: $var_dir/locks\n\
                 data_dir: $var_dir/data\n\
                 cache_dir: $var_dir/cache\n\
                 etc_dir: {etc}\n\
                 ext_dir: $var_dir/ext\n\
                 messages_dir: $var_dir/messages\n\
                 archive_dir: $var_dir/archives\n\
                 template_dir: $var_dir/templates\n\
                 pid_file: $var_dir/master.pid\n\
                 lock_file: $lock_dir/master.lck\n\
                 \n\
                 [database]\n\
                 class: mailman.database.sqlite.SQLiteDatabase\n\
                 url: sqlite:///$DATA_DIR/mailman.db\n\
                 \n\
                 [webservice]\n\
                 hostname: 127.0.0.1\n\
                 port: {rest}\n\
                 admin_user: restadmin\n\
                 admin_pass: e2e-only\n\
                 \n\
                 [runner.nntp]\n\
                 # No news gateway; as root its periodic `mailman gatenews` only logs errors.\n\
                 start: no\n\
                 \n\
                 [dmarc]\n\
                 # Offline: without this DMARC mitigation fetches the list and shunts posts.\n\
                 org_domain_data_url: file:///usr/share/publicsuffix/public_suffix_list.dat\n\
                 \n\
                 [mta]\n\
                 # From postfix/mailman.cfg, with the test's ports.\n\
                 {mta}",
                var = var.display(),
                etc = etc.display(),
                rest = s.rest_port,
            ),
        );
        Mailman {
            config,
            var,
            lmtp_port: s.lmtp_port,
            running: false,
        }
    }

    /// `mailman -C CFG --run-as-root ARGS...`
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("mailman");
        // Importing postfix/listcrypt_mailman.py must not leave __pycache__ in the checkout.
        cmd.env("PYTHONDONTWRITEBYTECODE", "1");
        cmd.arg("-C")
            .arg(&self.config)
            .arg("--run-as-root")
            .args(args);
        cmd
    }

    pub fn run(&self, args: &[&str]) -> String {
        let out = run_ok(&mut self.command(args), None);
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Starts the master runner; `wait_until_ready` waits for its LMTP runner.
    pub fn start(&mut self) {
        // The master runner keeps the stdout and stderr it inherits: give it a file, not a
        // pipe that we would wait on until it exits.
        let log = fs::File::create(self.var.join("start.log")).expect("create start.log");
        run_ok(
            self.command(&["start"])
                .stdout(log.try_clone().unwrap())
                .stderr(log),
            None,
        );
        self.running = true;
    }

    pub fn wait_until_ready(&self) {
        // Start-up takes 5-8 s on an idle machine, much longer on a busy one.
        let deadline = std::time::Instant::now() + Duration::from_secs(180);
        while !port_open(self.lmtp_port) {
            if std::time::Instant::now() > deadline {
                panic!(
                    "Mailman's LMTP runner is not listening on 127.0.0.1:{} after 180 s:\n{}\n{}",
                    self.lmtp_port,
                    read_lossy(&self.var.join("start.log")),
                    self.logs_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn master_pid(&self) -> Option<u32> {
        fs::read_to_string(self.var.join("master.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        self.running = false;
        let master = self.master_pid();
        let _ = run(&mut self.command(&["stop"]), None);
        if let Some(pid) = master {
            wait_for_exit(pid, Duration::from_secs(15), Duration::from_millis(100));
            terminate_pid(pid, Duration::from_secs(2));
        }
        // Runners the master left behind carry our config path on their command line.
        for pid in pids_mentioning(&self.config.display().to_string()) {
            terminate_pid(pid, Duration::from_secs(3));
        }
    }

    /// Creates the list with its owner and members (no welcome messages).
    pub fn create_list(&self, list: &str, owner: &str, members: &[&str]) {
        self.run(&["create", "-o", owner, list]);
        if members.is_empty() {
            return;
        }
        let addresses = members.join("\n") + "\n";
        run_ok(
            &mut self.command(&["addmembers", "-W", "-", list]),
            Some(addresses.as_bytes()),
        );
    }

    /// Applies `postfix/listcrypt_mailman.py`'s `encrypted_list` to the list, as the snippet
    /// tells admins to.
    pub fn apply_encrypted_list_settings(&self, list: &str) {
        run_ok(
            self.command(&[
                "shell",
                "-l",
                list,
                "-r",
                "listcrypt_mailman.encrypted_list",
            ])
            .env("PYTHONPATH", repo_dir().join("postfix")),
            None,
        );
    }

    /// Deletes the list from Mailman's database but not from Postfix's maps (see
    /// `mailman_hooks.py`): Mailman's LMTP then refuses what Postfix still routes to it.
    pub fn forget_list(&self, list: &str) {
        run_ok(
            self.command(&["shell", "-l", list, "-r", "mailman_hooks.forget_list"])
                .env("PYTHONPATH", repo_dir().join("tests/support")),
            None,
        );
    }

    /// Sets `key: value` in `[section]` of the generated mailman.cfg (before `start`):
    /// replaces the key's line in that section, or adds it (and the section if needed).
    pub fn set_config(&self, section: &str, key: &str, value: &str) {
        let text = read_lossy(&self.config);
        let header = format!("[{section}]");
        let mut out: Vec<String> = Vec::new();
        let (mut in_section, mut seen_section, mut done) = (false, false, false);
        for line in text.lines() {
            let trimmed = line.trim();
            if trimmed.starts_with('[') {
                if in_section && !done {
                    out.push(format!("{key}: {value}"));
                    done = true;
                }
                in_section = trimmed == header;
                seen_section |= in_section;
            } else if in_section
                && !done
                && trimmed
                    .split_once(':')
                    .is_some_and(|(k, _)| k.trim() == key && !trimmed.starts_with('#'))
            {
                out.push(format!("{key}: {value}"));
                done = true;
                continue;
            }
            out.push(line.to_string());
        }
        if !done {
            if !seen_section {
                out.push(String::new());
                out.push(header);
            }
            out.push(format!("{key}: {value}"));
        }
        write(&self.config, out.join("\n") + "\n");
    }

    /// `mailman shell -l LIST -r mailman_hooks.FUNCTION ARGS...` (tests/support/mailman_hooks.py);
    /// returns what the function printed.
    pub fn hook(&self, list: &str, function: &str, args: &[&str]) -> String {
        let run_name = format!("mailman_hooks.{function}");
        let mut cmd_args = vec!["shell", "-l", list, "-r", run_name.as_str()];
        cmd_args.extend_from_slice(args);
        let out = run_ok(
            self.command(&cmd_args)
                .env("PYTHONPATH", repo_dir().join("tests/support")),
            None,
        );
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Message files waiting in Mailman's queues (`var/queue/*/`), e.g. `out/…pck`.
    pub fn queued_files(&self) -> Vec<String> {
        let mut files = Vec::new();
        let Ok(dirs) = fs::read_dir(self.var.join("queue")) else {
            return files;
        };
        for dir in dirs.filter_map(|e| e.ok()) {
            let name = dir.file_name().to_string_lossy().into_owned();
            if let Ok(entries) = fs::read_dir(dir.path()) {
                for e in entries.filter_map(|e| e.ok()) {
                    files.push(format!("{name}/{}", e.file_name().to_string_lossy()));
                }
            }
        }
        files.sort();
        files
    }

    /// Every log file under var/logs, the last `n` lines of each.
    pub fn logs_tail(&self, n: usize) -> String {
        let mut out = String::new();
        let dir = self.var.join("logs");
        let mut files: Vec<_> = fs::read_dir(&dir)
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        files.sort();
        for f in files {
            out.push_str(&format!(
                "--- {}\n{}\n",
                f.display(),
                tail(&read_lossy(&f), n)
            ));
        }
        out
    }
}

impl Drop for Mailman {
    fn drop(&mut self) {
        self.stop();
    }
}
