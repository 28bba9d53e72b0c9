//! Commands run to completion, and the long-running children of the end-to-end tests, each
//! stopped by its PID.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Runs a command to completion, feeding `stdin`, whatever the exit status. Without `stdin`, a
/// stdout or stderr the caller redirected (e.g. to a log file) stays so.
pub fn run(cmd: &mut Command, stdin: Option<&[u8]>) -> Output {
    let Some(data) = stdin else {
        return cmd
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    };
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let mut pipe = child.stdin.take().expect("piped stdin");
    let data = data.to_vec();
    // A separate thread, so a child that answers before reading all input cannot deadlock us.
    let writer = thread::spawn(move || {
        let _ = pipe.write_all(&data);
    });
    let out = child.wait_with_output().expect("wait for child");
    let _ = writer.join();
    out
}

/// Panics with the command's output unless it exits 0; returns stdout.
pub fn run_ok(cmd: &mut Command, stdin: Option<&[u8]>) -> Vec<u8> {
    let out = run(cmd, stdin);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Polls `f` every 100 ms until it returns `Some`, or panics after `timeout` with `what`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        thread::sleep(Duration::from_millis(100));
    }
}

pub fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid)
}

fn is_zombie(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
                .unwrap_or(false)
        })
        .unwrap_or(true)
}

/// Waits up to `timeout` for `pid` to be gone, checking every `every`.
pub fn wait_for_exit(pid: u32, timeout: Duration, every: Duration) {
    let start = Instant::now();
    while pid_alive(pid) && start.elapsed() < timeout {
        thread::sleep(every);
    }
}

pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
}

/// SIGTERM, then SIGKILL if `pid` is still there after `grace`. Returns whether it was alive.
pub fn terminate_pid(pid: u32, grace: Duration) -> bool {
    if !pid_alive(pid) {
        return false;
    }
    signal(pid, "TERM");
    wait_for_exit(pid, grace, Duration::from_millis(50));
    if pid_alive(pid) {
        signal(pid, "KILL");
    }
    true
}

/// PIDs whose command line mentions `needle` (a path unique to this test run).
pub fn pids_mentioning(needle: &str) -> Vec<u32> {
    let me = std::process::id();
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(needle))
                .unwrap_or(false)
        })
        .collect()
}

/// A child process that is stopped (SIGTERM, then SIGKILL) and reaped when dropped.
pub struct ChildGuard {
    pub name: String,
    pub child: Child,
}

impl ChildGuard {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM and wait up to `grace` for the exit; SIGKILL after that.
    pub fn stop(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        signal(self.child.id(), "TERM");
        let start = Instant::now();
        while start.elapsed() < grace {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            thread::sleep(Duration::from_millis(50));
        }
        eprintln!(
            "{} did not stop within {grace:?} of SIGTERM; killing it",
            self.name
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}
