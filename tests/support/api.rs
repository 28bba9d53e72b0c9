//! The admin API of a `listcrypt serve` child: a site with `api_listen` on a free loopback
//! port, tokens made with the real CLI, and a minimal HTTP/1.1 client (one request per
//! connection) that shows exactly what the server sent.

use super::process::run_ok;
use super::site::{Serving, Site};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// One answer: status, lower-case header names, body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {self:?}"))
    }

    /// Asserts an RFC 9457 problem document with `status`.
    pub fn assert_problem(&self, status: u16) -> serde_json::Value {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "{self:?}"
        );
        let doc = self.json();
        assert_eq!(doc["status"], status, "{self:?}");
        assert!(
            doc["title"].is_string() && doc["detail"].is_string(),
            "{self:?}"
        );
        doc
    }
}

/// Sets `api_listen` and info logging (for the line that names the bound port).
pub fn enable(site: &Site) {
    let text = std::fs::read_to_string(&site.config).unwrap();
    let text = text.replace("log_level = \"warn\"", "log_level = \"info\"");
    std::fs::write(
        &site.config,
        format!("{text}api_listen = \"127.0.0.1:0\"\n"),
    )
    .unwrap();
}

/// Starts `serve` and returns it with the API's address.
pub fn serve(site: &Site) -> (Serving, SocketAddr) {
    let mut serving = site.serve();
    let line = serving.wait_for_line("admin API over HTTP on ");
    let addr = line
        .split("admin API over HTTP on ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|a| a.trim().parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    (serving, addr)
}

/// `listcrypt token create ARGS…`: the token it printed.
pub fn token(site: &Site, args: &[&str]) -> String {
    let out = run_ok(site.cli().args(["token", "create"]).args(args), None);
    String::from_utf8(out).unwrap().trim().to_string()
}

/// Sends one request; `body` goes with `content_type`.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<(&str, &[u8])>,
) -> Answer {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(t) = token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let (ct, bytes) = body.unwrap_or(("", b""));
    if body.is_some() {
        head.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", bytes.len()));
    s.write_all(head.as_bytes()).unwrap();
    // The server may answer (413) and close before reading a large body.
    let _ = s.write_all(bytes);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    parse(&raw)
}

pub fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> Answer {
    request(addr, "GET", path, token, None)
}

pub fn send_json(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    json: &serde_json::Value,
) -> Answer {
    let body = json.to_string();
    request(
        addr,
        method,
        path,
        token,
        Some(("application/json", body.as_bytes())),
    )
}

fn parse(raw: &[u8]) -> Answer {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no complete head in {text:?}"));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        unchunk(body)
    } else {
        body.to_string()
    };
    Answer {
        status,
        headers,
        body,
    }
}

fn unchunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&after[..n.min(after.len())]);
        rest = after.get(n + 2..).unwrap_or("");
    }
    out
}
