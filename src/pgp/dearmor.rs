//! A fast path for the ASCII armor every client writes around an encrypted post (RFC 9580
//! §6.2): `-----BEGIN PGP MESSAGE-----`, header lines, a blank line, base64 lines, an optional
//! `=XXXX` checksum line, `-----END PGP MESSAGE-----`.
//!
//! Sequoia's armor reader copies and zeroes its buffers and filters base64 a byte at a time;
//! on a 15 KiB post that was a fifth of inbound decryption. Armor that is exactly this shape
//! is decoded here in one pass; anything else (other kinds, missing blank line, stray
//! characters, text after the footer) returns `None` and goes to sequoia's reader as before,
//! so this path only ever accepts a subset of what sequoia reads, with the same bytes.
//!
//! As in sequoia (and RFC 9580 §6.1), the checksum is not checked: a wrong or missing one is
//! no reason to refuse, and the packets carry their own integrity protection.

use data_encoding::BASE64;

const BEGIN: &[u8] = b"-----BEGIN PGP MESSAGE-----";
const END: &[u8] = b"-----END PGP MESSAGE-----";

/// The binary OpenPGP message inside well-formed `PGP MESSAGE` armor that starts with a session
/// key packet, or `None` for anything else (the caller then hands the text to sequoia's armor
/// reader).
///
/// Sequoia looks at the first packet header of what it is given and tries ASCII armor again
/// when that header is not valid; on armored input it decodes once. So only bytes whose first
/// header sequoia takes as valid go this way (a PKESK or SKESK with a definite length in
/// sequoia's bounds, what every client writes first): armor inside armor is never decoded
/// twice.
pub fn message(text: &[u8]) -> Option<Vec<u8>> {
    decode(text).filter(|binary| starts_with_session_key_packet(binary))
}

/// A PKESK (tag 1) or SKESK (tag 3) header, old or new format, with a definite length that
/// sequoia's `Header::valid` accepts for that tag.
fn starts_with_session_key_packet(binary: &[u8]) -> bool {
    let Some((&ctb, rest)) = binary.split_first() else {
        return false;
    };
    if ctb & 0x80 == 0 {
        return false;
    }
    let (tag, length) = if ctb & 0x40 != 0 {
        // New format (RFC 9580 §4.2.1): one, two or five octets; partial lengths are for data
        // packets only.
        let length = match rest {
            [o, ..] if *o < 192 => Some(usize::from(*o)),
            [o, p, ..] if *o < 224 => Some(((usize::from(*o) - 192) << 8) + usize::from(*p) + 192),
            [255, a, b, c, d, ..] => Some(u32::from_be_bytes([*a, *b, *c, *d]) as usize),
            _ => None,
        };
        (ctb & 0x3f, length)
    } else {
        // Old format (§4.2.2): one, two or four octets; 3 is indeterminate.
        let length = match (ctb & 3, rest) {
            (0, [a, ..]) => Some(usize::from(*a)),
            (1, [a, b, ..]) => Some(usize::from(u16::from_be_bytes([*a, *b]))),
            (2, [a, b, c, d, ..]) => Some(u32::from_be_bytes([*a, *b, *c, *d]) as usize),
            _ => None,
        };
        ((ctb >> 2) & 0x0f, length)
    };
    match (tag, length) {
        (1, Some(l)) => (5..10 * 1024).contains(&l),
        (3, Some(l)) => (3..10 * 1024).contains(&l),
        _ => false,
    }
}

/// The bytes inside well-formed `PGP MESSAGE` armor, whatever they are.
fn decode(text: &[u8]) -> Option<Vec<u8>> {
    let mut lines = Lines::new(text.trim_ascii_start());
    if lines.next()? != BEGIN {
        return None;
    }
    // Header lines ("Key: Value") up to the blank line.
    loop {
        let line = lines.next()?;
        if line.is_empty() {
            break;
        }
        if !is_header(line) {
            return None;
        }
    }
    // Decoded a line at a time: no copy of the base64 text is held beside the message.
    let mut binary = Vec::with_capacity(text.len() / 4 * 3);
    let mut ended = false;
    loop {
        let line = lines.next()?;
        if line == END {
            break;
        }
        if ended {
            // Only the checksum line may follow the last (padded or short) data line.
            if !is_checksum(line) || lines.next()? != END {
                return None;
            }
            break;
        }
        if is_checksum(line) {
            if lines.next()? != END {
                return None;
            }
            break;
        }
        if line.is_empty() {
            return None;
        }
        // Characters outside base64, padding inside a line and an incomplete last quantum
        // fail the decoding.
        let at = binary.len();
        binary.resize(at + BASE64.decode_len(line.len()).ok()?, 0);
        let n = BASE64.decode_mut(line, &mut binary[at..]).ok()?;
        binary.truncate(at + n);
        // Padding, or a data line not a multiple of 4 long, ends the data: only the checksum
        // line or the footer may follow.
        ended = line.ends_with(b"=") || line.len() % 4 != 0;
    }
    if !lines.rest().iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    Some(binary)
}

/// `Key: Value`: a printable key without spaces, then a colon and a space.
fn is_header(line: &[u8]) -> bool {
    match memchr::memmem::find(line, b": ") {
        Some(0) | None => false,
        Some(colon) => line[..colon]
            .iter()
            .all(|&b| b.is_ascii_graphic() && b != b':'),
    }
}

/// `=` and four base64 characters: the CRC-24 line.
fn is_checksum(line: &[u8]) -> bool {
    line.len() == 5 && line[0] == b'=' && line[1..].iter().all(|&b| is_base64(b))
}

fn is_base64(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'+' || b == b'/'
}

/// Lines split at LF, each without its CR and trailing blanks (which armor writers and mail
/// transports add).
struct Lines<'a> {
    rest: &'a [u8],
}

impl<'a> Lines<'a> {
    fn new(text: &'a [u8]) -> Self {
        Lines { rest: text }
    }

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.rest.is_empty() {
            return None;
        }
        let (line, rest) = match memchr::memchr(b'\n', self.rest) {
            Some(i) => (&self.rest[..i], &self.rest[i + 1..]),
            None => (self.rest, &self.rest[self.rest.len()..]),
        };
        self.rest = rest;
        let trimmed = line.len()
            - line
                .iter()
                .rev()
                .take_while(|&&b| matches!(b, b'\r' | b' ' | b'\t'))
                .count();
        Some(&line[..trimmed])
    }

    fn rest(&self) -> &'a [u8] {
        self.rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sequoia_openpgp::armor::{Kind, Reader, ReaderMode, Writer};
    use std::io::{Read, Write};

    fn sequoia_armor(data: &[u8], headers: &[(&str, &str)]) -> Vec<u8> {
        let mut w = Writer::with_headers(Vec::new(), Kind::Message, headers.to_vec()).unwrap();
        w.write_all(data).unwrap();
        w.finalize().unwrap()
    }

    fn sequoia_dearmor(text: &[u8]) -> Option<Vec<u8>> {
        let mut r = Reader::from_bytes(text, ReaderMode::Tolerant(Some(Kind::Message)));
        let mut out = Vec::new();
        r.read_to_end(&mut out).ok()?;
        Some(out)
    }

    fn bytes(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn reads_what_sequoia_writes_at_every_length() {
        // Every padding case and line-length remainder, with and without header lines.
        // (Sequoia writes no armor at all for no data.)
        for n in (1..200).chain([1000, 4095, 4096, 4097, 65_536]) {
            let data = bytes(n, n as u8);
            for headers in [&[][..], &[("Comment", "made by a test")][..]] {
                let text = sequoia_armor(&data, headers);
                assert_eq!(decode(&text).as_deref(), Some(&data[..]), "length {n}");
            }
        }
    }

    /// What gpg writes: a Version-less block with LF line ends, a checksum line.
    const GPG_STYLE: &[u8] = b"-----BEGIN PGP MESSAGE-----\n\
        \n\
        aGVsbG8sIHdvcmxkIQ==\n\
        =OM1d\n\
        -----END PGP MESSAGE-----\n";

    #[test]
    fn the_checksum_is_skipped_not_checked_as_in_sequoia() {
        let plain = b"hello, world!".to_vec();
        assert_eq!(decode(GPG_STYLE), Some(plain.clone()));
        // A wrong checksum: sequoia reads the same bytes (RFC 9580 §6.1: never a reason to
        // refuse), and so do we.
        let wrong = String::from_utf8_lossy(GPG_STYLE).replace("=OM1d", "=AAAA");
        assert_eq!(sequoia_dearmor(wrong.as_bytes()), Some(plain.clone()));
        assert_eq!(decode(wrong.as_bytes()), Some(plain));
    }

    #[test]
    fn crlf_trailing_blanks_and_surrounding_whitespace_are_read() {
        let text = String::from_utf8_lossy(GPG_STYLE)
            .replace('\n', " \t\r\n")
            .replace("-----BEGIN", "\r\n  \n-----BEGIN");
        let text = format!("{text}\r\n\r\n");
        assert_eq!(decode(text.as_bytes()), Some(b"hello, world!".to_vec()));
        assert_eq!(
            sequoia_dearmor(text.as_bytes()),
            Some(b"hello, world!".to_vec())
        );
    }

    #[test]
    fn anything_unusual_goes_to_sequoia() {
        let s = String::from_utf8_lossy(GPG_STYLE).into_owned();
        let unusual = [
            // Another kind of armor.
            s.replace("PGP MESSAGE", "PGP SIGNATURE"),
            // No blank line after the armor header line.
            s.replace("-----\n\n", "-----\n"),
            // A header line without ": ".
            s.replace("-----\n\n", "-----\nVersion:x\n\n"),
            // A character outside base64 in the data.
            s.replace("aGVsbG8s", "aGVs*G8s"),
            // Text after the footer.
            format!("{s}trailing text\n"),
            // Text before the header line.
            format!("preamble\n{s}"),
            // No footer.
            s.replace("-----END PGP MESSAGE-----\n", ""),
            // Data after padding.
            s.replace("IQ==\n", "IQ==\naGVs\n"),
            // Truncated quantum.
            s.replace("IQ==", "IQ="),
            // Two checksum lines.
            s.replace("=OM1d\n", "=OM1d\n=OM1d\n"),
            // Nothing at all.
            String::new(),
        ];
        for text in &unusual {
            assert_eq!(decode(text.as_bytes()), None, "{text:?}");
        }
        // A binary message is not armor either.
        assert_eq!(decode(&[0xc1, 0x5e, 0x03]), None);
    }

    #[test]
    fn agrees_with_sequoia_wherever_it_reads_the_armor() {
        // Mutations of well-formed armor: wherever the fast path gives bytes, sequoia's
        // reader gives the same bytes.
        let base = sequoia_armor(&bytes(300, 7), &[("Comment", "x")]);
        let mut agreed = 0;
        for i in 0..base.len() {
            for b in [b'\n', b' ', b'=', b'A', b'-', b'\r', b':'] {
                let mut text = base.clone();
                text[i] = b;
                if let Some(fast) = decode(&text) {
                    assert_eq!(sequoia_dearmor(&text), Some(fast), "byte {i} set to {b}");
                    agreed += 1;
                }
            }
        }
        assert!(
            agreed > 100,
            "only {agreed} mutations were read by the fast path"
        );
    }

    /// An encrypted message as clients write it (PKESK or SKESK first) takes the fast path,
    /// with the bytes sequoia's reader gives; armor inside armor, and anything whose first
    /// header sequoia would not take as valid, go to sequoia's reader.
    #[test]
    fn only_bytes_sequoia_reads_as_binary_take_the_fast_path() {
        use sequoia_openpgp::cert::prelude::*;
        use sequoia_openpgp::policy::StandardPolicy;
        use sequoia_openpgp::serialize::stream::{Encryptor, LiteralWriter, Message};
        let (cert, _) = CertBuilder::general_purpose(Some("m <m@example.net>"))
            .generate()
            .unwrap();
        let p = StandardPolicy::new();
        let encrypt = |password: bool| -> Vec<u8> {
            let mut binary = Vec::new();
            let m = Message::new(&mut binary);
            let m = if password {
                Encryptor::with_passwords(m, Some("pw")).build().unwrap()
            } else {
                let recipients = cert.keys().with_policy(&p, None).for_transport_encryption();
                Encryptor::for_recipients(m, recipients).build().unwrap()
            };
            let mut w = LiteralWriter::new(m).build().unwrap();
            w.write_all(b"hello").unwrap();
            w.finalize().unwrap();
            binary
        };
        for binary in [encrypt(false), encrypt(true)] {
            let text = sequoia_armor(&binary, &[]);
            assert_eq!(message(&text), Some(binary.clone()));
            assert_eq!(sequoia_dearmor(&text), Some(binary.clone()));
            // Armored twice: decoded once here is armor again, which sequoia would decode a
            // second time; sequoia's reader takes it, as before.
            let twice = sequoia_armor(&text, &[]);
            assert_eq!(decode(&twice), Some(text.clone()));
            assert_eq!(message(&twice), None);
        }
        // First headers: PKESK and SKESK with definite lengths in sequoia's bounds only.
        let cases: &[(&[u8], bool)] = &[
            (&[0x85, 0x01, 0x0c], true), // old format, tag 1, two-octet length 268
            (&[0x84, 0x5e], true),       // old format, one-octet length 94
            (&[0x8c, 0x0d], true),       // old format, tag 3 (SKESK)
            (&[0xc1, 0x5e], true),       // new format, tag 1, one octet
            (&[0xc1, 0xc0, 0x00], true), // new format, two octets: 192
            (&[0xc1, 0xff, 0, 0, 0x27, 0xff], true), // five octets: 10239
            (&[0xc1, 0xff, 0, 0, 0x28, 0x00], false), // 10240: over sequoia's bound
            (&[0xc1, 0x04], false),      // shorter than any PKESK
            (&[0x87], false),            // old format, indeterminate length
            (&[0xc1, 0xe0], false),      // new format, partial length
            (&[0xc1], false),            // no length at all
            (&[0x85, 0x01], false),      // truncated length
            (&[0xd2, 0x5e], false),      // SEIPD first
            (&[0x90, 0x0d], false),      // one-pass signature first
            (&[0x2d, 0x2d], false),      // text
        ];
        for (bytes, fast) in cases {
            assert_eq!(starts_with_session_key_packet(bytes), *fast, "{bytes:02x?}");
        }
    }
}
