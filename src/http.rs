//! A minimal HTTP/1.1 server for the Web Key Directory, meant for loopback behind a TLS
//! front-end (WKD clients speak only HTTPS): GET and HEAD of every list's WKD paths in both
//! layouts, 404 for anything else. One request per connection, bounded in size and time.

use crate::state::Daemon;
use crate::wkd::{self, Resource};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

/// Request line and headers together; WKD requests are a few hundred bytes.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// Everything one connection may take, from accept to the last byte of the answer.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more wait in the listen queue.
pub const MAX_CONNECTIONS: usize = 256;

/// How long a stop waits for connections in progress before dropping them.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// The running HTTP listener of `serve`, with its stop switch.
pub struct Server {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Server {
    /// Binds `listen` (`IP:PORT`; port 0 picks one) and serves the lists of `daemon`'s current
    /// keyring snapshot.
    pub async fn start(listen: &str, daemon: Arc<Daemon>) -> io::Result<Server> {
        let addr: SocketAddr = listen
            .parse()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{listen}: {e}")))?;
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        if !addr.ip().is_loopback() {
            tracing::warn!(
                "WKD over plain HTTP on {addr}, not loopback: serve it through TLS only"
            );
        }
        tracing::info!("WKD over HTTP on {addr}, for a TLS front-end");
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, daemon, stopped));
        Ok(Server { addr, stop, task })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and waits briefly for the connections in progress.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn accept_loop(listener: TcpListener, daemon: Arc<Daemon>, mut stop: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    loop {
        let permit = tokio::select! {
            _ = stopped(&mut stop) => break,
            p = slots.clone().acquire_owned() => p.expect("the semaphore is never closed"),
        };
        let (stream, peer) = tokio::select! {
            _ = stopped(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!("http: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let daemon = daemon.clone();
        connections.spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(CONNECTION_TIMEOUT, exchange(stream, peer, daemon)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!("http: {peer}: {e}"),
                Err(_) => tracing::debug!("http: {peer}: timed out"),
            }
        });
        while connections.try_join_next().is_some() {}
    }
    // Requests in progress get a moment to finish; slow or idle peers do not hold up a stop.
    let drain = async { while connections.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(STOP_GRACE, drain).await;
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`: drop it here.
    let _ = stop.wait_for(|s| *s).await.is_ok();
}

/// Reads one request, answers it and closes the connection.
async fn exchange(mut stream: TcpStream, peer: SocketAddr, daemon: Arc<Daemon>) -> io::Result<()> {
    let Some(head) = read_head(&mut stream).await? else {
        return Ok(());
    };
    let (response, head_only) = match head {
        Head::TooLarge => (
            Response::error(431, "Request Header Fields Too Large"),
            false,
        ),
        Head::Complete(bytes) => match parse(&bytes) {
            Err(r) => (r, false),
            Ok(request) => {
                let head_only = request.method == Method::Head;
                let response = match wkd::resolve(&request.path, request.host.as_deref()) {
                    None => Response::error(404, "Not Found"),
                    Some(resource) => {
                        tokio::task::spawn_blocking(move || lookup(&daemon, &resource))
                            .await
                            .unwrap_or_else(|_| Response::error(500, "Internal Server Error"))
                    }
                };
                tracing::debug!(
                    "http: {peer}: {:?} {} (host {:?}): {}",
                    request.method,
                    request.path,
                    request.host,
                    response.status
                );
                (response, head_only)
            }
        },
    };
    stream
        .write_all(&response.to_bytes(head_only, now()))
        .await?;
    stream.shutdown().await
}

enum Head {
    Complete(Vec<u8>),
    TooLarge,
}

/// The request line and headers, up to the empty line; `None` if the peer closed first.
async fn read_head(stream: &mut TcpStream) -> io::Result<Option<Head>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        let from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = find_end(&buf[from..]) {
            buf.truncate(from + end);
            return Ok(Some(Head::Complete(buf)));
        }
        if buf.len() > MAX_REQUEST_BYTES {
            return Ok(Some(Head::TooLarge));
        }
    }
}

/// Offset just past the blank line ending the head (CRLF CRLF, or bare LF LF).
fn find_end(buf: &[u8]) -> Option<usize> {
    (0..buf.len()).find_map(|i| {
        if buf[i..].starts_with(b"\r\n\r\n") {
            Some(i + 4)
        } else if buf[i..].starts_with(b"\n\n") {
            Some(i + 2)
        } else {
            None
        }
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    Get,
    Head,
}

#[derive(Debug, PartialEq, Eq)]
struct Request {
    method: Method,
    /// The path without query (`?l=…` is not needed: the hash names the key).
    path: String,
    /// `Host` without port, if sent.
    host: Option<String>,
}

/// Parses a request head (RFC 9112 §3, origin-form targets only).
fn parse(head: &[u8]) -> Result<Request, Response> {
    let bad = || Response::error(400, "Bad Request");
    let text = std::str::from_utf8(head).map_err(|_| bad())?;
    let mut lines = text.lines().map(|l| l.trim_end_matches('\r'));
    let mut parts = lines.next().ok_or_else(bad)?.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(bad());
    }
    let method = match method {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        _ => return Err(Response::error(405, "Method Not Allowed")),
    };
    if !target.starts_with('/') {
        return Err(bad());
    }
    let path = target
        .split(['?', '#'])
        .next()
        .unwrap_or_default()
        .to_string();
    let mut host = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            if line.is_empty() {
                break;
            }
            return Err(bad());
        };
        if name.eq_ignore_ascii_case("host") {
            if host.is_some() {
                return Err(bad());
            }
            let value = value.trim();
            // RFC 9110 §7.2: host [ ":" port ]; WKD hosts are DNS names, never IP literals.
            let name = value.split(':').next().unwrap_or_default();
            host = Some(name.to_ascii_lowercase());
        }
    }
    Ok(Request { method, path, host })
}

/// Answers a resolved WKD request from the current keyring (the daemon rebuilds it when the
/// store changes or on SIGHUP).
fn lookup(daemon: &Daemon, resource: &Resource) -> Response {
    let keyring = match daemon.keyring() {
        Ok(k) => k,
        Err(e) => {
            tracing::warn!("http: keyring unavailable: {e}");
            return Response::error(503, "Service Unavailable");
        }
    };
    let Some(list) = wkd::find(keyring.lists.keys().map(String::as_str), resource) else {
        return Response::error(404, "Not Found");
    };
    match resource {
        Resource::Policy { .. } => Response::ok("text/plain", wkd::POLICY.to_vec()),
        Resource::Key { .. } => match wkd::public_key(&keyring.lists[list].secret, list) {
            Ok(key) => Response::ok("application/octet-stream", key),
            Err(e) => {
                tracing::warn!("http: {list}: {e}");
                Response::error(500, "Internal Server Error")
            }
        },
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Response {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    body: Vec<u8>,
}

impl Response {
    fn ok(content_type: &'static str, body: Vec<u8>) -> Response {
        Response {
            status: 200,
            reason: "OK",
            content_type,
            body,
        }
    }

    fn error(status: u16, reason: &'static str) -> Response {
        Response {
            status,
            reason,
            content_type: "text/plain; charset=utf-8",
            body: format!("{status} {reason}\n").into_bytes(),
        }
    }

    /// The bytes on the wire; for HEAD the headers of the GET answer without its body.
    fn to_bytes(&self, head_only: bool, now: u64) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nDate: {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
            self.status,
            self.reason,
            http_date(now),
            self.content_type,
            self.body.len()
        );
        if self.status == 405 {
            out.push_str("Allow: GET, HEAD\r\n");
        }
        // Draft §3.1: web-based clients fetch keys across origins.
        out.push_str("Access-Control-Allow-Origin: *\r\nConnection: close\r\n\r\n");
        let mut out = out.into_bytes();
        if !head_only {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// RFC 9110 §5.6.7 IMF-fixdate, e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
fn http_date(t: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let ymd = crate::keys::format_date(t);
    let mut f = ymd.split('-');
    let (y, m, d) = (
        f.next().unwrap_or("1970"),
        f.next().unwrap_or("01"),
        f.next().unwrap_or("01"),
    );
    let month = MONTHS[m.parse::<usize>().unwrap_or(1).clamp(1, 12) - 1];
    let s = t % 86_400;
    format!(
        "{}, {d} {month} {y} {:02}:{:02}:{:02} GMT",
        DAYS[((t / 86_400) % 7) as usize],
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_get_and_head_with_host_and_query() {
        let r = parse(
            b"GET /.well-known/openpgpkey/hu/abc?l=joe HTTP/1.0\r\nHost: Example.ORG:443\r\n\r\n",
        )
        .unwrap();
        assert_eq!(
            r,
            Request {
                method: Method::Get,
                path: "/.well-known/openpgpkey/hu/abc".into(),
                host: Some("example.org".into()),
            }
        );
        let r = parse(b"HEAD /x HTTP/1.1\nhost: a.example\n\n").unwrap();
        assert_eq!(r.method, Method::Head);
        assert_eq!(r.host.as_deref(), Some("a.example"));
    }

    #[test]
    fn refuses_what_it_does_not_serve() {
        assert_eq!(parse(b"POST / HTTP/1.1\r\n\r\n").unwrap_err().status, 405);
        assert_eq!(parse(b"GET / HTTP/2\r\n\r\n").unwrap_err().status, 400);
        assert_eq!(
            parse(b"GET http://x/ HTTP/1.1\r\n\r\n").unwrap_err().status,
            400
        );
        assert_eq!(parse(b"GET /  HTTP/1.1\r\n\r\n").unwrap_err().status, 400);
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\nno colon\r\n\r\n")
                .unwrap_err()
                .status,
            400
        );
    }

    #[test]
    fn head_has_the_length_but_no_body() {
        let r = Response::ok("application/octet-stream", b"KEY".to_vec());
        let get = r.to_bytes(false, 784_111_777);
        let head = r.to_bytes(true, 784_111_777);
        let text = String::from_utf8(get.clone()).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 200 OK\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\nContent-Length: 3\r\n"), "{text}");
        assert!(get.ends_with(b"\r\n\r\nKEY"));
        assert!(head.ends_with(b"\r\n\r\n"));
        assert_eq!(head.len() + 3, get.len());
        let text = String::from_utf8(Response::error(405, "Method Not Allowed").to_bytes(false, 0))
            .unwrap();
        assert!(text.contains("\r\nAllow: GET, HEAD\r\n"), "{text}");
    }

    #[test]
    fn head_end_is_found_in_either_line_ending() {
        assert_eq!(find_end(b"GET / HTTP/1.0\r\n\r\nrest"), Some(18));
        assert_eq!(find_end(b"GET / HTTP/1.0\n\n"), Some(16));
        assert_eq!(find_end(b"GET / HTTP/1.0\r\n"), None);
    }
}
