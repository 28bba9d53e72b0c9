//! Milter socket addresses in Postfix syntax (`unix:PATH`, `inet:HOST:PORT`) and libmilter
//! syntax (`local:PATH`, `inet:PORT@HOST`), as Sendmail writes them.

use std::fmt;
use std::path::PathBuf;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SocketSpec {
    Unix(PathBuf),
    Inet(String, u16),
}

impl SocketSpec {
    pub fn parse(s: &str) -> Result<SocketSpec, String> {
        if let Some(path) = s.strip_prefix("unix:").or_else(|| s.strip_prefix("local:")) {
            if path.is_empty() {
                return Err(format!("{s:?}: empty socket path"));
            }
            return Ok(SocketSpec::Unix(path.into()));
        }
        let rest = s
            .strip_prefix("inet:")
            .or_else(|| s.strip_prefix("inet6:"))
            .ok_or_else(|| {
                format!("{s:?}: expected unix:PATH, local:PATH, inet:HOST:PORT or inet:PORT@HOST")
            })?;
        let (host, port) = if let Some((port, host)) = rest.split_once('@') {
            (host.to_string(), port)
        } else {
            let (host, port) = rest
                .rsplit_once(':')
                .ok_or_else(|| format!("{s:?}: expected inet:HOST:PORT or inet:PORT@HOST"))?;
            (
                host.trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string(),
                port,
            )
        };
        let port = port
            .parse::<u16>()
            .map_err(|_| format!("{s:?}: bad port {port:?}"))?;
        if host.is_empty() {
            return Err(format!("{s:?}: empty host"));
        }
        Ok(SocketSpec::Inet(host, port))
    }
}

impl fmt::Display for SocketSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SocketSpec::Unix(p) => write!(f, "unix:{}", p.display()),
            SocketSpec::Inet(h, p) if h.contains(':') => write!(f, "inet:[{h}]:{p}"),
            SocketSpec::Inet(h, p) => write!(f, "inet:{h}:{p}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_syntaxes() {
        assert_eq!(
            SocketSpec::parse("unix:/a/b.sock").unwrap(),
            SocketSpec::Unix("/a/b.sock".into())
        );
        assert_eq!(
            SocketSpec::parse("local:/a/b.sock").unwrap(),
            SocketSpec::Unix("/a/b.sock".into())
        );
        assert_eq!(
            SocketSpec::parse("inet:127.0.0.1:8891").unwrap(),
            SocketSpec::Inet("127.0.0.1".into(), 8891)
        );
        assert_eq!(
            SocketSpec::parse("inet:8891@localhost").unwrap(),
            SocketSpec::Inet("localhost".into(), 8891)
        );
        assert_eq!(
            SocketSpec::parse("inet6:[::1]:8891").unwrap(),
            SocketSpec::Inet("::1".into(), 8891)
        );
        assert!(SocketSpec::parse("tcp:1").is_err());
        assert!(SocketSpec::parse("inet:host:x").is_err());
        assert!(SocketSpec::parse("unix:").is_err());
    }
}
