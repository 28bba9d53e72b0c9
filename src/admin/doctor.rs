//! `listcrypt doctor`: checks the Postfix wiring (`postconf`, `postconf -M`, `postconf -P`,
//! `postmap -q`) or Sendmail's (its generated .cf, `sendmail.rs`), Mailman's config file and
//! REST API, and listcrypt's own settings, keys and bindings; one line per check, exit 1 on a
//! FAIL.

pub(crate) mod mailman;
mod postfix;
mod sendmail;

use mailman::{mailman_list_checks, mailman_site_checks, Mailman};
use postfix::{postfix_checks, routing_check, Postfix};

use crate::admin::exit;
use crate::config::{Config, Policy, SocketSpec};
use crate::keys::Keyring;
use crate::store::{Binding, SqliteStore, Store};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

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
    use super::mailman::{archive_finding, hold_finding, ListFindings};
    use super::postfix::{list_addresses, Lmtp};
    use serde_json::{json, Value};

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
