//! Debian 12 roots made with `debootstrap --variant=minbase bookworm` from this machine's own
//! mirror, cached under target/ and copied to a fresh root per run, for software that must not
//! be installed on the test machine (Sendmail conflicts with the host's Postfix), and the clean
//! root tests/debian_chroot.rs installs the package into.

use super::environment::repo_dir;
use super::files::{mkdir, write};
use super::postfix::make_searchable;
use super::process::{run, run_ok};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// The minbase tree of tests/debian_chroot.rs, and apt's cache of .debs across runs.
const MINBASE: &str = "target/debootstrap-bookworm";
pub const DEBS: &str = "target/debootstrap-bookworm-debs";

/// The Debian mirror this machine's apt uses for bookworm (deb822 `.sources` or `.list`).
pub fn debian_mirror() -> String {
    let mut files: Vec<PathBuf> = fs::read_dir("/etc/apt/sources.list.d")
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    files.push(PathBuf::from("/etc/apt/sources.list"));
    for file in files {
        let text = fs::read_to_string(&file).unwrap_or_default();
        let name = file.to_string_lossy();
        if name.ends_with(".sources") {
            for stanza in text.split("\n\n") {
                let field = |key: &str| {
                    stanza
                        .lines()
                        .find_map(|l| l.strip_prefix(key))
                        .map(|v| v.split_whitespace().map(String::from).collect::<Vec<_>>())
                        .unwrap_or_default()
                };
                let debian = field("Types:").iter().any(|t| t == "deb")
                    && field("Suites:").iter().any(|s| s == "bookworm");
                if let (true, Some(uri)) = (debian, field("URIs:").first()) {
                    return uri.clone();
                }
            }
        } else if name.ends_with(".list") {
            for line in text.lines() {
                let words: Vec<&str> = line
                    .split_whitespace()
                    .filter(|w| !w.starts_with('['))
                    .collect();
                if words.len() >= 3 && words[0] == "deb" && words[2] == "bookworm" {
                    return words[1].to_string();
                }
            }
        }
    }
    panic!("no bookworm mirror in /etc/apt/sources.list.d or /etc/apt/sources.list");
}

/// The clean minbase tree, made once (as tests/debian_chroot.rs makes it) and then reused.
pub fn minbase_root() -> PathBuf {
    let cache = repo_dir().join(MINBASE);
    if cache.join("etc/debian_version").is_file() {
        return cache;
    }
    let partial = repo_dir().join(format!("{MINBASE}.partial"));
    if partial.exists() {
        fs::remove_dir_all(&partial).unwrap();
    }
    let mirror = debian_mirror();
    let took = Instant::now();
    run_ok(
        Command::new("debootstrap")
            .args(["--variant=minbase", "bookworm"])
            .arg(&partial)
            .arg(&mirror),
        None,
    );
    eprintln!("debootstrap from {mirror} took {:?}", took.elapsed());
    let policy = partial.join("usr/sbin/policy-rc.d");
    write(
        &policy,
        "#!/bin/sh\n# No service starts in this build root.\nexit 101\n",
    );
    fs::set_permissions(&policy, fs::Permissions::from_mode(0o755)).unwrap();
    move_debs(
        &partial.join("var/cache/apt/archives"),
        &repo_dir().join(DEBS),
    );
    fs::rename(&partial, &cache).unwrap();
    cache
}

/// The minbase tree plus `packages` (apt-get install inside it, no Recommends), cached as
/// `target/<name>`; built once, then reused.
pub fn root_with_packages(name: &str, packages: &[&str]) -> PathBuf {
    let cache = repo_dir().join("target").join(name);
    if cache.join(".packages-installed").is_file() {
        return cache;
    }
    let minbase = minbase_root();
    let partial = repo_dir().join("target").join(format!("{name}.partial"));
    if partial.exists() {
        fs::remove_dir_all(&partial).unwrap();
    }
    run_ok(
        Command::new("cp").arg("-a").arg(&minbase).arg(&partial),
        None,
    );
    let took = Instant::now();
    {
        let root = Chroot::at(partial.clone());
        let archives = root.path("/var/cache/apt/archives");
        if let Ok(debs) = fs::read_dir(repo_dir().join(DEBS)) {
            for entry in debs.flatten() {
                fs::copy(entry.path(), archives.join(entry.file_name())).unwrap();
            }
        }
        root.run_ok(&["apt-get", "update"]);
        let mut install = vec!["apt-get", "install", "-y", "--no-install-recommends"];
        install.extend_from_slice(packages);
        root.run_ok(&install);
        move_debs(&archives, &repo_dir().join(DEBS));
    }
    write(&partial.join(".packages-installed"), packages.join("\n"));
    fs::rename(&partial, &cache).unwrap();
    eprintln!(
        "installed {packages:?} into {} in {:?}",
        cache.display(),
        took.elapsed()
    );
    cache
}

/// Moves the .deb files of `from` into `to` (apt's cache across runs).
pub fn move_debs(from: &Path, to: &Path) {
    mkdir(to, 0o755);
    for entry in fs::read_dir(from).unwrap().flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "deb") {
            let dest = to.join(entry.file_name());
            if !dest.exists() {
                fs::copy(&path, &dest).unwrap();
            }
            fs::remove_file(&path).unwrap();
        }
    }
}

/// A root with /proc mounted (unmounted when dropped); `fresh` copies a cached tree to a new
/// tempdir, which goes with it.
pub struct Chroot {
    dir: Option<tempfile::TempDir>,
    pub root: PathBuf,
    proc_mounted: bool,
}

impl Chroot {
    /// A fresh copy of `cache` under /tmp.
    pub fn fresh(cache: &Path, prefix: &str) -> Chroot {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in("/tmp")
            .unwrap();
        make_searchable(dir.path());
        let root = dir.path().join("root");
        run_ok(Command::new("cp").arg("-a").arg(cache).arg(&root), None);
        let mut chroot = Chroot::at(root);
        chroot.dir = Some(dir);
        chroot
    }

    /// `root` itself, with /proc mounted.
    fn at(root: PathBuf) -> Chroot {
        run_ok(
            Command::new("mount")
                .args(["-t", "proc", "proc"])
                .arg(root.join("proc")),
            None,
        );
        Chroot {
            dir: None,
            root,
            proc_mounted: true,
        }
    }

    /// A path inside the root, seen from the host.
    pub fn path(&self, inside: &str) -> PathBuf {
        self.root.join(inside.trim_start_matches('/'))
    }

    /// `chroot ROOT args...` with a clean environment.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("chroot");
        cmd.arg(&self.root)
            .args(args)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", "/root")
            .env("LANG", "C.UTF-8")
            .env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    }

    /// Runs `args` in the root; panics with its output unless it exits 0; returns both outputs.
    pub fn run_ok(&self, args: &[&str]) -> String {
        self.run_ok_input(args, None)
    }

    /// [`Chroot::run_ok`] with `stdin` fed to the command.
    pub fn run_ok_input(&self, args: &[&str], stdin: Option<&[u8]>) -> String {
        let out = run(&mut self.command(args), stdin);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "chroot: {args:?} failed ({}):\n{text}",
            out.status
        );
        text
    }

    /// Processes whose root directory is this root (what a daemon started in it left running).
    pub fn pids(&self) -> Vec<u32> {
        let Ok(dir) = fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| fs::read_link(format!("/proc/{pid}/root")).is_ok_and(|r| r == self.root))
            .collect()
    }

    /// Where the tempdir is, for messages; `keep` leaves it on disk.
    pub fn keep(&mut self) -> Option<PathBuf> {
        self.dir.take().map(|d| d.keep())
    }
}

impl Drop for Chroot {
    fn drop(&mut self) {
        for pid in self.pids() {
            super::process::terminate_pid(pid, std::time::Duration::from_secs(3));
        }
        if self.proc_mounted {
            let proc = self.root.join("proc");
            let ok = Command::new("umount")
                .arg(&proc)
                .status()
                .is_ok_and(|s| s.success())
                || Command::new("umount")
                    .arg("-l")
                    .arg(&proc)
                    .status()
                    .is_ok_and(|s| s.success());
            if !ok {
                // Never delete through a mount point: leave the tree for a human.
                if let Some(dir) = self.dir.take() {
                    eprintln!(
                        "cannot unmount {}; kept {}",
                        proc.display(),
                        dir.keep().display()
                    );
                }
                return;
            }
        }
        if std::env::var_os("KEEP_E2E_TMPDIR").is_some() {
            if let Some(dir) = self.dir.take() {
                eprintln!("keeping {} (KEEP_E2E_TMPDIR)", dir.keep().display());
            }
        }
    }
}
