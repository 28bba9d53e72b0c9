//! PGP/MIME parsing (raw byte ranges kept) and building. No recursion: nesting is walked with an
//! explicit stack so hostile depth cannot exhaust ours.

mod build;
mod parse;

pub use build::{multipart_encrypted, new_boundary};
pub use parse::{
    classify, content_type, header_crlf, header_text, header_value_ok, split_multipart, to_crlf,
    walk_entity, Entity, Header, MimeError, Shape,
};

/// Where `needle` first occurs in `hay` (memchr's two-way search: linear in the input, where
/// comparing at every offset costs the needle's length per byte).
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(hay, needle)
}

/// Whether `needle` occurs in `hay`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    find(hay, needle).is_some()
}

/// MIME header fields that belong to the body (RFC 2045, 2183, 3282, 2557, 1864): they move
/// with the entity when it is wrapped into or taken out of encryption.
pub const CONTENT_HEADERS: &[&str] = &[
    "Content-Type",
    "Content-Transfer-Encoding",
    "Content-Disposition",
    "Content-Description",
    "Content-ID",
    "Content-Language",
    "Content-Location",
    "Content-MD5",
];

/// User-facing header fields that header protection (RFC 9788, and the older
/// `protected-headers="v1"`) carries inside the encryption.
pub const PROTECTED: &[&str] = &[
    "Subject",
    "From",
    "To",
    "Cc",
    "Reply-To",
    "Date",
    "Message-ID",
    "In-Reply-To",
    "References",
    "Followup-To",
];
