//! The Web Key Directory over HTTP/1.1 (hyper), meant for loopback behind a TLS front-end (WKD
//! clients speak only HTTPS): GET and HEAD of every list's WKD paths in both layouts, 404 for
//! anything else. One request per connection, bounded in size, time and number of connections.
//! A second listener of the same kind serves `/metrics` (OpenMetrics) on loopback.

use crate::state::Daemon;
use crate::wkd::{self, Resource};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, StatusCode, Uri};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

/// Request line and headers together (hyper's smallest read buffer); WKD requests are a few
/// hundred bytes. Larger heads get 431.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// From accept to the end of the request head: a peer that sends nothing is dropped.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Everything one connection may take, from accept to the last byte of the answer.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; one more gets a 503 and is closed.
pub const MAX_CONNECTIONS: usize = 256;

/// How long a stop waits for connections in progress before dropping them.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// What a connection over [`Limits::connections`] gets before the close: a whole answer in one
/// write, so that it needs no task of its own.
const BUSY: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n\
Content-Length: 24\r\nRetry-After: 1\r\nConnection: close\r\n\r\n503 Service Unavailable\n";

/// The bounds of one listener (the constants above, smaller in tests).
#[derive(Clone, Copy, Debug)]
struct Limits {
    connections: usize,
    header_read: Duration,
    connection: Duration,
}

const LIMITS: Limits = Limits {
    connections: MAX_CONNECTIONS,
    header_read: HEADER_READ_TIMEOUT,
    connection: CONNECTION_TIMEOUT,
};

/// What a listener answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Site {
    Wkd,
    Metrics,
}

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
        let listener = bind(listen).await?;
        let addr = listener.local_addr()?;
        if !addr.ip().is_loopback() {
            tracing::warn!(
                "WKD over plain HTTP on {addr}, not loopback: serve it through TLS only"
            );
        }
        tracing::info!("WKD over HTTP on {addr}, for a TLS front-end");
        Ok(Server::spawn(listener, daemon, Site::Wkd, LIMITS))
    }

    /// Binds `listen`, which must be a loopback address, and serves `GET /metrics`.
    pub async fn start_metrics(listen: &str, daemon: Arc<Daemon>) -> io::Result<Server> {
        let listener = bind(listen).await?;
        let addr = listener.local_addr()?;
        // Counters name lists and traffic: nothing for other hosts to read.
        if !addr.ip().is_loopback() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("metrics on {addr}: loopback addresses only"),
            ));
        }
        tracing::info!("OpenMetrics over HTTP on {addr}/metrics");
        Ok(Server::spawn(listener, daemon, Site::Metrics, LIMITS))
    }

    fn spawn(listener: TcpListener, daemon: Arc<Daemon>, site: Site, limits: Limits) -> Server {
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, daemon, site, limits, stopped));
        Server { addr, stop, task }
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

async fn bind(listen: &str) -> io::Result<TcpListener> {
    let addr: SocketAddr = listen
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{listen}: {e}")))?;
    TcpListener::bind(addr).await
}

async fn accept_loop(
    listener: TcpListener,
    daemon: Arc<Daemon>,
    site: Site,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(limits.connections));
    let mut connections = JoinSet::new();
    loop {
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
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            // Best effort and never waiting: a full socket buffer just means a bare close.
            let _ = stream.try_write(BUSY);
            tracing::debug!(
                "http: {peer}: over {} connections, refused",
                limits.connections
            );
            continue;
        };
        let daemon = daemon.clone();
        connections.spawn(async move {
            let _permit = permit;
            let served = serve_connection(stream, peer, daemon, site, limits);
            match tokio::time::timeout(limits.connection, served).await {
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
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    daemon: Arc<Daemon>,
    site: Site,
    limits: Limits,
) -> hyper::Result<()> {
    let service = service_fn(move |request| {
        let daemon = daemon.clone();
        async move {
            Ok::<_, Infallible>(match site {
                Site::Wkd => answer(request, peer, daemon).await,
                Site::Metrics => answer_metrics(request, peer, daemon).await,
            })
        }
    });
    http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read)
        .max_buf_size(MAX_REQUEST_BYTES)
        .keep_alive(false)
        // Header names as the hand-written server sent them (and as most clients print them).
        .title_case_headers(true)
        .serve_connection(TokioIo::new(stream), service)
        .await
}

async fn answer(
    request: hyper::Request<Incoming>,
    peer: SocketAddr,
    daemon: Arc<Daemon>,
) -> hyper::Response<Full<Bytes>> {
    let host = host(request.headers());
    let reply = match route(request.method(), request.uri(), host.clone()) {
        Err(reply) => reply,
        Ok(resource) => tokio::task::spawn_blocking(move || lookup(&daemon, &resource))
            .await
            .unwrap_or_else(|_| Reply::error(StatusCode::INTERNAL_SERVER_ERROR)),
    };
    tracing::debug!(
        "http: {peer}: {} {} (host {:?}): {}",
        request.method(),
        request.uri().path(),
        host.ok().flatten(),
        reply.status.as_u16()
    );
    reply.into_response(SystemTime::now())
}

async fn answer_metrics(
    request: hyper::Request<Incoming>,
    peer: SocketAddr,
    daemon: Arc<Daemon>,
) -> hyper::Response<Full<Bytes>> {
    let reply = if request.method() != Method::GET && request.method() != Method::HEAD {
        Reply::error(StatusCode::METHOD_NOT_ALLOWED)
    } else if request.uri().path() != "/metrics" {
        Reply::error(StatusCode::NOT_FOUND)
    } else {
        // The expiry gauges check every member's certificate: off the async workers.
        tokio::task::spawn_blocking(move || scrape(&daemon))
            .await
            .unwrap_or_else(|_| Reply::error(StatusCode::INTERNAL_SERVER_ERROR))
    };
    tracing::debug!(
        "http: {peer}: {} {}: {}",
        request.method(),
        request.uri().path(),
        reply.status.as_u16()
    );
    let mut response = reply.into_response(SystemTime::now());
    // Unlike keys, metrics are not for web pages of other origins to read.
    response
        .headers_mut()
        .remove(header::ACCESS_CONTROL_ALLOW_ORIGIN);
    response
}

fn scrape(daemon: &Arc<Daemon>) -> Reply {
    let keyring = match daemon.keyring() {
        Ok(k) => k,
        Err(e) => {
            tracing::warn!("http: keyring unavailable: {e}");
            return Reply::error(StatusCode::SERVICE_UNAVAILABLE);
        }
    };
    match crate::metrics::scrape(&keyring, SystemTime::now()) {
        Ok(text) => Reply::ok(crate::metrics::CONTENT_TYPE, text.into_bytes()),
        Err(_) => Reply::error(StatusCode::INTERNAL_SERVER_ERROR),
    }
}

/// The `Host` header without port, if sent once; `Err` if sent twice or not readable.
fn host(headers: &HeaderMap) -> Result<Option<String>, ()> {
    let mut values = headers.get_all(header::HOST).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return if headers.contains_key(header::HOST) {
            Err(())
        } else {
            Ok(None)
        };
    };
    let value = value.to_str().map_err(|_| ())?.trim();
    // RFC 9110 §7.2: host [ ":" port ]; WKD hosts are DNS names, never IP literals.
    let name = value.split(':').next().unwrap_or_default();
    Ok(Some(name.to_ascii_lowercase()))
}

/// The WKD resource a request names (RFC 9112 §3.2.1: origin-form targets only; the query
/// `?l=…` is not needed, the hash names the key), or the error answer.
fn route(method: &Method, uri: &Uri, host: Result<Option<String>, ()>) -> Result<Resource, Reply> {
    if method != Method::GET && method != Method::HEAD {
        return Err(Reply::error(StatusCode::METHOD_NOT_ALLOWED));
    }
    let host = host.map_err(|()| Reply::error(StatusCode::BAD_REQUEST))?;
    if uri.scheme().is_some() || uri.authority().is_some() || !uri.path().starts_with('/') {
        return Err(Reply::error(StatusCode::BAD_REQUEST));
    }
    wkd::resolve(uri.path(), host.as_deref()).ok_or_else(|| Reply::error(StatusCode::NOT_FOUND))
}

/// Answers a resolved WKD request from the current keyring (the daemon rebuilds it when the
/// store changes or on SIGHUP).
fn lookup(daemon: &Arc<Daemon>, resource: &Resource) -> Reply {
    let keyring = match daemon.keyring() {
        Ok(k) => k,
        Err(e) => {
            tracing::warn!("http: keyring unavailable: {e}");
            return Reply::error(StatusCode::SERVICE_UNAVAILABLE);
        }
    };
    let Some(list) = wkd::find(keyring.lists.keys().map(String::as_str), resource) else {
        return Reply::error(StatusCode::NOT_FOUND);
    };
    match resource {
        Resource::Policy { .. } => Reply::ok("text/plain", wkd::POLICY.to_vec()),
        Resource::Key { .. } => match wkd::public_key(&keyring.lists[list].secret, list) {
            Ok(key) => Reply::ok("application/octet-stream", key),
            Err(e) => {
                tracing::warn!("http: {list}: {e}");
                Reply::error(StatusCode::INTERNAL_SERVER_ERROR)
            }
        },
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Reply {
    status: StatusCode,
    content_type: &'static str,
    body: Vec<u8>,
}

impl Reply {
    fn ok(content_type: &'static str, body: Vec<u8>) -> Reply {
        Reply {
            status: StatusCode::OK,
            content_type,
            body,
        }
    }

    fn error(status: StatusCode) -> Reply {
        Reply {
            status,
            content_type: "text/plain; charset=utf-8",
            body: format!("{status}\n").into_bytes(),
        }
    }

    /// hyper leaves out the body for HEAD and keeps the GET answer's `Content-Length`.
    fn into_response(self, now: SystemTime) -> hyper::Response<Full<Bytes>> {
        let length = self.body.len();
        let mut response = hyper::Response::new(Full::new(Bytes::from(self.body)));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        let date = HeaderValue::from_str(&httpdate::fmt_http_date(now));
        headers.insert(
            header::DATE,
            date.expect("an HTTP date is a valid header value"),
        );
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(self.content_type),
        );
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        if self.status == StatusCode::METHOD_NOT_ALLOWED {
            headers.insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        }
        // Draft §3.1: web-based clients fetch keys across origins.
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::io::{Read, Write};

    fn get(target: &str) -> Uri {
        target.parse().unwrap()
    }

    #[test]
    fn host_loses_its_port_and_case_and_must_be_single() {
        let mut h = HeaderMap::new();
        assert_eq!(host(&h), Ok(None));
        h.insert(header::HOST, HeaderValue::from_static("Example.ORG:443"));
        assert_eq!(host(&h), Ok(Some("example.org".into())));
        h.append(header::HOST, HeaderValue::from_static("b.example"));
        assert_eq!(host(&h), Err(()));
    }

    #[test]
    fn routes_both_layouts_and_refuses_the_rest() {
        let hash = "iy9q119eutrkn8s1mk4r39qejnbu3n5q";
        let key = Resource::Key {
            domain: "example.org".into(),
            hash: hash.into(),
        };
        let direct = get(&format!("/.well-known/openpgpkey/hu/{hash}?l=Joe.Doe"));
        let example = || Ok(Some("example.org".to_string()));
        assert_eq!(route(&Method::GET, &direct, example()), Ok(key.clone()));
        assert_eq!(route(&Method::HEAD, &direct, example()), Ok(key));
        let status = |m: &Method, u: &Uri, h| route(m, u, h).unwrap_err().status.as_u16();
        assert_eq!(status(&Method::POST, &direct, example()), 405);
        assert_eq!(status(&Method::GET, &direct, Err(())), 400);
        assert_eq!(status(&Method::GET, &direct, Ok(None)), 404);
        let absolute = get(&format!(
            "http://example.org/.well-known/openpgpkey/hu/{hash}"
        ));
        assert_eq!(status(&Method::GET, &absolute, example()), 400);
        assert_eq!(status(&Method::OPTIONS, &get("*"), example()), 405);
        assert_eq!(status(&Method::GET, &get("*"), example()), 400);
        assert_eq!(status(&Method::GET, &get("/etc/passwd"), example()), 404);
    }

    #[test]
    fn every_answer_carries_length_type_date_and_cors() {
        // RFC 9110 §5.6.7's own example of an IMF-fixdate.
        let when = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        let r = Reply::error(StatusCode::METHOD_NOT_ALLOWED).into_response(when);
        assert_eq!(r.status(), 405);
        let h = r.headers();
        assert_eq!(h[header::DATE], "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(h[header::CONTENT_LENGTH], "23");
        assert_eq!(h[header::CONTENT_TYPE], "text/plain; charset=utf-8");
        assert_eq!(h[header::ALLOW], "GET, HEAD");
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert_eq!(h[header::CONNECTION], "close");
        assert_eq!(Reply::error(StatusCode::NOT_FOUND).body, b"404 Not Found\n");
    }

    /// A daemon with no list, and its HTTP listener on loopback.
    async fn serving(limits: Limits) -> (tempfile::TempDir, Server) {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            policy_dir: dir.path().join("lists.d"),
            keyring_dir: dir.path().join("keyrings"),
            state_dir: dir.path().join("state"),
            ..Config::default()
        };
        std::fs::create_dir_all(&config.policy_dir).unwrap();
        let daemon = Arc::new(Daemon::open(config, None).unwrap());
        let listener = bind("127.0.0.1:0").await.unwrap();
        let server = Server::spawn(listener, daemon, Site::Wkd, limits);
        (dir, server)
    }

    /// Sends `raw` from a blocking thread and returns everything until the server closes.
    async fn exchange(addr: SocketAddr, raw: impl Into<Vec<u8>>) -> String {
        let raw = raw.into();
        tokio::task::spawn_blocking(move || {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            s.write_all(&raw).unwrap();
            let mut out = Vec::new();
            s.read_to_end(&mut out).unwrap();
            String::from_utf8(out).unwrap()
        })
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn answers_on_the_wire_like_the_hand_written_server() {
        let (_dir, server) = serving(LIMITS).await;
        let addr = server.local_addr();
        let text = exchange(
            addr,
            b"GET /.well-known/openpgpkey/policy HTTP/1.1\r\nHost: example.org\r\n\r\n",
        )
        .await;
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"), "{text}");
        for line in [
            "\r\nContent-Type: text/plain; charset=utf-8\r\n",
            "\r\nContent-Length: 14\r\n",
            "\r\nAccess-Control-Allow-Origin: *\r\n",
            "\r\nConnection: close\r\n",
        ] {
            assert!(text.contains(line), "{line:?} in {text}");
        }
        let date = text
            .split("\r\nDate: ")
            .nth(1)
            .and_then(|r| r.split("\r\n").next())
            .unwrap();
        httpdate::parse_http_date(date).unwrap();
        assert!(text.ends_with("\r\n\r\n404 Not Found\n"), "{text}");
        let head = exchange(
            addr,
            b"HEAD /.well-known/openpgpkey/policy HTTP/1.1\r\nHost: example.org\r\n\r\n",
        )
        .await;
        assert!(head.contains("\r\nContent-Length: 14\r\n"), "{head}");
        assert!(head.ends_with("\r\n\r\n"), "{head}");
        let post = exchange(addr, b"POST / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(post.starts_with("HTTP/1.1 405 "), "{post}");
        assert!(post.contains("\r\nAllow: GET, HEAD\r\n"), "{post}");
        for bad in [
            "GET / HTTP/2\r\n\r\n",
            "GET /  HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nno colon\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        ] {
            let text = exchange(addr, bad).await;
            assert!(text.starts_with("HTTP/1.1 400 "), "{text}");
        }
        let big = format!("GET / HTTP/1.1\r\nX-Pad: {}\r\n\r\n", "a".repeat(10_000));
        let text = exchange(addr, big).await;
        assert!(text.starts_with("HTTP/1.1 431 "), "{text}");
        server.stop().await;
    }

    #[tokio::test]
    async fn a_silent_peer_is_dropped_after_the_header_timeout() {
        let limits = Limits {
            header_read: Duration::from_millis(200),
            connection: Duration::from_secs(600),
            ..LIMITS
        };
        let (_dir, server) = serving(limits).await;
        let text = exchange(server.local_addr(), b"GET / HTTP/1.1\r\n").await;
        // hyper closes without an answer when the head does not arrive in time; with only
        // the 600 s bound, the 20 s read timeout in `exchange` would have failed the test.
        assert_eq!(text, "");
        server.stop().await;
    }

    #[tokio::test]
    async fn over_the_connection_limit_a_peer_gets_503() {
        let limits = Limits {
            connections: 1,
            ..LIMITS
        };
        let (_dir, server) = serving(limits).await;
        let addr = server.local_addr();
        let idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        // The listener takes connections in order: the idle one holds the only slot.
        tokio::time::sleep(Duration::from_millis(100)).await;
        // This peer sends nothing before reading: a request the server never reads would turn
        // its close into a reset that may overtake the answer.
        let text = exchange(addr, "").await;
        assert!(
            text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{text}"
        );
        assert!(
            text.ends_with("\r\n\r\n503 Service Unavailable\n"),
            "{text}"
        );
        drop(idle);
        let mut freed = String::new();
        for _ in 0..50 {
            freed = exchange(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
            if !freed.starts_with("HTTP/1.1 503") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(freed.starts_with("HTTP/1.1 404 "), "{freed}");
        server.stop().await;
    }
}
