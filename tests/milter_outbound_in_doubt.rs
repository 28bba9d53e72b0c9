//! Campaign finding F1: a reinjected batch whose connection is cut after the final dot, before
//! the listener's 250, may have been queued although the journal cannot say so. listcrypt
//! journals an intent before the dot, so the sender's retry of the same transaction knows
//! the batch is in doubt: it sends it again (a duplicate can be told apart, a loss cannot),
//! logs one line per such batch in the form the campaign's ledger parses, and counts it in
//! `listcrypt_reinject_in_doubt_total`. A batch journaled as queued is not sent again.
//!
//! `listcrypt serve` runs as a child process, so the log lines are the ones an admin reads;
//! the reinjection listener is a scripted SMTP server in this file.

mod support;

use indymilter_test::{Actions, EomAction, MacroStage, ProtoOpts, Status, TestConnection};
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use support::gpg::GpgMember;
use support::milter::{self, Mail};
use support::site::{Site, LIST, LIST_BOUNCES};

/// A message's recipients, and whether the connection was cut after its dot.
type Arrival = (Vec<String>, bool);

/// A reinjection listener that queues every message, except that while `cut` names one of a
/// transaction's recipients it reads the whole message and its final dot and then hangs up
/// without a reply: the message may or may not be queued, as when Postfix's smtpd dies there.
#[derive(Clone, Default)]
struct Listener {
    cut: Arc<Mutex<Option<String>>>,
    /// Every message that reached the listener, in arrival order.
    seen: Arc<Mutex<Vec<Arrival>>>,
}

impl Listener {
    fn start(&self) -> u16 {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = server.local_addr().unwrap().port();
        let me = self.clone();
        thread::spawn(move || {
            for stream in server.incoming().map_while(Result::ok) {
                let me = me.clone();
                thread::spawn(move || me.serve(stream));
            }
        });
        port
    }

    fn serve(&self, stream: TcpStream) -> std::io::Result<()> {
        let mut out = stream.try_clone()?;
        let mut input = BufReader::new(stream);
        out.write_all(b"220 reinject.example.test ESMTP\r\n")?;
        let mut rcpts = Vec::new();
        let mut line = String::new();
        loop {
            line.clear();
            if input.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let command = line.trim_end().to_ascii_uppercase();
            let reply = if command.starts_with("RCPT TO:") {
                let path = line.trim_end()[8..].trim_matches(['<', '>']);
                rcpts.push(path.to_ascii_lowercase());
                "250 2.1.5 Ok".to_string()
            } else if command == "DATA" {
                out.write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")?;
                read_through_dot(&mut input)?;
                let cut = self.cut.lock().unwrap().clone();
                let cut = cut.is_some_and(|c| rcpts.contains(&c));
                let mut seen = self.seen.lock().unwrap();
                seen.push((std::mem::take(&mut rcpts), cut));
                if cut {
                    return Ok(());
                }
                format!("250 2.0.0 Ok: queued as 9A{}", seen.len())
            } else if command == "QUIT" {
                out.write_all(b"221 2.0.0 Bye\r\n")?;
                return Ok(());
            } else if command.starts_with("EHLO") {
                "250-reinject.example.test\r\n250 8BITMIME".to_string()
            } else {
                "250 2.0.0 Ok".to_string()
            };
            out.write_all(format!("{reply}\r\n").as_bytes())?;
        }
    }

    /// How many messages reached the listener for `rcpt`: (queued, cut after the dot).
    fn count(&self, rcpt: &str) -> (usize, usize) {
        let seen = self.seen.lock().unwrap();
        let to = seen.iter().filter(|(r, _)| r.iter().any(|r| r == rcpt));
        let (cut, queued): (Vec<_>, Vec<_>) = to.partition(|(_, cut)| *cut);
        (queued.len(), cut.len())
    }
}

fn read_through_dot(input: &mut impl BufRead) -> std::io::Result<()> {
    let mut line = Vec::new();
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if line == b".\r\n" {
            return Ok(());
        }
    }
}

/// The counter's value in one `GET /metrics` answer (OpenMetrics text).
fn scrape(port: u16, name: &str) -> f64 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

/// One outbound transaction from Mailman, as Postfix hands it over with queue id `qid`.
async fn transaction(
    socket: &std::path::Path,
    qid: &str,
    rcpts: &[&str],
    post: &Mail,
) -> (Vec<EomAction>, Status) {
    let mut conn = TestConnection::configure()
        .available_actions(Actions::all())
        .available_opts(ProtoOpts::all())
        .exact_leading_space(true)
        .open_unix(socket)
        .await
        .expect("open milter connection");
    let client: SocketAddr = "127.0.0.1:40123".parse().unwrap();
    // No answer where listcrypt took NR_CONN, as it does when offered.
    let status = conn.connect("localhost", client).await.unwrap();
    assert!(
        matches!(status, Status::Continue | Status::Noreply),
        "{status:?}"
    );
    let from = format!("<{LIST_BOUNCES}>");
    assert_eq!(conn.mail([from.as_str()]).await.unwrap(), Status::Continue);
    for r in rcpts {
        let to = format!("<{r}>");
        assert_eq!(conn.rcpt([to.as_str()]).await.unwrap(), Status::Continue);
    }
    // Postfix knows the queue id from DATA on.
    conn.macros(MacroStage::Data, [("i", qid)]).await.unwrap();
    let (actions, status) = milter::send(&mut conn, post).await;
    conn.close().await.unwrap();
    (actions.actions, status)
}

fn deleted(actions: &[EomAction]) -> Vec<String> {
    let mut d: Vec<String> = actions
        .iter()
        .filter_map(|a| match a {
            EomAction::DeleteRecipient { rcpt } => Some(rcpt.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect();
    d.sort();
    d
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_cut_after_its_dot_is_resent_on_retry_and_logged_as_in_doubt() {
    let site = Site::new();
    site.create_list(LIST);
    let members = GpgMember::three_bound(&site);
    let [m1, m2, m3] = [0, 1, 2].map(|i| members[i].address.to_ascii_lowercase());
    // Batch 1 (m1) stays in the transaction; m2 and m3 are reinjected, one batch each.
    site.set_batch_size(LIST, 1);
    let listener = Listener::default();
    site.reinject_to(listener.start());
    let [metrics_port] = support::net::free_ports::<1>();
    let config = fs::read_to_string(&site.config)
        .unwrap()
        .replace("log_level = \"warn\"", "log_level = \"info\"");
    fs::write(
        &site.config,
        format!("{config}metrics_listen = \"127.0.0.1:{metrics_port}\"\n"),
    )
    .unwrap();
    let mut serving = site.serve();
    serving.wait_for_line("serving 1 list(s)");
    let socket = site.path("run/outbound.sock");
    const METRIC: &str = "listcrypt_reinject_in_doubt_total";
    let before = scrape(metrics_port, METRIC);

    let post = Mail::parse(
        format!(
            "From: m1 <{m1}>\nTo: {LIST}\nSubject: in doubt\nMessage-ID: <in-doubt-1@example.test>\n\
             MIME-Version: 1.0\nContent-Type: text/plain\n\nsecret text\n"
        )
        .as_bytes(),
    );
    let rcpts = [m1.as_str(), m2.as_str(), m3.as_str()];

    // First attempt: m2's batch is queued (and journaled); m3's is cut after its dot, and
    // again when sent once more at once, so the transaction is deferred.
    *listener.cut.lock().unwrap() = Some(m3.clone());
    let (_, status) = transaction(&socket, "4F2A1C0D12", &rcpts, &post).await;
    milter::assert_reply(
        &status,
        "451",
        "4.3.0",
        "an in-doubt batch that stays in doubt",
    );
    assert_eq!(listener.count(&m2), (1, 0), "m2 queued once");
    assert_eq!(listener.count(&m3), (0, 2), "m3 cut after the dot twice");
    let line = format!(
        "4F2A1C0D12: {LIST}: reinjection in doubt for message-id <in-doubt-1@example.test>: \
         1 recipient(s) may get a second copy; resending"
    );
    serving.wait_for_line(&line);
    serving.wait_for_line("4F2A1C0D12: outbound: reinjection");
    assert_eq!(scrape(metrics_port, METRIC) - before, 1.0);

    // Mailman retries the same transaction (Postfix gives it a new queue id): m2 is served
    // already and is only removed; m3's batch is in doubt, so it is sent again and logged.
    *listener.cut.lock().unwrap() = None;
    let (actions, status) = transaction(&socket, "5B3C2D1E0F", &rcpts, &post).await;
    milter::assert_goes_on(&status, "the retry");
    assert_eq!(
        deleted(&actions),
        [format!("<{m2}>"), format!("<{m3}>")],
        "m2 already served, m3 reinjected; m1 stays in the transaction"
    );
    assert_eq!(listener.count(&m2), (1, 0), "m2 is not sent twice");
    assert_eq!(listener.count(&m3), (1, 2), "m3 sent again, queued");
    assert_eq!(listener.count(&m1), (0, 0), "batch 1 is never reinjected");
    let line = format!(
        "5B3C2D1E0F: {LIST}: reinjection in doubt for message-id <in-doubt-1@example.test>: \
         1 recipient(s) may get a second copy; resending"
    );
    serving.wait_for_line(&line);
    serving.wait_for_line("5B3C2D1E0F: enc@lists.example.test: message from");
    assert_eq!(scrape(metrics_port, METRIC) - before, 2.0);

    // A third attempt (say Mailman never saw the 250) finds nothing in doubt any more.
    let (actions, status) = transaction(&socket, "6C4D3E2F1A", &rcpts, &post).await;
    milter::assert_goes_on(&status, "the third attempt");
    assert_eq!(deleted(&actions), [format!("<{m2}>"), format!("<{m3}>")]);
    assert_eq!(listener.count(&m3), (1, 2), "m3 is not sent a third time");
    serving.wait_for_line("6C4D3E2F1A: enc@lists.example.test: message from");
    assert_eq!(scrape(metrics_port, METRIC) - before, 2.0);
    assert!(
        !serving
            .log
            .iter()
            .any(|l| l.starts_with("6C4D3E2F1A") && l.contains("in doubt")),
        "{}",
        serving.log.join("\n")
    );
    assert!(serving.stop().success());
}
