//! The `[mailman_api]` table: where Mailman 3's REST API listens and how to log in to it
//! (`doctor` reads list settings and rosters there; the owners' pages reuse it).

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Mailman's `[webservice]` as listcrypt reaches it. Plain HTTP with basic auth, so only a
/// loopback address is accepted: the password must not cross a network.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MailmanApi {
    /// Base URL with the API version, `http://HOST:PORT/3.1`; HOST is a loopback address or
    /// `localhost` (Mailman's `[webservice] hostname` and `port`).
    pub url: String,
    /// Mailman's `[webservice] admin_user`.
    pub user: String,
    /// A file holding Mailman's `[webservice] admin_pass` (one line); empty = not configured.
    pub password_file: PathBuf,
}

impl Default for MailmanApi {
    fn default() -> Self {
        MailmanApi {
            url: "http://127.0.0.1:8001/3.1".into(),
            user: "restadmin".into(),
            password_file: PathBuf::new(),
        }
    }
}

/// `url` split into what an HTTP client needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiEndpoint {
    /// `HOST:PORT` to connect to (IPv6 hosts in brackets).
    pub authority: String,
    /// The path prefix, without a trailing slash (`/3.1`).
    pub base_path: String,
}

impl MailmanApi {
    /// Checks `url`: `http://`, a loopback host, a port, a path (the API version).
    pub fn endpoint(&self) -> Result<ApiEndpoint, String> {
        let rest = self.url.strip_prefix("http://").ok_or_else(|| {
            format!(
                "mailman_api.url: {:?} must start with http:// (Mailman's REST API on loopback)",
                self.url
            )
        })?;
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (host, port) = authority
            .rsplit_once(':')
            .filter(|(h, _)| !h.is_empty())
            .ok_or_else(|| format!("mailman_api.url: {:?} has no HOST:PORT", self.url))?;
        port.parse::<u16>()
            .map_err(|_| format!("mailman_api.url: {port:?} is not a port"))?;
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let loopback = bare == "localhost"
            || bare
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if !loopback {
            return Err(format!(
                "mailman_api.url: {host} is not a loopback address (basic auth over plain HTTP)"
            ));
        }
        Ok(ApiEndpoint {
            authority: authority.to_string(),
            base_path: format!("/{}", path.trim_end_matches('/')),
        })
    }

    /// The password from `password_file`, without its line end; `None` when not configured.
    pub fn password(&self) -> Option<std::io::Result<String>> {
        if self.password_file.as_os_str().is_empty() {
            return None;
        }
        Some(read_password(&self.password_file))
    }
}

fn read_password(path: &Path) -> std::io::Result<String> {
    let text = std::fs::read_to_string(path)?;
    Ok(text.lines().next().unwrap_or("").to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(url: &str) -> MailmanApi {
        MailmanApi {
            url: url.into(),
            ..MailmanApi::default()
        }
    }

    #[test]
    fn default_is_mailmans_own_webservice_default() {
        // schema.cfg of Mailman 3.3: [webservice] port 8001, api_version 3.1, admin_user restadmin.
        let e = MailmanApi::default().endpoint().unwrap();
        assert_eq!(e.authority, "127.0.0.1:8001");
        assert_eq!(e.base_path, "/3.1");
        assert_eq!(MailmanApi::default().user, "restadmin");
        assert!(MailmanApi::default().password().is_none());
    }

    #[test]
    fn url_must_be_plain_http_on_loopback() {
        assert_eq!(
            api("http://localhost:8001/3.1/")
                .endpoint()
                .unwrap()
                .base_path,
            "/3.1"
        );
        assert_eq!(
            api("http://[::1]:8001/3.1").endpoint().unwrap().authority,
            "[::1]:8001"
        );
        for bad in [
            "https://127.0.0.1:8001/3.1",
            "http://192.0.2.1:8001/3.1",
            "http://lists.example.org:8001/3.1",
            "http://127.0.0.1/3.1",
            "http://127.0.0.1:port/3.1",
        ] {
            assert!(api(bad).endpoint().is_err(), "{bad}");
        }
    }

    #[test]
    fn password_is_the_files_first_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pass");
        std::fs::write(&path, "s3cret\n").unwrap();
        let a = MailmanApi {
            password_file: path,
            ..MailmanApi::default()
        };
        assert_eq!(a.password().unwrap().unwrap(), "s3cret");
    }
}
