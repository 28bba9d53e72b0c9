//! The daemon in-process on 127.0.0.1:0 and an indymilter-test client that behaves like
//! Postfix (offers the actions and options listcrypt asks for, sends header values with their
//! leading space, CRLF body chunks).

use super::text::to_crlf;
use indymilter::EitherListener;
use indymilter_test::{Actions, EomAction, EomActions, ProtoOpts, Status, TestConnection};
use listcrypt::config::Config;
use listcrypt::AnyListener;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct Running {
    pub inbound: SocketAddr,
    pub outbound: SocketAddr,
    /// The OpenMetrics listener, when the config sets `metrics_listen`.
    pub metrics: Option<SocketAddr>,
    /// The running daemon (e.g. to hold its background key refresh).
    #[allow(dead_code)]
    pub daemon: Arc<listcrypt::Daemon>,
    metrics_server: Option<listcrypt::http::Server>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

/// Starts both listeners of the daemon configured by `config_path` on 127.0.0.1:0.
pub async fn start(config_path: &Path) -> Running {
    let config = Config::load(Some(config_path)).expect("load config");
    let daemon = Arc::new(listcrypt::Daemon::open(config, None).expect("open daemon"));
    let inbound = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind inbound");
    let outbound = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind outbound");
    let inbound_addr = inbound.local_addr().expect("inbound addr");
    let outbound_addr = outbound.local_addr().expect("outbound addr");
    let metrics_server = match daemon.config().metrics_listen.as_str() {
        "" => None,
        listen => Some(
            listcrypt::http::Server::start_metrics(listen, daemon.clone())
                .await
                .expect("bind metrics"),
        ),
    };
    let (tx, rx) = oneshot::channel::<()>();
    let inbound: AnyListener = EitherListener::Tcp(inbound);
    let outbound: AnyListener = EitherListener::Tcp(outbound);
    let task = tokio::spawn(listcrypt::run(
        inbound,
        outbound,
        daemon.clone(),
        async move {
            let _ = rx.await;
        },
    ));
    Running {
        inbound: inbound_addr,
        outbound: outbound_addr,
        metrics: metrics_server.as_ref().map(|s| s.local_addr()),
        daemon,
        metrics_server,
        stop: Some(tx),
        task,
    }
}

impl Running {
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(20), &mut self.task)
            .await
            .expect("daemon stops within 20 s")
            .expect("daemon task")
            .expect("daemon ran without error");
        if let Some(server) = self.metrics_server.take() {
            server.stop().await;
        }
    }
}

/// What Postfix offers a milter (protocol 6): every action and option, header values with
/// their leading space.
pub async fn connect(addr: SocketAddr) -> TestConnection {
    let mut conn = TestConnection::configure()
        .read_timeout(Duration::from_secs(60))
        .write_timeout(Duration::from_secs(60))
        .available_actions(Actions::all())
        .available_opts(ProtoOpts::all())
        .exact_leading_space(true)
        .open_tcp(addr)
        .await
        .expect("open milter connection");
    let needed =
        Actions::ADD_HEADER | Actions::CHANGE_HEADER | Actions::REPLACE_BODY | Actions::DELETE_RCPT;
    assert!(
        conn.negotiated_actions().contains(needed),
        "listcrypt must request header changes, body replacement and recipient deletion, got {:?}",
        conn.negotiated_actions()
    );
    assert!(
        conn.negotiated_opts().contains(ProtoOpts::LEADING_SPACE),
        "listcrypt must request LEADING_SPACE, got {:?}",
        conn.negotiated_opts()
    );
    let status = conn
        .connect("client.example.test", [127, 0, 0, 1])
        .await
        .expect("connect");
    // No answer where listcrypt took NR_CONN, as it does when offered.
    assert!(
        matches!(status, Status::Continue | Status::Noreply),
        "connect: {status:?}"
    );
    conn
}

/// A message as Postfix hands it over: header fields (value with its leading space, folds as
/// bare LF) and the CRLF body.
#[derive(Clone, Debug, PartialEq)]
pub struct Mail {
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Mail {
    pub fn parse(message: &[u8]) -> Mail {
        let message = to_crlf(message);
        let split = message
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("header/body separator");
        let head = String::from_utf8(message[..split + 2].to_vec()).expect("UTF-8 header");
        let body = message[split + 4..].to_vec();
        let mut headers: Vec<(String, String)> = Vec::new();
        for line in head.split_terminator("\r\n") {
            if line.starts_with([' ', '\t']) {
                let last = headers.last_mut().expect("continuation after a field");
                last.1.push('\n');
                last.1.push_str(line);
            } else {
                let (name, value) = line.split_once(':').expect("header field");
                headers.push((name.to_string(), value.to_string()));
            }
        }
        Mail { headers, body }
    }

    /// The first value of `name`, unfolded and trimmed.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.replace('\n', "").trim().to_string())
    }

    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (n, v) in &self.headers {
            out.extend_from_slice(n.as_bytes());
            out.push(b':');
            out.extend_from_slice(&to_crlf(v.as_bytes()));
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }

    /// The message after the milter's end-of-message actions, applied in order as the MTA does
    /// (header indices are 1-based per field name).
    pub fn apply(&self, actions: &EomActions) -> Mail {
        let mut headers = self.headers.clone();
        let mut new_body: Option<Vec<u8>> = None;
        let nth = |headers: &Vec<(String, String)>, name: &str, index: i32| {
            headers
                .iter()
                .enumerate()
                .filter(|(_, (n, _))| n.eq_ignore_ascii_case(name))
                .nth((index.max(1) - 1) as usize)
                .map(|(i, _)| i)
        };
        for action in &actions.actions {
            match action {
                EomAction::AddHeader { name, value } => headers.push((
                    name.to_string_lossy().into_owned(),
                    value.to_string_lossy().into_owned(),
                )),
                EomAction::InsertHeader { index, name, value } => {
                    let at = (*index as usize).min(headers.len());
                    headers.insert(
                        at,
                        (
                            name.to_string_lossy().into_owned(),
                            value.to_string_lossy().into_owned(),
                        ),
                    );
                }
                EomAction::ChangeHeader { name, index, value } => {
                    let name = name.to_string_lossy().into_owned();
                    let value = value.to_string_lossy().into_owned();
                    match nth(&headers, &name, *index) {
                        Some(i) => headers[i].1 = value,
                        None => headers.push((name, value)),
                    }
                }
                EomAction::DeleteHeader { name, index } => {
                    if let Some(i) = nth(&headers, &name.to_string_lossy(), *index) {
                        headers.remove(i);
                    }
                }
                EomAction::ReplaceBody { chunk } => new_body
                    .get_or_insert_with(Vec::new)
                    .extend_from_slice(chunk),
                _ => {}
            }
        }
        Mail {
            headers,
            body: new_body.unwrap_or_else(|| self.body.clone()),
        }
    }
}

/// Sends DATA, the header fields, EOH and the body (each stage only if the milter did not
/// negotiate it away, as Postfix does); returns the first non-Continue status (with no
/// actions) or the end-of-message result.
pub async fn send(conn: &mut TestConnection, mail: &Mail) -> (EomActions, Status) {
    let none = || EomActions { actions: vec![] };
    let opts = conn.negotiated_opts();
    if !opts.contains(ProtoOpts::NO_DATA) {
        let status = conn.data().await.expect("data");
        if !goes_on(&status) {
            return (none(), status);
        }
    }
    if !opts.contains(ProtoOpts::NO_HEADER) {
        for (name, value) in &mail.headers {
            let status = conn
                .header(name.as_str(), value.as_str())
                .await
                .expect("header");
            if !goes_on(&status) {
                return (none(), status);
            }
        }
    }
    if !opts.contains(ProtoOpts::NO_EOH) {
        let status = conn.eoh().await.expect("eoh");
        if !goes_on(&status) {
            return (none(), status);
        }
    }
    if !opts.contains(ProtoOpts::NO_BODY) {
        for chunk in mail.body.chunks(65_535) {
            let status = conn.body(chunk.to_vec()).await.expect("body");
            if !goes_on(&status) {
                return (none(), status);
            }
        }
    }
    conn.eom().await.expect("eom")
}

/// One transaction from `from` to `rcpt` on a connection of its own: MAIL and RCPT must go
/// on; returns what [`send`] returns.
pub async fn transact(
    addr: SocketAddr,
    from: &str,
    rcpt: &str,
    mail: &Mail,
) -> (EomActions, Status) {
    transact_many(addr, from, &[rcpt.to_string()], mail).await
}

/// One transaction from `from` to every address of `rcpts` (each must get Continue at RCPT),
/// then the message; the connection is closed after end of message.
pub async fn transact_many(
    addr: SocketAddr,
    from: &str,
    rcpts: &[String],
    mail: &Mail,
) -> (EomActions, Status) {
    let mut conn = connect(addr).await;
    assert_eq!(
        conn.mail([format!("<{from}>")]).await.unwrap(),
        Status::Continue
    );
    for rcpt in rcpts {
        assert_eq!(
            conn.rcpt([format!("<{rcpt}>")]).await.unwrap(),
            Status::Continue,
            "RCPT {rcpt}"
        );
    }
    let result = send(&mut conn, mail).await;
    conn.close().await.unwrap();
    result
}

/// Continue, or no reply where the milter negotiated none for the stage.
fn goes_on(status: &Status) -> bool {
    matches!(status, Status::Continue | Status::Noreply)
}

/// The SMTP reply carried by a reject or tempfail status, e.g. `550 5.7.1 …`.
pub fn reply_text(status: &Status) -> String {
    match status {
        Status::Reject { message: Some(m) } | Status::Tempfail { message: Some(m) } => {
            m.to_string_lossy().into_owned()
        }
        other => format!("{other:?}"),
    }
}

/// Asserts that the message goes on towards its recipients (continue or accept).
pub fn assert_goes_on(status: &Status, what: &str) {
    assert!(
        matches!(status, Status::Continue | Status::Accept),
        "{what}: expected the message to go on, got {}",
        reply_text(status)
    );
}

/// Whether the end-of-message actions replace the body.
pub fn replaces_body(actions: &EomActions) -> bool {
    actions
        .actions
        .iter()
        .any(|a| matches!(a, EomAction::ReplaceBody { .. }))
}

/// Asserts a reject/tempfail whose reply starts with `code` and `xcode`.
pub fn assert_reply(status: &Status, code: &str, xcode: &str, what: &str) {
    let text = reply_text(status);
    let mut words = text.split_whitespace();
    assert!(
        words.next() == Some(code) && words.next() == Some(xcode),
        "{what}: expected a `{code} {xcode} …` reply, got {text}"
    );
    let is_temp = matches!(status, Status::Tempfail { .. });
    assert_eq!(
        is_temp,
        code.starts_with('4'),
        "{what}: status class of {status:?}"
    );
}
