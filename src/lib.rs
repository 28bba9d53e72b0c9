//! listcrypt: OpenPGP-encrypted mailing lists as a milter on both sides of Mailman 3.
//!
//! The transactions (`inbound::Transaction`, `outbound::Transaction`, `key_address`) take
//! envelopes and bytes and return decisions; the milter adapter, the `process` CLI verb and the
//! tests all drive the same types. Dependencies point one way:
//! main -> server (bind, run) -> milter -> state -> {config, keys, store}; http -> state.

// clippy.toml sets the threshold at 80 lines; a longer function says why beside it.
#![deny(clippy::too_many_lines)]

pub mod address;
pub mod admin;
pub mod api;
pub mod archive;
pub mod atomic_file;
pub mod bounce;
pub mod config;
pub mod crypto_pool;
pub mod deadline;
pub mod dsn;
pub mod http;
pub mod http_client;
pub mod inbound;
pub mod key_address;
pub mod keys;
pub mod logging;
pub mod mailman_rest;
pub mod message;
pub mod metrics;
pub mod milter;
pub mod mime;
pub mod notices;
pub mod outbound;
pub mod pgp;
pub mod refresh;
pub mod refusal;
pub mod reinject;
pub mod server;
pub mod state;
pub mod store;
pub mod web;
pub mod wkd;

pub use server::{bind, run, AnyListener};
pub use state::Daemon;
