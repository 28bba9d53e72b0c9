//! Mailman's side of `doctor`: its config file, and over its REST API each list's settings and
//! roster against listcrypt's bindings.

use super::postfix::{find_milter, Postfix};
use super::{Keys, Report, Sockets};
use crate::config::{Config, Policy};
use crate::keys::normalize_address;
use crate::mailman_rest::{connect, entries, text, Rest};
use crate::store::BindingState;
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::path::Path;

/// `[section] key` of an ini-style mailman.cfg; the last assignment wins, as in Mailman.
pub(super) fn ini_value(text: &str, section: &str, key: &str) -> Option<String> {
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

/// The sections of the running Mailman's configuration that doctor reads.
pub(super) const SECTIONS: [&str; 3] = ["mta", "mailman", "antispam"];

/// Mailman's settings that doctor compares, with Mailman 3.3's defaults (schema.cfg).
pub(super) const SETTINGS: [(&str, &str, &str); 5] = [
    ("mta", "smtp_port", "25"),
    ("mta", "max_recipients", "500"),
    ("mta", "lmtp_host", "127.0.0.1"),
    ("mta", "lmtp_port", "8024"),
    ("mailman", "sender_headers", "from from_ reply-to sender"),
];

/// What doctor knows of Mailman: its config file and, when reachable, its REST API.
pub(super) struct Mailman {
    /// mailman.cfg's text, or why it could not be read.
    pub(super) file: Result<String, String>,
    /// The REST client, or why there is none.
    pub(super) rest: Result<Rest, String>,
    /// `SECTIONS` of the running Mailman.
    pub(super) running: HashMap<String, HashMap<String, String>>,
}

impl Mailman {
    pub(super) fn read(config: &Config, path: &Path, report: &mut Report) -> Mailman {
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
    pub(super) fn setting(&self, section: &str, key: &str) -> Option<String> {
        match &self.file {
            Ok(text) => {
                Some(ini_value(text, section, key).unwrap_or_else(|| default(section, key)))
            }
            Err(_) => self.running.get(section)?.get(key).cloned(),
        }
    }
}

pub(super) fn default(section: &str, key: &str) -> String {
    SETTINGS
        .iter()
        .find(|(s, k, _)| *s == section && *k == key)
        .map_or(String::new(), |(_, _, v)| v.to_string())
}

pub(super) fn mailman_site_checks(
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
pub(super) fn max_recipients_check(mm: &Mailman, lists: &[(String, Policy)], report: &mut Report) {
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
pub(super) fn restart_check(mm: &Mailman, report: &mut Report) {
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

/// What the per-list REST checks found, one list of findings per check.
#[derive(Default)]
pub(super) struct ListFindings {
    pub(super) missing: Vec<String>,
    pub(super) errors: Vec<String>,
    pub(super) archive_fail: Vec<String>,
    pub(super) archive_warn: Vec<String>,
    pub(super) hold: Vec<String>,
    pub(super) unbound: Vec<String>,
    pub(super) strangers: Vec<String>,
}

/// Each list's settings and roster in the running Mailman, against listcrypt's lists and
/// bindings.
pub(super) fn mailman_list_checks(
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

pub(super) fn archive_finding(
    list: &str,
    config: &Value,
    archivers: &Value,
    found: &mut ListFindings,
) {
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

pub(super) fn hold_finding(
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
pub(super) fn roster_finding(rest: &Rest, list: &str, keys: &Keys, found: &mut ListFindings) {
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
    pub(super) fn report(self, rosters: bool, report: &mut Report) {
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
