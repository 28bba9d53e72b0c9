//! Postfix's side of `doctor`: its milter wiring read with `postconf`, and how each list's
//! addresses are routed to Mailman.

use super::mailman::Mailman;
use super::{Keys, Report, Sockets};
use crate::config::{Config, Policy, SocketSpec};
use crate::keys::normalize_address;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

/// One master.cf entry: its fields and its `-o` overrides (`postconf -P`).
pub(super) struct Service {
    pub(super) name: String,
    pub(super) kind: String,
    pub(super) chroot: bool,
    pub(super) command: String,
    pub(super) options: HashMap<String, String>,
}

impl Service {
    pub(super) fn is_smtpd(&self) -> bool {
        self.kind == "inet" && self.command == "smtpd"
    }
    /// The host part of `HOST:PORT`, `None` for a bare port or service name.
    pub(super) fn host(&self) -> Option<&str> {
        self.name.rsplit_once(':').map(|(h, _)| h)
    }
    pub(super) fn port(&self) -> u16 {
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
pub(super) struct Postfix {
    pub(super) config_dir: Option<PathBuf>,
    pub(super) main: HashMap<String, String>,
    pub(super) services: Vec<Service>,
}

impl Postfix {
    pub(super) fn postconf(dir: Option<&Path>, args: &[&str]) -> Result<String, String> {
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

    pub(super) fn read(dir: Option<&Path>) -> Result<Postfix, String> {
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
    pub(super) fn param<'a>(&'a self, service: Option<&'a Service>, name: &str) -> &'a str {
        service
            .and_then(|s| s.options.get(name))
            .or_else(|| self.main.get(name))
            .map_or("", String::as_str)
    }

    pub(super) fn queue_directory(&self) -> PathBuf {
        PathBuf::from(self.param(None, "queue_directory"))
    }

    pub(super) fn service(&self, name: &str, kind: &str) -> Option<&Service> {
        self.services
            .iter()
            .find(|s| s.name == name && s.kind == kind)
    }
}

/// One milter of a Postfix milter list: its socket and its `default_action`, if given.
pub(super) struct Milter {
    pub(super) socket: String,
    pub(super) default_action: Option<String>,
}

/// Splits `a, { b, default_action=x }, c` into milters (commas and spaces separate).
pub(super) fn milters(value: &str) -> Vec<Milter> {
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
pub(super) fn postfix_socket(milter: &str, chroot: bool, queue: &Path) -> Option<SocketSpec> {
    match SocketSpec::parse(milter).ok()? {
        SocketSpec::Unix(p) if chroot || p.is_relative() => Some(SocketSpec::Unix(
            queue.join(p.strip_prefix("/").unwrap_or(&p)),
        )),
        spec => Some(spec),
    }
}

pub(super) fn same_socket(a: &SocketSpec, b: &SocketSpec) -> bool {
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
pub(super) fn find_milter(
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

pub(super) fn loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

pub(super) fn postfix_checks(
    pf: &Postfix,
    config: &Config,
    sockets: &Sockets,
    report: &mut Report,
) {
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
pub(super) fn public_smtpds<'a>(
    pf: &'a Postfix,
    config: &Config,
    sockets: &Sockets,
) -> Vec<&'a Service> {
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

pub(super) fn reinject_port(config: &Config) -> u16 {
    config
        .reinject_smtp
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .unwrap_or(0)
}

/// The effective default_action of one milter entry.
pub(super) fn action<'a>(
    pf: &'a Postfix,
    service: Option<&'a Service>,
    milter: &'a Milter,
) -> &'a str {
    milter
        .default_action
        .as_deref()
        .unwrap_or_else(|| pf.param(service, "milter_default_action"))
}

pub(super) fn inbound_checks(
    pf: &Postfix,
    config: &Config,
    sockets: &Sockets,
    report: &mut Report,
) {
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

pub(super) fn outbound_check(pf: &Postfix, sockets: &Sockets, report: &mut Report) {
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

pub(super) fn dsn_checks(pf: &Postfix, sockets: &Sockets, report: &mut Report) {
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
pub(super) fn socket_access(config: &Config, path: &Path) -> Result<(), String> {
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
pub(super) fn chroot_check(pf: &Postfix, sockets: &Sockets, report: &mut Report) {
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

pub(super) fn access_check(config: &Config, sockets: &Sockets, report: &mut Report) {
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
pub(super) fn in_maps(pf: &Postfix, param: &str, key: &str) -> bool {
    lookup(pf, param, key).is_some()
}

pub(super) fn key_address_check(pf: &Postfix, config: &Config, report: &mut Report) {
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

pub(super) fn size_check(pf: &Postfix, config: &Config, report: &mut Report) {
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

pub(super) fn reinject_checks(pf: &Postfix, config: &Config, report: &mut Report) {
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

/// Mailman's own addresses of a list (mailman/mta/aliases.py: the posting address and its
/// SUBDESTINATIONS), all of which Mailman's transport map sends to its LMTP.
pub(super) fn list_addresses(list: &str) -> Vec<String> {
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
pub(super) fn maps(pf: &Postfix, param: &str) -> Vec<String> {
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
pub(super) fn lookup(pf: &Postfix, param: &str, key: &str) -> Option<(String, String)> {
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
pub(super) fn transport(pf: &Postfix, address: &str) -> Option<String> {
    let domain = address.rsplit_once('@').map_or("", |d| d.1);
    [address, domain]
        .iter()
        .find_map(|key| lookup(pf, "transport_maps", key))
        .map(|(_, result)| result)
}

/// Mailman's LMTP as its `[mta]` names it (`None`: unknown), and whether a transport is it.
pub(super) struct Lmtp(pub(super) Option<(String, String)>);

impl Lmtp {
    pub(super) fn matches(&self, t: &str) -> bool {
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

    pub(super) fn name(&self) -> String {
        self.0
            .as_ref()
            .map_or("Mailman's LMTP".into(), |(h, p)| format!("lmtp:[{h}]:{p}"))
    }
}

/// Decrypted posts go from Postfix to Mailman's LMTP: any other destination, copy or
/// rewrite on the way hands the plaintext to someone else.
pub(super) fn routing_check(
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
pub(super) fn copy_problems(pf: &Postfix) -> Vec<String> {
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
pub(super) const ADDRESS: &str = "\u{1}";

/// Where `address` goes: Mailman's LMTP by `transport_maps`, not rewritten nor copied. The
/// sentences name it as [`ADDRESS`].
pub(super) fn address_problems(pf: &Postfix, address: &str, lmtp: &Lmtp) -> Vec<String> {
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
pub(super) fn sender_bcc_problems(pf: &Postfix, senders: &BTreeSet<String>) -> Vec<String> {
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
