//! Fetching a member's certificate over the network for the background refresh: the
//! member's WKD (draft-koch-openpgp-webkey-service §3.1, advanced then direct method) and a
//! VKS keyserver (`/vks/v1/by-fingerprint/`). HTTP/1.1 on hyper, TLS from native-tls.

use crate::config::KeyRefresh;
use crate::wkd::Layout;
use bytes::Bytes;
use hyper_util::rt::TokioIo;
use std::time::Duration;

/// A certificate larger than this is refused unread (WKD keys are a few KiB; flooded
/// keyserver copies are what this guards against).
pub const MAX_CERT_BYTES: usize = 256 * 1024;
/// Per request: connect, TLS, answer and body.
pub const TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{0}: bad URL")]
    Url(String),
    #[error("{url}: {why}")]
    Transport { url: String, why: String },
    #[error("{url}: HTTP status {status}")]
    Status { url: String, status: u16 },
}

/// An `http://` or `https://` URL split for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path and query, `/` at least.
    pub path: String,
}

impl Url {
    pub fn parse(url: &str) -> Result<Url, String> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(format!("{url:?} is not an http:// or https:// URL"));
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], rest[i..].to_string()),
            None => (rest, "/".to_string()),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => match p.parse() {
                Ok(port) => (h, port),
                Err(_) => return Err(format!("{url:?} has a bad port")),
            },
            _ => (authority, if tls { 443 } else { 80 }),
        };
        if host.is_empty() || host.contains(['@', ' ']) {
            return Err(format!("{url:?} has no host"));
        }
        Ok(Url {
            tls,
            host: host.to_string(),
            port,
            path,
        })
    }

    fn authority(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// The URLs to try for `address`'s key, in order: WKD's advanced then direct method, or the
/// test base URL's direct method alone.
pub fn wkd_urls(address: &str, config: &KeyRefresh) -> Vec<String> {
    let Some((local, domain)) = address.rsplit_once('@') else {
        return Vec::new();
    };
    let domain = domain.to_ascii_lowercase();
    if !config.wkd_base_url.is_empty() {
        let base = config.wkd_base_url.trim_end_matches('/');
        let path = Layout::Direct.key_path(local, &domain);
        return vec![format!("{base}{path}?l={}", query_escape(local))];
    }
    [Layout::Advanced, Layout::Direct]
        .iter()
        .filter_map(|l| l.url(address))
        .collect()
}

/// VKS's lookup by fingerprint (upper-case hex, as keys.openpgp.org documents it).
pub fn vks_url(fingerprint: &str, config: &KeyRefresh) -> String {
    format!(
        "{}/vks/v1/by-fingerprint/{}",
        config.vks_url.trim_end_matches('/'),
        fingerprint.to_ascii_uppercase()
    )
}

fn query_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `GET url`: the body on 200, `None` on 404 (no key published there), an error otherwise.
pub async fn get(url: &str) -> Result<Option<Vec<u8>>, FetchError> {
    let parsed = Url::parse(url).map_err(|_| FetchError::Url(url.to_string()))?;
    let fail = |why: String| FetchError::Transport {
        url: url.to_string(),
        why,
    };
    let (status, body) = tokio::time::timeout(TIMEOUT, exchange(&parsed))
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {}s", TIMEOUT.as_secs())))
        .map_err(fail)?;
    match status {
        200 => Ok(Some(body.to_vec())),
        404 => Ok(None),
        status => Err(FetchError::Status {
            url: url.to_string(),
            status,
        }),
    }
}

async fn exchange(url: &Url) -> Result<(u16, Bytes), String> {
    let stream = tokio::net::TcpStream::connect(url.authority())
        .await
        .map_err(|e| format!("connect: {e}"))?;
    if url.tls {
        let connector = native_tls::TlsConnector::new().map_err(|e| e.to_string())?;
        let connector = tokio_native_tls::TlsConnector::from(connector);
        let stream = connector
            .connect(&url.host, stream)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        request(TokioIo::new(stream), url).await
    } else {
        request(TokioIo::new(stream), url).await
    }
}

async fn request<T>(io: TokioIo<T>, url: &Url) -> Result<(u16, Bytes), String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let host = match (url.tls, url.port) {
        (true, 443) | (false, 80) => url.host.clone(),
        _ => url.authority(),
    };
    crate::http_client::get(io, &host, &url.path, &[], MAX_CERT_BYTES).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_and_wkd_urls_follow_the_draft() {
        let u = Url::parse("https://keys.openpgp.org").unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port, u.path.as_str()),
            (true, "keys.openpgp.org", 443, "/")
        );
        let u = Url::parse("http://127.0.0.1:8080/x?l=a").unwrap();
        assert_eq!((u.tls, u.port, u.path.as_str()), (false, 8080, "/x?l=a"));
        assert!(Url::parse("ftp://x").is_err());
        assert!(Url::parse("http://:80/").is_err());
        // The draft's example: Joe.Doe@Example.ORG hashes to iy9q119eutrkn8s1mk4r39qejnbu3n5q.
        let urls = wkd_urls("Joe.Doe@Example.ORG", &KeyRefresh::default());
        assert_eq!(
            urls,
            [
                "https://openpgpkey.example.org/.well-known/openpgpkey/example.org/hu/\
                 iy9q119eutrkn8s1mk4r39qejnbu3n5q?l=Joe.Doe",
                "https://example.org/.well-known/openpgpkey/hu/\
                 iy9q119eutrkn8s1mk4r39qejnbu3n5q?l=Joe.Doe",
            ]
        );
        let test = KeyRefresh {
            wkd_base_url: "http://127.0.0.1:9/".into(),
            ..KeyRefresh::default()
        };
        assert_eq!(
            wkd_urls("Joe.Doe@Example.ORG", &test),
            ["http://127.0.0.1:9/.well-known/openpgpkey/hu/iy9q119eutrkn8s1mk4r39qejnbu3n5q?l=Joe.Doe"]
        );
    }
}
