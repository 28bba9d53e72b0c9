//! PGP/MIME parsing (raw byte ranges kept) and building. No recursion: nesting is walked with an
//! explicit stack so hostile depth cannot exhaust ours.

mod build;
mod parse;

pub use build::{multipart_encrypted, new_boundary};
pub use parse::{
    classify, content_type, header_text, split_multipart, to_crlf, walk_entity, Entity, Header,
    MimeError, Shape,
};
