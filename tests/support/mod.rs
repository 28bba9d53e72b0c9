//! Helpers for the integration tests, one file per concern: a throwaway listcrypt site driven
//! through the real CLI and the in-process daemon (`site`, `milter`), GnuPG and other OpenPGP
//! clients (`gpg`, `clients`), and for the end-to-end tests throwaway Postfix and Mailman 3
//! instances, an SMTP sink, client and proxy, and the listcrypt daemon as a child process, all
//! on 127.0.0.1 under one tempdir.
//!
//! Every process a helper starts is stopped by its PID when the helper is dropped, so a failing
//! assertion still leaves nothing running.
#![allow(dead_code)] // each test file uses a different subset

pub mod api;
pub mod browser;
pub mod clients;
pub mod corpus;
pub mod debootstrap;
pub mod environment;
pub mod faults;
pub mod files;
pub mod gpg;
pub mod listcrypt;
pub mod mailman;
pub mod milter;
pub mod mime;
pub mod net;
pub mod pg_site;
pub mod postfix;
pub mod postgres;
pub mod process;
pub mod proxy;
pub mod sendmail;
pub mod sink;
pub mod site;
pub mod smtp;
pub mod text;
pub mod world;
