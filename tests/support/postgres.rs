//! A throwaway PostgreSQL cluster: Debian's `postgresql` binaries, `initdb` in a temp dir,
//! listening only on a unix socket in that dir (no TCP port), run as the unprivileged user
//! `nobody` (postgres refuses root), and stopped by its PID when dropped.
//!
//! The superuser is `listcrypt` with a password (scram-sha-256 on the socket), so the store's
//! password handling is exercised as a site would use it.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const USER: &str = "listcrypt";
pub const PASSWORD: &str = "correct horse battery staple";

pub struct Postgres {
    dir: tempfile::TempDir,
    child: Option<Child>,
    uid: u32,
    gid: u32,
}

/// Where Debian puts the server binaries (postgresql-15 in Debian 12; the newest wins).
fn bindir() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is installed (scripts/test installs the postgresql package)")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    found.sort_by_key(|p| {
        let v = p
            .parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str());
        v.and_then(|v| v.parse::<u32>().ok()).unwrap_or(0)
    });
    found
        .pop()
        .expect("an initdb under /usr/lib/postgresql/*/bin")
}

impl Postgres {
    /// Makes a new cluster and starts it.
    pub fn start() -> Postgres {
        let dir = tempfile::tempdir().unwrap();
        let nobody = nix::unistd::User::from_name("nobody")
            .unwrap()
            .expect("a user nobody");
        let (uid, gid) = (nobody.uid.as_raw(), nobody.gid.as_raw());
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, PASSWORD).unwrap();
        std::os::unix::fs::chown(&pwfile, Some(uid), Some(gid)).unwrap();
        let out = Command::new(bindir().join("initdb"))
            .args(["--no-sync", "--auth=scram-sha-256", "--encoding=UTF8"])
            .arg(format!("--username={USER}"))
            .arg(format!("--pwfile={}", pwfile.display()))
            .arg("-D")
            .arg(dir.path().join("data"))
            .uid(uid)
            .gid(gid)
            .current_dir(dir.path())
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut pg = Postgres {
            dir,
            child: None,
            uid,
            gid,
        };
        pg.run();
        pg
    }

    /// Starts the server on the existing cluster and waits until it takes connections.
    pub fn run(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::File::create(self.dir.path().join("postgres.log")).unwrap();
        let child = Command::new(bindir().join("postgres"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-k")
            .arg(self.dir.path())
            .args(["-c", "listen_addresses=", "-c", "fsync=off"])
            .args(["-c", "max_connections=100", "-c", "shared_buffers=16MB"])
            .uid(self.uid)
            .gid(self.gid)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start postgres");
        self.child = Some(child);
        let socket = self.dir.path().join(".s.PGSQL.5432");
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            // The socket appears before recovery ends: pg_isready tells when it accepts.
            let ready = socket.exists()
                && Command::new(bindir().join("pg_isready"))
                    .arg("-h")
                    .arg(self.dir.path())
                    .arg("-q")
                    .status()
                    .map(|s| s.success())
                    .unwrap_or(false);
            if ready {
                return;
            }
            assert!(
                Instant::now() < until,
                "postgres did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server (fast shutdown, by PID) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGINT is PostgreSQL's fast shutdown: sessions end, nothing left to recover.
            super::process::signal(child.id(), "INT");
            let until = Instant::now() + Duration::from_secs(20);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The directory holding the socket (the URL's host).
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// A `database_url` for `database`, without the password (as the configuration wants it).
    pub fn url(&self, database: &str) -> String {
        let host: String = self
            .socket_dir()
            .display()
            .to_string()
            .replace('%', "%25")
            .replace('/', "%2F");
        format!("postgresql://{USER}@{host}/{database}?sslmode=disable")
    }

    /// Creates an empty database.
    pub fn create_database(&self, name: &str) {
        let out = Command::new(bindir().join("createdb"))
            .arg("-h")
            .arg(self.socket_dir())
            .args(["-U", USER, name])
            .env("PGPASSWORD", PASSWORD)
            .output()
            .expect("run createdb");
        assert!(
            out.status.success(),
            "createdb {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs SQL through psql and returns its unaligned, tuples-only output.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let out = Command::new(bindir().join("psql"))
            .arg("-h")
            .arg(self.socket_dir())
            .args([
                "-U",
                USER,
                "-d",
                database,
                "-XAtq",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ])
            .env("PGPASSWORD", PASSWORD)
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}
