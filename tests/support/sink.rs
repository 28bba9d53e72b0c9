//! A tiny SMTP server that accepts everything and keeps each transaction in memory: where
//! Postfix delivers the subscribers' mail (`default_transport = smtp:[127.0.0.1]:PORT`).

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct Delivery {
    pub mail_from: String,
    pub rcpts: Vec<String>,
    /// The message as sent, with CRLF line ends and dots unstuffed.
    pub data: Vec<u8>,
    /// When the sink stored it (for end-to-end latencies).
    pub at: Instant,
}

impl Delivery {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }
}

pub struct Sink {
    pub port: u16,
    deliveries: Arc<Mutex<Vec<Delivery>>>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Sink {
    pub fn start() -> Sink {
        Sink::start_refusing(&[])
    }

    /// A sink that answers `550 5.1.1` to RCPT for each of `refused` (lower-case addresses).
    pub fn start_refusing(refused: &[&str]) -> Sink {
        Sink::start_with(refused, usize::MAX)
    }

    /// A sink that answers `552 5.3.4` at the end of DATA to a message over `max_data` octets,
    /// as Postfix does over its `message_size_limit`.
    pub fn start_limited(max_data: usize) -> Sink {
        Sink::start_with(&[], max_data)
    }

    fn start_with(refused: &[&str], max_data: usize) -> Sink {
        let refused: Arc<Vec<String>> = Arc::new(refused.iter().map(|r| r.to_string()).collect());
        let listener = TcpListener::bind("127.0.0.1:0").expect("sink: bind");
        let port = listener.local_addr().unwrap().port();
        let deliveries = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let deliveries = deliveries.clone();
            let stop = stop.clone();
            thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let deliveries = deliveries.clone();
                    let refused = refused.clone();
                    thread::spawn(move || {
                        let _ = serve(conn, &deliveries, &refused, max_data);
                    });
                }
            })
        };
        Sink {
            port,
            deliveries,
            stop,
            thread: Some(thread),
        }
    }

    pub fn deliveries(&self) -> Vec<Delivery> {
        self.deliveries.lock().unwrap().clone()
    }

    /// Removes and returns what arrived since the last call: a long campaign reads each
    /// delivery once instead of keeping gigabytes of copies in memory.
    pub fn take(&self) -> Vec<Delivery> {
        std::mem::take(&mut *self.deliveries.lock().unwrap())
    }

    /// Deliveries (one per transaction) that include `rcpt` among their recipients.
    pub fn deliveries_to(&self, rcpt: &str) -> Vec<Delivery> {
        self.deliveries()
            .into_iter()
            .filter(|d| d.rcpts.iter().any(|r| r.eq_ignore_ascii_case(rcpt)))
            .collect()
    }

    /// The deliveries to `rcpt` once there are `count` of them, or those there are after
    /// `timeout` (the caller asserts on what came).
    pub fn wait_for_deliveries(
        &self,
        rcpt: &str,
        count: usize,
        timeout: Duration,
    ) -> Vec<Delivery> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.deliveries_to(rcpt);
            if got.len() >= count || Instant::now() > deadline {
                return got;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// One line per transaction, for failure reports.
    pub fn summary(&self) -> String {
        self.deliveries()
            .iter()
            .map(|d| {
                format!(
                    "MAIL FROM:<{}> RCPT {:?} {} bytes",
                    d.mail_from,
                    d.rcpts,
                    d.data.len()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(
    conn: TcpStream,
    deliveries: &Mutex<Vec<Delivery>>,
    refused: &[String],
    max_data: usize,
) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(300)))?;
    let mut out = conn.try_clone()?;
    let mut input = BufReader::new(conn);
    out.write_all(b"220 sink.example.net ESMTP test sink\r\n")?;
    let mut mail_from: Option<String> = None;
    let mut rcpts: Vec<String> = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&line);
        let command = text.trim_end();
        let verb = command
            .split([' ', ':'])
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        let reply: &[u8] = match verb.as_str() {
            "EHLO" => b"250-sink.example.net\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n",
            "HELO" => b"250 sink.example.net\r\n",
            "MAIL" => {
                mail_from = Some(path_of(command));
                rcpts.clear();
                b"250 2.1.0 ok\r\n"
            }
            "RCPT" if mail_from.is_some() && refused.contains(&path_of(command)) => {
                b"550 5.1.1 recipient refused by the test sink\r\n"
            }
            "RCPT" if mail_from.is_some() => {
                rcpts.push(path_of(command));
                b"250 2.1.5 ok\r\n"
            }
            "DATA" if !rcpts.is_empty() => {
                out.write_all(b"354 go ahead\r\n")?;
                let data = read_data(&mut input)?;
                if data.len() > max_data {
                    mail_from = None;
                    rcpts.clear();
                    out.write_all(b"552 5.3.4 message too big for the test sink\r\n")?;
                    continue;
                }
                deliveries.lock().unwrap().push(Delivery {
                    mail_from: mail_from.take().unwrap_or_default(),
                    rcpts: std::mem::take(&mut rcpts),
                    data,
                    at: Instant::now(),
                });
                b"250 2.0.0 stored\r\n"
            }
            "RSET" => {
                mail_from = None;
                rcpts.clear();
                b"250 2.0.0 ok\r\n"
            }
            "NOOP" => b"250 2.0.0 ok\r\n",
            "QUIT" => {
                out.write_all(b"221 2.0.0 bye\r\n")?;
                return Ok(());
            }
            "RCPT" | "DATA" => b"503 5.5.1 bad sequence of commands\r\n",
            _ => b"502 5.5.2 command not implemented\r\n",
        };
        out.write_all(reply)?;
    }
}

/// The address inside `<...>` of a MAIL or RCPT command, lower-cased.
fn path_of(command: &str) -> String {
    let start = command.find('<').map(|i| i + 1).unwrap_or(command.len());
    let end = command[start..]
        .find('>')
        .map(|i| start + i)
        .unwrap_or(command.len());
    command[start..end].to_ascii_lowercase()
}

fn read_data(input: &mut impl BufRead) -> std::io::Result<Vec<u8>> {
    let mut data = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if line == b".\r\n" || line == b".\n" {
            return Ok(data);
        }
        let unstuffed = if line.starts_with(b".") {
            &line[1..]
        } else {
            &line[..]
        };
        data.extend_from_slice(unstuffed);
    }
}
