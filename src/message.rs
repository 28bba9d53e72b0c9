//! What the pipelines hand back: a header edit plan plus a new body, so the milter adapter and
//! the `process` verb apply exactly the same change.

use crate::mime::{Entity, Header};

/// Header edits and a replacement body.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Rewrite {
    /// Header names whose every occurrence is removed (case-insensitive).
    pub remove: Vec<String>,
    /// Headers appended after the removals; values without the leading space, folded with `\n\t`.
    pub add: Vec<(String, String)>,
    /// The new body (CRLF). `None` keeps the body.
    pub body: Option<Vec<u8>>,
}

impl Rewrite {
    pub fn removes(&self, name: &str) -> bool {
        self.remove.iter().any(|r| r.eq_ignore_ascii_case(name))
    }

    /// Applies the rewrite to a whole message, CRLF, as the MTA would deliver it.
    pub fn render(&self, original: &[u8]) -> Vec<u8> {
        let (headers, body): (Vec<Header>, &[u8]) = match Entity::parse(original) {
            Ok(e) => (e.headers, e.body),
            Err(_) => (Vec::new(), original),
        };
        let mut out = Vec::with_capacity(original.len() + 1024);
        for h in headers.iter().filter(|h| !self.removes(&h.name)) {
            out.extend_from_slice(h.name.as_bytes());
            out.push(b':');
            out.extend_from_slice(&crate::mime::header_crlf(&h.value));
            out.extend_from_slice(b"\r\n");
        }
        for (name, value) in &self.add {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(&crate::mime::header_crlf(value.as_bytes()));
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        match &self.body {
            Some(b) => out.extend_from_slice(b),
            None => out.extend_from_slice(&crate::mime::to_crlf(body)),
        }
        out
    }
}

/// An SMTP refusal: reply code, enhanced status code, short reason (never message content).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: &'static str,
    pub xcode: &'static str,
    pub reason: String,
}

impl Reply {
    pub fn new(code: &'static str, xcode: &'static str, reason: impl Into<String>) -> Reply {
        Reply {
            code,
            xcode,
            reason: reason.into(),
        }
    }

    pub fn internal(reason: impl Into<String>) -> Reply {
        Reply::new("451", "4.3.0", reason)
    }

    pub fn is_temporary(&self) -> bool {
        self.code.starts_with('4')
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {}", self.code, self.xcode, self.reason)
    }
}

/// The bare address of the first mailbox in an address header (`From`), lower-cased.
pub fn first_address(h: &Header) -> Option<String> {
    let text = crate::mime::header_text(h);
    let list = mailparse::addrparse(&text).ok()?;
    list.iter().find_map(|a| match a {
        mailparse::MailAddr::Single(s) => Some(crate::keys::normalize_address(&s.addr)),
        mailparse::MailAddr::Group(g) => g
            .addrs
            .first()
            .map(|s| crate::keys::normalize_address(&s.addr)),
    })
}

#[cfg(test)]
mod tests {
    use super::Rewrite;

    /// A lone CR in a value (kept or added) must not become a line break: it would start a
    /// forged field such as `X-Listcrypt-Signer:` in what Mailman reads.
    #[test]
    fn render_never_turns_a_lone_cr_into_a_field() {
        let rewrite = Rewrite {
            add: vec![("Subject".into(), "hi\rX-Listcrypt-Signer: forged".into())],
            ..Rewrite::default()
        };
        let out = rewrite.render(b"Reply-To: a\rX-Listcrypt-Hold: no\r\nTo: b\r\n\r\nbody");
        let text = String::from_utf8(out).unwrap();
        let fields: Vec<&str> = text.split("\r\n").take_while(|l| !l.is_empty()).collect();
        assert!(
            fields.iter().all(|l| !l.starts_with("X-Listcrypt")),
            "{fields:?}"
        );
        assert_eq!(fields.len(), 3, "{fields:?}");
    }
}
