//! The Debian package, tested (issue 11, item 3). `cargo deb --profile deb` builds the .deb;
//! it is installed with apt into a clean Debian 12 root made by `debootstrap --variant=minbase
//! bookworm` from this machine's own Debian mirror (/etc/apt/sources.list.d), never onto the
//! test machine's /etc. In that root the test checks the files and their modes, the system
//! user, `listcrypt check-config` with the packaged config, and the daemon started the way the
//! unit's ExecStart runs it (`runuser` as listcrypt with groups listcrypt and postfix, packaged
//! paths): its sockets and a milter option negotiation. Then one real post goes through the
//! e2e harness's throwaway Postfix and Mailman 3 on the host, configured from `postfix/` and
//! the packaged Mailman helper, with the chrooted daemon as their milter:
//! - the host's Postfix reaches the daemon through ROOT/var/spool/postfix/listcrypt/*.sock, the
//!   packaged socket directory seen from outside the chroot;
//! - the chroot shares the host's network, so the daemon reinjects to 127.0.0.1:10026 as
//!   packaged, where the throwaway Postfix's reinjection listener waits;
//! - the root's group and user postfix are created with the host's ids before the install
//!   (Postfix's postinst keeps existing ones), so the socket directory's group is the one the
//!   host's smtpd runs as.
//!
//! Then `dpkg --purge` removes the package's files and conffile, and keeps the lists' keys
//! and state under /var/lib/listcrypt and the policies (debian/postrm says why). Last, the
//! package goes onto the same root with another MTA and no group postfix: it installs, and
//! leaves the socket directory to the admin (debian/postinst).
//!
//! The debootstrap tree is cached in target/debootstrap-bookworm (the .debs apt fetched in
//! target/debootstrap-bookworm-debs); each run copies it to a fresh root under /tmp, with its
//! own /proc. Needs root, debootstrap, cargo-deb, Postfix, Mailman 3 and GnuPG (`bash
//! scripts/test` installs them); without them it prints why and passes, except under CI=true.

mod support;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::debootstrap::{minbase_root, move_debs, Chroot, DEBS};
use support::environment::{repo_dir, which};
use support::files::{mkdir, read_lossy, write};
use support::gpg::GpgUser;
use support::mailman::{Mailman, MailmanSettings};
use support::net::{free_ports, port_open};
use support::postfix::{make_searchable, Postfix, PostfixSettings};
use support::process::{run, run_ok, signal, wait_for, ChildGuard};
use support::sink::Sink;
use support::smtp;
use support::text::tail;
use support::world::{encrypted_post, unique_marker, LIST, MEMBERS, OWNER};

/// The packaged `reinject_smtp` (debian/listcrypt.toml).
const REINJECT_PORT: u16 = 10026;
const SOCKET_DIR: &str = "/var/spool/postfix/listcrypt";

#[test]
fn package_in_debian_chroot() {
    if let Some(reason) = missing_prerequisite() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true, but the package test cannot run: {reason}"
        );
        println!("skipped: {reason} (`bash scripts/test` as root installs what it needs)");
        return;
    }
    let started = Instant::now();
    let deb = build_deb();
    let size = fs::metadata(&deb).unwrap().len();
    eprintln!(
        "debian_chroot: {} ({size} bytes) built ({:?})",
        deb.display(),
        started.elapsed()
    );
    let cache = minbase_root();
    let root = Chroot::fresh(&cache, "listcrypt-debchroot.");
    eprintln!(
        "debian_chroot: root {} ready ({:?})",
        root.root.display(),
        started.elapsed()
    );

    let (host_postfix_uid, host_postfix_gid) = host_postfix_ids();
    preseed(&root, host_postfix_uid, host_postfix_gid);
    let installing = Instant::now();
    install(&root, &deb);
    eprintln!("debian_chroot: installed in {:?}", installing.elapsed());

    let ids = check_installed_files(&root);
    assert_eq!(
        ids.postfix_gid, host_postfix_gid,
        "the root's group postfix"
    );
    let check = root.run_ok(&[
        "runuser",
        "-u",
        "listcrypt",
        "--",
        "/usr/bin/listcrypt",
        "check-config",
    ]);
    eprintln!("debian_chroot: check-config as listcrypt:\n{check}");

    // First start: no list yet, as right after `apt install`.
    let mut daemon = Daemon::start(&root, "first");
    eprintln!(
        "debian_chroot: `apt install` to daemon up: {:?}",
        installing.elapsed()
    );
    check_sockets(&root, &ids);
    for socket in ["inbound.sock", "outbound.sock"] {
        milter_negotiates(&root.path(SOCKET_DIR).join(socket));
    }
    daemon.stop(&root);

    real_post(&root, installing);

    purge(&root);
    without_postfix(&root, &deb);
    eprintln!("debian_chroot: done in {:?}", started.elapsed());
}

/// Why this machine cannot run the test, if it cannot.
fn missing_prerequisite() -> Option<String> {
    let uid = String::from_utf8(run(Command::new("id").arg("-u"), None).stdout).unwrap();
    if uid.trim() != "0" {
        return Some("not root (debootstrap, chroot and mount need it)".into());
    }
    if cargo_deb_dir().is_none() {
        return Some("cargo-deb not found (cargo install --locked cargo-deb)".into());
    }
    let programs = [
        "debootstrap",
        "chroot",
        "mount",
        "postfix",
        "mailman",
        "gpg",
    ];
    let missing: Vec<_> = programs.iter().filter(|p| which(p).is_none()).collect();
    if !missing.is_empty() {
        return Some(format!("{missing:?} not found"));
    }
    None
}

/// The directory holding `cargo-deb`: PATH, then `$CARGO_HOME/bin`, then `~/.cargo/bin`.
fn cargo_deb_dir() -> Option<PathBuf> {
    if let Some(found) = which("cargo-deb") {
        return found.parent().map(Path::to_path_buf);
    }
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
    let bin = cargo_home.join("bin");
    bin.join("cargo-deb").is_file().then_some(bin)
}

/// `cargo deb --profile deb`: the release code, stripped (Cargo.toml's `[profile.deb]`).
fn build_deb() -> PathBuf {
    let out = repo_dir().join("target/debian");
    let path = format!(
        "{}:{}",
        cargo_deb_dir().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let printed = run_ok(
        Command::new(env!("CARGO"))
            .current_dir(repo_dir())
            .env("PATH", path)
            .args(["deb", "--profile", "deb", "--locked", "--output"])
            .arg(&out),
        None,
    );
    // cargo-deb prints the path of the package it wrote.
    let printed = String::from_utf8(printed).unwrap();
    let deb = PathBuf::from(printed.trim().lines().last().unwrap_or_default());
    assert!(
        deb.is_file() && deb.extension().is_some_and(|e| e == "deb"),
        "cargo deb printed no package path: {printed:?}"
    );
    deb
}

/// The host's user and group postfix, which the throwaway Postfix runs as.
fn host_postfix_ids() -> (u32, u32) {
    let passwd = read_lossy(Path::new("/etc/passwd"));
    let fields = passwd_entry(&passwd, "postfix").expect("the host has a user postfix");
    (fields[2].parse().unwrap(), fields[3].parse().unwrap())
}

/// The fields of `name`'s line in a passwd or group file.
fn passwd_entry(text: &str, name: &str) -> Option<Vec<String>> {
    text.lines()
        .map(|l| l.split(':').map(String::from).collect::<Vec<_>>())
        .find(|f| f[0] == name)
}

/// Before the install: Postfix asks no questions, and its user and group get the host's ids
/// (see the module comment); apt gets the current index and the .debs of earlier runs.
fn preseed(root: &Chroot, uid: u32, gid: u32) {
    root.run_ok_input(
        &["debconf-set-selections"],
        Some(b"postfix postfix/main_mailer_type select No configuration\n"),
    );
    let (uid, gid) = (uid.to_string(), gid.to_string());
    root.run_ok(&["groupadd", "--system", "--gid", &gid, "postfix"]);
    root.run_ok(&[
        "useradd",
        "--system",
        "--uid",
        &uid,
        "--gid",
        "postfix",
        "--home-dir",
        "/var/spool/postfix",
        "--no-create-home",
        "--shell",
        "/usr/sbin/nologin",
        "postfix",
    ]);
    let archives = root.path("/var/cache/apt/archives");
    for entry in fs::read_dir(repo_dir().join(DEBS)).unwrap().flatten() {
        fs::copy(entry.path(), archives.join(entry.file_name())).unwrap();
    }
    root.run_ok(&["apt-get", "update"]);
}

/// `apt-get install ./listcrypt_*.deb` as the guide says, its dependencies from Debian.
/// Without Recommends (mailman3): the post uses the host's Mailman.
fn install(root: &Chroot, deb: &Path) {
    let name = deb.file_name().unwrap().to_str().unwrap();
    fs::copy(deb, root.path("/tmp").join(name)).unwrap();
    let out = root.run_ok(&[
        "apt-get",
        "install",
        "-y",
        "--no-install-recommends",
        &format!("/tmp/{name}"),
    ]);
    assert!(
        !out.contains("listcrypt: "),
        "the postinst complained:\n{out}"
    );
    move_debs(
        &root.path("/var/cache/apt/archives"),
        &repo_dir().join(DEBS),
    );
}

/// What the root's passwd and group files say about the package's ids.
struct Ids {
    listcrypt_uid: u32,
    listcrypt_gid: u32,
    postfix_gid: u32,
}

/// Mode bits (with setgid), owner and group of a path inside the root.
fn stat(root: &Chroot, inside: &str) -> (u32, u32, u32) {
    let meta = fs::symlink_metadata(root.path(inside))
        .unwrap_or_else(|e| panic!("{inside} is not in the installed root: {e}"));
    (meta.mode() & 0o7777, meta.uid(), meta.gid())
}

/// The files and modes issue 11 lists for the package, and the user and directories the
/// postinst creates.
fn check_installed_files(root: &Chroot) -> Ids {
    let passwd = read_lossy(&root.path("/etc/passwd"));
    let group = read_lossy(&root.path("/etc/group"));
    let user = passwd_entry(&passwd, "listcrypt").expect("user listcrypt exists");
    let listcrypt_uid: u32 = user[2].parse().unwrap();
    // Debian policy 9.2.2: dynamically allocated system users are 100-999.
    assert!((100..1000).contains(&listcrypt_uid), "{user:?}");
    assert_eq!(user[5], "/var/lib/listcrypt", "{user:?}");
    assert_eq!(user[6], "/usr/sbin/nologin", "{user:?}");
    let listcrypt_gid: u32 = user[3].parse().unwrap();
    let own_group = passwd_entry(&group, "listcrypt").expect("group listcrypt exists");
    assert_eq!(own_group[2], listcrypt_gid.to_string());
    let postfix_gid: u32 = passwd_entry(&group, "postfix").expect("group postfix")[2]
        .parse()
        .unwrap();

    for (path, mode) in [
        ("/usr/bin/listcrypt", 0o755),
        ("/usr/share/man/man8/listcrypt.8.gz", 0o644),
        ("/usr/share/man/man5/listcrypt.toml.5.gz", 0o644),
        ("/etc/listcrypt/listcrypt.toml", 0o644),
        ("/usr/share/listcrypt/listcrypt_mailman.py", 0o755),
        ("/usr/share/doc/listcrypt/examples/main.cf", 0o644),
        ("/usr/share/doc/listcrypt/examples/master.cf", 0o644),
        ("/usr/share/doc/listcrypt/examples/mailman.cfg", 0o644),
        ("/usr/lib/tmpfiles.d/listcrypt.conf", 0o644),
        ("/usr/lib/sysusers.d/listcrypt.conf", 0o644),
        (&unit_path(root), 0o644),
    ] {
        assert_eq!(stat(root, path), (mode, 0, 0), "{path}: mode, owner, group");
    }
    let conffiles = read_lossy(&root.path("/var/lib/dpkg/info/listcrypt.conffiles"));
    assert!(
        conffiles
            .lines()
            .any(|l| l.trim() == "/etc/listcrypt/listcrypt.toml"),
        "not a conffile: {conffiles}"
    );
    // `enable = true` in the metadata: deb-systemd-helper links it even without systemd.
    assert!(
        fs::symlink_metadata(
            root.path("/etc/systemd/system/multi-user.target.wants/listcrypt.service")
        )
        .is_ok(),
        "listcrypt.service is not enabled"
    );

    let l = (listcrypt_uid, listcrypt_gid);
    for (path, mode, (uid, gid)) in [
        ("/var/lib/listcrypt", 0o700, l),
        ("/var/lib/listcrypt/keyrings", 0o700, l),
        ("/etc/listcrypt/lists.d", 0o755, l),
        (SOCKET_DIR, 0o2750, (listcrypt_uid, postfix_gid)),
    ] {
        assert_eq!(
            stat(root, path),
            (mode, uid, gid),
            "{path}: mode, owner, group"
        );
    }
    Ids {
        listcrypt_uid,
        listcrypt_gid,
        postfix_gid,
    }
}

/// Where the package put listcrypt.service (cargo-deb picks /lib or /usr/lib).
fn unit_path(root: &Chroot) -> String {
    let list = read_lossy(&root.path("/var/lib/dpkg/info/listcrypt.list"));
    list.lines()
        .find(|l| l.ends_with("/systemd/system/listcrypt.service"))
        .unwrap_or_else(|| panic!("no listcrypt.service in the package:\n{list}"))
        .to_string()
}

/// `listcrypt serve` as the unit's ExecStart runs it: User=listcrypt, Group=listcrypt,
/// SupplementaryGroups=postfix, the packaged config, stderr to a log file (no journald here).
struct Daemon {
    guard: ChildGuard,
    log: PathBuf,
}

impl Daemon {
    fn start(root: &Chroot, tag: &str) -> Daemon {
        // Beside the root, in the run's tempdir.
        let log = root.root.parent().unwrap().join(format!("serve-{tag}.log"));
        let file = fs::File::create(&log).unwrap();
        let stale = |name: &str| fs::symlink_metadata(root.path(SOCKET_DIR).join(name)).ok();
        assert!(
            stale("inbound.sock").is_none() && stale("outbound.sock").is_none(),
            "sockets left from an earlier start"
        );
        let child = root
            .command(&[
                "runuser",
                "-u",
                "listcrypt",
                "-g",
                "listcrypt",
                "-G",
                "postfix",
                "--",
                "/usr/bin/listcrypt",
                "serve",
            ])
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        let mut guard = ChildGuard {
            name: "listcrypt serve in the chroot".into(),
            child,
        };
        wait_for("the packaged sockets", Duration::from_secs(30), || {
            if let Ok(Some(status)) = guard.child.try_wait() {
                panic!("serve exited ({status}):\n{}", read_lossy(&log));
            }
            (stale("inbound.sock").is_some() && stale("outbound.sock").is_some()).then_some(())
        });
        Daemon { guard, log }
    }

    /// The daemon's own PID: runuser's child (runuser stays as the session's parent).
    fn pid(&self) -> u32 {
        let parent = self.guard.pid().to_string();
        fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .find(|pid| {
                // /proc/PID/stat: "pid (comm) state ppid ..."; comm may hold spaces.
                let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                stat.rsplit_once(") ")
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                    == Some(parent.as_str())
            })
            .expect("runuser's child, listcrypt serve")
    }

    /// SIGTERM to the daemon's PID; runuser then exits with its status, 0 for a clean
    /// shutdown, which removes the sockets.
    fn stop(&mut self, root: &Chroot) {
        signal(self.pid(), "TERM");
        let status = wait_for("serve to exit", Duration::from_secs(20), || {
            self.guard.child.try_wait().unwrap()
        });
        assert!(
            status.success(),
            "serve did not exit 0 on SIGTERM ({status}):\n{}",
            read_lossy(&self.log)
        );
        for name in ["inbound.sock", "outbound.sock"] {
            assert!(
                !root.path(SOCKET_DIR).join(name).exists(),
                "{name} left behind"
            );
        }
    }
}

/// Sockets as the packaged config asks (socket_mode 0660, socket_group postfix), owned by
/// the daemon's user.
fn check_sockets(root: &Chroot, ids: &Ids) {
    for name in ["inbound.sock", "outbound.sock"] {
        let path = format!("{SOCKET_DIR}/{name}");
        let meta = fs::symlink_metadata(root.path(&path)).unwrap();
        assert!(
            std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()),
            "{path} is no socket"
        );
        assert_eq!(
            stat(root, &path),
            (0o660, ids.listcrypt_uid, ids.postfix_gid),
            "{path}: mode, owner, group"
        );
    }
    // Otherwise the group check above would not tell socket_group from the user's own group.
    assert_ne!(ids.listcrypt_gid, ids.postfix_gid);
}

/// A milter option negotiation as Postfix opens it (SMFIC_OPTNEG, protocol version 6 with
/// every action and protocol bit offered); the daemon must answer with its own SMFIC_OPTNEG.
fn milter_negotiates(socket: &Path) {
    let mut stream =
        UnixStream::connect(socket).unwrap_or_else(|e| panic!("connect {}: {e}", socket.display()));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut packet = 13u32.to_be_bytes().to_vec();
    packet.push(b'O');
    for word in [6u32, 0x1ff, 0x1f_ffff] {
        packet.extend_from_slice(&word.to_be_bytes());
    }
    stream.write_all(&packet).unwrap();
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).unwrap();
    let len = u32::from_be_bytes(len) as usize;
    assert!((13..65536).contains(&len), "reply length {len}");
    let mut reply = vec![0u8; len];
    stream.read_exact(&mut reply).unwrap();
    assert_eq!(reply[0], b'O', "not an option negotiation: {reply:?}");
    let version = u32::from_be_bytes(reply[1..5].try_into().unwrap());
    assert!((2..=6).contains(&version), "milter version {version}");
}

/// One encrypted post from alice through the throwaway Postfix and Mailman on the host and
/// the chrooted daemon to bob, who decrypts it (see the module comment for the wiring).
fn real_post(root: &Chroot, installing: Instant) {
    assert!(
        !port_open(REINJECT_PORT),
        "127.0.0.1:{REINJECT_PORT} (the packaged reinject_smtp) is taken on this machine"
    );
    let dir = tempfile::Builder::new()
        .prefix("listcrypt-debpost.")
        .tempdir_in("/tmp")
        .unwrap();
    let base = dir.path().to_path_buf();
    make_searchable(&base);
    let sink = Sink::start();
    let [inbound_port, outbound_port, lmtp_port, rest_port] = free_ports();
    let sockets = root.path(SOCKET_DIR);
    let mailman_base = base.join("mailman");
    let mut postfix = Postfix::configure(&PostfixSettings {
        base: base.join("postfix"),
        inbound_port,
        outbound_port,
        reinject_port: REINJECT_PORT,
        sink_port: sink.port,
        inbound_socket: sockets.join("inbound.sock"),
        outbound_socket: sockets.join("outbound.sock"),
        mailman_data_dir: mailman_base.join("var/data"),
    });
    let mut mailman = Mailman::configure(&MailmanSettings {
        base: mailman_base,
        lmtp_port,
        rest_port,
        smtp_port: outbound_port,
        postfix_etc: postfix.etc.clone(),
    });
    let members: Vec<&str> = MEMBERS.iter().map(|(_, email)| *email).collect();
    mailman.create_list(LIST, OWNER, &members);
    // The packaged Mailman helper, as the guide tells admins to apply it.
    run_ok(
        mailman
            .command(&[
                "shell",
                "-l",
                LIST,
                "-r",
                "listcrypt_mailman.encrypted_list",
            ])
            .env("PYTHONPATH", root.path("/usr/share/listcrypt")),
        None,
    );
    mailman.start();
    postfix.start();

    let homes = mkdir(&base.join("gnupg"), 0o700);
    let [alice, bob, carol] = MEMBERS.map(|(n, email)| GpgUser::create(&homes, n, email));
    let owner = GpgUser::create(&homes, "Owner", OWNER);
    // The admin's commands, run as root in the root: the CLI drops to the packaged user.
    root.run_ok(&["listcrypt", "list", "create", LIST]);
    let list_key = root.run_ok(&["listcrypt", "list", "export-key", LIST]);
    let list_key_file = base.join("list.asc");
    write(&list_key_file, &list_key);
    let mut list_fpr = String::new();
    for (user, role) in [
        (&alice, "member"),
        (&bob, "member"),
        (&carol, "member"),
        (&owner, "owner"),
    ] {
        let cert = format!("/tmp/{}.asc", user.email);
        user.export(&root.path(&cert));
        root.run_ok(&[
            "listcrypt",
            "member",
            "add",
            LIST,
            &user.email,
            &cert,
            "--role",
            role,
        ]);
        list_fpr = user.gpg.import(&list_key_file).expect("list key imported");
    }
    let mut daemon = Daemon::start(root, "post");
    mailman.wait_until_ready();

    let marker = unique_marker("debian");
    let body = format!("Hello list,\n\nthe packaged daemon says {marker}.\n");
    let post = encrypted_post(&alice, LIST, &list_fpr, "Debian package post", &body);
    let d = smtp::send(inbound_port, &alice.email, &[LIST], &post);
    let diagnostics = |postfix: &Postfix, mailman: &Mailman, daemon: &Daemon| {
        format!(
            "===== listcrypt (chroot)\n{}\n===== Postfix\n{}\n===== Mailman\n{}\n===== sink\n{}",
            tail(&read_lossy(&daemon.log), 80),
            postfix.log_tail(80),
            mailman.logs_tail(30),
            sink.summary()
        )
    };
    assert!(
        d.accepted(),
        "alice's post was not accepted:\n{d}\n{}",
        diagnostics(&postfix, &mailman, &daemon)
    );
    let deadline = Instant::now() + support::world::DELIVERY_TIMEOUT;
    let copy = loop {
        let copies: Vec<_> = sink
            .deliveries_to(&bob.email)
            .into_iter()
            .filter(|c| c.mail_from.starts_with("enc-bounces"))
            .collect();
        if let Some(copy) = copies.into_iter().next() {
            break copy;
        }
        assert!(
            Instant::now() < deadline,
            "no copy for bob:\n{}",
            diagnostics(&postfix, &mailman, &daemon)
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    let text = copy.text();
    assert!(
        !text.contains(&marker),
        "LEAK: plaintext on the wire:\n{text}"
    );
    let armored = support::mime::rfc3156_payload(&text)
        .unwrap_or_else(|why| panic!("bob's copy is not RFC 3156 ({why}):\n{text}"));
    let dec = bob.gpg.decrypt(armored.as_bytes());
    assert!(dec.decrypted(), "bob cannot decrypt:\n{}", dec.report());
    assert!(
        dec.valid_signers()
            .iter()
            .any(|f| f.eq_ignore_ascii_case(&list_fpr)),
        "not signed by the list key {list_fpr}:\n{}",
        dec.report()
    );
    assert!(dec.text().contains(&marker), "{}", dec.text());
    eprintln!(
        "debian_chroot: bob decrypted the list's copy of alice's post; `apt install` to \
         here: {:?}",
        installing.elapsed()
    );

    daemon.stop(root);
    drop(postfix);
    drop(mailman);
}

/// `dpkg --purge`: the package's files and its conffile go; state and policies stay.
fn purge(root: &Chroot) {
    let unit = unit_path(root);
    root.run_ok(&["dpkg", "--purge", "listcrypt"]);
    for gone in [
        "/usr/bin/listcrypt",
        unit.as_str(),
        "/usr/share/listcrypt/listcrypt_mailman.py",
        "/usr/share/man/man8/listcrypt.8.gz",
        "/etc/listcrypt/listcrypt.toml",
        "/etc/systemd/system/multi-user.target.wants/listcrypt.service",
        SOCKET_DIR,
    ] {
        assert!(
            fs::symlink_metadata(root.path(gone)).is_err(),
            "{gone} is still there after the purge"
        );
    }
    for kept in ["/var/lib/listcrypt/state.sqlite", "/etc/listcrypt/lists.d"] {
        assert!(root.path(kept).exists(), "purge removed {kept}");
    }
}

/// Another MTA, hence no group postfix (Sendmail's is smmsp; dma is the smallest
/// mail-transport-agent): the install succeeds, makes no socket directory, and says so.
fn without_postfix(root: &Chroot, deb: &Path) {
    root.run_ok(&["apt-get", "purge", "-y", "postfix"]);
    // Whatever Postfix's purge left of its user and group (userdel drops the user's group).
    for (lookup, remove) in [("passwd", "userdel"), ("group", "groupdel")] {
        let exists = run(&mut root.command(&["getent", lookup, "postfix"]), None)
            .status
            .success();
        if exists {
            root.run_ok(&[remove, "postfix"]);
        }
    }
    root.run_ok(&["apt-get", "install", "-y", "--no-install-recommends", "dma"]);
    let name = deb.file_name().unwrap().to_str().unwrap();
    let out = root.run_ok(&[
        "apt-get",
        "install",
        "-y",
        "--no-install-recommends",
        &format!("/tmp/{name}"),
    ]);
    move_debs(
        &root.path("/var/cache/apt/archives"),
        &repo_dir().join(DEBS),
    );
    assert!(
        out.contains("listcrypt: no group postfix"),
        "the postinst did not say why there is no socket directory:\n{out}"
    );
    assert!(
        fs::symlink_metadata(root.path(SOCKET_DIR)).is_err(),
        "{SOCKET_DIR} without a group postfix"
    );
    let user = passwd_entry(&read_lossy(&root.path("/etc/passwd")), "listcrypt").unwrap();
    let uid: u32 = user[2].parse().unwrap();
    assert_eq!(stat(root, "/var/lib/listcrypt").0, 0o700);
    assert_eq!(stat(root, "/var/lib/listcrypt").1, uid);
}
