//! A host of a PostgreSQL site for the tests of several MX hosts: its own keyrings, state and
//! policy directory, the shared database (tests/support/postgres.rs), the list keys'
//! passphrase and a host name of its own.

use super::milter::{self, Mail};
use super::postgres::{Postgres, PASSWORD};
use super::site::{Site, LIST};
use std::time::{Duration, Instant};

/// The list keys' passphrase every host is given (`passphrase_file`).
pub const LIST_PASSPHRASE: &str = "list key passphrase";

/// A host of a PostgreSQL site: its own keyrings, state and policy directory, the shared
/// database, the list keys' passphrase and a host name of its own.
pub fn host(pg: &Postgres, database: &str, name: &str) -> Site {
    let site = Site::new();
    let password = site.path("db-password");
    std::fs::write(&password, PASSWORD).unwrap();
    let passphrase = site.path("list-passphrase");
    std::fs::write(&passphrase, format!("{LIST_PASSPHRASE}\n")).unwrap();
    append_config(
        &site,
        &format!(
            "database_url = \"{}\"\ndatabase_password_file = \"{}\"\n\
             passphrase_file = \"{}\"\nhost_name = \"{name}\"\n",
            pg.url(database),
            password.display(),
            passphrase.display()
        ),
    );
    site
}

pub fn append_config(site: &Site, lines: &str) {
    let text = std::fs::read_to_string(&site.config).unwrap();
    std::fs::write(&site.config, format!("{text}{lines}")).unwrap();
}

/// Deploys `from`'s policy file of `LIST` to `to`, as configuration management would.
pub fn deploy_policy(from: &Site, to: &Site) {
    let name = format!("{LIST}.toml");
    std::fs::create_dir_all(to.path("lists.d")).unwrap();
    std::fs::copy(
        from.path("lists.d").join(&name),
        to.path("lists.d").join(&name),
    )
    .unwrap();
}

/// Sends `post` from `from` through `inbound` until it goes on; returns when the attempt
/// that passed was started, and whether it was the first.
pub async fn first_accepted(
    inbound: std::net::SocketAddr,
    from: &str,
    post: &Mail,
) -> (Instant, bool) {
    let until = Instant::now() + Duration::from_secs(20);
    let mut first = true;
    loop {
        let started = Instant::now();
        let (_, status) = milter::transact(inbound, from, LIST, post).await;
        if matches!(
            status,
            indymilter_test::Status::Continue | indymilter_test::Status::Accept
        ) {
            return (started, first);
        }
        first = false;
        assert!(
            Instant::now() < until,
            "never accepted: {}",
            milter::reply_text(&status)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
