use mailparse::ParsedContentType;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MimeError {
    #[error("{0}")]
    Malformed(&'static str),
    #[error("MIME nesting deeper than {0}")]
    TooDeep(u32),
    #[error("more than {0} MIME parts")]
    TooManyParts(u32),
}

/// One header field with its raw value bytes (everything after the colon, folding kept).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: Vec<u8>,
}

impl Header {
    pub fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
    }
}

/// A header block and a body, as byte slices of the input.
#[derive(Debug)]
pub struct Entity<'a> {
    pub headers: Vec<Header>,
    pub body: &'a [u8],
}

impl<'a> Entity<'a> {
    /// Splits at the first empty line (CRLF or LF). A message without one is all header.
    pub fn parse(bytes: &'a [u8]) -> Result<Entity<'a>, MimeError> {
        let mut pos = 0;
        let mut headers: Vec<Header> = Vec::new();
        while pos < bytes.len() {
            let end = bytes[pos..]
                .iter()
                .position(|&b| b == b'\n')
                .map(|i| pos + i + 1)
                .unwrap_or(bytes.len());
            let line = &bytes[pos..end];
            let content = trim_eol(line);
            if content.is_empty() {
                return Ok(Entity {
                    headers,
                    body: &bytes[end..],
                });
            }
            if content[0] == b' ' || content[0] == b'\t' {
                let last = headers.last_mut().ok_or(MimeError::Malformed(
                    "header block starts with a continuation line",
                ))?;
                last.value.extend_from_slice(b"\n");
                last.value.extend_from_slice(content);
            } else {
                let colon = content
                    .iter()
                    .position(|&b| b == b':')
                    .ok_or(MimeError::Malformed("header line without a colon"))?;
                let name = &content[..colon];
                if name.is_empty() || !name.iter().all(|&b| b.is_ascii_graphic()) {
                    return Err(MimeError::Malformed("invalid header field name"));
                }
                headers.push(Header {
                    name: String::from_utf8_lossy(name).into_owned(),
                    value: content[colon + 1..].to_vec(),
                });
            }
            pos = end;
        }
        Ok(Entity {
            headers,
            body: &bytes[bytes.len()..],
        })
    }

    pub fn get(&self, name: &str) -> Option<&Header> {
        self.headers.iter().find(|h| h.is(name))
    }

    pub fn content_type(&self) -> ParsedContentType {
        content_type(self.get("Content-Type"))
    }
}

fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// The unfolded, trimmed text of a header value.
pub fn header_text(h: &Header) -> String {
    let s = String::from_utf8_lossy(&h.value);
    s.split('\n')
        .map(|l| l.trim_end_matches('\r'))
        .collect::<Vec<_>>()
        .join(" ")
        .trim()
        .to_string()
}

/// RFC 2045 §5.2: a missing Content-Type means text/plain; charset=us-ascii.
pub fn content_type(h: Option<&Header>) -> ParsedContentType {
    match h {
        Some(h) => mailparse::parse_content_type(&header_text(h)),
        None => mailparse::parse_content_type("text/plain; charset=us-ascii"),
    }
}

/// Normalises every line ending to CRLF (RFC 3156 §5 canonical form; milter bodies are CRLF).
pub fn to_crlf(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 32);
    to_crlf_into(bytes, &mut out);
    out
}

/// [`to_crlf`], appended to `out`. Text between line endings is copied a run at a time, not
/// byte by byte: an armored copy is a few hundred KiB per batch.
pub fn to_crlf_into(bytes: &[u8], out: &mut Vec<u8>) {
    let mut rest = bytes;
    while let Some(i) = rest.iter().position(|&b| b == b'\r' || b == b'\n') {
        out.extend_from_slice(&rest[..i]);
        out.extend_from_slice(b"\r\n");
        let crlf = rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n');
        rest = &rest[i + if crlf { 2 } else { 1 }..];
    }
    out.extend_from_slice(rest);
}

/// Whether a raw header value (folds kept as `\n` or `\r\n`) is clean: no NUL, no CR without
/// LF, no LF without a following space or tab, no other C0 control but TAB (RFC 5322 §2.2).
pub fn header_value_ok(value: &[u8]) -> bool {
    value.iter().enumerate().all(|(i, &b)| match b {
        b'\r' => value.get(i + 1) == Some(&b'\n'),
        b'\n' => matches!(value.get(i + 1), Some(b' ' | b'\t')),
        b'\t' => true,
        b => b >= 0x20,
    })
}

/// A header value in CRLF form: only a fold (LF, or CRLF, before a space or tab) becomes a line
/// break; any other CR or LF becomes a space, so a value can never start a new field.
pub fn header_crlf(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + 8);
    let mut i = 0;
    while i < value.len() {
        let crlf = value[i] == b'\r' && value.get(i + 1) == Some(&b'\n');
        let lf_at = if crlf { i + 1 } else { i };
        if value[lf_at] == b'\n' && matches!(value.get(lf_at + 1), Some(b' ' | b'\t')) {
            out.extend_from_slice(b"\r\n");
            i = lf_at + 1;
            continue;
        }
        match value[i] {
            b'\r' | b'\n' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    out
}

/// Splits a multipart body into its parts (RFC 2046 §5.1.1). Errors if the closing delimiter
/// is missing, which Python's email package (Mailman) flags as a defect.
pub fn split_multipart<'a>(body: &'a [u8], boundary: &str) -> Result<Vec<&'a [u8]>, MimeError> {
    if boundary.is_empty() || boundary.len() > 70 {
        return Err(MimeError::Malformed("invalid multipart boundary"));
    }
    let delim = format!("--{boundary}");
    let delim = delim.as_bytes();
    let mut parts = Vec::new();
    let mut start: Option<usize> = None;
    let mut pos = 0;
    let mut closed = false;
    while pos < body.len() {
        let end = body[pos..]
            .iter()
            .position(|&b| b == b'\n')
            .map(|i| pos + i + 1)
            .unwrap_or(body.len());
        let line = trim_eol(&body[pos..end]);
        if line.starts_with(delim) {
            let rest = &line[delim.len()..];
            let is_close = rest.starts_with(b"--");
            let tail = if is_close { &rest[2..] } else { rest };
            if tail.iter().all(|&b| b == b' ' || b == b'\t') {
                if let Some(s) = start {
                    // The CRLF before a delimiter belongs to the delimiter.
                    let mut e = pos;
                    if e > s && body[e - 1] == b'\n' {
                        e -= 1;
                        if e > s && body[e - 1] == b'\r' {
                            e -= 1;
                        }
                    }
                    parts.push(&body[s..e]);
                }
                if is_close {
                    closed = true;
                    break;
                }
                start = Some(end);
            }
        }
        pos = end;
    }
    if !closed {
        return Err(MimeError::Malformed("multipart without a closing boundary"));
    }
    if parts.is_empty() {
        return Err(MimeError::Malformed("multipart without parts"));
    }
    Ok(parts)
}

/// Walks an entity's MIME tree within the limits, checking it is clean enough for Mailman's
/// parser (every multipart has a boundary and a closing delimiter). Returns the part count.
pub fn walk_entity(bytes: &[u8], max_depth: u32, max_parts: u32) -> Result<u32, MimeError> {
    let mut stack: Vec<(&[u8], u32)> = vec![(bytes, 0)];
    let mut count = 0u32;
    while let Some((part, depth)) = stack.pop() {
        count += 1;
        if count > max_parts {
            return Err(MimeError::TooManyParts(max_parts));
        }
        if depth > max_depth {
            return Err(MimeError::TooDeep(max_depth));
        }
        let entity = Entity::parse(part)?;
        let ct = entity.content_type();
        if ct.mimetype.starts_with("multipart/") {
            let boundary = ct
                .params
                .get("boundary")
                .ok_or(MimeError::Malformed("multipart without a boundary"))?;
            for sub in split_multipart(entity.body, boundary)? {
                stack.push((sub, depth + 1));
            }
        } else if ct.mimetype == "message/rfc822" {
            stack.push((entity.body, depth + 1));
        }
    }
    Ok(count)
}

/// What a message is, structurally.
#[derive(Debug, PartialEq, Eq)]
pub enum Shape {
    /// RFC 3156 §4 multipart/encrypted; the OpenPGP message bytes (armored or binary).
    PgpMime { ciphertext: Vec<u8> },
    /// An OpenPGP armor block in a text body.
    InlinePgp,
    /// Anything else (including encrypted parts with unencrypted siblings: EFAIL).
    NotEncrypted,
}

/// Classifies a whole message. Only a top-level multipart/encrypted counts as encrypted.
pub fn classify(message: &[u8], max_depth: u32, max_parts: u32) -> Result<Shape, MimeError> {
    let entity = Entity::parse(message)?;
    let ct = entity.content_type();
    if ct.mimetype != "multipart/encrypted" {
        walk_entity(message, max_depth, max_parts)?;
        if super::contains(entity.body, b"-----BEGIN PGP MESSAGE-----")
            && ct.mimetype.starts_with("text/")
        {
            return Ok(Shape::InlinePgp);
        }
        return Ok(Shape::NotEncrypted);
    }
    let protocol = ct.params.get("protocol").map(|p| p.to_ascii_lowercase());
    if protocol.as_deref() != Some("application/pgp-encrypted") {
        return Err(MimeError::Malformed(
            "multipart/encrypted without protocol application/pgp-encrypted",
        ));
    }
    let boundary = ct
        .params
        .get("boundary")
        .ok_or(MimeError::Malformed("multipart without a boundary"))?;
    let parts = split_multipart(entity.body, boundary)?;
    if parts.len() != 2 {
        return Err(MimeError::Malformed(
            "multipart/encrypted must have exactly two parts",
        ));
    }
    let control = Entity::parse(parts[0])?;
    if control.content_type().mimetype != "application/pgp-encrypted" {
        return Err(MimeError::Malformed(
            "first part of multipart/encrypted is not application/pgp-encrypted",
        ));
    }
    let version_ok = String::from_utf8_lossy(control.body)
        .lines()
        .any(|l| l.trim().eq_ignore_ascii_case("Version: 1"));
    if !version_ok {
        return Err(MimeError::Malformed(
            "PGP/MIME version part does not say Version: 1",
        ));
    }
    let data = Entity::parse(parts[1])?;
    if data.content_type().mimetype != "application/octet-stream" {
        return Err(MimeError::Malformed(
            "second part of multipart/encrypted is not application/octet-stream",
        ));
    }
    let parsed = mailparse::parse_mail(parts[1])
        .map_err(|_| MimeError::Malformed("unparseable encrypted part"))?;
    let ciphertext = parsed
        .get_body_raw()
        .map_err(|_| MimeError::Malformed("bad transfer encoding in encrypted part"))?;
    Ok(Shape::PgpMime { ciphertext })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_keep_raw_values_and_folding() {
        let e = Entity::parse(b"Subject: a\r\n\tb\r\nX:  y\r\n\r\nbody").unwrap();
        assert_eq!(e.headers[0].value, b" a\n\tb");
        assert_eq!(header_text(&e.headers[0]), "a \tb");
        assert_eq!(e.headers[1].value, b"  y");
        assert_eq!(e.body, b"body");
    }

    #[test]
    fn header_values_with_controls_are_refused() {
        assert!(header_value_ok(b" plain\tvalue"));
        assert!(header_value_ok(b" folded\n\tline\r\n more"));
        assert!(!header_value_ok(b" a\rX-Listcrypt-Signer: forged"));
        assert!(!header_value_ok(b" a\r"));
        assert!(!header_value_ok(b" a\nX-Forged: 1"));
        assert!(!header_value_ok(b" a\0b"));
        assert!(!header_value_ok(b" a\x1bb"));
        assert!(!header_value_ok(b" a\n"));
    }

    #[test]
    fn header_crlf_never_breaks_a_line_at_a_lone_cr() {
        assert_eq!(header_crlf(b" a\n\tb"), b" a\r\n\tb");
        assert_eq!(header_crlf(b" a\r\n b"), b" a\r\n b");
        assert_eq!(
            header_crlf(b" a\rX-Listcrypt-Signer: x"),
            b" a X-Listcrypt-Signer: x"
        );
        assert_eq!(header_crlf(b" a\nX: y\r"), b" a X: y ");
    }

    #[test]
    fn crlf() {
        assert_eq!(to_crlf(b"a\nb\r\nc\rd"), b"a\r\nb\r\nc\r\nd");
        // Each CR, LF or CRLF is one line ending (RFC 5322 §2.1 lines, RFC 2045 §2.10).
        assert_eq!(to_crlf(b"\r\r\n\n\n\r"), b"\r\n\r\n\r\n\r\n\r\n");
        assert_eq!(to_crlf(b""), b"");
        assert_eq!(to_crlf(b"no ending"), b"no ending");
        let mut out = b"kept\r\n".to_vec();
        to_crlf_into(b"x\ny", &mut out);
        assert_eq!(out, b"kept\r\nx\r\ny");
    }

    #[test]
    fn multipart_split_and_missing_close() {
        let body = b"pre\r\n--b\r\nA\r\n--b\r\nB\r\n--b--\r\n";
        assert_eq!(
            split_multipart(body, "b").unwrap(),
            vec![&b"A"[..], &b"B"[..]]
        );
        assert!(split_multipart(b"--b\r\nA\r\n", "b").is_err());
    }

    #[test]
    fn depth_limit() {
        let mut msg = b"Content-Type: text/plain\r\n\r\nx".to_vec();
        for i in 0..5 {
            let b = format!("b{i}");
            msg = format!(
                "Content-Type: multipart/mixed; boundary={b}\r\n\r\n--{b}\r\n{}\r\n--{b}--\r\n",
                String::from_utf8(msg).unwrap()
            )
            .into_bytes();
        }
        assert!(walk_entity(&msg, 5, 100).is_ok());
        assert_eq!(walk_entity(&msg, 4, 100), Err(MimeError::TooDeep(4)));
        assert_eq!(walk_entity(&msg, 10, 3), Err(MimeError::TooManyParts(3)));
    }
}
