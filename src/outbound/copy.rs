//! One encrypted copy of a message for one batch of recipients: the inner entity with the
//! protected header fields, the outer header that travels in clear, padding and Autocrypt.

use super::PlanError;
use crate::config::{HeaderProtection, Padding};
use crate::keys::{normalize_address, ListKeys};
use crate::message::Rewrite;
use crate::mime::{self, Entity, CONTENT_HEADERS, PROTECTED};
use crate::pgp;

/// Fields that only ever travel inside the encryption: listcrypt's statement of the verified
/// author (when the author's signature could not be carried as multipart/signed), and the
/// informational fields that RFC 9788 §3.2 hcp_baseline removes from the outside.
const INSIDE_ONLY: &[&str] = &["X-Listcrypt-Signer", "Keywords", "Comments"];

/// The only fields of the original header that travel in clear (issue 9 §3, RFC 9788 §4);
/// every other field is removed from the outer header, whatever its name. Kept: what MTAs
/// and legacy clients need to route, thread and show a message (RFC 5322 originator,
/// destination and threading fields, the Subject as the policy obscures it), the list fields
/// clients offer as commands (RFC 2369, RFC 2919, RFC 8058 one-click unsubscribe), and
/// Mailman's loop guards (`Precedence`, RFC 3834 `Auto-Submitted`). The MIME fields and the
/// list's Autocrypt field are replaced, not kept. Removed, among others: the poster's
/// `Received` trace, client and Mailman bookkeeping, `Sender`, listcrypt's hold marker.
const OUTER_ALLOWED: &[&str] = &[
    "From",
    "To",
    "Cc",
    "Reply-To",
    "Subject",
    "Date",
    "Message-ID",
    "In-Reply-To",
    "References",
    "Followup-To",
    "List-Id",
    "List-Post",
    "List-Help",
    "List-Subscribe",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "List-Owner",
    "List-Archive",
    "Precedence",
    "Auto-Submitted",
];

/// Builds the encrypted copy of `message` for `recipients` (all accepted at RCPT): the inner
/// entity carries the body and, per header protection, the real header fields; the outer
/// message is RFC 3156 multipart/encrypted, signed inside by the list key.
pub fn encrypt_message(
    message: &[u8],
    list: &ListKeys,
    recipients: &[String],
) -> Result<Rewrite, PlanError> {
    if recipients.is_empty() {
        return Err(PlanError::NoRecipients);
    }
    prepare(message, list, &mut Budget::new())?.encrypt(list, recipients)
}

/// A message made ready for encryption: the inner entity (`>From` restored), signed by the
/// list key, and the outer header edits. None of it depends on the recipients, so it is made
/// once per message and every batch is encrypted from it.
pub struct Prepared {
    signed: pgp::SignedContent,
    remove: Vec<String>,
    obscured: Vec<(&'static str, String)>,
    /// The list's Autocrypt header goes on this message's copies ([`from_is_list`]).
    autocrypt: bool,
}

/// Prepares `message` for every batch; `>From` restoration draws on `budget`. The signature
/// is made here, once, holding a crypto permit like the encryption it serves.
pub fn prepare(
    message: &[u8],
    list: &ListKeys,
    budget: &mut Budget,
) -> Result<Prepared, PlanError> {
    let entity = Entity::parse(message).map_err(|_| PlanError::Malformed("unparseable header"))?;
    let hcp = list.policy.header_protection;
    let obscured = obscure_outer(&entity, hcp);
    let inner = inner_entity(&entity, list, &obscured, budget);
    let remove = outer_removals(&entity, hcp);
    let signer = list.policy.sign_outgoing.then_some(&list.secret);
    let signed = crate::crypto_pool::global()
        .run(|| pgp::sign_content(&inner, signer))
        .map_err(PlanError::Encrypt)?;
    Ok(Prepared {
        signed,
        remove,
        obscured,
        autocrypt: list.policy.autocrypt && from_is_list(&entity, list),
    })
}

impl Prepared {
    /// The encrypted copy for one batch of `recipients`.
    pub fn encrypt(&self, list: &ListKeys, recipients: &[String]) -> Result<Rewrite, PlanError> {
        self.encrypt_ahead(list, recipients, None)
    }

    /// [`Prepared::encrypt`] taking the key encapsulations made ahead in `prekeys`.
    pub fn encrypt_ahead(
        &self,
        list: &ListKeys,
        recipients: &[String],
        prekeys: Option<&pgp::Prekeys>,
    ) -> Result<Rewrite, PlanError> {
        if recipients.is_empty() {
            return Err(PlanError::NoRecipients);
        }
        let keyed = keyed_recipients(list, recipients)?;
        let armored =
            pgp::encrypt_signed_ahead(&self.signed, &keyed, prekeys).map_err(PlanError::Encrypt)?;
        let (content_type, body) = mime::multipart_encrypted(&armored);
        let autocrypt = self.autocrypt.then(|| autocrypt_value(list)).flatten();
        Ok(outer_rewrite(
            autocrypt,
            content_type,
            body,
            self.remove.clone(),
            self.obscured.clone(),
        ))
    }
}

/// Signature verifications `>From` restoration may make for one message, over all its
/// author-signed parts (the check as sent included). Outsiders can send such a message (via
/// LIST-owner@), so the work stays bounded whatever it holds; a mangled post needs two or three.
pub const MAX_FROM_VERIFICATIONS: u32 = 16;

/// What is left of one message's verification budget for `>From` restoration.
#[derive(Debug)]
pub struct Budget {
    pub attempts_left: u32,
}

impl Budget {
    pub fn new() -> Budget {
        Budget {
            attempts_left: MAX_FROM_VERIFICATIONS,
        }
    }

    /// Verifications made so far.
    pub fn used(&self) -> u32 {
        MAX_FROM_VERIFICATIONS - self.attempts_left
    }

    /// Takes one attempt; false once the budget is spent.
    fn take(&mut self) -> bool {
        if self.attempts_left == 0 {
            return false;
        }
        self.attempts_left -= 1;
        true
    }
}

impl Default for Budget {
    fn default() -> Budget {
        Budget::new()
    }
}

/// The entity that gets encrypted: MIME fields of the original (or the RFC 2045 default), the
/// protected header fields, their HP-Outer record, padding, then the body, all CRLF.
fn inner_entity(
    entity: &Entity<'_>,
    list: &ListKeys,
    obscured: &[(&str, String)],
    budget: &mut Budget,
) -> Vec<u8> {
    let mut inner = Vec::with_capacity(entity.body.len() + 1024);
    let mut had_ct = false;
    for h in entity
        .headers
        .iter()
        .filter(|h| CONTENT_HEADERS.iter().any(|c| h.is(c)))
    {
        inner.extend_from_slice(h.name.as_bytes());
        inner.push(b':');
        inner.extend_from_slice(&mime::to_crlf(&h.value));
        if h.is("Content-Type") {
            had_ct = true;
            inner.extend_from_slice(b";\r\n\thp=\"cipher\"; protected-headers=\"v1\"");
        }
        inner.extend_from_slice(b"\r\n");
    }
    if !had_ct {
        inner.extend_from_slice(b"Content-Type: text/plain; charset=us-ascii;\r\n\thp=\"cipher\"; protected-headers=\"v1\"\r\n");
    }
    for h in entity
        .headers
        .iter()
        .filter(|h| PROTECTED.iter().chain(INSIDE_ONLY).any(|p| h.is(p)))
    {
        inner.extend_from_slice(h.name.as_bytes());
        inner.push(b':');
        inner.extend_from_slice(&mime::to_crlf(&h.value));
        inner.extend_from_slice(b"\r\n");
    }
    // The HP-Outer record of every user-facing outer field (RFC 9788 §2.2), so a reader can
    // tell what travelled in the clear.
    for h in entity
        .headers
        .iter()
        .filter(|h| PROTECTED.iter().any(|p| h.is(p)))
    {
        let outer = obscured
            .iter()
            .find(|(n, _)| h.is(n))
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| mime::header_text(h));
        inner.extend_from_slice(format!("HP-Outer: {}: {}\r\n", h.name, outer).as_bytes());
    }
    let body = mime::to_crlf(entity.body);
    let body = unmangle_from_lines(entity, body, list, budget);
    if list.policy.padding == Padding::Padme {
        // Padmé bucket for the whole entity, filled by a header field of the inner entity
        // (invisible to readers, unlike an extra MIME part).
        let len = inner.len() + 2 + body.len();
        pad_header(&mut inner, padme(len + PAD_OVERHEAD).saturating_sub(len));
    }
    inner.extend_from_slice(b"\r\n");
    inner.extend_from_slice(&body);
    inner
}

/// The batch's recipients with the keys worked out for this snapshot.
fn keyed_recipients<'a>(
    list: &'a ListKeys,
    recipients: &[String],
) -> Result<Vec<pgp::KeyedRecipient<'a>>, PlanError> {
    let mut batch = Vec::with_capacity(recipients.len());
    for r in recipients {
        let (m, keys) = list
            .recipient(&normalize_address(r))
            .ok_or(PlanError::Malformed("recipient without a binding"))?;
        let keys = keys.as_ref().map_err(|_| {
            PlanError::Encrypt(pgp::EncryptError::NoEncryptionKey(
                m.cert.fingerprint().to_hex(),
            ))
        })?;
        batch.push(pgp::KeyedRecipient {
            features: &keys.features,
            keys: &keys.keys,
            show_key_id: m.show_key_id || !list.policy.hide_recipient_key_ids,
        });
    }
    Ok(batch)
}

/// The names of every present field outside the allow-list, each once. Taken from the header
/// itself, because the milter removes by name and an allow-list has no names of its own.
/// `hcp_no_confidentiality` keeps the informational fields in clear too (RFC 9788 §3.2).
fn outer_removals(entity: &Entity<'_>, hcp: HeaderProtection) -> Vec<String> {
    let allowed = |name: &str| {
        OUTER_ALLOWED.iter().any(|a| a.eq_ignore_ascii_case(name))
            || (hcp == HeaderProtection::HcpNoConfidentiality
                && ["Keywords", "Comments"]
                    .iter()
                    .any(|a| a.eq_ignore_ascii_case(name)))
    };
    let mut remove: Vec<String> = Vec::new();
    for h in &entity.headers {
        if !allowed(&h.name) && !remove.iter().any(|r| r.eq_ignore_ascii_case(&h.name)) {
            remove.push(h.name.clone());
        }
    }
    remove
}

/// The outer header edits: every field outside the allow-list removed, MIME fields for the
/// multipart/encrypted body, the obscured replacements and the list's Autocrypt key added.
fn outer_rewrite(
    autocrypt: Option<String>,
    content_type: String,
    body: Vec<u8>,
    mut remove: Vec<String>,
    obscured: Vec<(&'static str, String)>,
) -> Rewrite {
    let mut add = vec![
        ("MIME-Version".to_string(), "1.0".to_string()),
        ("Content-Type".to_string(), content_type),
    ];
    // The list's own key, so replies can be encrypted to the list. Members' Autocrypt
    // fields are outside the allow-list, so they were removed.
    if let Some(value) = autocrypt {
        add.push(("Autocrypt".into(), value));
    }
    for (name, value) in obscured {
        remove.push(name.to_string());
        add.push((name.to_string(), value));
    }
    Rewrite {
        remove,
        add,
        body: Some(body),
    }
}

/// Python's smtplib (Mailman) writes a signed body line `From …` as `>From …`, which breaks
/// the author's signature. For each author-signed part (the message itself, or the first level
/// of a wrapper Mailman added for a footer), if the signature fails as sent but verifies with
/// `>From` undone, the part is restored. Parts whose signature verifies are left alone, and so
/// is every part once `budget` is spent.
fn unmangle_from_lines(
    entity: &Entity<'_>,
    body: Vec<u8>,
    list: &ListKeys,
    budget: &mut Budget,
) -> Vec<u8> {
    let ct = entity.content_type();
    let Some(boundary) = ct.params.get("boundary") else {
        return body;
    };
    match ct.mimetype.as_str() {
        "multipart/signed" => restore_signed(&body, boundary, list, budget).unwrap_or(body),
        "multipart/mixed" => {
            let Ok(parts) = mime::split_multipart(&body, boundary) else {
                return body;
            };
            let mut out = body.clone();
            // Replace from the last part backwards so earlier offsets stay valid.
            for part in parts.iter().rev() {
                if budget.attempts_left == 0 {
                    tracing::debug!("verification budget spent: remaining signed parts as sent");
                    break;
                }
                let Ok(sub) = Entity::parse(part) else {
                    continue;
                };
                let sub_ct = sub.content_type();
                if sub_ct.mimetype != "multipart/signed" {
                    continue;
                }
                let Some(b) = sub_ct.params.get("boundary") else {
                    continue;
                };
                let header_len = part.len() - sub.body.len();
                if let Some(fixed) = restore_signed(sub.body, b, list, budget) {
                    let start = part.as_ptr() as usize - body.as_ptr() as usize + header_len;
                    out.splice(start..start + sub.body.len(), fixed);
                }
            }
            out
        }
        _ => body,
    }
}

/// The body of a multipart/signed with `>From` undone in its signed part, if that is what
/// makes the signature verify within `budget`.
fn restore_signed(
    body: &[u8],
    boundary: &str,
    list: &ListKeys,
    budget: &mut Budget,
) -> Option<Vec<u8>> {
    let parts = mime::split_multipart(body, boundary).ok()?;
    tracing::debug!("author-signed part: {} parts", parts.len());
    if parts.len() != 2
        || !(parts[0].starts_with(b">From ") || mime::contains(parts[0], b"\n>From "))
    {
        return None;
    }
    let sig = mailparse::parse_mail(parts[1]).ok()?.get_body_raw().ok()?;
    // `None` once the budget is spent.
    let mut good = |signed: &[u8]| {
        if !budget.take() {
            return None;
        }
        let checks = pgp::verify_detached(signed, &sig, list);
        tracing::trace!("detached verification: {checks:?}");
        Some(checks.iter().any(|s| matches!(s, pgp::SigCheck::Good(_))))
    };
    if good(parts[0]) != Some(false) {
        return None;
    }
    tracing::debug!("author signature fails as sent; trying to undo >From mangling");
    // Which `>From` lines were `From` before? A genuine `>From` (a quote) is possible too, so
    // try the combinations, most undone first: smtplib mangles every `From` line, quotes are rare.
    let signed = parts[0];
    let mut starts: Vec<usize> = Vec::new();
    if signed.starts_with(b">From ") {
        starts.push(0);
    }
    starts.extend(memchr::memmem::find_iter(signed, b"\n>From ").map(|i| i + 1));
    if starts.len() > MAX_FROM_CANDIDATES {
        return None;
    }
    let mut masks: Vec<u32> = (1u32..1 << starts.len()).collect();
    masks.sort_by_key(|m| (std::cmp::Reverse(m.count_ones()), *m));
    let mut fixed = None;
    for mask in masks {
        let mut v = Vec::with_capacity(signed.len());
        let mut last = 0;
        for (bit, &at) in starts.iter().enumerate() {
            if mask & (1 << bit) != 0 {
                v.extend_from_slice(&signed[last..at]);
                last = at + 1; // drop the '>'
            }
        }
        v.extend_from_slice(&signed[last..]);
        match good(&v) {
            Some(true) => {
                fixed = Some(v);
                break;
            }
            Some(false) => continue,
            None => return None,
        }
    }
    let fixed = fixed?;
    let start = parts[0].as_ptr() as usize - body.as_ptr() as usize;
    let mut out = body[..start].to_vec();
    out.extend_from_slice(&fixed);
    out.extend_from_slice(&body[start + parts[0].len()..]);
    Some(out)
}

/// `>From` lines beyond which restoring is not attempted (the combinations to choose from).
const MAX_FROM_CANDIDATES: usize = 8;

/// The outer header fields a header confidentiality policy replaces, with their new values
/// (RFC 9788 §3.2): every policy but `hcp_no_confidentiality` obscures the Subject; `hcp_shy`
/// also drops display names from From, To and Cc and states the Date in UTC.
fn obscure_outer(entity: &Entity<'_>, hcp: HeaderProtection) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if hcp == HeaderProtection::HcpNoConfidentiality {
        return out;
    }
    if entity.get("Subject").is_some() {
        out.push(("Subject", "[...]".to_string()));
    }
    if hcp == HeaderProtection::HcpShy {
        for name in ["From", "To", "Cc"] {
            if let Some(h) = entity.get(name) {
                if let Some(bare) = bare_addresses(h) {
                    out.push((name, bare));
                }
            }
        }
        if let Some(h) = entity.get("Date") {
            if let Ok(t) = mailparse::dateparse(&mime::header_text(h)) {
                out.push(("Date", rfc5322_date_utc(t)));
            }
        }
    }
    out
}

/// `a@x, b@y` for an address field, without display names.
fn bare_addresses(h: &crate::mime::Header) -> Option<String> {
    let list = mailparse::addrparse(&mime::header_text(h)).ok()?;
    let mut addrs = Vec::new();
    for a in list.iter() {
        match a {
            mailparse::MailAddr::Single(s) => addrs.push(s.addr.clone()),
            mailparse::MailAddr::Group(g) => addrs.extend(g.addrs.iter().map(|s| s.addr.clone())),
        }
    }
    (!addrs.is_empty()).then(|| addrs.join(", "))
}

/// RFC 5322 §3.3 date-time in UTC, e.g. `Fri, 27 Nov 2026 14:49:49 +0000` (before 1970: the
/// epoch).
pub fn rfc5322_date_utc(t: i64) -> String {
    chrono::DateTime::from_timestamp(t.max(0), 0)
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC)
        .format("%a, %-d %b %Y %H:%M:%S +0000")
        .to_string()
}

/// Bytes a padding field costs at minimum (`X-Listcrypt-Padding: ` and a CRLF).
const PAD_OVERHEAD: usize = 23;

/// Padmé (Nikitin et al., PETS 2019): rounds `len` up so that at most O(log log len) bits of
/// the length leak; overhead stays under 12%.
pub fn padme(len: usize) -> usize {
    if len < 2 {
        return len;
    }
    let e = usize::BITS - 1 - len.leading_zeros(); // floor(log2 len)
    let s = usize::BITS - (e as usize).leading_zeros(); // floor(log2 e) + 1
    let last_bits = e.saturating_sub(s);
    let mask = (1usize << last_bits) - 1;
    (len + mask) & !mask
}

/// Appends an `X-Listcrypt-Padding` field of (about) `n` bytes, folded at 76 columns.
fn pad_header(inner: &mut Vec<u8>, n: usize) {
    if n < PAD_OVERHEAD {
        return;
    }
    let mut left = n - PAD_OVERHEAD;
    inner.extend_from_slice(b"X-Listcrypt-Padding: ");
    let mut col = 21;
    while left > 0 {
        if col >= 76 && left > 3 {
            inner.extend_from_slice(b"\r\n ");
            left -= 3;
            col = 1;
            continue;
        }
        inner.push(b'.');
        left -= 1;
        col += 1;
    }
    inner.extend_from_slice(b"\r\n");
}

/// Whether the copy's From is the list's posting address (Mailman's DMARC `munge_from`, or
/// mail the list sends as itself). Autocrypt Level 1 §2.3 makes clients treat a header whose
/// `addr` differs from From as invalid, so on an author's post the list's key would be
/// ignored (Thunderbird, K-9) or, if a client did not check, filed under the author.
fn from_is_list(entity: &Entity<'_>, list: &ListKeys) -> bool {
    let mut from = entity.headers.iter().filter(|h| h.is("From"));
    match (from.next(), from.next()) {
        (Some(h), None) => {
            crate::message::first_address(h).is_some_and(|a| normalize_address(&a) == list.address)
        }
        _ => false,
    }
}

/// `addr=LIST; prefer-encrypt=mutual; keydata=…` with the list's public key.
fn autocrypt_value(list: &ListKeys) -> Option<String> {
    // A minimal key (`pgp::autocrypt_keydata`): members' certifications stay out of copies.
    let bytes = pgp::autocrypt_keydata(&list.secret)?;
    let b64 = data_encoding::BASE64.encode(&bytes);
    let mut folded = String::with_capacity(b64.len() + b64.len() / 72 * 3);
    for (i, chunk) in b64.as_bytes().chunks(72).enumerate() {
        if i > 0 {
            folded.push_str("\n ");
        }
        folded.push_str(std::str::from_utf8(chunk).ok()?);
    }
    Some(format!(
        "addr={}; prefer-encrypt=mutual; keydata=\n {folded}",
        list.address
    ))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::config::Policy;
    use crate::keys::Member;
    use crate::pgp::testkit::{detached, general_purpose};
    use crate::pgp::Cert;
    use crate::store::Role;

    /// A list whose members are `alice` (the author) and `m0@x.test` … `m{n-1}@x.test`.
    pub(in crate::outbound) fn list_with(n: usize) -> (ListKeys, Cert) {
        let gen = general_purpose;
        let alice = gen("alice@x.test");
        let mut members = vec![member("alice@x.test", &alice)];
        for i in 0..n {
            let a = format!("m{i}@x.test");
            members.push(member(&a, &gen(&a)));
        }
        let list = ListKeys::new(
            "l@x.test".into(),
            Policy::default(),
            gen("l@x.test"),
            members,
        );
        (list, alice)
    }

    fn member(address: &str, cert: &Cert) -> Member {
        Member {
            address: address.into(),
            cert: cert.clone(),
            role: Role::Member,
            show_key_id: false,
        }
    }

    /// A multipart/signed entity (header and body) of `signed` with a signature made over
    /// `signed_as` (what the author wrote, before any mangling).
    fn signed_entity(signer: &Cert, signed_as: &[u8], signed: &[u8], b: &str) -> Vec<u8> {
        let mut e = format!(
            "Content-Type: multipart/signed; boundary=\"{b}\"; micalg=pgp-sha512;\r\n \
             protocol=\"application/pgp-signature\"\r\n\r\n--{b}\r\n"
        )
        .into_bytes();
        e.extend_from_slice(signed);
        e.extend_from_slice(
            format!("\r\n--{b}\r\nContent-Type: application/pgp-signature\r\n\r\n").as_bytes(),
        );
        e.extend_from_slice(&detached(signer, signed_as));
        e.extend_from_slice(format!("\r\n--{b}--\r\n").as_bytes());
        e
    }

    /// What the author signed, and what smtplib made of it: the `From` line is mangled, the
    /// quote was `>From` already.
    const WRITTEN: &[u8] =
        b"Content-Type: text/plain\r\n\r\nhi\r\nFrom the start\r\n>From a quote\r\n";
    const MANGLED: &[u8] =
        b"Content-Type: text/plain\r\n\r\nhi\r\n>From the start\r\n>From a quote\r\n";

    /// A post by `alice` whose signed part smtplib mangled.
    pub(in crate::outbound) fn mangled_post(alice: &Cert) -> Vec<u8> {
        let mut m = b"From: alice@x.test\r\nTo: l@x.test\r\nSubject: s\r\n".to_vec();
        m.extend_from_slice(&signed_entity(alice, WRITTEN, MANGLED, "sig"));
        m
    }

    #[test]
    fn a_mangled_part_is_restored_and_a_quote_kept() {
        let (list, alice) = list_with(0);
        let message = mangled_post(&alice);
        let entity = Entity::parse(&message).unwrap();
        let mut budget = Budget::new();
        let body = unmangle_from_lines(&entity, entity.body.to_vec(), &list, &mut budget);
        let text = String::from_utf8(body).unwrap();
        assert!(
            text.contains("\r\nhi\r\nFrom the start\r\n>From a quote"),
            "{text}"
        );
        // As sent, both lines undone, then the first alone: most undone first.
        assert_eq!(budget.used(), 3);
    }

    #[test]
    fn many_mangled_parts_cost_at_most_the_message_budget() {
        let (list, alice) = list_with(0);
        // 160 signed parts, each with 8 `>From` lines its signature never matches: 2^8
        // verifications per part without a budget.
        let junk = b"Content-Type: text/plain\r\n\r\n>From 1\r\n>From 2\r\n>From 3\r\n>From 4\r\n\
                     >From 5\r\n>From 6\r\n>From 7\r\n>From 8\r\n";
        let part = signed_entity(&alice, b"something else", junk, "s");
        let mut m =
            b"From: alice@x.test\r\nContent-Type: multipart/mixed; boundary=\"mix\"\r\n\r\n"
                .to_vec();
        for _ in 0..160 {
            m.extend_from_slice(b"--mix\r\n");
            m.extend_from_slice(&part);
        }
        m.extend_from_slice(b"--mix--\r\n");
        let mut budget = Budget::new();
        let entity = Entity::parse(&m).unwrap();
        let inner = inner_entity(&entity, &list, &[], &mut budget);
        assert_eq!(budget.used(), MAX_FROM_VERIFICATIONS);
        assert!(mime::contains(&inner, b"\r\n>From 1\r\n"), "left as sent");
        // A spent budget makes no further attempt.
        prepare(&m, &list, &mut budget).unwrap();
        assert_eq!(budget.used(), MAX_FROM_VERIFICATIONS);
    }

    #[test]
    fn utc_dates() {
        assert_eq!(rfc5322_date_utc(0), "Thu, 1 Jan 1970 00:00:00 +0000");
        // 2026-11-27 14:49:49 UTC was a Friday.
        assert_eq!(
            rfc5322_date_utc(1795790989),
            "Fri, 27 Nov 2026 14:49:49 +0000"
        );
    }

    #[test]
    fn confidentiality_policies() {
        let msg = b"From: Alice Example <alice@example.net>\r\nTo: \"List\" <enc@l.test>\r\nSubject: secret plans\r\nDate: Fri, 27 Nov 2026 15:49:49 +0100\r\n\r\nbody";
        let e = Entity::parse(msg).unwrap();
        assert!(obscure_outer(&e, HeaderProtection::HcpNoConfidentiality).is_empty());
        assert_eq!(
            obscure_outer(&e, HeaderProtection::HcpBaseline),
            vec![("Subject", "[...]".to_string())]
        );
        let shy = obscure_outer(&e, HeaderProtection::HcpShy);
        assert!(
            shy.contains(&("From", "alice@example.net".to_string())),
            "{shy:?}"
        );
        assert!(shy.contains(&("To", "enc@l.test".to_string())));
        assert!(shy.contains(&("Date", "Fri, 27 Nov 2026 14:49:49 +0000".to_string())));
    }

    #[test]
    fn padme_buckets() {
        // Values from the Padmé paper's definition.
        assert_eq!(padme(1000), 1024);
        assert_eq!(padme(1024), 1024);
        assert_eq!(padme(1025), 1088);
        assert_eq!(padme(100_000), 100_352);
        for len in [3usize, 77, 5000, 123_456, 9_999_999] {
            let p = padme(len);
            assert!(p >= len && (p - len) * 100 <= len * 12, "{len} -> {p}");
        }
    }

    #[test]
    fn padding_field_has_the_asked_size() {
        for n in [23usize, 24, 100, 1000, 4096] {
            let mut v = Vec::new();
            pad_header(&mut v, n);
            assert_eq!(v.len(), n, "{n}");
            assert!(v.split(|&b| b == b'\n').all(|l| l.len() <= 78));
        }
    }
}
