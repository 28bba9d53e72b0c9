//! Just enough MIME for the tests: build an RFC 3156 PGP/MIME message and take a delivered one
//! apart (top-level headers, multipart bodies as text or as bytes).

use super::text::to_crlf;

/// An RFC 3156 `multipart/encrypted` message around `armored` (an OpenPGP message).
pub fn pgp_mime_encrypted(headers: &[(&str, &str)], armored: &str, boundary: &str) -> Vec<u8> {
    let mut m = String::new();
    for (name, value) in headers {
        m.push_str(&format!("{name}: {value}\r\n"));
    }
    m.push_str("MIME-Version: 1.0\r\n");
    m.push_str(&format!(
        "Content-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\";\r\n\
         \tboundary=\"{boundary}\"\r\n\r\n"
    ));
    m.push_str("This is an OpenPGP/MIME encrypted message (RFC 3156).\r\n");
    m.push_str(&format!(
        "--{boundary}\r\n\
         Content-Type: application/pgp-encrypted\r\n\
         Content-Description: PGP/MIME version identification\r\n\r\n\
         Version: 1\r\n\r\n\
         --{boundary}\r\n\
         Content-Type: application/octet-stream; name=\"encrypted.asc\"\r\n\
         Content-Description: OpenPGP encrypted message\r\n\
         Content-Disposition: inline; filename=\"encrypted.asc\"\r\n\r\n"
    ));
    m.push_str(&armored.replace("\r\n", "\n").replace('\n', "\r\n"));
    if !m.ends_with("\r\n") {
        m.push_str("\r\n");
    }
    m.push_str(&format!("\r\n--{boundary}--\r\n"));
    m.into_bytes()
}

/// A plain, unencrypted text message.
pub fn plain_text(headers: &[(&str, &str)], body: &str) -> Vec<u8> {
    let mut m = String::new();
    for (name, value) in headers {
        m.push_str(&format!("{name}: {value}\r\n"));
    }
    m.push_str("MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n");
    m.push_str(&body.replace("\r\n", "\n").replace('\n', "\r\n"));
    m.into_bytes()
}

/// Splits an entity into (header block, body) at the first empty line.
pub fn split_entity(entity: &str) -> (&str, &str) {
    for sep in ["\r\n\r\n", "\n\n"] {
        if let Some(i) = entity.find(sep) {
            return (&entity[..i], &entity[i + sep.len()..]);
        }
    }
    (entity, "")
}

/// The unfolded value of the first header `name` in a header block.
pub fn header(block: &str, name: &str) -> Option<String> {
    let mut value: Option<String> = None;
    for line in block.lines() {
        let line = line.trim_end_matches('\r');
        if line.starts_with([' ', '\t']) {
            if let Some(v) = value.as_mut() {
                v.push(' ');
                v.push_str(line.trim());
            }
            continue;
        }
        if value.is_some() {
            break;
        }
        if let Some((n, v)) = line.split_once(':') {
            if n.trim().eq_ignore_ascii_case(name) {
                value = Some(v.trim().to_string());
            }
        }
    }
    value
}

/// The media type (lower case, without parameters) of a Content-Type value.
pub fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// A parameter of a Content-Type value, unquoted.
pub fn param(content_type: &str, name: &str) -> Option<String> {
    content_type.split(';').skip(1).find_map(|p| {
        let (n, v) = p.split_once('=')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().trim_matches('"').to_string())
    })
}

/// The body parts of a multipart body with `boundary` (preamble and epilogue dropped).
pub fn parts<'a>(body: &'a str, boundary: &str) -> Vec<&'a str> {
    let delimiter = format!("--{boundary}");
    let mut parts = Vec::new();
    let mut current: Option<usize> = None;
    let mut offset = 0;
    for line in body.split_inclusive('\n') {
        let bare = line.trim_end_matches(['\r', '\n']).trim_end();
        if bare == delimiter || bare == format!("{delimiter}--") {
            if let Some(start) = current {
                // The CRLF before the delimiter belongs to the delimiter (RFC 2046 5.1.1).
                let part = &body[start..offset];
                let part = part
                    .strip_suffix("\r\n")
                    .or_else(|| part.strip_suffix('\n'))
                    .unwrap_or(part);
                parts.push(part);
            }
            if bare != delimiter {
                return parts; // the close delimiter
            }
            current = Some(offset + line.len());
        }
        offset += line.len();
    }
    parts
}

/// Checks that `message` is exactly an RFC 3156 encrypted message: a top-level
/// multipart/encrypted with the version part and one part holding an armored OpenPGP message,
/// and nothing else. Returns the armored message, or says what is wrong.
pub fn rfc3156_payload(message: &str) -> Result<String, String> {
    let (head, body) = split_entity(message);
    let ct = header(head, "Content-Type").ok_or("no Content-Type")?;
    if media_type(&ct) != "multipart/encrypted" {
        return Err(format!("top-level Content-Type is {ct:?}"));
    }
    let protocol = param(&ct, "protocol").unwrap_or_default();
    if !protocol.eq_ignore_ascii_case("application/pgp-encrypted") {
        return Err(format!("protocol is {protocol:?}"));
    }
    let boundary = param(&ct, "boundary").ok_or("no boundary")?;
    let parts = parts(body, &boundary);
    if parts.len() != 2 {
        return Err(format!("{} parts, not 2", parts.len()));
    }
    let (version_head, version_body) = split_entity(parts[0]);
    let version_ct = header(version_head, "Content-Type").unwrap_or_default();
    if media_type(&version_ct) != "application/pgp-encrypted"
        || !version_body.contains("Version: 1")
    {
        return Err(format!("first part is {version_ct:?} / {version_body:?}"));
    }
    let (data_head, data_body) = split_entity(parts[1]);
    let data_ct = header(data_head, "Content-Type").unwrap_or_default();
    if media_type(&data_ct) != "application/octet-stream" {
        return Err(format!("second part is {data_ct:?}"));
    }
    let begin = data_body
        .find("-----BEGIN PGP MESSAGE-----")
        .ok_or("second part holds no armored OpenPGP message")?;
    let end_marker = "-----END PGP MESSAGE-----";
    let end = data_body.find(end_marker).ok_or("armor not terminated")? + end_marker.len();
    let outside = format!("{}{}", &data_body[..begin], &data_body[end..]);
    if !outside.trim().is_empty() {
        return Err(format!("text around the armor: {outside:?}"));
    }
    Ok(data_body[begin..end].to_string() + "\n")
}

/// The first `multipart/signed` entity in `entity` (itself or nested in multiparts): the exact
/// signed bytes of its first part (RFC 3156 section 5: without the CRLF before the boundary)
/// and the body of its signature part.
pub fn multipart_signed(entity: &str) -> Option<(String, String)> {
    let (head, body) = split_entity(entity);
    let ct = header(head, "Content-Type")?;
    let media = media_type(&ct);
    if !media.starts_with("multipart/") {
        return None;
    }
    let boundary = param(&ct, "boundary")?;
    let parts = parts(body, &boundary);
    if media == "multipart/signed" {
        let (signed, signature) = (parts.first()?, parts.get(1)?);
        let (_, signature_body) = split_entity(signature);
        return Some((signed.to_string(), signature_body.to_string()));
    }
    parts.iter().find_map(|p| multipart_signed(p))
}

/// The parts of a multipart body (bytes between the delimiter lines, RFC 2046 §5.1.1: the
/// CRLF before a delimiter belongs to it).
pub fn multipart_parts(body: &[u8], boundary: &str) -> Vec<Vec<u8>> {
    let body = to_crlf(body);
    let delimiter = format!("--{boundary}");
    let mut parts = Vec::new();
    let mut start: Option<usize> = None;
    let mut i = 0;
    while i < body.len() {
        let at_line_start = i == 0 || body[i - 1] == b'\n';
        if at_line_start && body[i..].starts_with(delimiter.as_bytes()) {
            if let Some(s) = start {
                let end = i.saturating_sub(2).max(s);
                parts.push(body[s..end].to_vec());
            }
            let rest = &body[i + delimiter.len()..];
            if rest.starts_with(b"--") {
                break;
            }
            let eol = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .map(|p| p + 2)
                .unwrap_or(rest.len());
            i += delimiter.len() + eol;
            start = Some(i);
            continue;
        }
        i += 1;
    }
    parts
}

/// The `boundary` parameter of a Content-Type value.
pub fn boundary_of(content_type: &str) -> Option<String> {
    let lower = content_type.to_ascii_lowercase();
    let at = lower.find("boundary=")? + "boundary=".len();
    let rest = &content_type[at..];
    let value = if let Some(r) = rest.strip_prefix('"') {
        r.split('"').next()?
    } else {
        rest.split([';', ' ', '\t', '\n', '\r']).next()?
    };
    Some(value.to_string())
}
