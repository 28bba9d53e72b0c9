//! Addresses as Postfix and Mailman 3 read them: one normalisation and one list lookup, so
//! that "is this list mail?" never disagrees with where Postfix routes a message and which
//! list Mailman's LMTP runner files it under.
//!
//! The model, from the sources (Postfix 3.7 `smtpd.c` extract_addr, `rewrite.c`, `resolve.c`,
//! `split_addr.c`, `quote_822_local.c`; Mailman 3.3 `runners/lmtp.py`) and a throwaway
//! Postfix 3.7.11 probed over SMTP:
//! - the milter sees the RCPT argument as the client wrote it (`<@a:"List"@D.>`); Postfix
//!   delivers the internal form: source route and one trailing dot gone, quotes removed;
//! - Postfix looks an address up in full, then with the extension cut at the FIRST character
//!   that is any one of `recipient_delimiter`'s characters;
//! - Mailman lowercases what Postfix delivers (re-quoted where the local part needs it), cuts
//!   at its VERP delimiter, then takes a known `-suffix` off the end.

use std::fmt;

/// Postfix's and Mailman's default: `LIST+anything@` is LIST.
pub const DEFAULT_RECIPIENT_DELIMITER: &str = "+";
/// Mailman 3's `[mta] verp_format` (config/schema.cfg).
pub const DEFAULT_VERP_FORMAT: &str = "${bounces}+${local}=${domain}";

/// The Postfix and Mailman settings that decide what an address means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddressConfig {
    /// Postfix's `recipient_delimiter`: any one of these characters starts an extension.
    pub recipient_delimiter: String,
    /// Mailman's `[mta] verp_format` (PEP 292: `$bounces`, `$local`, `$domain`).
    pub verp_format: String,
}

impl Default for AddressConfig {
    fn default() -> Self {
        AddressConfig {
            recipient_delimiter: DEFAULT_RECIPIENT_DELIMITER.into(),
            verp_format: DEFAULT_VERP_FORMAT.into(),
        }
    }
}

impl AddressConfig {
    /// Checks the two settings; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(c) = self
            .recipient_delimiter
            .chars()
            .find(|&c| c.is_control() || c.is_whitespace() || matches!(c, '@' | '"' | '\\'))
        {
            return Err(format!("recipient_delimiter: {c:?} cannot be a delimiter"));
        }
        let t = parse_template(&self.verp_format);
        let bounces = t.iter().position(|s| *s == Segment::Var("bounces"));
        match bounces {
            Some(i) if t[..i].iter().all(|s| matches!(s, Segment::Literal(_))) => {}
            _ => return Err("verp_format: must contain $bounces before $local and $domain".into()),
        }
        if self.mailman_delimiter().is_empty() {
            return Err("verp_format: no delimiter after $bounces".into());
        }
        Ok(())
    }

    /// Mailman's `verp_delimiter`: the text between `$bounces` and the next variable of
    /// `verp_format` (`+` by default). A working Mailman setup keeps the two equal, since the
    /// MTA must deliver `LIST-bounces<delimiter>…` to LIST-bounces.
    fn mailman_delimiter(&self) -> String {
        let t = parse_template(&self.verp_format);
        match t.iter().position(|s| *s == Segment::Var("bounces")) {
            Some(i) => match t.get(i + 1) {
                Some(Segment::Literal(l)) => l.clone(),
                _ => String::new(),
            },
            None => String::new(),
        }
    }

    /// The literal text `verp_format` puts before `$bounces` (empty by default).
    fn verp_prefix(&self) -> String {
        let mut out = String::new();
        for s in parse_template(&self.verp_format) {
            match s {
                Segment::Literal(l) => out.push_str(&l),
                Segment::Var(_) => break,
            }
        }
        out
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Var(&'static str),
}

/// Python's `string.Template` for the three names Mailman fills in; `$$` is a dollar sign and
/// any other `$name` is kept as text (safe_substitute leaves unknown names alone).
fn parse_template(t: &str) -> Vec<Segment> {
    let mut out = Vec::new();
    let mut lit = String::new();
    let mut rest = t;
    while let Some(i) = rest.find('$') {
        lit.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        if let Some(r) = rest.strip_prefix('$') {
            lit.push('$');
            rest = r;
            continue;
        }
        let (name, after) = if let Some(r) = rest.strip_prefix('{') {
            match r.find('}') {
                Some(j) => (&r[..j], &r[j + 1..]),
                None => ("", rest),
            }
        } else {
            let n = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            (&rest[..n], &rest[n..])
        };
        let var = match name {
            "bounces" => Some("bounces"),
            "local" => Some("local"),
            "domain" => Some("domain"),
            _ => None,
        };
        match var {
            Some(v) => {
                if !lit.is_empty() {
                    out.push(Segment::Literal(std::mem::take(&mut lit)));
                }
                out.push(Segment::Var(v));
                rest = after;
            }
            None => lit.push('$'),
        }
    }
    lit.push_str(rest);
    if !lit.is_empty() {
        out.push(Segment::Literal(lit));
    }
    out
}

/// An address in the form Postfix delivers and Mailman compares: unquoted local part,
/// lowercased, no source route, no trailing dot on the domain.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Normalized {
    pub local: String,
    pub domain: String,
}

impl fmt::Display for Normalized {
    /// `local@domain`, with the local part quoted as Postfix quotes it when it needs quoting,
    /// so the text is unambiguous and normalises back to the same address.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if needs_quoting(&self.local) {
            f.write_str("\"")?;
            for c in self.local.chars() {
                if c == '"' || c == '\\' {
                    f.write_str("\\")?;
                }
                write!(f, "{c}")?;
            }
            write!(f, "\"@{}", self.domain)
        } else {
            write!(f, "{}@{}", self.local, self.domain)
        }
    }
}

/// Postfix's `is_822_dot_string` (quote_822_local.c), 8-bit clean: whether the local part
/// goes out quoted, which is also how Mailman then sees it. Any white space counts, so that
/// printing stays reversible for non-ASCII spaces.
fn needs_quoting(local: &str) -> bool {
    local.is_empty()
        || local.starts_with('.')
        || local.ends_with('.')
        || local.contains("..")
        || local.chars().any(|c| {
            c.is_whitespace()
                || c.is_control()
                || matches!(
                    c,
                    '(' | ')' | '<' | '>' | '@' | ',' | ';' | ':' | '\\' | '"' | '[' | ']'
                )
        })
}

/// Characters that end an unquoted atom (RFC 5322 specials and white space).
fn special(c: char) -> bool {
    c.is_whitespace()
        || matches!(
            c,
            '(' | ')' | '<' | '>' | '@' | ',' | ';' | ':' | '\\' | '"' | '[' | ']'
        )
}

/// Normalises an envelope or header address: angle brackets, a source route (`@a,@b:`) and
/// quoting go, everything is lowercased (Mailman's `str.lower()`), and one trailing dot on
/// the domain is dropped (Postfix's resolver). None for anything that is not `local@domain`:
/// no domain, empty parts, control characters, comments, unbalanced quotes or brackets.
pub fn normalize(addr: &str) -> Option<Normalized> {
    let mut s = addr.trim_matches([' ', '\t']);
    if let Some(inner) = s.strip_prefix('<') {
        s = inner.strip_suffix('>')?.trim_matches([' ', '\t']);
    }
    if s.starts_with('@') {
        // RFC 5321 A-d-l: Postfix truncates at the first colon (smtpd.c extract_addr).
        s = &s[s.find(':')? + 1..];
    }
    if s.chars().any(|c| c.is_control()) {
        return None;
    }
    // Local part: dot-atoms and quoted strings, unquoted (Postfix's internal form).
    let mut local = String::new();
    let mut chars = s.char_indices();
    let at = loop {
        let (i, c) = chars.next()?;
        match c {
            '"' => loop {
                match chars.next()? {
                    (_, '"') => break,
                    (_, '\\') => local.push(chars.next()?.1),
                    (_, c) => local.push(c),
                }
            },
            '@' => break i,
            c if special(c) => return None,
            c => local.push(c),
        }
    };
    let domain = &s[at + 1..];
    if local.is_empty() || domain.is_empty() {
        return None;
    }
    let domain = if let Some(lit) = domain.strip_prefix('[') {
        let inner = lit.strip_suffix(']')?;
        if inner.is_empty() || inner.chars().any(|c| special(c) && c != ':') {
            return None;
        }
        domain.to_string()
    } else {
        // Postfix strips a trailing dot, but not after a dot (resolve.c).
        let d = domain.strip_suffix('.').unwrap_or(domain);
        if d.split('.').any(str::is_empty) || d.chars().any(special) {
            return None;
        }
        d.to_string()
    };
    Some(Normalized {
        local: local.to_lowercase(),
        domain: domain.to_lowercase(),
    })
}

/// Which of a list's addresses a recipient is (Mailman's `SUBADDRESS_NAMES`, plus listcrypt's
/// key address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListAddress {
    Post,
    Request,
    Join,
    Leave,
    Confirm,
    Owner,
    Bounces,
    /// listcrypt's own key address (`LIST-key@` by default): key requests and bindings,
    /// answered by listcrypt, never passed to Mailman.
    Key,
}

impl ListAddress {
    /// Whether posts to this address must be encrypted and signed.
    pub fn enforced(self) -> bool {
        matches!(self, ListAddress::Post)
    }

    /// Command addresses: decrypted when encrypted; plaintext per `command_nonencrypted_action`.
    pub fn is_command(self) -> bool {
        matches!(
            self,
            ListAddress::Request | ListAddress::Join | ListAddress::Leave | ListAddress::Confirm
        )
    }

    /// Mailman's `SUBADDRESS_NAMES` (runners/lmtp.py), aliases included.
    fn from_mailman_suffix(s: &str) -> Option<ListAddress> {
        Some(match s {
            "bounces" => ListAddress::Bounces,
            "confirm" => ListAddress::Confirm,
            "join" | "subscribe" => ListAddress::Join,
            "leave" | "unsubscribe" => ListAddress::Leave,
            "owner" => ListAddress::Owner,
            "request" => ListAddress::Request,
            _ => return None,
        })
    }
}

/// The managed (encrypted) lists, as `classify` needs to see them.
pub trait ListDirectory {
    type List;
    /// The list whose posting address is `address` (normalised `local@domain`).
    fn find(&self, address: &str) -> Option<Self::List>;
    /// Local-part suffix of that list's key address: `LIST-<suffix>@DOMAIN`.
    fn key_suffix<'a>(&'a self, list: &'a Self::List) -> &'a str;
    /// Whether some managed list's address is in `domain`.
    fn hosts_domain(&self, domain: &str) -> bool;
}

/// Postfix's `split_addr` (split_addr.c): the local part without its extension, cut at the
/// first character that is any delimiter; never split to an empty local part, nor
/// postmaster or MAILER-DAEMON.
fn postfix_base<'a>(local: &'a str, delimiters: &str) -> Option<&'a str> {
    if delimiters.is_empty() || local == "postmaster" || local == "mailer-daemon" {
        return None;
    }
    match local.find(|c| delimiters.contains(c)) {
        Some(0) | None => None,
        Some(i) => Some(&local[..i]),
    }
}

/// Maps an address to one of a managed list's addresses, as Mailman's LMTP runner files what
/// Postfix delivers (`split_recipient` and the list-name check in `_handle_RCPT`), or to the
/// list's key address as Postfix looks it up (in full, then without extension, so
/// `LIST-key+x@` is the key address, as Postfix accepts it by `LIST-key@` in
/// relay_recipient_maps). None for everything else, including Postfix's routed forms
/// (`list%domain@local`), which [`is_in_list_domain`] catches.
pub fn classify<D: ListDirectory + ?Sized>(
    addr: &Normalized,
    lists: &D,
    cfg: &AddressConfig,
) -> Option<(D::List, ListAddress)> {
    let domain = &addr.domain;
    // Mailman receives the local part re-quoted when it needs quoting; a quote never matches a
    // list name, so such a local part is no list address to Mailman.
    if !needs_quoting(&addr.local) {
        let delim = cfg.mailman_delimiter();
        let local = match delim.is_empty() {
            true => addr.local.as_str(),
            false => addr.local.split(delim.as_str()).next().unwrap_or(""),
        };
        let split = local
            .rsplit_once('-')
            .and_then(|(name, sub)| Some((name, ListAddress::from_mailman_suffix(sub)?)))
            .filter(|(name, _)| !name.is_empty());
        match split {
            // `local-sub` may itself be a list name; then it is that list's posting address.
            Some((name, kind)) => {
                if let Some(l) = lists.find(&format!("{local}@{domain}")) {
                    return Some((l, ListAddress::Post));
                }
                if let Some(l) = lists.find(&format!("{name}@{domain}")) {
                    return Some((l, kind));
                }
            }
            None => {
                if let Some(l) = lists.find(&format!("{local}@{domain}")) {
                    return Some((l, ListAddress::Post));
                }
            }
        }
    }
    let full = addr.local.as_str();
    let base = postfix_base(full, &cfg.recipient_delimiter);
    for form in std::iter::once(full).chain(base) {
        if let Some((name, suffix)) = form.rsplit_once('-') {
            if let Some(l) = lists.find(&format!("{name}@{domain}")) {
                if lists.key_suffix(&l) == suffix {
                    return Some((l, ListAddress::Key));
                }
            }
        }
    }
    None
}

/// The list whose mail this envelope sender marks: Mailman sends every list message from
/// `LIST-bounces@` or its VERP form built by `verp_format` (`LIST-bounces+m=example.org@`).
/// Any other address of a managed list counts too, so list mail is never missed.
pub fn classify_sender<D: ListDirectory + ?Sized>(
    sender: &Normalized,
    lists: &D,
    cfg: &AddressConfig,
) -> Option<(D::List, ListAddress)> {
    if let Some(found) = classify(sender, lists, cfg) {
        return Some(found);
    }
    // A verp_format with text before $bounces, or a delimiter Mailman's split would miss.
    let prefix = cfg.verp_prefix();
    let delim = cfg.mailman_delimiter();
    let rest = sender.local.strip_prefix(prefix.as_str())?;
    let bounces = match delim.is_empty() {
        true => rest,
        false => rest.split(delim.as_str()).next()?,
    };
    let name = bounces.strip_suffix("-bounces")?;
    let list = lists.find(&format!("{name}@{}", sender.domain))?;
    Some((list, ListAddress::Bounces))
}

/// Where Postfix's resolver would send this address if its domain is one of Postfix's local
/// domains: `user%site@local`, `site!user@local` and `"user@site"@local` become `user@site`
/// (resolve.c and rewrite.c, `allow_percent_hack` and `swap_bangpath` on by default).
/// Measured: an untrusted client's `enc%lists.example.test@mx.example.test` was delivered to
/// `enc@lists.example.test`.
pub fn routed_targets(addr: &Normalized) -> Vec<Normalized> {
    let mut out = Vec::new();
    let mut local = addr.local.clone();
    // Each step removes one routing operator, so this ends.
    loop {
        let next = if let Some((u, d)) = local.rsplit_once('@') {
            Some((u.to_string(), d.to_string()))
        } else if let Some((u, d)) = local.rsplit_once('%') {
            Some((u.to_string(), d.to_string()))
        } else {
            local
                .split_once('!')
                .map(|(site, user)| (user.to_string(), site.to_string()))
        };
        let Some((user, site)) = next else { break };
        let site = site.strip_suffix('.').unwrap_or(&site).to_string();
        out.push(Normalized {
            local: user.clone(),
            domain: site,
        });
        local = user;
    }
    out
}

/// The fail-closed rule's test: whether the address, or where Postfix's routing operators
/// could send it, is in a domain that hosts a managed list. Such a recipient must be one of
/// that list's addresses (see [`classify`]) or be refused.
pub fn is_in_list_domain<D: ListDirectory + ?Sized>(addr: &Normalized, lists: &D) -> bool {
    lists.hosts_domain(&addr.domain)
        || routed_targets(addr)
            .iter()
            .any(|t| lists.hosts_domain(&t.domain))
}

/// Whether Postfix could deliver this address to an address of a managed list: the address
/// itself, or where its routing operators send it. For decisions that must not miss list mail.
pub fn reaches_list<D: ListDirectory + ?Sized>(
    addr: &Normalized,
    lists: &D,
    cfg: &AddressConfig,
) -> bool {
    classify(addr, lists, cfg).is_some()
        || routed_targets(addr)
            .iter()
            .any(|t| classify(t, lists, cfg).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Lists by posting address, each with its key suffix.
    struct Lists(HashMap<String, String>);

    impl Lists {
        fn new(lists: &[(&str, &str)]) -> Lists {
            Lists(
                lists
                    .iter()
                    .map(|(a, k)| (a.to_string(), k.to_string()))
                    .collect(),
            )
        }
    }

    impl ListDirectory for Lists {
        type List = String;
        fn find(&self, address: &str) -> Option<String> {
            self.0.contains_key(address).then(|| address.to_string())
        }
        fn key_suffix<'a>(&'a self, list: &'a String) -> &'a str {
            &self.0[list]
        }
        fn hosts_domain(&self, domain: &str) -> bool {
            self.0.keys().any(|a| a.ends_with(&format!("@{domain}")))
        }
    }

    fn n(s: &str) -> Normalized {
        normalize(s).unwrap_or_else(|| panic!("{s:?} should normalise"))
    }

    fn class(lists: &Lists, cfg: &AddressConfig, a: &str) -> Option<(String, ListAddress)> {
        classify(&n(a), lists, cfg)
    }

    fn enc() -> Lists {
        Lists::new(&[("enc@lists.example.test", "key")])
    }

    // Delivered forms measured on a throwaway Postfix 3.7.11 (recipient_delimiter = +,
    // relay_recipient_maps with enc@lists.example.test), RCPT from an untrusted client, then
    // the maillog's `to=<…>` of the delivery attempt:
    //   <"enc"@lists.example.test>               -> to=<enc@lists.example.test>
    //   <@relay.test:enc@lists.example.test.>     -> to=<enc@lists.example.test>
    //   <ENC+X@LISTS.EXAMPLE.TEST>                -> to=<ENC+X@LISTS.EXAMPLE.TEST> (Mailman lowercases)
    //   <"enc+ x"@lists.example.test>             -> to=<"enc+ x"@lists.example.test>
    //   <enc@lists.example.test..>                -> 501 5.1.3 Bad recipient address syntax
    #[test]
    fn normalises_as_postfix_delivers() {
        let want = Normalized {
            local: "enc".into(),
            domain: "lists.example.test".into(),
        };
        for a in [
            "<\"enc\"@lists.example.test>",
            "<\"en\\c\"@lists.example.test>",
            "<@relay.test:enc@lists.example.test.>",
            "<@relay.test,@b.test:enc@lists.example.test>",
            "enc@lists.example.test.",
            "<EnC@LiStS.ExAmPlE.TeSt>",
            " <enc@lists.example.test> ",
        ] {
            assert_eq!(normalize(a), Some(want.clone()), "{a}");
        }
        assert_eq!(
            n("<ENC+X@LISTS.EXAMPLE.TEST>").to_string(),
            "enc+x@lists.example.test"
        );
        assert_eq!(n("\"enc+ x\"@lists.example.test").local, "enc+ x");
        assert_eq!(
            n("\"enc+ x\"@lists.example.test").to_string(),
            "\"enc+ x\"@lists.example.test"
        );
        for bad in [
            "enc@lists.example.test..",
            "enc",
            "@lists.example.test",
            "enc@",
            "\"\"@lists.example.test",
            "<enc@lists.example.test",
            "enc@lists.example.test\r\nX: y",
            "en\0c@lists.example.test",
            "enc (c)@lists.example.test",
            "\"enc@lists.example.test",
            "enc@lists@example.test",
            "enc@[1.2.3.4",
        ] {
            assert_eq!(normalize(bad), None, "{bad:?}");
        }
        assert_eq!(n("enc@[192.0.2.1]").domain, "[192.0.2.1]");
    }

    #[test]
    fn lowercases_as_python_str_lower() {
        // Python 3.11: 'Kat@D'.lower() == 'kat@d' for U+212A KELVIN SIGN, so Mailman files
        // mail to U+212A-at@ under the list kat@.
        assert_eq!(n("\u{212A}at@D").local, "kat");
    }

    // Mailman 3.3.8 runners/lmtp.py: split_recipient cuts at verp_delimiter '+', then
    // rpartition('-') against SUBADDRESS_NAMES; `_handle_RCPT` first checks whether
    // `local-sub@domain` is itself a list.
    #[test]
    fn mailman_split_recipient() {
        let l = enc();
        let c = AddressConfig::default();
        let list = || "enc@lists.example.test".to_string();
        for (a, kind) in [
            ("enc@lists.example.test", ListAddress::Post),
            ("enc+anything@lists.example.test", ListAddress::Post),
            ("enc-request@lists.example.test", ListAddress::Request),
            ("enc-request+x@lists.example.test", ListAddress::Request),
            ("enc-join@lists.example.test", ListAddress::Join),
            ("enc-subscribe@lists.example.test", ListAddress::Join),
            ("enc-leave@lists.example.test", ListAddress::Leave),
            ("enc-unsubscribe+x@lists.example.test", ListAddress::Leave),
            ("enc-owner@lists.example.test", ListAddress::Owner),
            ("enc-owner+x@lists.example.test", ListAddress::Owner),
            (
                "enc-confirm+0123abcd@lists.example.test",
                ListAddress::Confirm,
            ),
            ("enc-bounces@lists.example.test", ListAddress::Bounces),
            (
                "enc-bounces+anything@lists.example.test",
                ListAddress::Bounces,
            ),
            (
                "enc-bounces+member=example.org@lists.example.test",
                ListAddress::Bounces,
            ),
            ("EnC@LiStS.ExAmPlE.TeSt.", ListAddress::Post),
            ("\"enc\"@lists.example.test", ListAddress::Post),
            ("@relay.test:enc@lists.example.test", ListAddress::Post),
            ("enc+@lists.example.test", ListAddress::Post),
            ("enc++x@lists.example.test", ListAddress::Post),
        ] {
            assert_eq!(class(&l, &c, a), Some((list(), kind)), "{a}");
        }
        for a in [
            "other@lists.example.test",
            "enc-x@lists.example.test",
            "enc-request-x@lists.example.test",
            "+enc@lists.example.test",
            "-enc@lists.example.test",
            "enc@other.test",
            "enc-bogus+x@lists.example.test",
            // Delivered quoted ("enc+ x"@…): Mailman's split gives `"enc`, no list.
            "\"enc+ x\"@lists.example.test",
        ] {
            assert_eq!(class(&l, &c, a), None, "{a}");
        }
    }

    #[test]
    fn list_named_like_a_subaddress_wins() {
        // lmtp.py: `enc-owner` is a list, so `enc-owner+x@` posts to it.
        let l = Lists::new(&[("enc@d.test", "key"), ("enc-owner@d.test", "key")]);
        let c = AddressConfig::default();
        assert_eq!(
            class(&l, &c, "enc-owner+x@d.test"),
            Some(("enc-owner@d.test".into(), ListAddress::Post))
        );
        assert_eq!(
            class(&l, &c, "enc-request@d.test"),
            Some(("enc@d.test".into(), ListAddress::Request))
        );
    }

    // Postfix 3.7.11, relay_recipient_maps holding enc-key@lists.example.test:
    //   recipient_delimiter = +  : <enc-key+x@…> 250, <enc-key@…> 250
    //   recipient_delimiter = +- : <enc-key+x@…> 250 and <enc-key-x@…> 250, both by `enc@`
    //   (split_addr.c cuts at the first '-'), so Postfix routes them as enc@, to Mailman.
    #[test]
    fn key_address_as_postfix_looks_it_up() {
        let l = Lists::new(&[
            ("enc@lists.example.test", "key"),
            ("k2@lists.example.test", "pgp"),
        ]);
        let c = AddressConfig::default();
        let key = |list: &str| Some((list.to_string(), ListAddress::Key));
        assert_eq!(
            class(&l, &c, "enc-key@lists.example.test"),
            key("enc@lists.example.test")
        );
        assert_eq!(
            class(&l, &c, "ENC-KEY+x@lists.example.test"),
            key("enc@lists.example.test")
        );
        assert_eq!(
            class(&l, &c, "k2-pgp@lists.example.test"),
            key("k2@lists.example.test")
        );
        assert_eq!(class(&l, &c, "k2-key@lists.example.test"), None);
        assert_eq!(class(&l, &c, "enc-key-x@lists.example.test"), None);
        let c = AddressConfig {
            recipient_delimiter: "+-".into(),
            ..AddressConfig::default()
        };
        assert_eq!(
            class(&l, &c, "enc-key@lists.example.test"),
            key("enc@lists.example.test")
        );
        // Routed as enc@ to Mailman, whose split_recipient then finds `enc-key` (after '+')
        // or the unknown suffix `x`: Mailman refuses, so no address of the list.
        assert_eq!(class(&l, &c, "enc-key+x@lists.example.test"), None);
        assert_eq!(class(&l, &c, "enc-key-x@lists.example.test"), None);
    }

    #[test]
    fn postfix_split_addr() {
        // split_addr.c: first delimiter char, never at position 0, postmaster never.
        assert_eq!(postfix_base("enc+x-y", "+-"), Some("enc"));
        assert_eq!(postfix_base("enc-x+y", "+-"), Some("enc"));
        assert_eq!(postfix_base("enc+", "+"), Some("enc"));
        assert_eq!(postfix_base("+enc", "+"), None);
        assert_eq!(postfix_base("enc", "+"), None);
        assert_eq!(postfix_base("enc+x", ""), None);
        assert_eq!(postfix_base("postmaster", "t"), None);
    }

    #[test]
    fn verp_senders() {
        let l = enc();
        let c = AddressConfig::default();
        let bounces = Some(("enc@lists.example.test".to_string(), ListAddress::Bounces));
        // mta/verp.py with the default verp_format: mylist-bounces+aperson=a.nother.dom@dom.ain
        for s in [
            "enc-bounces@lists.example.test",
            "enc-bounces+member=example.org@lists.example.test",
            "<ENC-Bounces+Member=Example.ORG@lists.example.test>",
        ] {
            assert_eq!(classify_sender(&n(s), &l, &c), bounces, "{s}");
        }
        assert_eq!(
            classify_sender(&n("enc-bounce@lists.example.test"), &l, &c),
            None
        );
        assert_eq!(classify_sender(&n("member@example.org"), &l, &c), None);
        // A site that moved VERP behind a prefix and another delimiter.
        let c = AddressConfig {
            verp_format: "v.${bounces}#${local}.at.${domain}".into(),
            ..AddressConfig::default()
        };
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(
            classify_sender(
                &n("v.enc-bounces#m.at.example.org@lists.example.test"),
                &l,
                &c
            ),
            bounces
        );
    }

    #[test]
    fn verp_format_template() {
        assert_eq!(AddressConfig::default().mailman_delimiter(), "+");
        let c = AddressConfig {
            verp_format: "$bounces-$local=$domain".into(),
            ..AddressConfig::default()
        };
        assert_eq!(c.mailman_delimiter(), "-");
        let bad = AddressConfig {
            verp_format: "$local=$domain".into(),
            ..AddressConfig::default()
        };
        assert!(bad.validate().is_err());
        let bad = AddressConfig {
            recipient_delimiter: "@".into(),
            ..AddressConfig::default()
        };
        assert!(bad.validate().is_err());
    }

    // Postfix 3.7.11, mydestination = mx.example.test, client not in mynetworks: each RCPT got
    // 250 and the maillog shows the delivery to=<enc@lists.example.test>, orig_to=<…>:
    //   <enc%lists.example.test@mx.example.test>
    //   <lists.example.test!enc@mx.example.test>
    //   <"enc@lists.example.test"@mx.example.test>
    #[test]
    fn routed_forms_fall_in_the_list_domain() {
        let l = enc();
        let c = AddressConfig::default();
        for a in [
            "<enc%lists.example.test@mx.example.test>",
            "<lists.example.test!enc@mx.example.test>",
            "<\"enc@lists.example.test\"@mx.example.test>",
            "<enc%lists.example.test.%other.test@mx.example.test>",
        ] {
            let addr = n(a);
            assert!(is_in_list_domain(&addr, &l), "{a}");
            assert_eq!(classify(&addr, &l, &c), None, "{a}");
        }
        assert!(is_in_list_domain(&n("x@lists.example.test"), &l));
        assert!(!is_in_list_domain(&n("enc@example.org"), &l));
        assert!(!is_in_list_domain(&n("a%b@example.org"), &l));
        assert!(reaches_list(
            &n("enc%lists.example.test@mx.example.test"),
            &l,
            &c
        ));
        assert!(reaches_list(&n("enc+x@lists.example.test"), &l, &c));
        assert!(!reaches_list(
            &n("bob%lists.example.test@mx.example.test"),
            &l,
            &c
        ));
        assert!(!reaches_list(&n("x@lists.example.test"), &l, &c));
    }
}
