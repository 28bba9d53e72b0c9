//! `listcrypt doctor`: checks the Postfix wiring (`postconf`, `postconf -M`, `postconf -P`,
//! `postmap -q`) or Sendmail's (its generated .cf, `sendmail.rs`), Mailman's config file and
//! REST API, and listcrypt's own settings, keys and bindings; one line per check, exit 1 on a
//! FAIL.

mod mailman_rest;
mod sendmail;

use crate::admin::exit;
use crate::config::{Config, MailmanApi, Policy, SocketSpec};
use crate::keys::{normalize_address, Keyring};
use crate::store::{Binding, BindingState, SqliteStore, Store};
use mailman_rest::{entries, text, Rest};
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the checked installations live.
pub struct DoctorOptions {
    /// `postconf -c DIR`; `None` for Postfix's default instance.
    pub postfix_config: Option<PathBuf>,
    /// Sendmail's generated .cf; `None` checks Postfix (or /etc/mail/sendmail.cf when there
    /// is no `postconf`).
    pub sendmail_cf: Option<PathBuf>,
    pub mailman_config: PathBuf,
}

impl DoctorOptions {
    /// The sendmail.cf to check instead of Postfix, if any.
    fn sendmail(&self) -> Option<PathBuf> {
        if self.sendmail_cf.is_some() || self.postfix_config.is_some() {
            return self.sendmail_cf.clone();
        }
        let cf = Path::new(sendmail::DEFAULT_CF);
        let postconf = std::env::var_os("PATH").is_some_and(|path| {
            std::env::split_paths(&path).any(|dir| dir.join("postconf").is_file())
        });
        (!postconf && cf.exists()).then(|| cf.to_path_buf())
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Level {
    Ok,
    Warn,
    Fail,
}

/// The report, in check order.
#[derive(Default)]
struct Report(Vec<(Level, String, String)>);

impl Report {
    fn ok(&mut self, check: &str) {
        self.0.push((Level::Ok, check.into(), String::new()));
    }
    fn warn(&mut self, check: &str, why: String) {
        self.0.push((Level::Warn, check.into(), why));
    }
    fn fail(&mut self, check: &str, why: String) {
        self.0.push((Level::Fail, check.into(), why));
    }
    /// `ok` when `problem` is `None`, else a FAIL with it.
    fn check(&mut self, check: &str, problem: Option<String>) {
        match problem {
            None => self.ok(check),
            Some(why) => self.fail(check, why),
        }
    }
}

/// One master.cf entry: its fields and its `-o` overrides (`postconf -P`).
struct Service {
    name: String,
    kind: String,
    chroot: bool,
    command: String,
    options: HashMap<String, String>,
}

impl Service {
    fn is_smtpd(&self) -> bool {
        self.kind == "inet" && self.command == "smtpd"
    }
    /// The host part of `HOST:PORT`, `None` for a bare port or service name.
    fn host(&self) -> Option<&str> {
        self.name.rsplit_once(':').map(|(h, _)| h)
    }
    fn port(&self) -> u16 {
        let port = self
            .name
            .rsplit_once(':')
            .map_or(self.name.as_str(), |p| p.1);
        match port {
            "smtp" => 25,
            "submission" => 587,
            "smtps" | "submissions" => 465,
            p => p.parse().unwrap_or(0),
        }
    }
}

/// What `postconf` says about one instance.
struct Postfix {
    config_dir: Option<PathBuf>,
    main: HashMap<String, String>,
    services: Vec<Service>,
}

impl Postfix {
    fn postconf(dir: Option<&Path>, args: &[&str]) -> Result<String, String> {
        let mut cmd = Command::new("postconf");
        if let Some(dir) = dir {
            cmd.arg("-c").arg(dir);
        }
        let out = cmd
            .args(args)
            .output()
            .map_err(|e| format!("cannot run postconf: {e}"))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            return Err(format!("postconf {}: {}", args.join(" "), err.trim()));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn read(dir: Option<&Path>) -> Result<Postfix, String> {
        let mut main = HashMap::new();
        // Effective values, defaults included (milter_default_action, message_size_limit).
        for line in Self::postconf(dir, &[])?.lines() {
            if let Some((name, value)) = line.split_once(" =") {
                main.insert(name.trim().to_string(), value.trim().to_string());
            }
        }
        let mut options: HashMap<(String, String), HashMap<String, String>> = HashMap::new();
        for line in Self::postconf(dir, &["-P"])?.lines() {
            let Some((key, value)) = line.split_once(" =") else {
                continue;
            };
            let mut parts = key.trim().rsplitn(3, '/');
            let (Some(param), Some(kind), Some(name)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            options
                .entry((name.to_string(), kind.to_string()))
                .or_default()
                .insert(param.to_string(), value.trim().to_string());
        }
        let mut services = Vec::new();
        for line in Self::postconf(dir, &["-M"])?.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 {
                continue;
            }
            let key = (fields[0].to_string(), fields[1].to_string());
            services.push(Service {
                name: key.0.clone(),
                kind: key.1.clone(),
                // Since Postfix 3.0 `-` in the chroot column means n.
                chroot: fields[4] == "y",
                command: fields[7].to_string(),
                options: options.remove(&key).unwrap_or_default(),
            });
        }
        Ok(Postfix {
            config_dir: dir.map(Path::to_path_buf),
            main,
            services,
        })
    }

    /// A parameter as `service` sees it: its `-o` override, else main.cf's value.
    fn param<'a>(&'a self, service: Option<&'a Service>, name: &str) -> &'a str {
        service
            .and_then(|s| s.options.get(name))
            .or_else(|| self.main.get(name))
            .map_or("", String::as_str)
    }

    fn queue_directory(&self) -> PathBuf {
        PathBuf::from(self.param(None, "queue_directory"))
    }

    fn service(&self, name: &str, kind: &str) -> Option<&Service> {
        self.services
            .iter()
            .find(|s| s.name == name && s.kind == kind)
    }
}

/// One milter of a Postfix milter list: its socket and its `default_action`, if given.
struct Milter {
    socket: String,
    default_action: Option<String>,
}

/// Splits `a, { b, default_action=x }, c` into milters (commas and spaces separate).
fn milters(value: &str) -> Vec<Milter> {
    let mut items = Vec::new();
    let mut depth = 0;
    let mut current = String::new();
    for c in value.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            _ => {}
        }
        if depth == 0 && (c == ',' || c.is_whitespace()) {
            items.push(std::mem::take(&mut current));
        } else {
            current.push(c);
        }
    }
    items.push(current);
    items
        .into_iter()
        .filter(|i| !i.trim().is_empty())
        .map(|item| {
            let inner = item.trim().trim_start_matches('{').trim_end_matches('}');
            let mut parts = inner.split([',', ' ', '\t']).filter(|p| !p.is_empty());
            let socket = parts.next().unwrap_or_default().to_string();
            let default_action = parts
                .filter_map(|p| p.strip_prefix("default_action="))
                .map(String::from)
                .next();
            Milter {
                socket,
                default_action,
            }
        })
        .collect()
}

/// The socket Postfix connects to for `milter`, as seen from outside a chroot.
fn postfix_socket(milter: &str, chroot: bool, queue: &Path) -> Option<SocketSpec> {
    match SocketSpec::parse(milter).ok()? {
        SocketSpec::Unix(p) if chroot || p.is_relative() => Some(SocketSpec::Unix(
            queue.join(p.strip_prefix("/").unwrap_or(&p)),
        )),
        spec => Some(spec),
    }
}

fn same_socket(a: &SocketSpec, b: &SocketSpec) -> bool {
    match (a, b) {
        (SocketSpec::Unix(a), SocketSpec::Unix(b)) => a == b,
        (SocketSpec::Inet(ha, pa), SocketSpec::Inet(hb, pb)) => {
            let local = |h: &str| matches!(h, "localhost" | "127.0.0.1" | "::1");
            pa == pb && (ha == hb || (local(ha) && local(hb)))
        }
        _ => false,
    }
}

/// Position of listcrypt's `socket` in `service`'s milter list `param`, and the list's length.
fn find_milter(
    pf: &Postfix,
    service: Option<&Service>,
    param: &str,
    socket: &SocketSpec,
) -> (Option<usize>, Vec<Milter>) {
    let list = milters(pf.param(service, param));
    let chroot = service.map_or_else(
        || pf.service("cleanup", "unix").is_some_and(|c| c.chroot),
        |s| s.chroot,
    );
    let queue = pf.queue_directory();
    // A chrooted service naming the outside path is the chroot check's FAIL, not this one's.
    let at = list.iter().position(|m| {
        [chroot, false].into_iter().any(|chroot| {
            postfix_socket(&m.socket, chroot, &queue).is_some_and(|s| same_socket(&s, socket))
        })
    });
    (at, list)
}

fn loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// listcrypt's two milter sockets, parsed.
struct Sockets {
    inbound: SocketSpec,
    outbound: SocketSpec,
}

/// Runs every check, prints the report, and returns 1 on a FAIL, else 0.
pub fn doctor(
    config: &Config,
    options: &DoctorOptions,
    out: &mut dyn Write,
) -> Result<u8, crate::admin::CommandError> {
    let mut report = Report::default();
    let sockets = match (
        SocketSpec::parse(&config.inbound_socket),
        SocketSpec::parse(&config.outbound_socket),
    ) {
        (Ok(inbound), Ok(outbound)) => Some(Sockets { inbound, outbound }),
        (Err(e), _) | (_, Err(e)) => {
            report.fail("listcrypt sockets", format!("{e} — fix listcrypt.toml"));
            None
        }
    };
    let sendmail_cf = options.sendmail();
    // With Sendmail, postconf is not run at all.
    let postfix_read = sendmail_cf
        .is_none()
        .then(|| Postfix::read(options.postfix_config.as_deref()));
    let postfix = match (postfix_read, &sockets) {
        (None, _) => None,
        (Some(Err(e)), _) => {
            report.fail(
                "postconf",
                format!(
                    "{e} — install Postfix, give its configuration with --postfix-config DIR, or check Sendmail with --sendmail-cf /etc/mail/sendmail.cf"
                ),
            );
            None
        }
        (Some(Ok(pf)), Some(sockets)) => {
            postfix_checks(&pf, config, sockets, &mut report);
            Some(pf)
        }
        (Some(Ok(_)), None) => None,
    };
    let lists = lists_with_policies(config);
    let keys = load_keys(config);
    if let Err(why) = &keys {
        report.warn(
            "listcrypt state",
            format!("{why} — bindings and key expiry are not checked"),
        );
    }
    let mailman = Mailman::read(config, &options.mailman_config, &mut report);
    if let (Some(cf), Some(sockets)) = (&sendmail_cf, &sockets) {
        let smtp_port = mailman
            .setting("mta", "smtp_port")
            .and_then(|p| p.parse().ok());
        sendmail::sendmail_checks(cf, config, sockets, smtp_port, &mut report);
    }
    if let (Some(pf), Some(sockets)) = (&postfix, &sockets) {
        mailman_site_checks(pf, sockets, &mailman, &lists, &mut report);
        routing_check(pf, &mailman, &lists, keys.as_ref().ok(), &mut report);
    }
    if let Ok(rest) = &mailman.rest {
        mailman_list_checks(rest, &mailman, &lists, keys.as_ref().ok(), &mut report);
    }
    if let Ok(keys) = &keys {
        expiry_check(&keys.keyring, std::time::SystemTime::now(), &mut report);
    }
    list_key_checks(config, &mut report);
    let mut failed = false;
    for (level, check, why) in &report.0 {
        let line = match level {
            Level::Ok => format!("ok {check}"),
            Level::Warn => format!("warn {check}: {why}"),
            Level::Fail => format!("FAIL {check}: {why}"),
        };
        failed |= *level == Level::Fail;
        writeln!(out, "{line}")
            .map_err(|e| crate::admin::CommandError::new(exit::IOERR, "stdout", e))?;
    }
    Ok(if failed {
        exit::NOT_PROCESSED
    } else {
        exit::OK
    })
}

fn postfix_checks(pf: &Postfix, config: &Config, sockets: &Sockets, report: &mut Report) {
    inbound_checks(pf, config, sockets, report);
    outbound_check(pf, sockets, report);
    dsn_checks(pf, sockets, report);
    chroot_check(pf, sockets, report);
    access_check(config, sockets, report);
    key_address_check(pf, config, report);
    size_check(pf, config, report);
    reinject_checks(pf, config, report);
}

/// The smtpd listeners that take mail from anyone: not the reinjection listener, not one
/// with listcrypt's outbound milter, not one that rejects every client outside mynetworks.
fn public_smtpds<'a>(pf: &'a Postfix, config: &Config, sockets: &Sockets) -> Vec<&'a Service> {
    let reinject = reinject_port(config);
    pf.services
        .iter()
        .filter(|s| s.is_smtpd() && s.port() != reinject)
        .filter(|s| {
            find_milter(pf, Some(s), "smtpd_milters", &sockets.outbound)
                .0
                .is_none()
        })
        .filter(|s| {
            let restrictions = pf.param(Some(s), "smtpd_client_restrictions");
            restrictions
                .split([',', ' ', '\t'])
                .rfind(|r| !r.is_empty())
                != Some("reject")
        })
        .collect()
}

fn reinject_port(config: &Config) -> u16 {
    config
        .reinject_smtp
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .unwrap_or(0)
}

/// The effective default_action of one milter entry.
fn action<'a>(pf: &'a Postfix, service: Option<&'a Service>, milter: &'a Milter) -> &'a str {
    milter
        .default_action
        .as_deref()
        .unwrap_or_else(|| pf.param(service, "milter_default_action"))
}

fn inbound_checks(pf: &Postfix, config: &Config, sockets: &Sockets, report: &mut Report) {
    let public = public_smtpds(pf, config, sockets);
    let mut missing = Vec::new();
    let mut not_last = Vec::new();
    let mut lax = Vec::new();
    for service in &public {
        match find_milter(pf, Some(service), "smtpd_milters", &sockets.inbound) {
            (Some(at), list) => {
                if at + 1 != list.len() {
                    not_last.push(service.name.clone());
                }
                if action(pf, Some(service), &list[at]) != "tempfail" {
                    lax.push(service.name.clone());
                }
            }
            (None, _) => missing.push(service.name.clone()),
        }
    }
    report.check(
        "inbound milter",
        if public.is_empty() {
            Some("no public smtpd service in master.cf — add listcrypt's \"smtp inet\" entry from postfix/master.cf".into())
        } else {
            (!missing.is_empty()).then(|| format!(
                "smtpd_milters of {} does not name listcrypt's inbound socket — add -o smtpd_milters={{ unix:/listcrypt/inbound.sock, default_action=tempfail }} (postfix/master.cf)",
                missing.join(", ")
            ))
        },
    );
    report.check("inbound milter last", (!not_last.is_empty()).then(|| format!(
        "a milter runs after listcrypt in smtpd_milters of {} and would see decrypted posts — move listcrypt to the end",
        not_last.join(", ")
    )));
    report.check("inbound milter_default_action", (!lax.is_empty()).then(|| format!(
        "listcrypt's milter on {} does not fail closed — set milter_default_action = tempfail (or default_action=tempfail in its entry)",
        lax.join(", ")
    )));
}

fn outbound_check(pf: &Postfix, sockets: &Sockets, report: &mut Report) {
    let found = pf.services.iter().filter(|s| s.is_smtpd()).find_map(|s| {
        match find_milter(pf, Some(s), "smtpd_milters", &sockets.outbound) {
            (Some(at), list) => Some((s, action(pf, Some(s), &list[at]).to_string())),
            (None, _) => None,
        }
    });
    match found {
        None => report.fail("outbound milter", "no smtpd service has listcrypt's outbound socket in smtpd_milters — add the \"127.0.0.1:10025\" entry of postfix/master.cf".into()),
        Some((s, action)) => {
            report.ok("outbound milter");
            report.check("outbound milter_default_action", (action != "tempfail").then(|| format!(
                "listcrypt's milter on {} has default_action {action}: copies would leave unencrypted when listcrypt is down — set milter_default_action = tempfail",
                s.name
            )));
        }
    }
}

fn dsn_checks(pf: &Postfix, sockets: &Sockets, report: &mut Report) {
    let (at, list) = find_milter(pf, None, "non_smtpd_milters", &sockets.inbound);
    let problem = match at {
        None => Some("does not name listcrypt's inbound socket: DSNs would quote decrypted posts — set non_smtpd_milters = { unix:/listcrypt/inbound.sock, default_action=tempfail }".to_string()),
        Some(at) if action(pf, None, &list[at]) != "tempfail" => Some("listcrypt's entry does not fail closed — add default_action=tempfail".into()),
        Some(_) => None,
    };
    report.check("non_smtpd_milters", problem);
    let classes = pf.param(None, "internal_mail_filter_classes");
    let bounce = classes
        .split([',', ' ', '\t'])
        .any(|c| c.eq_ignore_ascii_case("bounce"));
    report.check("internal_mail_filter_classes", (!bounce).then(|| format!(
        "is {classes:?}, without bounce: Postfix's DSNs skip the milter and quote decrypted posts — set internal_mail_filter_classes = bounce"
    )));
}

/// Whether user postfix can reach and write the unix socket `path` (or, while listcrypt is
/// not running, the socket it would create with `socket_mode` and `socket_group`).
fn socket_access(config: &Config, path: &Path) -> Result<(), String> {
    use nix::unistd::{Group, User};
    use std::os::unix::fs::MetadataExt;
    let user = User::from_name("postfix")
        .ok()
        .flatten()
        .ok_or("there is no user postfix")?;
    let in_group = |gid: u32| {
        gid == user.gid.as_raw()
            || Group::from_gid(nix::unistd::Gid::from_raw(gid))
                .ok()
                .flatten()
                .is_some_and(|g| g.mem.contains(&user.name))
    };
    for dir in path.ancestors().skip(1).filter(|d| d.exists()) {
        let m = std::fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let search = m.mode() & 0o001 != 0
            || (in_group(m.gid()) && m.mode() & 0o010 != 0)
            || (m.uid() == user.uid.as_raw() && m.mode() & 0o100 != 0);
        if !search {
            return Err(format!(
                "{} is not searchable by user postfix",
                dir.display()
            ));
        }
    }
    let (uid, gid, mode) = match std::fs::metadata(path) {
        Ok(m) => (Some(m.uid()), Some(m.gid()), m.mode()),
        Err(_) => {
            let mode = u32::from_str_radix(&config.socket_mode, 8).unwrap_or(0o660);
            let group = crate::server::resolve_group(&config.socket_group)
                .ok()
                .flatten();
            (None, group, mode)
        }
    };
    let writable = mode & 0o002 != 0
        || (gid.is_some_and(in_group) && mode & 0o020 != 0)
        || (uid == Some(user.uid.as_raw()) && mode & 0o200 != 0);
    if writable {
        Ok(())
    } else {
        Err(format!(
            "mode {:o}, group {} do not let group postfix write it",
            mode & 0o7777,
            gid.map_or("(listcrypt's)".to_string(), |g| g.to_string())
        ))
    }
}

/// A chrooted smtpd or cleanup resolves `unix:/PATH` inside the queue directory: naming
/// listcrypt's socket by its outside path then misses it.
fn chroot_check(pf: &Postfix, sockets: &Sockets, report: &mut Report) {
    let queue = pf.queue_directory();
    let mut wrong = Vec::new();
    for service in pf.services.iter().filter(|s| s.chroot) {
        let param = match (service.is_smtpd(), service.name.as_str()) {
            (true, _) => "smtpd_milters",
            (false, "cleanup") => "non_smtpd_milters",
            _ => continue,
        };
        for milter in milters(pf.param(Some(service), param)) {
            let Some(outside) = postfix_socket(&milter.socket, false, &queue) else {
                continue;
            };
            let inside = postfix_socket(&milter.socket, true, &queue);
            for socket in [&sockets.inbound, &sockets.outbound] {
                let reached = inside.as_ref().is_some_and(|i| same_socket(i, socket));
                if same_socket(&outside, socket) && !reached {
                    wrong.push(format!("{} ({})", service.name, milter.socket));
                }
            }
        }
    }
    report.check("milter socket chroot", (!wrong.is_empty()).then(|| format!(
        "{} chrooted in {} name listcrypt's socket by its outside path — put the sockets under {}/listcrypt/ and name them unix:/listcrypt/…, or set the chroot column to n",
        wrong.join(", "), queue.display(), queue.display()
    )));
}

fn access_check(config: &Config, sockets: &Sockets, report: &mut Report) {
    let mut absent = Vec::new();
    let mut problems = Vec::new();
    for spec in [&sockets.inbound, &sockets.outbound] {
        let SocketSpec::Unix(path) = spec else {
            continue;
        };
        match socket_access(config, path) {
            Ok(()) if path.exists() => {}
            Ok(()) => absent.push(path.display().to_string()),
            Err(why) => problems.push(format!("{}: {why}", path.display())),
        }
    }
    if !problems.is_empty() {
        report.fail("milter socket access", format!(
            "{} — set socket_group = \"postfix\" and socket_mode = \"0660\", and make the directories searchable",
            problems.join("; ")
        ));
    } else if !absent.is_empty() {
        report.warn("milter socket access", format!(
            "{} not there (listcrypt not running?); socket_mode and socket_group let group postfix write them — start listcrypt and run doctor again",
            absent.join(", ")
        ));
    } else {
        report.ok("milter socket access");
    }
}

/// Whether `postmap -q` finds `key` in any of the maps listed in `param`.
fn in_maps(pf: &Postfix, param: &str, key: &str) -> bool {
    lookup(pf, param, key).is_some()
}

fn key_address_check(pf: &Postfix, config: &Config, report: &mut Report) {
    let lists = match crate::keys::list_names(config) {
        Ok(lists) => lists,
        Err(e) => {
            report.warn(
                "key address",
                format!("{e} — fix policy_dir, then run doctor again"),
            );
            return;
        }
    };
    if lists.is_empty() {
        report.warn(
            "key address",
            "no lists yet — `listcrypt list create LIST`".into(),
        );
        return;
    }
    let mut missing = Vec::new();
    for list in &lists {
        let suffix = Policy::load(&config.policy_path(list))
            .map(|p| p.key_suffix)
            .unwrap_or_else(|_| "key".into());
        let (local, domain) = list.rsplit_once('@').unwrap_or((list, ""));
        let key = format!("{local}-{suffix}@{domain}");
        let found = [
            "relay_recipient_maps",
            "virtual_alias_maps",
            "virtual_mailbox_maps",
        ]
        .iter()
        .any(|param| in_maps(pf, param, &key));
        if !found {
            missing.push(key);
        }
    }
    report.check("key address", (!missing.is_empty()).then(|| format!(
        "{} in none of relay_recipient_maps, virtual_alias_maps, virtual_mailbox_maps: Postfix refuses it at RCPT — add inline:{{ {} }} to relay_recipient_maps",
        missing.join(", "),
        missing.iter().map(|k| format!("{k}=OK")).collect::<Vec<_>>().join(", ")
    )));
}

fn size_check(pf: &Postfix, config: &Config, report: &mut Report) {
    let need = config.limits.max_outbound_copy_bytes;
    let mut small = Vec::new();
    let mut services: Vec<Option<&Service>> = vec![None];
    services.extend(pf.services.iter().filter(|s| s.is_smtpd()).map(Some));
    for service in services {
        let value = pf.param(service, "message_size_limit");
        let limit: u64 = value.parse().unwrap_or(0);
        // 0 means no limit.
        if limit != 0 && limit < need {
            small.push(format!(
                "{} {limit}",
                service.map_or("main.cf", |s| s.name.as_str())
            ));
        }
    }
    report.check("message_size_limit", (!small.is_empty()).then(|| format!(
        "{} below listcrypt's max_outbound_copy_bytes {need}: encrypted copies would be refused — set message_size_limit = {need} or more",
        small.join(", ")
    )));
}

fn reinject_checks(pf: &Postfix, config: &Config, report: &mut Report) {
    let port = reinject_port(config);
    let Some(service) = pf
        .services
        .iter()
        .find(|s| s.is_smtpd() && s.port() == port)
    else {
        report.fail("reinjection service", format!(
            "no smtpd service on port {port} (reinject_smtp {}) — add the \"127.0.0.1:10026\" entry of postfix/master.cf",
            config.reinject_smtp
        ));
        report.fail(
            "reinjection loopback",
            "no reinjection service — see above".into(),
        );
        return;
    };
    let no_milters = pf
        .param(Some(service), "receive_override_options")
        .split([',', ' '])
        .any(|o| o == "no_milters");
    let milters = pf.param(Some(service), "smtpd_milters");
    report.check("reinjection service", (!no_milters && !milters.trim().is_empty()).then(|| format!(
        "{} runs smtpd_milters {milters:?}: encrypted batches would be processed again — add -o smtpd_milters= -o receive_override_options=no_milters",
        service.name
    )));
    let interfaces = pf.param(None, "inet_interfaces");
    let local = match service.host() {
        Some(host) => loopback(host),
        None => interfaces
            .split([',', ' '])
            .filter(|i| !i.is_empty())
            .all(loopback),
    };
    report.check("reinjection loopback", (!local).then(|| format!(
        "{} is not bound to loopback: anyone could send mail that leaves unencrypted — name it 127.0.0.1:{port}",
        service.name
    )));
}

/// `[section] key` of an ini-style mailman.cfg; the last assignment wins, as in Mailman.
fn ini_value(text: &str, section: &str, key: &str) -> Option<String> {
    let mut current = String::new();
    let mut value = None;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name.trim().to_string();
        } else if current == section {
            if let Some((k, v)) = line.split_once([':', '=']) {
                if k.trim() == key {
                    value = Some(v.trim().to_string());
                }
            }
        }
    }
    value
}

/// The lists in `policy_dir` with their policies (a list whose policy does not load is left
/// out here; `check-config` names it).
fn lists_with_policies(config: &Config) -> Vec<(String, Policy)> {
    crate::keys::list_names(config)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|list| {
            let policy = Policy::load(&config.policy_path(&list)).ok()?;
            Some((list, policy))
        })
        .collect()
}

/// The keyring and every binding (any state) per list, as the daemon sees them.
struct Keys {
    keyring: Keyring,
    bindings: HashMap<String, Vec<Binding>>,
}

/// Opens the store as the owner of `state_dir` (doctor runs as root): SQLite's -wal and -shm
/// files must stay the daemon's, and a missing database is not created.
fn load_keys(config: &Config) -> Result<Keys, String> {
    // SqliteStore's file name.
    let database = config.state_dir.join("state.sqlite");
    if !database.exists() {
        return Err(format!(
            "{} does not exist yet (no list created?)",
            database.display()
        ));
    }
    // SQLite creates -wal and -shm when it opens the database; later reads use them.
    let store = {
        let _owner = AsOwner::of(&config.state_dir)?;
        SqliteStore::open(&config.state_dir).map_err(|e| e.to_string())?
    };
    let keyring = Keyring::load(config, &store).map_err(|e| e.to_string())?;
    let mut bindings = HashMap::new();
    for list in keyring.lists.keys() {
        bindings.insert(
            list.clone(),
            store.bindings(list).map_err(|e| e.to_string())?,
        );
    }
    Ok(Keys { keyring, bindings })
}

/// Root's effective ids switched to a directory's owner until dropped; holds the effective
/// group to return to (`None`: nothing was switched).
struct AsOwner(Option<nix::unistd::Gid>);

impl AsOwner {
    fn of(dir: &Path) -> Result<AsOwner, String> {
        use nix::unistd::{setegid, seteuid, Gid, Uid};
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        if !Uid::effective().is_root() || meta.uid() == 0 {
            return Ok(AsOwner(None));
        }
        let owner = AsOwner(Some(Gid::effective()));
        setegid(Gid::from_raw(meta.gid())).map_err(|e| format!("setegid: {e}"))?;
        seteuid(Uid::from_raw(meta.uid())).map_err(|e| format!("seteuid: {e}"))?;
        Ok(owner)
    }
}

impl Drop for AsOwner {
    fn drop(&mut self) {
        if let Some(gid) = self.0 {
            // Root first: only root may set the group back.
            let _ = nix::unistd::seteuid(nix::unistd::Uid::from_raw(0));
            let _ = nix::unistd::setegid(gid);
        }
    }
}

/// The sections of the running Mailman's configuration that doctor reads.
const SECTIONS: [&str; 3] = ["mta", "mailman", "antispam"];

/// Mailman's settings that doctor compares, with Mailman 3.3's defaults (schema.cfg).
const SETTINGS: [(&str, &str, &str); 5] = [
    ("mta", "smtp_port", "25"),
    ("mta", "max_recipients", "500"),
    ("mta", "lmtp_host", "127.0.0.1"),
    ("mta", "lmtp_port", "8024"),
    ("mailman", "sender_headers", "from from_ reply-to sender"),
];

/// What doctor knows of Mailman: its config file and, when reachable, its REST API.
struct Mailman {
    /// mailman.cfg's text, or why it could not be read.
    file: Result<String, String>,
    /// The REST client, or why there is none.
    rest: Result<Rest, String>,
    /// `SECTIONS` of the running Mailman.
    running: HashMap<String, HashMap<String, String>>,
}

impl Mailman {
    fn read(config: &Config, path: &Path, report: &mut Report) -> Mailman {
        let file = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()));
        if let Err(why) = &file {
            report.warn("mailman.cfg", format!(
                "{why} — run doctor as root or as a member of group list, or give --mailman-config FILE; the running Mailman's settings are used instead"
            ));
        }
        let mut running = HashMap::new();
        let rest = connect(&config.mailman_api).and_then(|rest| {
            for section in SECTIONS {
                let value = rest
                    .get(&format!("system/configuration/{section}"))
                    .map_err(|e| e.to_string())?;
                let pairs = value
                    .as_object()
                    .map(|o| {
                        o.iter()
                            .filter_map(|(k, v)| Some((k.clone(), text(Some(v))?)))
                            .collect()
                    })
                    .unwrap_or_default();
                running.insert(section.to_string(), pairs);
            }
            Ok(rest)
        });
        match &rest {
            Ok(_) => report.ok("mailman api"),
            Err(why) => report.warn("mailman api", format!(
                "{why} — start Mailman and set [mailman_api] url, user and password_file from mailman.cfg's [webservice]; the checks of each list's Mailman settings and roster are skipped"
            )),
        }
        if rest.is_err() {
            running.clear();
        }
        Mailman {
            file,
            rest,
            running,
        }
    }

    /// `[section] key` as Mailman will run it: mailman.cfg's (or Mailman's default) when the
    /// file is readable, else the running Mailman's; `None` when neither is known.
    fn setting(&self, section: &str, key: &str) -> Option<String> {
        match &self.file {
            Ok(text) => {
                Some(ini_value(text, section, key).unwrap_or_else(|| default(section, key)))
            }
            Err(_) => self.running.get(section)?.get(key).cloned(),
        }
    }
}

fn default(section: &str, key: &str) -> String {
    SETTINGS
        .iter()
        .find(|(s, k, _)| *s == section && *k == key)
        .map_or(String::new(), |(_, _, v)| v.to_string())
}

fn connect(api: &MailmanApi) -> Result<Rest, String> {
    let password = match api.password() {
        None => return Err("mailman_api.password_file is not set".into()),
        Some(Err(e)) => return Err(format!("{}: {e}", api.password_file.display())),
        Some(Ok(p)) => p,
    };
    Rest::new(api, &password).map_err(|e| e.to_string())
}

fn mailman_site_checks(
    pf: &Postfix,
    sockets: &Sockets,
    mm: &Mailman,
    lists: &[(String, Policy)],
    report: &mut Report,
) {
    let unknown = "neither mailman.cfg nor the REST API could be read — see above";
    let outbound = pf.services.iter().filter(|s| s.is_smtpd()).find(|s| {
        find_milter(pf, Some(s), "smtpd_milters", &sockets.outbound)
            .0
            .is_some()
    });
    match (mm.setting("mta", "smtp_port"), outbound) {
        (None, _) => report.warn("mailman smtp_port", unknown.into()),
        (Some(_), None) => report.warn("mailman smtp_port", "no outbound listener to compare with — see outbound milter".into()),
        (Some(port), Some(s)) => report.check("mailman smtp_port", (port.parse::<u16>().ok() != Some(s.port())).then(|| format!(
            "[mta] smtp_port is {port}, but the outbound listener is {}: Mailman's mail would skip encryption — set smtp_port: {}",
            s.name, s.port()
        ))),
    }
    match mm.setting("mailman", "sender_headers") {
        None => report.warn("mailman sender_headers", unknown.into()),
        Some(headers) => {
            let extra: Vec<&str> = headers
                .split_whitespace()
                .filter(|h| !matches!(h.to_ascii_lowercase().as_str(), "from" | "from_"))
                .collect();
            report.check("mailman sender_headers", (!extra.is_empty()).then(|| format!(
                "{headers:?} lets {} name the poster, which listcrypt does not bind to the signer — set [mailman] sender_headers: from from_",
                extra.join(", ")
            )));
        }
    }
    max_recipients_check(mm, lists, report);
    restart_check(mm, report);
}

/// Mailman splits a post's recipients into SMTP transactions of `max_recipients` (0: all in
/// one); listcrypt encrypts one batch of `batch_size` per transaction and reinjects the rest.
fn max_recipients_check(mm: &Mailman, lists: &[(String, Policy)], report: &mut Report) {
    let Some(value) = mm.setting("mta", "max_recipients") else {
        report.warn(
            "mailman max_recipients",
            "neither mailman.cfg nor the REST API could be read — see above".into(),
        );
        return;
    };
    let Ok(max) = value.parse::<u32>() else {
        report.warn(
            "mailman max_recipients",
            format!(
                "[mta] max_recipients {value:?} is not a number — set it to the lists' batch_size"
            ),
        );
        return;
    };
    let larger: Vec<String> = lists
        .iter()
        .filter(|(_, p)| max == 0 || max > p.batch_size)
        .map(|(l, p)| format!("{l} (batch_size {})", p.batch_size))
        .collect();
    let smallest = lists.iter().map(|(_, p)| p.batch_size).min().unwrap_or(50);
    if larger.is_empty() {
        report.ok("mailman max_recipients");
    } else {
        report.warn("mailman max_recipients", format!(
            "[mta] max_recipients is {max}{}: each post to {} is split into batches and all but the first reinjected — set max_recipients: {smallest}",
            if max == 0 { " (all recipients in one transaction)" } else { "" },
            larger.join(", ")
        ));
    }
}

/// mailman.cfg changed since Mailman started: what runs is not what the file says.
fn restart_check(mm: &Mailman, report: &mut Report) {
    let (Ok(text), false) = (&mm.file, mm.running.is_empty()) else {
        return;
    };
    let differ: Vec<String> = SETTINGS
        .iter()
        .filter_map(|(section, key, default)| {
            let file = ini_value(text, section, key).unwrap_or_else(|| default.to_string());
            let running = mm.running.get(*section)?.get(*key)?;
            (file.split_whitespace().ne(running.split_whitespace())).then(|| {
                format!("[{section}] {key} is {file:?} in mailman.cfg but {running:?} in the running Mailman")
            })
        })
        .collect();
    if differ.is_empty() {
        report.ok("mailman running config");
    } else {
        report.warn(
            "mailman running config",
            format!(
                "{} — restart Mailman (systemctl restart mailman3)",
                differ.join("; ")
            ),
        );
    }
}

/// Mailman's own addresses of a list (mailman/mta/aliases.py: the posting address and its
/// SUBDESTINATIONS), all of which Mailman's transport map sends to its LMTP.
fn list_addresses(list: &str) -> Vec<String> {
    let (local, domain) = list.rsplit_once('@').unwrap_or((list, ""));
    let mut out = vec![list.to_string()];
    for sub in [
        "bounces",
        "confirm",
        "join",
        "leave",
        "owner",
        "request",
        "subscribe",
        "unsubscribe",
    ] {
        out.push(format!("{local}-{sub}@{domain}"));
    }
    out
}

/// The tables of a Postfix lookup-table parameter (`type:name`, `inline:{ … }`).
fn maps(pf: &Postfix, param: &str) -> Vec<String> {
    let value = pf.param(None, param).to_string();
    let mut maps = Vec::new();
    let mut depth = 0;
    let mut current = String::new();
    for c in value.chars() {
        depth += (c == '{') as i32 - (c == '}') as i32;
        if depth == 0 && (c == ',' || c.is_whitespace()) {
            maps.push(std::mem::take(&mut current));
        } else {
            current.push(c);
        }
    }
    maps.push(current);
    maps.retain(|m| m.contains(':'));
    maps
}

/// `postmap -q key` in the tables of `param`, in order: the first table that has `key` and
/// its result.
fn lookup(pf: &Postfix, param: &str, key: &str) -> Option<(String, String)> {
    maps(pf, param).into_iter().find_map(|map| {
        let mut cmd = Command::new("postmap");
        if let Some(dir) = &pf.config_dir {
            cmd.arg("-c").arg(dir);
        }
        let out = cmd.arg("-q").arg(key).arg(&map).output().ok()?;
        out.status
            .success()
            .then(|| (map, String::from_utf8_lossy(&out.stdout).trim().to_string()))
    })
}

/// The transport of `address` by transport(5)'s search order (address, then domain); `None`:
/// Postfix's default transport.
fn transport(pf: &Postfix, address: &str) -> Option<String> {
    let domain = address.rsplit_once('@').map_or("", |d| d.1);
    [address, domain]
        .iter()
        .find_map(|key| lookup(pf, "transport_maps", key))
        .map(|(_, result)| result)
}

/// Mailman's LMTP as its `[mta]` names it (`None`: unknown), and whether a transport is it.
struct Lmtp(Option<(String, String)>);

impl Lmtp {
    fn matches(&self, t: &str) -> bool {
        match &self.0 {
            Some((host, port)) => [
                format!("lmtp:[{host}]:{port}"),
                format!("lmtp:{host}:{port}"),
                format!("lmtp:inet:[{host}]:{port}"),
                format!("lmtp:inet:{host}:{port}"),
            ]
            .contains(&t.to_string()),
            None => t.starts_with("lmtp:"),
        }
    }

    fn name(&self) -> String {
        self.0
            .as_ref()
            .map_or("Mailman's LMTP".into(), |(h, p)| format!("lmtp:[{h}]:{p}"))
    }
}

/// Decrypted posts go from Postfix to Mailman's LMTP: any other destination, copy or
/// rewrite on the way hands the plaintext to someone else.
fn routing_check(
    pf: &Postfix,
    mm: &Mailman,
    lists: &[(String, Policy)],
    keys: Option<&Keys>,
    report: &mut Report,
) {
    let lmtp = Lmtp(
        mm.setting("mta", "lmtp_host")
            .zip(mm.setting("mta", "lmtp_port")),
    );
    let mut problems = copy_problems(pf);
    let mut senders: BTreeSet<String> = BTreeSet::new();
    for (list, _) in lists {
        // The same problem for several of a list's addresses makes one sentence.
        let mut grouped: Vec<(String, Vec<String>)> = Vec::new();
        for address in list_addresses(list) {
            for problem in address_problems(pf, &address, &lmtp) {
                match grouped.iter_mut().find(|(p, _)| *p == problem) {
                    Some((_, addresses)) => addresses.push(address.clone()),
                    None => grouped.push((problem, vec![address.clone()])),
                }
            }
            senders.insert(address);
        }
        problems.extend(
            grouped
                .into_iter()
                .map(|(problem, addresses)| problem.replace(ADDRESS, &addresses.join(", "))),
        );
        if let Some(bindings) = keys.and_then(|k| k.bindings.get(list)) {
            senders.extend(bindings.iter().map(|b| normalize_address(&b.address)));
        }
    }
    problems.extend(sender_bcc_problems(pf, &senders));
    problems.dedup();
    report.check(
        "list routing",
        (!problems.is_empty()).then(|| problems.join("; ")),
    );
}

/// `always_bcc` and content filters: they see every message after the milters.
fn copy_problems(pf: &Postfix) -> Vec<String> {
    let mut problems = Vec::new();
    let always = pf.param(None, "always_bcc");
    if !always.trim().is_empty() {
        problems.push(format!(
            "always_bcc = {always} copies every decrypted post — remove it"
        ));
    }
    let mut filters: BTreeSet<String> = BTreeSet::new();
    let main_filter = pf.param(None, "content_filter");
    if !main_filter.trim().is_empty() {
        filters.insert(format!("main.cf content_filter = {main_filter}"));
    }
    for s in pf.services.iter().filter(|s| s.is_smtpd()) {
        if let Some(f) = s.options.get("content_filter").filter(|f| !f.is_empty()) {
            filters.insert(format!("{} content_filter = {f}", s.name));
        }
    }
    for f in filters {
        problems.push(format!(
            "{f} hands decrypted posts to a filter — run it before listcrypt as a milter, or not at all (-o content_filter= on the inbound smtpd)"
        ));
    }
    problems
}

/// Stands for the address in `address_problems`' sentences.
const ADDRESS: &str = "\u{1}";

/// Where `address` goes: Mailman's LMTP by `transport_maps`, not rewritten nor copied. The
/// sentences name it as [`ADDRESS`].
fn address_problems(pf: &Postfix, address: &str, lmtp: &Lmtp) -> Vec<String> {
    let mut problems = Vec::new();
    match transport(pf, address) {
        Some(t) if lmtp.matches(&t) => {}
        Some(t) => problems.push(format!(
            "{ADDRESS} goes to {t} by transport_maps — it must go to {} (Mailman's postfix_lmtp map)",
            lmtp.name()
        )),
        None => problems.push(format!(
            "{ADDRESS} is in no transport_maps table — add Mailman's hash:…/postfix_lmtp to transport_maps"
        )),
    }
    let domain = address.rsplit_once('@').map_or("", |d| d.1);
    let at_domain = format!("@{domain}");
    for (key, shown) in [(address, ADDRESS), (at_domain.as_str(), at_domain.as_str())] {
        if let Some((map, to)) = lookup(pf, "virtual_alias_maps", key) {
            // Mailman's own postfix_vmap (alias domains) points at its other addresses.
            let elsewhere = to
                .split([',', ' '])
                .filter(|a| !a.is_empty())
                .any(|a| !transport(pf, a).is_some_and(|t| lmtp.matches(&t)));
            if elsewhere {
                problems.push(format!(
                    "virtual_alias_maps {map} sends {ADDRESS} to {to} — remove the entry for {shown}"
                ));
            }
        }
        for param in ["canonical_maps", "recipient_canonical_maps"] {
            if let Some((map, to)) = lookup(pf, param, key) {
                if !to.eq_ignore_ascii_case(address) {
                    problems.push(format!(
                        "{param} {map} rewrites {ADDRESS} to {to} — remove the entry for {shown}"
                    ));
                }
            }
        }
        if let Some((map, to)) = lookup(pf, "recipient_bcc_maps", key) {
            problems.push(format!(
                "recipient_bcc_maps {map} copies {ADDRESS} to {to} — remove the entry for {shown}"
            ));
        }
    }
    problems
}

/// Posts arrive from members: a copy keyed on their address carries the decrypted post.
fn sender_bcc_problems(pf: &Postfix, senders: &BTreeSet<String>) -> Vec<String> {
    let keys: BTreeSet<String> = senders
        .iter()
        .flat_map(|a| {
            let domain = a.rsplit_once('@').map_or("", |d| d.1);
            [a.clone(), format!("@{domain}")]
        })
        .collect();
    keys.iter()
        .filter_map(|key| {
            let (map, to) = lookup(pf, "sender_bcc_maps", key)?;
            Some(format!(
                "sender_bcc_maps {map} copies mail from {key} to {to} — remove the entry"
            ))
        })
        .collect()
}

/// What the per-list REST checks found, one list of findings per check.
#[derive(Default)]
struct ListFindings {
    missing: Vec<String>,
    errors: Vec<String>,
    archive_fail: Vec<String>,
    archive_warn: Vec<String>,
    hold: Vec<String>,
    unbound: Vec<String>,
    strangers: Vec<String>,
}

/// Each list's settings and roster in the running Mailman, against listcrypt's lists and
/// bindings.
fn mailman_list_checks(
    rest: &Rest,
    mm: &Mailman,
    lists: &[(String, Policy)],
    keys: Option<&Keys>,
    report: &mut Report,
) {
    let mut found = ListFindings::default();
    // A rule without an action takes the site's [antispam] jump_chain.
    let jump_chain = mm
        .running
        .get("antispam")
        .and_then(|a| a.get("jump_chain"))
        .cloned()
        .unwrap_or_else(|| "hold".into());
    for (list, _) in lists {
        let get = |what: &str| rest.get(&format!("lists/{list}{what}"));
        match get("") {
            Ok(_) => {}
            Err(e) if e.is_not_found() => {
                found.missing.push(list.clone());
                continue;
            }
            Err(e) => {
                found.errors.push(e.to_string());
                continue;
            }
        }
        match (get("/config"), get("/archivers"), get("/header-matches")) {
            (Ok(config), Ok(archivers), Ok(rules)) => {
                archive_finding(list, &config, &archivers, &mut found);
                hold_finding(list, &config, &rules, &jump_chain, &mut found);
            }
            (a, b, c) => found.errors.extend(
                [a.err(), b.err(), c.err()]
                    .into_iter()
                    .flatten()
                    .map(|e| e.to_string()),
            ),
        }
        if let Some(keys) = keys {
            roster_finding(rest, list, keys, &mut found);
        }
    }
    found.report(keys.is_some(), report);
}

fn archive_finding(list: &str, config: &Value, archivers: &Value, found: &mut ListFindings) {
    let policy = text(config.get("archive_policy")).unwrap_or_default();
    // Only archivers enabled site-wide are listed.
    let enabled: Vec<&str> = archivers
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(_, v)| v.as_bool() == Some(true))
                .map(|(k, _)| k.as_str())
                .collect()
        })
        .unwrap_or_default();
    match (policy != "never", enabled.is_empty()) {
        (true, false) => found.archive_fail.push(format!(
            "{list} archives (archive_policy {policy}, archivers {})",
            enabled.join(", ")
        )),
        (true, true) => found
            .archive_warn
            .push(format!("{list} has archive_policy {policy}")),
        _ => {}
    }
}

fn hold_finding(
    list: &str,
    config: &Value,
    rules: &Value,
    jump_chain: &str,
    found: &mut ListFindings,
) {
    let rule = entries(rules).iter().find(|r| {
        text(r.get("header")).is_some_and(|h| h.eq_ignore_ascii_case("x-listcrypt-hold"))
    });
    match rule {
        None => found.hold.push(format!(
            "{list} has no X-Listcrypt-Hold header_matches rule"
        )),
        Some(r) => {
            let action = text(r.get("action")).unwrap_or_else(|| jump_chain.to_string());
            let pattern = text(r.get("pattern")).unwrap_or_default();
            // Patterns that match any reason (Mailman searches, case-insensitively).
            let any = [".+", ".*", ".", "^.+", "^.*", "^.+$", "^.*$", ""];
            if action != "hold" {
                found.hold.push(format!(
                    "{list}'s X-Listcrypt-Hold rule has action {action}"
                ));
            } else if !any.contains(&pattern.as_str()) {
                found.hold.push(format!(
                    "{list}'s X-Listcrypt-Hold rule has pattern {pattern:?}, which may miss a reason"
                ));
            }
        }
    }
    // Member moderation runs before the header rules: accept skips the hold.
    if text(config.get("default_member_action")).as_deref() == Some("accept") {
        found.hold.push(format!(
            "{list} has default_member_action accept, which skips the header rules"
        ));
    }
}

/// Mailman's recipients (members, owners, moderators) against listcrypt's bindings.
fn roster_finding(rest: &Rest, list: &str, keys: &Keys, found: &mut ListFindings) {
    let mut recipients = BTreeSet::new();
    for role in ["member", "owner", "moderator"] {
        match rest.get(&format!("lists/{list}/roster/{role}")) {
            Ok(roster) => recipients.extend(
                entries(&roster)
                    .iter()
                    .filter_map(|m| text(m.get("email")))
                    .map(|e| normalize_address(&e)),
            ),
            Err(e) => {
                found.errors.push(e.to_string());
                return;
            }
        }
    }
    let bindings = keys.bindings.get(list).map_or(&[][..], Vec::as_slice);
    let active: BTreeSet<String> = bindings
        .iter()
        .filter(|b| b.state == BindingState::Active)
        .map(|b| normalize_address(&b.address))
        .collect();
    for r in recipients.iter().filter(|r| !active.contains(*r)) {
        found.unbound.push(format!("{r} on {list}"));
    }
    for b in bindings {
        if !recipients.contains(&normalize_address(&b.address)) {
            found.strangers.push(format!("{} on {list}", b.address));
        }
    }
}

impl ListFindings {
    fn report(self, rosters: bool, report: &mut Report) {
        for e in self.errors {
            report.warn("mailman api", format!("{e} — see Mailman's logs"));
        }
        let missing = &self.missing;
        report.check("mailman lists", (!missing.is_empty()).then(|| format!(
            "{} not in Mailman: mail to it is refused after listcrypt decrypted it — mailman create {}",
            missing.join(", "),
            missing.join(" ")
        )));
        if !self.archive_fail.is_empty() {
            report.fail("mailman archive", format!(
                "{} — the archive would keep decrypted posts in clear: set archive_policy never and disable the archivers (postfix/listcrypt_mailman.py)",
                self.archive_fail.join("; ")
            ));
        } else if !self.archive_warn.is_empty() {
            report.warn("mailman archive", format!(
                "{}: no archiver is enabled now, but enabling one would archive decrypted posts — set archive_policy never",
                self.archive_warn.join("; ")
            ));
        } else {
            report.ok("mailman archive");
        }
        report.check("mailman hold rule", (!self.hold.is_empty()).then(|| format!(
            "{}: posts listcrypt's policy holds would be delivered — add header_matches X-Listcrypt-Hold .+ hold and keep default_member_action defer (postfix/listcrypt_mailman.py)",
            self.hold.join("; ")
        )));
        if !rosters {
            return;
        }
        if self.unbound.is_empty() {
            report.ok("members without key");
        } else {
            report.warn("members without key", format!(
                "{}: their copies are refused at RCPT — `listcrypt member add LIST ADDRESS CERT`, or unsubscribe them",
                self.unbound.join(", ")
            ));
        }
        if self.strangers.is_empty() {
            report.ok("keys of non-members");
        } else {
            report.warn("keys of non-members", format!(
                "{} bound but in no Mailman roster — `listcrypt member remove LIST ADDRESS`, or subscribe them",
                self.strangers.join(", ")
            ));
        }
    }
}

/// How far ahead doctor warns of expiring keys.
const EXPIRY_HORIZON: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);

fn expiry_check(keyring: &Keyring, now: std::time::SystemTime, report: &mut Report) {
    let date = |t: std::time::SystemTime| {
        crate::keys::format_date(
            t.duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        )
    };
    let mut dead = Vec::new();
    let mut soon = Vec::new();
    let mut lists: Vec<_> = keyring.lists.values().collect();
    lists.sort_by(|a, b| a.address.cmp(&b.address));
    for list in lists {
        match crate::pgp::usable_until(&list.secret) {
            None => dead.push(format!("the list key of {} is not usable", list.address)),
            Some(Some(t)) if t <= now => dead.push(format!(
                "the list key of {} expired on {}",
                list.address,
                date(t)
            )),
            Some(Some(t)) if t <= now + EXPIRY_HORIZON => soon.push(format!(
                "the list key of {} expires on {}",
                list.address,
                date(t)
            )),
            _ => {}
        }
        for m in &list.members {
            match crate::pgp::usable_until(&m.cert) {
                None => soon.push(format!(
                    "{} on {}: key {} is not usable",
                    m.address,
                    list.address,
                    m.cert.fingerprint()
                )),
                Some(Some(t)) if t <= now + EXPIRY_HORIZON => soon.push(format!(
                    "{} on {}: key {} expires on {}",
                    m.address,
                    list.address,
                    m.cert.fingerprint(),
                    date(t)
                )),
                _ => {}
            }
        }
    }
    if !dead.is_empty() {
        report.fail("key expiry", format!(
            "{} — nobody can post encrypted to it: extend its expiry or `listcrypt list rotate-subkey`",
            dead.join("; ")
        ));
    } else if !soon.is_empty() {
        let fix = if soon.iter().any(|s| s.starts_with("the list key")) {
            "extend the list key's expiry"
        } else {
            "members send their updated key to the list's key address (`listcrypt notify-expiry` reminds them)"
        };
        report.warn("key expiry", format!("{} — {fix}", soon.join("; ")));
    } else {
        report.ok("key expiry");
    }
}

/// Each list's `secret.pgp` at rest: protected by a passphrase, mode 0600 in a 0700
/// directory, owned by the daemon's user (the same warnings as `check-config`).
fn list_key_checks(config: &Config, report: &mut Report) {
    let Ok(lists) = crate::keys::list_names(config) else {
        return;
    };
    for list in lists {
        let check = format!("list key {list} at rest");
        let warnings = crate::keys::secret_key_warnings(config, &list, config.daemon_uid());
        match warnings.is_empty() {
            true => report.ok(&check),
            false => report.warn(&check, warnings.join("; ")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A header-matches collection as Mailman 3.3's REST API writes it (rest/header_matches.py:
    /// the header lower-cased, `action` left out when the rule has no chain of its own).
    fn rules(rule: Value) -> Value {
        json!({"start": 0, "total_size": 1, "entries": [rule]})
    }

    fn hold(rules: &Value, member_action: &str, jump_chain: &str) -> Vec<String> {
        let mut found = ListFindings::default();
        let config = json!({"default_member_action": member_action, "archive_policy": "never"});
        hold_finding("l@example.org", &config, rules, jump_chain, &mut found);
        found.hold
    }

    #[test]
    fn the_hold_rule_is_the_one_listcrypt_mailman_py_adds() {
        let good = rules(
            json!({"position": 0, "header": "x-listcrypt-hold", "pattern": ".+", "action": "hold"}),
        );
        assert!(hold(&good, "defer", "hold").is_empty());
        // No action of its own: [antispam] jump_chain decides (Mailman's default: hold).
        let bare = rules(json!({"position": 0, "header": "x-listcrypt-hold", "pattern": ".+"}));
        assert!(hold(&bare, "defer", "hold").is_empty());
        assert_eq!(hold(&bare, "defer", "discard").len(), 1);
        let accept = rules(
            json!({"position": 0, "header": "x-listcrypt-hold", "pattern": ".+", "action": "accept"}),
        );
        assert!(hold(&accept, "defer", "hold")[0].contains("action accept"));
        let narrow = rules(
            json!({"position": 0, "header": "x-listcrypt-hold", "pattern": "^spam$", "action": "hold"}),
        );
        assert!(hold(&narrow, "defer", "hold")[0].contains("pattern"));
        let other =
            rules(json!({"position": 0, "header": "x-spam", "pattern": ".+", "action": "hold"}));
        assert!(hold(&other, "defer", "hold")[0].contains("no X-Listcrypt-Hold"));
        // Member moderation `accept` runs before the header rules.
        assert!(hold(&good, "accept", "hold")[0].contains("default_member_action"));
    }

    #[test]
    fn an_archive_needs_both_a_policy_and_an_enabled_archiver() {
        let find = |policy: &str, archivers: Value| {
            let mut found = ListFindings::default();
            archive_finding(
                "l@example.org",
                &json!({"archive_policy": policy}),
                &archivers,
                &mut found,
            );
            (found.archive_fail.len(), found.archive_warn.len())
        };
        assert_eq!(find("never", json!({"hyperkitty": true})), (0, 0));
        assert_eq!(find("public", json!({"hyperkitty": false})), (0, 1));
        assert_eq!(find("private", json!({})), (0, 1));
        assert_eq!(find("private", json!({"hyperkitty": true})), (1, 0));
    }

    #[test]
    fn mailmans_own_addresses_of_a_list() {
        // mailman/mta/aliases.py: the posting address and its SUBDESTINATIONS.
        let a = list_addresses("enc@lists.example.org");
        assert_eq!(a.len(), 9);
        assert_eq!(a[0], "enc@lists.example.org");
        assert!(a.contains(&"enc-bounces@lists.example.org".to_string()));
        assert!(a.contains(&"enc-unsubscribe@lists.example.org".to_string()));
        // mailman/mta/postfix.py's ALIASTMPL writes lmtp:[HOST]:PORT.
        let lmtp = Lmtp(Some(("127.0.0.1".into(), "8024".into())));
        assert!(lmtp.matches("lmtp:[127.0.0.1]:8024"));
        assert!(!lmtp.matches("lmtp:[127.0.0.1]:8025"));
        assert!(!lmtp.matches("smtp:[127.0.0.1]:8024"));
    }
}
