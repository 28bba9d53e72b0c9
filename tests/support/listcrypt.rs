//! The listcrypt binary under test; for the end-to-end tests its config file, its admin
//! commands, and `serve` as a child process whose stderr goes to a log file in the tempdir.

use super::files::{mkdir, read_lossy, write};
use super::process::{run, wait_for, ChildGuard};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// The listcrypt binary cargo built for this test run.
pub fn listcrypt_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_listcrypt"))
}

/// The listcrypt binary with no `LISTCRYPT_*` overrides inherited from the caller's environment
/// (they override config keys).
pub fn listcrypt_cmd() -> Command {
    let mut cmd = Command::new(listcrypt_bin());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("LISTCRYPT_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

pub struct Listcrypt {
    pub config: PathBuf,
    pub log: PathBuf,
    pub inbound_socket: PathBuf,
    pub outbound_socket: PathBuf,
    /// Where the per-list policy files live (`<policy_dir>/<list>.toml`).
    pub policy_dir: PathBuf,
    daemon: Option<ChildGuard>,
}

impl Listcrypt {
    /// Writes `base/listcrypt.toml`; sockets go to `socket_dir`, which Postfix must reach.
    pub fn configure(base: &Path, socket_dir: &Path, reinject_port: u16) -> Listcrypt {
        let base = mkdir(base, 0o755);
        let inbound_socket = socket_dir.join("inbound.sock");
        let outbound_socket = socket_dir.join("outbound.sock");
        let config = base.join("listcrypt.toml");
        let dir = |name: &str| mkdir(&base.join(name), 0o700).display().to_string();
        let policy_dir = base.join("lists.d");
        write(
            &config,
            format!(
                "# listcrypt, as started by the end-to-end test\n\
                 inbound_socket = \"unix:{inbound}\"\n\
                 outbound_socket = \"unix:{outbound}\"\n\
                 reinject_smtp = \"127.0.0.1:{reinject_port}\"\n\
                 policy_dir = \"{policy}\"\n\
                 keyring_dir = \"{keyring}\"\n\
                 state_dir = \"{state}\"\n\
                 socket_group = \"postfix\"\n\
                 log = \"stderr\"\n\
                 log_level = \"info\"\n",
                inbound = inbound_socket.display(),
                outbound = outbound_socket.display(),
                policy = dir("lists.d"),
                keyring = dir("keyrings"),
                state = dir("state"),
            ),
        );
        Listcrypt {
            config,
            log: base.join("listcrypt.log"),
            inbound_socket,
            outbound_socket,
            policy_dir,
            daemon: None,
        }
    }

    /// The policy file of `list` (written by `listcrypt list create`).
    pub fn policy_path(&self, list: &str) -> PathBuf {
        self.policy_dir.join(format!("{list}.toml"))
    }

    /// Sets `key = value` (a TOML value, e.g. `25` or `"hold"`) in `list`'s policy file,
    /// replacing the line that sets the key or appending one.
    pub fn set_policy(&self, list: &str, key: &str, value: &str) {
        let path = self.policy_path(list);
        let text = read_lossy(&path);
        let mut found = false;
        let mut lines: Vec<String> = text
            .lines()
            .map(|line| {
                let is_key = line
                    .split_once('=')
                    .is_some_and(|(k, _)| k.trim() == key && !line.trim_start().starts_with('#'));
                if is_key {
                    found = true;
                    format!("{key} = {value}")
                } else {
                    line.to_string()
                }
            })
            .collect();
        if !found {
            lines.push(format!("{key} = {value}"));
        }
        write(&path, lines.join("\n") + "\n");
    }

    /// Sets the top-level `key = value` (a TOML value) in the config file, replacing the line
    /// that sets it or adding one before the first table; a running daemon sees it after a
    /// restart.
    pub fn set_config(&self, key: &str, value: &str) {
        let text = read_lossy(&self.config);
        let (top, tables) = match text.find("\n[") {
            Some(at) => text.split_at(at + 1),
            None => (text.as_str(), ""),
        };
        let mut lines: Vec<String> = top
            .lines()
            .filter(|line| line.split_once('=').is_none_or(|(k, _)| k.trim() != key))
            .map(String::from)
            .collect();
        lines.push(format!("{key} = {value}"));
        write(&self.config, lines.join("\n") + "\n" + tables);
    }

    /// Replaces the `[limits]` table at the end of the config file with `lines` (`key =
    /// value`); a running daemon sees it after a restart.
    pub fn set_limits(&self, lines: &[String]) {
        let text = read_lossy(&self.config);
        let kept = text.split("\n[limits]\n").next().unwrap_or("");
        let mut out = kept.trim_end().to_string();
        out.push_str("\n[limits]\n");
        for line in lines {
            out.push_str(line);
            out.push('\n');
        }
        write(&self.config, out);
    }

    /// Puts the shared state in PostgreSQL (`database_url`, password from
    /// `database_password_file`), as every MX host of a multi-host site is configured. Call it
    /// before `set_limits`: the keys must stay above the `[limits]` table.
    pub fn use_database(&self, url: &str, password_file: &Path) {
        self.add_setting("database_url", &format!("{url:?}"));
        self.add_setting(
            "database_password_file",
            &format!("{:?}", password_file.display().to_string()),
        );
    }

    /// Appends `key = value` (a TOML value) to the top level of the config file; before
    /// `set_limits`, which starts the `[limits]` table.
    pub fn add_setting(&self, key: &str, value: &str) {
        let text = read_lossy(&self.config);
        assert!(
            !text.contains("\n[limits]\n"),
            "add_setting after set_limits would put {key} into [limits]"
        );
        write(&self.config, format!("{text}{key} = {value}\n"));
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = listcrypt_cmd();
        cmd.arg("-c").arg(&self.config).args(args);
        cmd
    }

    /// Runs an admin command; panics with its output unless it exits 0.
    pub fn cli(&self, args: &[&str]) -> Output {
        let out = run(&mut self.command(args), None);
        if !out.status.success() {
            panic!(
                "`listcrypt -c {} {}` failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
                self.config.display(),
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        out
    }

    /// `listcrypt serve` in the background; returns once both sockets exist. Sockets left
    /// behind by a killed daemon do not count: it waits for the new daemon's own.
    pub fn serve(&mut self) {
        assert!(self.daemon.is_none(), "listcrypt is already serving");
        let stale = [inode(&self.inbound_socket), inode(&self.outbound_socket)];
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open listcrypt log");
        let child = self
            .command(&["serve"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start listcrypt serve");
        let mut guard = ChildGuard {
            name: "listcrypt serve".into(),
            child,
        };
        wait_for(
            "listcrypt's milter sockets",
            Duration::from_secs(30),
            || {
                if let Ok(Some(status)) = guard.child.try_wait() {
                    panic!(
                        "listcrypt serve exited ({status}) before its sockets appeared:\n{}",
                        read_lossy(&self.log)
                    );
                }
                let fresh = |path: &Path, old: Option<(u64, i64, i64)>| {
                    inode(path).is_some_and(|ino| Some(ino) != old)
                };
                (fresh(&self.inbound_socket, stale[0]) && fresh(&self.outbound_socket, stale[1]))
                    .then_some(())
            },
        );
        self.daemon = Some(guard);
    }

    pub fn pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(|d| d.pid())
    }

    /// SIGTERM and wait for the exit (SIGKILL after 20 s). Returns the exit status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut daemon = self.daemon.take()?;
        daemon.stop(Duration::from_secs(20))
    }

    /// SIGKILL, as a crash would: no shutdown, sockets left behind. Returns the exit status.
    pub fn kill(&mut self) -> Option<std::process::ExitStatus> {
        let mut daemon = self.daemon.take()?;
        let _ = daemon.child.kill();
        daemon.child.wait().ok()
    }

    /// Whether the daemon died (e.g. after an outside `kill -9`): its exit status, once; the
    /// daemon is then forgotten, so that `serve` can start the next one (a supervisor's loop).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.daemon.as_mut()?.child.try_wait().ok()??;
        self.daemon = None;
        Some(status)
    }

    /// The daemon's peak resident set so far (`VmHWM` of /proc/PID/status), in KiB.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    pub fn log_text(&self) -> String {
        read_lossy(&self.log)
    }
}

/// Identifies one incarnation of a file: inode and change time (an inode number alone can be
/// reused at once for the replacement).
fn inode(path: &Path) -> Option<(u64, i64, i64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.ino(), m.ctime(), m.ctime_nsec()))
}

impl Drop for Listcrypt {
    fn drop(&mut self) {
        self.stop();
    }
}
