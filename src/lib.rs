//! listcrypt: OpenPGP-encrypted mailing lists as a milter on both sides of Mailman 3.
//!
//! The pipelines (`inbound`, `outbound`) take bytes and return decisions; the milter adapter,
//! the `process` CLI verb and the tests all drive the same functions.

pub mod admin;
pub mod config;
pub mod daemon;
pub mod dsn;
pub mod http;
pub mod inbound;
pub mod key_address;
pub mod keys;
pub mod logging;
pub mod message;
pub mod milter;
pub mod mime;
pub mod outbound;
pub mod pgp;
pub mod reinject;
pub mod store;
pub mod wkd;

pub use daemon::{bind, run, Daemon};
