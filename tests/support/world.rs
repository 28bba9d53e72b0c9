//! The world of the end-to-end tests of one small list: a real Postfix with listcrypt's two
//! milters (built from the admin snippets in `postfix/`), a real Mailman 3 core, GnuPG
//! subscribers, and an SMTP sink for the subscribers' mail server, all on 127.0.0.1 in one
//! tempdir. Nothing is mocked; every process is stopped by its PID when the world is dropped.

use super::files::mkdir;
use super::gpg::{Gpg, GpgUser};
use super::listcrypt::Listcrypt;
use super::mailman::{Mailman, MailmanSettings};
use super::mime;
use super::net::free_ports;
use super::postfix::{make_searchable, Postfix, PostfixSettings};
use super::sink::{Delivery, Sink};
use super::text::tail;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const LIST: &str = "enc@lists.example.test";
pub const LIST_BOUNCES: &str = "enc-bounces@lists.example.test";
pub const OWNER: &str = "owner@example.net";
/// A list that Postfix routes to Mailman but Mailman no longer knows: its LMTP refuses the
/// decrypted post, and Postfix's DSN would quote it.
pub const GONE: &str = "gone@lists.example.test";
pub const MEMBERS: [(&str, &str); 3] = [
    ("Alice", "alice@example.net"),
    ("Bob", "bob@example.net"),
    ("Carol", "carol@example.net"),
];

/// How long a post may take from alice's SMTP session to the subscribers' mailboxes.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(90);

/// What differs between the tests that share this world.
#[derive(Default)]
pub struct WorldOptions {
    /// Prefix of the tempdir and of the progress lines.
    pub name: &'static str,
    /// Also set up `GONE` (bound in listcrypt, forgotten by Mailman).
    pub gone_list: bool,
    /// Lines of listcrypt's `[limits]` table.
    pub limits: Vec<String>,
    /// A milter (Postfix syntax, e.g. `inet:127.0.0.1:PORT`) after listcrypt in the inbound
    /// listener's `smtpd_milters`.
    pub inbound_milter_after: Option<String>,
}

/// Everything one run needs. Fields drop in order: the daemons stop before the tempdir goes.
pub struct World {
    pub listcrypt: Listcrypt,
    pub postfix: Postfix,
    pub mailman: Mailman,
    pub sink: Sink,
    pub alice: GpgUser,
    pub bob: GpgUser,
    pub carol: GpgUser,
    /// Bound as the list owner; kept so that its gpg-agent is stopped at the end.
    pub owner: GpgUser,
    pub dave: GpgUser,
    /// A home without secret keys, for `gpg --list-packets` and the author's signature.
    pub inspector: Gpg,
    pub list_fpr: String,
    /// The key of the list that Mailman forgot (with `gone_list`).
    pub gone_fpr: Option<String>,
    pub inbound_port: u16,
    pub outbound_port: u16,
    pub name: &'static str,
    pub started: Instant,
    pub dir: tempfile::TempDir,
}

impl World {
    pub fn start(options: WorldOptions) -> World {
        let name = options.name;
        let started = Instant::now();
        let dir = tempfile::Builder::new()
            .prefix(&format!("listcrypt-{name}."))
            .tempdir_in("/tmp")
            .expect("tempdir in /tmp");
        let base = dir.path().to_path_buf();
        make_searchable(&base);
        eprintln!("{name}: working in {}", base.display());

        let sink = Sink::start();
        let [inbound_port, outbound_port, reinject_port, lmtp_port, rest_port] = free_ports();
        let socket_dir = mkdir(&base.join("run"), 0o755);
        let mut listcrypt =
            Listcrypt::configure(&base.join("listcrypt"), &socket_dir, reinject_port);
        if !options.limits.is_empty() {
            listcrypt.set_limits(&options.limits);
        }
        let mailman_base = base.join("mailman");

        let mut postfix = Postfix::configure(&PostfixSettings {
            base: base.join("postfix"),
            inbound_port,
            outbound_port,
            reinject_port,
            sink_port: sink.port,
            inbound_socket: listcrypt.inbound_socket.clone(),
            outbound_socket: listcrypt.outbound_socket.clone(),
            mailman_data_dir: mailman_base.join("var/data"),
        });
        if let Some(milter) = &options.inbound_milter_after {
            postfix.add_inbound_milter_after_listcrypt(milter, inbound_port);
        }

        let mut mailman = Mailman::configure(&MailmanSettings {
            base: mailman_base,
            lmtp_port,
            rest_port,
            smtp_port: outbound_port,
            postfix_etc: postfix.etc.clone(),
        });
        let members: Vec<&str> = MEMBERS.iter().map(|(_, email)| *email).collect();
        // Creating the list also writes Postfix's relay_domains and transport maps. The
        // commands need no running Mailman, so the slow start-up overlaps the work below.
        mailman.create_list(LIST, OWNER, &members);
        mailman.apply_encrypted_list_settings(LIST);
        if options.gone_list {
            mailman.create_list(GONE, OWNER, &[]);
        }
        mailman.start();
        if options.gone_list {
            // After `mailman start`, which rewrites the maps from the lists it knows.
            mailman.forget_list(GONE);
        }
        eprintln!(
            "{name}: list created, Mailman starting ({:?})",
            started.elapsed()
        );

        postfix.start();
        eprintln!("{name}: Postfix up ({:?})", started.elapsed());

        let homes = mkdir(&base.join("gnupg"), 0o700);
        let [alice, bob, carol] = MEMBERS.map(|(n, email)| GpgUser::create(&homes, n, email));
        let owner = GpgUser::create(&homes, "Owner", OWNER);
        let dave = GpgUser::create(&homes, "Dave", "dave@example.net");
        let inspector = Gpg::new(homes.join("inspector"));
        eprintln!("{name}: keys made ({:?})", started.elapsed());

        let list_key = create_list(&listcrypt, LIST, &base);
        for user in [&alice, &bob, &carol] {
            bind(&listcrypt, LIST, user, "member", &base);
        }
        bind(&listcrypt, LIST, &owner, "owner", &base);
        let mut list_fpr = String::new();
        for user in [&alice, &bob, &carol, &owner, &dave] {
            list_fpr = user
                .gpg
                .import(&list_key)
                .expect("gpg imported the list key");
        }
        let gone_fpr = options.gone_list.then(|| {
            let gone_key = create_list(&listcrypt, GONE, &base);
            bind(&listcrypt, GONE, &alice, "member", &base);
            alice
                .gpg
                .import(&gone_key)
                .expect("gpg imported the list key")
        });
        // The author's signature is checked with a home that knows only public keys.
        inspector.import(&base.join("alice@example.net.asc"));
        listcrypt.serve();
        eprintln!(
            "{name}: listcrypt serving, list key {list_fpr} ({:?})",
            started.elapsed()
        );
        mailman.wait_until_ready();
        eprintln!("{name}: Mailman up ({:?})", started.elapsed());

        World {
            listcrypt,
            postfix,
            mailman,
            sink,
            alice,
            bob,
            carol,
            owner,
            dave,
            inspector,
            list_fpr,
            gone_fpr,
            inbound_port,
            outbound_port,
            name,
            started,
            dir,
        }
    }

    /// A post to `LIST`, signed and encrypted to its key by `author`, as RFC 3156 PGP/MIME.
    pub fn encrypted_post(&self, author: &GpgUser, subject: &str, body: &str) -> Vec<u8> {
        encrypted_post(author, LIST, &self.list_fpr, subject, body)
    }

    /// Waits until every address in `rcpts` got at least one delivery, then a little longer
    /// so that duplicates would show. Returns the deliveries per recipient.
    pub fn await_deliveries(&self, rcpts: &[&str], marker_subject: &str) -> Vec<Vec<Delivery>> {
        let relevant = |rcpt: &str| -> Vec<Delivery> {
            self.sink
                .deliveries_to(rcpt)
                .into_iter()
                .filter(|d| d.mail_from.starts_with("enc-bounces"))
                .collect()
        };
        let deadline = Instant::now() + DELIVERY_TIMEOUT;
        while !rcpts.iter().all(|r| !relevant(r).is_empty()) {
            assert!(
                Instant::now() < deadline,
                "no copy of {marker_subject:?} for {:?} within {DELIVERY_TIMEOUT:?}",
                rcpts
                    .iter()
                    .filter(|r| relevant(r).is_empty())
                    .collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        // Let Mailman and Postfix finish, so that a second copy would arrive before we count.
        let settle = Instant::now() + Duration::from_secs(20);
        while Instant::now() < settle && !self.postfix.queue_is_empty() {
            std::thread::sleep(Duration::from_millis(250));
        }
        std::thread::sleep(Duration::from_secs(2));
        rcpts.iter().map(|r| relevant(r)).collect()
    }

    /// The list's copies to `rcpt` of the post with `message_id` (Mailman keeps the
    /// Message-ID, and listcrypt's outer header carries it).
    pub fn copies_of(&self, rcpt: &str, message_id: &str) -> Vec<Delivery> {
        self.sink
            .deliveries_to(rcpt)
            .into_iter()
            .filter(|d| d.mail_from.starts_with("enc-bounces"))
            .filter(|d| header_value(&d.data, "Message-ID").as_deref() == Some(message_id))
            .collect()
    }

    /// Waits until Postfix's queue and Mailman's working queues are empty and the sink got
    /// nothing new for 3 s (at most 60 s), so that a copy still on its way would show.
    pub fn settle(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if self.idle() {
                let n = self.sink.deliveries().len();
                std::thread::sleep(Duration::from_secs(3));
                if n == self.sink.deliveries().len() && self.idle() {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        eprintln!(
            "{}: still busy after 60 s: Postfix queue:\n{}\nMailman queues: {:?}",
            self.name,
            self.postfix.queue_listing(),
            self.mailman_busy_files()
        );
    }

    fn idle(&self) -> bool {
        self.postfix.queue_is_empty() && self.mailman_busy_files().is_empty()
    }

    /// Message files in Mailman's working queues (not `bad`/`shunt`, which only fill up on
    /// errors).
    pub fn mailman_busy_files(&self) -> Vec<String> {
        self.mailman
            .queued_files()
            .into_iter()
            .filter(|f| !f.starts_with("bad/") && !f.starts_with("shunt/"))
            .collect()
    }

    pub fn diagnostics(&self) -> String {
        format!(
            "===== listcrypt log ({})\n{}\n\
             ===== Postfix maillog (last 120 lines)\n{}\n\
             ===== Postfix queue\n{}\n\
             ===== Mailman logs (last 40 lines each)\n{}\n\
             ===== SMTP sink\n{}\n",
            self.listcrypt.log.display(),
            tail(&self.listcrypt.log_text(), 200),
            self.postfix.log_tail(120),
            self.postfix.queue_listing(),
            self.mailman.logs_tail(40),
            self.sink.summary(),
        )
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("\n{}", self.diagnostics());
        }
        if std::env::var_os("KEEP_E2E_TMPDIR").is_some() {
            let kept = std::mem::replace(
                &mut self.dir,
                tempfile::tempdir().expect("replacement tempdir"),
            );
            eprintln!(
                "{}: keeping {} (KEEP_E2E_TMPDIR)",
                self.name,
                kept.keep().display()
            );
        }
        eprintln!("{}: stopping (ran {:?})", self.name, self.started.elapsed());
        self.listcrypt.stop();
        self.postfix.stop();
        self.mailman.stop();
    }
}

/// `listcrypt list create` and `list export-key`; returns the file with the list's key.
pub fn create_list(listcrypt: &Listcrypt, list: &str, base: &Path) -> PathBuf {
    listcrypt.cli(&["list", "create", list]);
    let exported = listcrypt.cli(&["list", "export-key", list]).stdout;
    assert!(
        String::from_utf8_lossy(&exported).contains("-----BEGIN PGP PUBLIC KEY BLOCK-----"),
        "`listcrypt list export-key {list}` printed no armored key"
    );
    let path = base.join(format!("{list}.asc"));
    super::files::write(&path, &exported);
    path
}

/// `listcrypt member add LIST ADDRESS CERT --role ROLE` with the user's exported key.
pub fn bind(listcrypt: &Listcrypt, list: &str, user: &GpgUser, role: &str, base: &Path) {
    let cert = user.export(&base.join(format!("{}.asc", user.email)));
    let cert = cert.display().to_string();
    listcrypt.cli(&["member", "add", list, &user.email, &cert, "--role", role]);
}

/// A post to `list`, signed by `author` and encrypted to `list_fpr`, as RFC 3156 PGP/MIME.
pub fn encrypted_post(
    author: &GpgUser,
    list: &str,
    list_fpr: &str,
    subject: &str,
    body: &str,
) -> Vec<u8> {
    let inner = format!(
        "Content-Type: text/plain; charset=utf-8\r\n\
             Content-Transfer-Encoding: 8bit\r\n\r\n{}",
        body.replace('\n', "\r\n")
    );
    let armored = author.sign_encrypt(list_fpr, inner.as_bytes());
    let from = format!("{} <{}>", author.name, author.email);
    let id = message_id(subject);
    mime::pgp_mime_encrypted(
        &[
            ("From", from.as_str()),
            ("To", list),
            ("Subject", subject),
            ("Message-ID", id.as_str()),
            ("Date", "Thu, 01 Jan 2026 12:00:00 +0000"),
        ],
        &armored,
        "listcrypt-e2e-boundary",
    )
}

/// The first `name:` field of a message's header, unfolded and trimmed.
pub fn header_value(message: &[u8], name: &str) -> Option<String> {
    let text = String::from_utf8_lossy(message);
    let mut value: Option<String> = None;
    for line in text.split('\n') {
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            break;
        }
        if let Some(v) = value.as_mut() {
            if line.starts_with([' ', '\t']) {
                v.push_str(line);
                continue;
            }
            break;
        }
        if let Some((n, v)) = line.split_once(':') {
            if n.eq_ignore_ascii_case(name) {
                value = Some(v.to_string());
            }
        }
    }
    value.map(|v| v.trim().to_string())
}

pub fn message_id(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let tag: String = tag
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(20)
        .collect();
    format!("<{tag}.{nanos}@example.net>")
}

pub fn unique_marker(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("MARKER-{tag}-{nanos:x}")
}
