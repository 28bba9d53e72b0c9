//! `listcrypt doctor` against the end-to-end harness's throwaway Postfix (configured from the
//! shipped snippets, not started: doctor reads `postconf` and `postmap`) and a running
//! throwaway Mailman 3 core, whose REST API doctor reads through `[mailman_api]`. One Mailman
//! for the whole file (it starts slowly); the guide's setup gives no FAIL, and each deliberate
//! misconfiguration, made through Mailman's REST API, mailman.cfg, `postconf` or listcrypt's
//! CLI and undone afterwards, adds exactly its own FAIL or warn line.

mod support;

use std::os::unix::fs::PermissionsExt;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use support::environment::require_environment;
use support::files::{mkdir, read_lossy, write};
use support::gpg::{Gpg, GpgUser};
use support::listcrypt::Listcrypt;
use support::mailman::{snippet_section, Mailman, MailmanSettings};
use support::net::free_ports;
use support::postfix::{make_searchable, Postfix, PostfixSettings};
use support::process::{run, run_ok};
use support::world::{bind, create_list, LIST, MEMBERS, OWNER};

const KEY_ADDRESS: &str = "enc-key@lists.example.test";
/// `[webservice] admin_pass` of the harness's mailman.cfg.
const REST_PASSWORD: &str = "e2e-only";

struct Fixture {
    // Dropped in order: Mailman stops before the tempdir goes.
    mailman: Mailman,
    postfix: Postfix,
    listcrypt: Listcrypt,
    rest_url: String,
    inbound_port: u16,
    base: PathBuf,
    /// Kept so that their gpg-agents stop at the end.
    _users: Vec<GpgUser>,
    _dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        require_environment(&["postconf", "postmap", "mailman", "gpg", "curl"]);
        let dir = tempfile::Builder::new()
            .prefix("listcrypt-doctor-mailman.")
            .tempdir_in("/tmp")
            .expect("tempdir in /tmp");
        let base = dir.path().to_path_buf();
        make_searchable(&base);
        let [inbound_port, outbound_port, reinject_port, sink_port, lmtp_port, rest_port] =
            free_ports();
        let socket_dir = mkdir(&base.join("run"), 0o755);
        let listcrypt = Listcrypt::configure(&base.join("listcrypt"), &socket_dir, reinject_port);
        let mailman_base = base.join("mailman");
        let postfix = Postfix::configure(&PostfixSettings {
            base: base.join("postfix"),
            inbound_port,
            outbound_port,
            reinject_port,
            sink_port,
            inbound_socket: listcrypt.inbound_socket.clone(),
            outbound_socket: listcrypt.outbound_socket.clone(),
            mailman_data_dir: mailman_base.join("var/data"),
        });
        // What postfix/main.cf's comments ask of the admin beyond its active lines.
        let lmtp_map = format!("hash:{}/var/data/postfix_lmtp", mailman_base.display());
        postfix.postconf(&[
            "-e",
            &format!("relay_recipient_maps = {lmtp_map}, inline:{{ {KEY_ADDRESS}=OK }}"),
            "message_size_limit = 52428800",
        ]);
        let mut mailman = Mailman::configure(&MailmanSettings {
            base: mailman_base,
            lmtp_port,
            rest_port,
            smtp_port: outbound_port,
            postfix_etc: postfix.etc.clone(),
        });
        // A site-wide archiver, as Debian enables HyperKitty: the list's own switch and
        // archive_policy then decide (listcrypt_mailman.py turns both off).
        mailman.set_config("archiver.prototype", "enable", "yes");
        let members: Vec<&str> = MEMBERS.iter().map(|(_, email)| *email).collect();
        mailman.create_list(LIST, OWNER, &members);
        mailman.apply_encrypted_list_settings(LIST);
        mailman.start();

        let homes = mkdir(&base.join("gnupg"), 0o700);
        let mut users: Vec<GpgUser> = MEMBERS
            .iter()
            .map(|(name, email)| GpgUser::create(&homes, name, email))
            .collect();
        users.push(GpgUser::create(&homes, "Owner", OWNER));
        create_list(&listcrypt, LIST, &base);
        // The guide's site keeps its list key passphrase-protected (doctor warns otherwise).
        let passphrase = base.join("list-key.pass");
        write(&passphrase, "correct horse battery staple\n");
        std::fs::set_permissions(&passphrase, std::fs::Permissions::from_mode(0o600)).unwrap();
        listcrypt.cli(&[
            "list",
            "protect",
            LIST,
            "--new-passphrase-file",
            passphrase.to_str().unwrap(),
        ]);
        let config = read_lossy(&listcrypt.config);
        write(
            &listcrypt.config,
            format!("passphrase_file = \"{}\"\n{config}", passphrase.display()),
        );
        for (i, user) in users.iter().enumerate() {
            let role = if i == MEMBERS.len() {
                "owner"
            } else {
                "member"
            };
            bind(&listcrypt, LIST, user, role, &base);
        }
        let password_file = base.join("mailman-api.pass");
        write(&password_file, format!("{REST_PASSWORD}\n"));
        let rest = snippet_section(&mailman.config, "webservice");
        let port = &rest.iter().find(|(k, _)| k == "port").unwrap().1;
        assert_eq!(port, &rest_port.to_string());
        let rest_url = format!("http://127.0.0.1:{rest_port}/3.1");
        let fx = Fixture {
            mailman,
            postfix,
            listcrypt,
            rest_url,
            inbound_port,
            base,
            _users: users,
            _dir: dir,
        };
        fx.set_api(&fx.rest_url.clone(), &password_file);
        fx.mailman.wait_until_ready();
        support::process::wait_for(
            "Mailman's REST API",
            std::time::Duration::from_secs(120),
            || (fx.rest("GET", "lists", &[]) == 200).then_some(()),
        );
        fx
    }

    /// Rewrites the `[mailman_api]` table at the end of listcrypt's config.
    fn set_api(&self, url: &str, password_file: &Path) {
        let text = read_lossy(&self.listcrypt.config);
        let kept = text.split("\n[mailman_api]\n").next().unwrap_or("");
        write(
            &self.listcrypt.config,
            format!(
                "{}\n[mailman_api]\nurl = \"{url}\"\nuser = \"restadmin\"\npassword_file = \"{}\"\n",
                kept.trim_end(),
                password_file.display()
            ),
        );
    }

    /// A request to Mailman's REST API with form fields; the HTTP status.
    fn rest(&self, method: &str, path: &str, fields: &[(&str, &str)]) -> u16 {
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", method])
            .args(["-u", &format!("restadmin:{REST_PASSWORD}")]);
        for (k, v) in fields {
            cmd.arg("--data-urlencode").arg(format!("{k}={v}"));
        }
        cmd.arg(format!("{}/{path}", self.rest_url));
        // 000 (and a non-zero exit) while nothing listens yet.
        let out = run(&mut cmd, None);
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0)
    }

    fn rest_ok(&self, method: &str, path: &str, fields: &[(&str, &str)]) {
        let status = self.rest(method, path, fields);
        assert!(
            (200..300).contains(&status),
            "{method} {path} {fields:?}: HTTP {status}"
        );
    }

    fn doctor_with(&self, mailman_config: &Path) -> (Option<i32>, String) {
        let out = run(
            self.listcrypt
                .command(&["doctor", "--postfix-config"])
                .arg(&self.postfix.etc)
                .arg("--mailman-config")
                .arg(mailman_config),
            None,
        );
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            stdout
                .lines()
                .all(|l| ["ok ", "warn ", "FAIL "].iter().any(|p| l.starts_with(p))),
            "one line per check: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), stdout)
    }

    fn doctor(&self) -> (Option<i32>, String) {
        self.doctor_with(&self.mailman.config)
    }

    fn files(&self) -> Vec<PathBuf> {
        vec![
            self.postfix.etc.join("main.cf"),
            self.postfix.etc.join("master.cf"),
            self.listcrypt.config.clone(),
            self.mailman.config.clone(),
        ]
    }

    /// Applies `break_it`, checks that doctor's report differs from the baseline's by exactly
    /// `expected` (`"FAIL check"`, `"warn check"`), runs `undo` and restores the files.
    /// Returns the report of the broken setup.
    fn expect(
        &self,
        baseline: &BTreeSet<String>,
        expected: &[&str],
        break_it: impl FnOnce(&Fixture),
        undo: impl FnOnce(&Fixture),
    ) -> String {
        let saved: Vec<(PathBuf, String)> = self
            .files()
            .into_iter()
            .map(|f| (f.clone(), read_lossy(&f)))
            .collect();
        break_it(self);
        let (code, report) = self.doctor();
        eprintln!("--- {expected:?}\n{report}");
        undo(self);
        for (path, text) in saved {
            write(&path, text);
        }
        let got: BTreeSet<String> = problems(&report).difference(baseline).cloned().collect();
        let want: BTreeSet<String> = expected.iter().map(|s| s.to_string()).collect();
        assert_eq!(got, want, "{expected:?}:\n{report}");
        let fails = expected.iter().any(|e| e.starts_with("FAIL "));
        assert_eq!(code, Some(if fails { 1 } else { 0 }), "{report}");
        report
    }

    fn edit_mailman_cfg(&self, from: &str, to: &str) {
        let text = read_lossy(&self.mailman.config);
        assert!(text.contains(from), "mailman.cfg has {from:?}");
        write(&self.mailman.config, text.replacen(from, to, 1));
    }

    fn postconf(&self, args: &[&str]) {
        self.postfix.postconf(args);
    }

    /// A GnuPG key (Ed25519 signing, Cv25519 encryption subkey) for `email`, made
    /// `created_days_ago`, expiring `days` after that; its public and secret key files.
    fn expiring_key(
        &self,
        email: &str,
        days: u32,
        created_days_ago: u64,
    ) -> (Gpg, PathBuf, PathBuf) {
        let gpg = Gpg::new(self.base.join("gnupg").join(email));
        let uid = format!("<{email}>");
        let expiry = format!("{days}d");
        let created = support::site::now() - created_days_ago * 86_400;
        // Frozen ("!"): the subkey is made in the same second as the primary key; a clock
        // that ticks between the two gpg runs makes gpg refuse a key from "the future".
        let faked = format!("{created}!");
        let generate = ["--faked-system-time", &faked, "--passphrase", ""];
        gpg.ok(
            &[
                &generate[..],
                &["--quick-gen-key", &uid, "ed25519", "sign", &expiry],
            ]
            .concat(),
            None,
        );
        let fpr = gpg.fingerprint(&uid);
        gpg.ok(
            &[
                &generate[..],
                &["--quick-add-key", &fpr, "cv25519", "encr", &expiry],
            ]
            .concat(),
            None,
        );
        let public = self.base.join(format!("{email}.asc"));
        gpg.export(&fpr, &public);
        let secret = self.base.join(format!("{email}.secret.asc"));
        gpg.export_secret(&fpr, &secret);
        (gpg, public, secret)
    }

    /// listcrypt's secret key file of `list`.
    fn list_secret(&self, list: &str) -> PathBuf {
        self.base
            .join("listcrypt/keyrings/lists")
            .join(list)
            .join("secret.pgp")
    }
}

/// The `warn`/`FAIL` lines of a report as `LEVEL check`.
fn problems(report: &str) -> BTreeSet<String> {
    report
        .lines()
        .filter(|l| !l.starts_with("ok "))
        .map(|l| l.split(':').next().unwrap_or(l).to_string())
        .collect()
}

fn line<'a>(report: &'a str, prefix: &str) -> &'a str {
    report
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line {prefix:?}:\n{report}"))
}

#[test]
fn doctor_reads_mailman_and_names_each_misconfiguration() {
    let fx = Fixture::new();
    let (code, report) = fx.doctor();
    assert!(!report.contains("FAIL"), "the guide's setup:\n{report}");
    assert_eq!(code, Some(0), "{report}");
    for check in [
        "mailman api",
        "mailman smtp_port",
        "mailman sender_headers",
        "mailman max_recipients",
        "mailman running config",
        "list routing",
        "mailman lists",
        "mailman archive",
        "mailman hold rule",
        "members without key",
        "keys of non-members",
        "key expiry",
        "inbound milter last",
    ] {
        assert!(
            report.lines().any(|l| l == format!("ok {check}")),
            "{check}:\n{report}"
        );
    }
    let baseline = problems(&report);
    // listcrypt is not serving: only its absent sockets are worth a warning.
    assert_eq!(
        baseline,
        BTreeSet::from(["warn milter socket access".to_string()]),
        "{report}"
    );
    let list_path = format!("lists/{LIST}");

    // Archives: a policy that would archive is a warning while no archiver runs for the
    // list, a FAIL once one does.
    fx.expect(
        &baseline,
        &["warn mailman archive"],
        |fx| {
            fx.rest_ok(
                "PATCH",
                &format!("{list_path}/config"),
                &[("archive_policy", "public")],
            )
        },
        |fx| {
            fx.rest_ok(
                "PATCH",
                &format!("{list_path}/config"),
                &[("archive_policy", "never")],
            )
        },
    );
    let report = fx.expect(
        &baseline,
        &["FAIL mailman archive"],
        |fx| {
            fx.rest_ok(
                "PATCH",
                &format!("{list_path}/config"),
                &[("archive_policy", "public")],
            );
            fx.rest_ok(
                "PATCH",
                &format!("{list_path}/archivers"),
                &[("prototype", "true")],
            );
        },
        |fx| {
            fx.rest_ok(
                "PATCH",
                &format!("{list_path}/config"),
                &[("archive_policy", "never")],
            );
            fx.rest_ok(
                "PATCH",
                &format!("{list_path}/archivers"),
                &[("prototype", "false")],
            );
        },
    );
    assert!(
        line(&report, "FAIL mailman archive").contains("prototype"),
        "{report}"
    );

    // The hold rule: gone, or bypassed by member moderation.
    let report = fx.expect(
        &baseline,
        &["FAIL mailman hold rule"],
        |fx| fx.rest_ok("DELETE", &format!("{list_path}/header-matches"), &[]),
        |fx| {
            fx.rest_ok(
                "POST",
                &format!("{list_path}/header-matches"),
                &[
                    ("header", "X-Listcrypt-Hold"),
                    ("pattern", ".+"),
                    ("action", "hold"),
                ],
            )
        },
    );
    assert!(
        line(&report, "FAIL mailman hold rule").contains("no X-Listcrypt-Hold"),
        "{report}"
    );
    fx.expect(
        &baseline,
        &["FAIL mailman hold rule"],
        |fx| {
            fx.rest_ok(
                "PATCH",
                &format!("{list_path}/config"),
                &[("default_member_action", "accept")],
            )
        },
        |fx| {
            fx.rest_ok(
                "PATCH",
                &format!("{list_path}/config"),
                &[("default_member_action", "defer")],
            )
        },
    );

    // Site settings in mailman.cfg; the running Mailman still has the old ones.
    let outbound = snippet_section(&fx.mailman.config, "mta")
        .into_iter()
        .find(|(k, _)| k == "smtp_port")
        .unwrap()
        .1;
    fx.expect(
        &baseline,
        &["FAIL mailman smtp_port", "warn mailman running config"],
        |fx| fx.edit_mailman_cfg(&format!("smtp_port: {outbound}"), "smtp_port: 25"),
        |_| {},
    );
    fx.expect(
        &baseline,
        &["FAIL mailman sender_headers", "warn mailman running config"],
        // Mailman's default.
        |fx| fx.edit_mailman_cfg("sender_headers: from from_\n", ""),
        |_| {},
    );
    fx.expect(
        &baseline,
        &["warn mailman max_recipients", "warn mailman running config"],
        |fx| fx.edit_mailman_cfg("max_recipients: 50", "max_recipients: 0"),
        |_| {},
    );
    // Without a readable mailman.cfg, the running Mailman's settings are judged: all good.
    let (code, report) = fx.doctor_with(&fx.base.join("no-such-mailman.cfg"));
    let got: BTreeSet<String> = problems(&report).difference(&baseline).cloned().collect();
    assert_eq!(
        got,
        BTreeSet::from(["warn mailman.cfg".to_string()]),
        "{report}"
    );
    assert_eq!(code, Some(0), "{report}");
    for check in [
        "mailman smtp_port",
        "mailman sender_headers",
        "mailman max_recipients",
    ] {
        assert!(
            report.lines().any(|l| l == format!("ok {check}")),
            "{report}"
        );
    }

    // listcrypt last in smtpd_milters.
    fx.expect(
        &baseline,
        &["FAIL inbound milter last"],
        |fx| {
            fx.postfix
                .add_inbound_milter_after_listcrypt("inet:127.0.0.1:9", fx.inbound_port)
        },
        |_| {},
    );

    // The list's addresses go to Mailman's LMTP and nowhere else.
    let routing = [
        (
            "recipient_bcc_maps",
            format!("recipient_bcc_maps = inline:{{ {LIST}=spy@example.net }}"),
        ),
        (
            "virtual_alias_maps",
            "virtual_alias_maps = inline:{ enc-owner@lists.example.test=spy@example.net }".into(),
        ),
        (
            "sender_bcc_maps",
            "sender_bcc_maps = inline:{ alice@example.net=spy@example.net }".into(),
        ),
        ("always_bcc", "always_bcc = spy@example.net".into()),
        (
            "content_filter",
            "content_filter = smtp:[127.0.0.1]:10024".into(),
        ),
        (
            "recipient_canonical_maps",
            "recipient_canonical_maps = inline:{ @lists.example.test=@elsewhere.example }".into(),
        ),
        (
            "transport_maps",
            "transport_maps = inline:{ lists.example.test=smtp:[127.0.0.1]:25 }".into(),
        ),
    ];
    for (param, setting) in routing {
        let report = fx.expect(
            &baseline,
            &["FAIL list routing"],
            |fx| fx.postconf(&["-e", &setting]),
            |_| {},
        );
        assert!(
            line(&report, "FAIL list routing").contains(param),
            "{param}:\n{report}"
        );
    }

    // Rosters against bindings.
    let dave = GpgUser::create(&fx.base.join("gnupg"), "Dave", "dave@example.net");
    let report = fx.expect(
        &baseline,
        &["warn members without key"],
        |fx| {
            run_ok(
                &mut fx.mailman.command(&["addmembers", "-W", "-", LIST]),
                Some(b"dave@example.net\n"),
            );
        },
        |fx| {
            fx.rest_ok(
                "DELETE",
                &format!("{list_path}/member/dave@example.net"),
                &[],
            )
        },
    );
    assert!(
        line(&report, "warn members without key").contains("dave@example.net"),
        "{report}"
    );
    let report = fx.expect(
        &baseline,
        &["warn keys of non-members"],
        |fx| bind(&fx.listcrypt, LIST, &dave, "member", &fx.base),
        |fx| {
            fx.listcrypt
                .cli(&["member", "remove", LIST, "dave@example.net"]);
        },
    );
    assert!(
        line(&report, "warn keys of non-members").contains("dave@example.net"),
        "{report}"
    );

    // A member key that stops being usable in 20 days.
    let (_erin, cert, _) = fx.expiring_key("erin@example.net", 20, 0);
    let report = fx.expect(
        &baseline,
        &["warn key expiry"],
        |fx| {
            run_ok(
                &mut fx.mailman.command(&["addmembers", "-W", "-", LIST]),
                Some(b"erin@example.net\n"),
            );
            fx.listcrypt.cli(&[
                "member",
                "add",
                LIST,
                "erin@example.net",
                &cert.display().to_string(),
            ]);
        },
        |fx| {
            fx.rest_ok(
                "DELETE",
                &format!("{list_path}/member/erin@example.net"),
                &[],
            );
            fx.listcrypt
                .cli(&["member", "remove", LIST, "erin@example.net"]);
        },
    );
    assert!(
        line(&report, "warn key expiry").contains("erin@example.net"),
        "{report}"
    );
    // A list key that expires in 20 days, and one that expired ten days ago.
    let list_key = fx.list_secret(LIST);
    let saved_key = std::fs::read(&list_key).unwrap();
    let (_soon, _, soon_secret) = fx.expiring_key(LIST, 20, 0);
    // The swapped-in keys are made by gpg without the site's passphrase: doctor says so too.
    let at_rest = format!("warn list key {LIST} at rest");
    let report = fx.expect(
        &baseline,
        &["warn key expiry", &at_rest],
        |_| std::fs::copy(&soon_secret, &list_key).map(drop).unwrap(),
        |_| {
            write(&list_key, &saved_key);
            std::fs::set_permissions(&list_key, std::fs::Permissions::from_mode(0o600)).unwrap();
        },
    );
    assert!(
        line(&report, "warn key expiry").contains(&format!("the list key of {LIST}")),
        "{report}"
    );
    let (_dead, _, dead_secret) = fx.expiring_key("old@lists.example.test", 30, 40);
    let report = fx.expect(
        &baseline,
        &["FAIL key expiry", &at_rest],
        |_| std::fs::copy(&dead_secret, &list_key).map(drop).unwrap(),
        |_| {
            write(&list_key, &saved_key);
            std::fs::set_permissions(&list_key, std::fs::Permissions::from_mode(0o600)).unwrap();
        },
    );
    assert!(
        line(&report, "FAIL key expiry").contains(&format!("the list key of {LIST}")),
        "{report}"
    );

    // Mailman's REST API unreachable: a warning, and its checks are skipped.
    let closed = free_ports::<1>()[0];
    let report = fx.expect(
        &baseline,
        &["warn mailman api"],
        |fx| {
            fx.set_api(
                &format!("http://127.0.0.1:{closed}/3.1"),
                &fx.base.join("mailman-api.pass"),
            )
        },
        |_| {},
    );
    for skipped in [
        "mailman lists",
        "mailman archive",
        "mailman hold rule",
        "members without key",
    ] {
        assert!(!report.contains(skipped), "{skipped}:\n{report}");
    }
    assert!(
        line(&report, "warn mailman api").contains("connect"),
        "{report}"
    );
    // A wrong password is Mailman's 401.
    let wrong = fx.base.join("wrong.pass");
    write(&wrong, "not-the-password\n");
    let report = fx.expect(
        &baseline,
        &["warn mailman api"],
        |fx| fx.set_api(&fx.rest_url, &wrong),
        |_| {},
    );
    assert!(
        line(&report, "warn mailman api").contains("HTTP 401"),
        "{report}"
    );

    // The daemon's state owned by its own user: doctor reads it as that user and is root
    // again afterwards (the password file below is root's alone).
    let password_file = fx.base.join("mailman-api.pass");
    support::files::chmod(&password_file, 0o600);
    let state = [
        fx.base.join("listcrypt/state"),
        fx.base.join("listcrypt/keyrings"),
    ];
    let chown = |owner: &str| {
        for dir in &state {
            run_ok(Command::new("chown").args(["-R", owner]).arg(dir), None);
        }
    };
    // The config names no `user`, so the daemon's user is root: keys owned by another user
    // are worth the at-rest warning, and nothing else changes.
    fx.expect(
        &baseline,
        &[&at_rest],
        |_| chown("nobody:nogroup"),
        |_| chown("root:root"),
    );

    // A listcrypt list that Mailman does not know: Postfix neither accepts its key address
    // nor routes it to Mailman, and Mailman would refuse its posts. Last: not undone.
    let report = fx.expect(
        &baseline,
        &[
            "FAIL mailman lists",
            "FAIL key address",
            "FAIL list routing",
        ],
        |fx| {
            fx.listcrypt
                .cli(&["list", "create", "other@lists.example.test"]);
        },
        |_| {},
    );
    assert!(
        line(&report, "FAIL mailman lists").contains("other@lists.example.test"),
        "{report}"
    );
}
