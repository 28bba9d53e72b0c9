//! The Sendmail wiring, read from the generated sendmail.cf (what the daemon runs, not the
//! .mc): milter definitions (`X` lines), per-listener filters, and the DSN settings that
//! stand in for Postfix's milter-filtered DSNs.

use super::postfix::{loopback, same_socket};
use super::{Report, Sockets};
use crate::config::{Config, InboundEnvelopeSender, SocketSpec};
use std::collections::HashMap;
use std::path::Path;

/// Where Debian's sendmail package keeps the generated configuration.
pub const DEFAULT_CF: &str = "/etc/mail/sendmail.cf";

/// One `Xname, S=…, F=…, T=…` milter definition.
struct Filter {
    name: String,
    fields: HashMap<String, String>,
}

/// One `O DaemonPortOptions=…` listener.
struct Listener {
    fields: HashMap<String, String>,
}

impl Listener {
    fn get(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }
    fn name(&self) -> String {
        self.get("Name")
            .map_or_else(|| format!("port {}", self.port()), String::from)
    }
    /// Sendmail's default is the smtp port.
    fn port(&self) -> u16 {
        match self.get("Port").unwrap_or("smtp") {
            "smtp" => 25,
            "submission" => 587,
            "smtps" | "submissions" => 465,
            p => p.parse().unwrap_or(0),
        }
    }
    /// Without Addr a listener takes every address.
    fn is_loopback(&self) -> bool {
        self.get("Addr").is_some_and(loopback)
    }
    /// Its own InputMailFilters, `;`-separated inside DaemonPortOptions.
    fn filters(&self) -> Vec<&str> {
        self.get("InputMailFilters")
            .map(|f| {
                f.split([';', ' '])
                    .map(str::trim)
                    .filter(|f| !f.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// What doctor reads of a sendmail.cf: the options (the last one wins, as in Sendmail),
/// the listeners and the milter definitions.
struct SendmailCf {
    options: HashMap<String, String>,
    listeners: Vec<Listener>,
    filters: Vec<Filter>,
}

/// `K=V, K=V` with the keys trimmed.
fn fields(text: &str) -> HashMap<String, String> {
    text.split(',')
        .filter_map(|f| f.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

impl SendmailCf {
    fn parse(text: &str) -> SendmailCf {
        let mut options = HashMap::new();
        let mut listeners = Vec::new();
        let mut filters = Vec::new();
        for line in text.lines() {
            if let Some(option) = line.strip_prefix("O ") {
                // `O Name` alone sets the option empty.
                let (name, value) = option.split_once('=').unwrap_or((option, ""));
                let (name, value) = (name.trim(), value.trim());
                if name == "DaemonPortOptions" {
                    listeners.push(Listener {
                        fields: fields(value),
                    });
                } else {
                    options.insert(name.to_string(), value.to_string());
                }
            } else if let Some(def) = line.strip_prefix('X') {
                let (name, rest) = def.split_once(',').unwrap_or((def, ""));
                filters.push(Filter {
                    name: name.trim().to_string(),
                    fields: fields(rest),
                });
            }
        }
        SendmailCf {
            options,
            listeners,
            filters,
        }
    }

    /// The definition whose S= is listcrypt's `socket`.
    fn filter_for(&self, socket: &SocketSpec) -> Option<&Filter> {
        self.filters.iter().find(|f| {
            f.fields
                .get("S")
                .and_then(|s| SocketSpec::parse(s).ok())
                .is_some_and(|s| same_socket(&s, socket))
        })
    }
}

/// A Sendmail time (`30s`, `10m`, `1h30m`; a bare number is seconds) in seconds.
fn seconds(value: &str) -> Option<u64> {
    let mut total = 0;
    let mut number = String::new();
    for c in value.trim().chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 604_800,
            _ => return None,
        };
        total += number.parse::<u64>().ok()? * unit;
        number.clear();
    }
    if !number.is_empty() {
        total += number.parse::<u64>().ok()?;
    }
    Some(total)
}

/// The S:, R: and E: timeouts of a `T=` field with libmilter's defaults (10s, 10s, 5m) for
/// those left out.
fn timeouts(t: &str) -> Vec<(char, Option<u64>)> {
    let given: HashMap<char, &str> = t
        .split(';')
        .filter_map(|p| p.trim().split_once(':'))
        .filter_map(|(k, v)| Some((k.chars().next()?, v)))
        .collect();
    [('S', "10s"), ('R', "10s"), ('E', "5m")]
        .into_iter()
        .map(|(k, default)| (k, seconds(given.get(&k).copied().unwrap_or(default))))
        .collect()
}

/// Which listeners carry mail from where: the reinjection port, Mailman's outbound
/// listener, and the public ones.
struct Roles<'a> {
    outbound: Option<&'a Listener>,
    reinject: Option<&'a Listener>,
    public: Vec<&'a Listener>,
}

fn roles<'a>(
    cf: &'a SendmailCf,
    reinject_port: u16,
    smtp_port: Option<u16>,
    outbound_name: &str,
) -> Roles<'a> {
    let reinject = cf.listeners.iter().find(|l| l.port() == reinject_port);
    let outbound = match smtp_port {
        Some(port) => cf
            .listeners
            .iter()
            .find(|l| l.port() == port && l.port() != reinject_port),
        None => cf.listeners.iter().find(|l| {
            l.is_loopback() && l.port() != reinject_port && l.filters() == [outbound_name]
        }),
    };
    let public = cf.listeners.iter().filter(|l| !l.is_loopback()).collect();
    Roles {
        outbound,
        reinject,
        public,
    }
}

/// Runs the Sendmail checks against the .cf at `path`; `smtp_port` is Mailman's `[mta]
/// smtp_port` when known.
pub(super) fn sendmail_checks(
    path: &Path,
    config: &Config,
    sockets: &Sockets,
    smtp_port: Option<u16>,
    report: &mut Report,
) {
    report.check("inbound_envelope_sender", (config.inbound_envelope_sender != InboundEnvelopeSender::ListBounces).then(|| {
        "is \"keep\": Sendmail's DSNs pass no milter and would quote decrypted posts to their authors — set inbound_envelope_sender = \"list-bounces\" in listcrypt.toml".to_string()
    }));
    let cf = match std::fs::read_to_string(path) {
        Ok(text) => SendmailCf::parse(&text),
        Err(e) => {
            report.fail("sendmail.cf", format!(
                "{}: {e} — run doctor as root, build it with `make -C /etc/mail`, or give --sendmail-cf FILE",
                path.display()
            ));
            return;
        }
    };
    dsn_checks(&cf, report);
    let inbound = filter_check(&cf, "inbound", &sockets.inbound, config, report);
    let outbound = filter_check(&cf, "outbound", &sockets.outbound, config, report);
    timeout_check(&cf, [inbound, outbound], config, report);
    listener_checks(&cf, config, [inbound, outbound], smtp_port, report);
}

fn dsn_checks(cf: &SendmailCf, report: &mut Report) {
    let privacy = cf.options.get("PrivacyOptions").map_or("", String::as_str);
    let nobodyreturn = privacy
        .split([',', ' '])
        .any(|p| p.trim().eq_ignore_ascii_case("nobodyreturn"));
    report.check("sendmail nobodyreturn", (!nobodyreturn).then(|| format!(
        "PrivacyOptions {privacy:?} lacks nobodyreturn: a DSN would quote the decrypted post — add nobodyreturn to confPRIVACY_FLAGS (contrib/sendmail/listcrypt.mc)"
    )));
    // Sendmail's default is postmaster.
    match cf.options.get("DoubleBounceAddress").map(String::as_str) {
        Some("") => report.ok("sendmail DoubleBounceAddress"),
        value => report.warn("sendmail DoubleBounceAddress", format!(
            "is {:?}: a DSN that Mailman refuses goes there quoting the DSN — define(`confDOUBLE_BOUNCE_ADDRESS', `') drops it",
            value.unwrap_or("postmaster")
        )),
    }
    match cf.options.get("PostmasterCopy").filter(|v| !v.is_empty()) {
        None => report.ok("sendmail PostmasterCopy"),
        Some(to) => report.warn(
            "sendmail PostmasterCopy",
            format!(
                "copies failed mail to {to}, decrypted posts included — remove confCOPY_ERRORS_TO"
            ),
        ),
    }
}

/// The X definition of listcrypt's `which` socket, with F=T; returns its name when found.
fn filter_check<'a>(
    cf: &'a SendmailCf,
    which: &str,
    socket: &SocketSpec,
    config: &Config,
    report: &mut Report,
) -> Option<&'a str> {
    let check = format!("sendmail {which} filter");
    let configured = match which {
        "inbound" => &config.inbound_socket,
        _ => &config.outbound_socket,
    };
    let Some(filter) = cf.filter_for(socket) else {
        report.fail(&check, format!(
            "no MAIL_FILTER has S= listcrypt's {which}_socket {configured} — add MAIL_FILTER(`listcrypt-{short}', `S=local:…, F=T, …') (contrib/sendmail/listcrypt.mc)",
            short = if which == "inbound" { "in" } else { "out" }
        ));
        return None;
    };
    let flags = filter.fields.get("F").map_or("", String::as_str);
    report.check(&check, (!flags.contains('T')).then(|| format!(
        "{} has F={flags:?}, not F=T: with listcrypt down Sendmail would pass mail unfiltered — set F=T",
        filter.name
    )));
    Some(filter.name.as_str())
}

fn timeout_check(cf: &SendmailCf, names: [Option<&str>; 2], config: &Config, report: &mut Report) {
    let limit = config.limits.message_timeout;
    let mut short = Vec::new();
    for filter in cf
        .filters
        .iter()
        .filter(|f| names.contains(&Some(f.name.as_str())))
    {
        let t = filter.fields.get("T").map_or("", String::as_str);
        for (key, secs) in timeouts(t) {
            if secs.is_none_or(|s| s <= limit) {
                short.push(format!(
                    "{} {key}:{}",
                    filter.name,
                    secs.map_or("?".into(), |s| format!("{s}s"))
                ));
            }
        }
    }
    report.check("sendmail filter timeouts", (!short.is_empty()).then(|| format!(
        "{} not above limits.message_timeout {limit}s: Sendmail would give up before listcrypt's own 451 — raise them in MAIL_FILTER's T= (listcrypt.mc: T=C:30s;S:10m;R:10m;E:15m)",
        short.join(", ")
    )));
}

fn listener_checks(
    cf: &SendmailCf,
    config: &Config,
    [inbound, outbound]: [Option<&str>; 2],
    smtp_port: Option<u16>,
    report: &mut Report,
) {
    let reinject_port = super::postfix::reinject_port(config);
    let inbound_name = inbound.unwrap_or("listcrypt-in");
    let outbound_name = outbound.unwrap_or("listcrypt-out");
    let roles = roles(cf, reinject_port, smtp_port, outbound_name);
    let wrong: Vec<String> = roles
        .public
        .iter()
        .filter(|l| l.filters() != [inbound_name])
        .map(|l| {
            format!(
                "{} (InputMailFilters {:?})",
                l.name(),
                l.filters().join(";")
            )
        })
        .collect();
    report.check("sendmail public listeners", if roles.public.is_empty() {
        Some("no DaemonPortOptions listener without a loopback Addr: nothing takes subscribers' posts — add DAEMON_OPTIONS(`Family=inet, Name=MTA-v4, Port=smtp, InputMailFilters=listcrypt-in') (contrib/sendmail/listcrypt.mc)".into())
    } else {
        (!wrong.is_empty()).then(|| format!(
            "{} must run listcrypt's inbound filter {inbound_name} and no other after it — set InputMailFilters={inbound_name}",
            wrong.join(", ")
        ))
    });
    let port = smtp_port.map_or("a loopback port".into(), |p| {
        format!("Mailman's smtp_port {p}")
    });
    report.check("sendmail outbound listener", match roles.outbound {
        None => Some(format!(
            "no listener on {port} runs {outbound_name}: Mailman's copies would leave unencrypted — add DAEMON_OPTIONS(`Family=inet, Name=listcrypt-out, Port=10025, Addr=127.0.0.1, InputMailFilters=listcrypt-out') and point Mailman's smtp_port at it"
        )),
        Some(l) if l.filters() != [outbound_name] || !l.is_loopback() => Some(format!(
            "{} (InputMailFilters {:?}, Addr {}) must be loopback with InputMailFilters={outbound_name} only",
            l.name(),
            l.filters().join(";"),
            l.get("Addr").unwrap_or("any")
        )),
        Some(_) => None,
    });
    report.check("sendmail reinjection listener", match roles.reinject {
        None => Some(format!(
            "no listener on reinject_smtp's port {reinject_port} — add DAEMON_OPTIONS(`Family=inet, Name=listcrypt-reinject, Port={reinject_port}, Addr=127.0.0.1')"
        )),
        Some(l) if !l.filters().is_empty() => Some(format!(
            "{} runs InputMailFilters {:?}: encrypted batches would be filtered again — remove InputMailFilters from it",
            l.name(),
            l.filters().join(";")
        )),
        Some(l) if !l.is_loopback() => Some(format!(
            "{} is not bound to loopback: anyone could send mail that leaves unencrypted — add Addr=127.0.0.1",
            l.name()
        )),
        Some(_) => None,
    });
    let global = cf.options.get("InputMailFilters").filter(|v| !v.is_empty());
    report.check("sendmail InputMailFilters", global.map(|g| format!(
        "O InputMailFilters={g} runs on every listener without its own, the reinjection port too — replace INPUT_MAIL_FILTER by MAIL_FILTER and per-listener InputMailFilters"
    )));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sendmail_times_and_milter_defaults() {
        // sendmail/readcf.c convtime: s, m, h, d, w; a bare number is seconds here.
        assert_eq!(seconds("30s"), Some(30));
        assert_eq!(seconds("10m"), Some(600));
        assert_eq!(seconds("1h30m"), Some(5400));
        assert_eq!(seconds("45"), Some(45));
        assert_eq!(seconds("x"), None);
        // libmilter's defaults (op.me, "Timeouts"): S 10s, R 10s, E 5m.
        assert_eq!(
            timeouts("C:30s;E:15m"),
            [('S', Some(10)), ('R', Some(10)), ('E', Some(900))]
        );
    }

    #[test]
    fn a_cf_line_without_a_value_sets_the_option_empty() {
        let cf = SendmailCf::parse(
            "O DoubleBounceAddress\n#O PostmasterCopy=Postmaster\nO DaemonPortOptions=Family=inet, Name=MSA, Port=submission, Addr=127.0.0.1, InputMailFilters=a;b\nXa, S=local:/run/a.sock, F=T, T=S:1m;E:2m\n",
        );
        assert_eq!(
            cf.options.get("DoubleBounceAddress").map(String::as_str),
            Some("")
        );
        assert!(!cf.options.contains_key("PostmasterCopy"));
        let l = &cf.listeners[0];
        assert_eq!(
            (l.port(), l.is_loopback(), l.filters()),
            (587, true, vec!["a", "b"])
        );
        assert_eq!(cf.filters[0].name, "a");
        assert_eq!(cf.filters[0].fields["T"], "S:1m;E:2m");
    }
}
