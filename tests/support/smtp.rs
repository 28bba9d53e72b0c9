//! A minimal SMTP client that records the server's reply at every stage, so a test can
//! assert exactly where (connect, MAIL, RCPT, end of DATA) and how a message was refused.

use super::text::to_crlf;
use std::fmt;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Reply {
    pub code: u16,
    /// Every line of the reply, without the code and separator.
    pub lines: Vec<String>,
}

impl Reply {
    pub fn text(&self) -> String {
        self.lines.join(" / ")
    }

    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }

    /// The enhanced status code (RFC 3463) of the first line, if any.
    pub fn enhanced(&self) -> Option<&str> {
        let first = self.lines.first()?;
        let token = first.split_whitespace().next()?;
        let looks_right = token.split('.').count() == 3
            && token
                .split('.')
                .all(|p| p.chars().all(|c| c.is_ascii_digit()));
        looks_right.then_some(token)
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code, self.text())
    }
}

/// What the server answered at each stage of one transaction.
#[derive(Clone, Debug, Default)]
pub struct Dialogue {
    pub stages: Vec<(String, Reply)>,
    /// Set if the connection broke before the dialogue ended.
    pub io_error: Option<String>,
}

impl Dialogue {
    /// The reply to the end of DATA, if the transaction got that far.
    pub fn end_of_data(&self) -> Option<&Reply> {
        self.reply("end of DATA")
    }

    pub fn reply(&self, stage: &str) -> Option<&Reply> {
        self.stages.iter().find(|(s, _)| s == stage).map(|(_, r)| r)
    }

    /// The first negative reply (4xx/5xx) and its stage.
    pub fn first_refusal(&self) -> Option<(&str, &Reply)> {
        self.stages
            .iter()
            .find(|(_, r)| !r.is_positive())
            .map(|(s, r)| (s.as_str(), r))
    }

    /// True when the message was accepted for delivery (250 at the end of DATA).
    pub fn accepted(&self) -> bool {
        self.end_of_data().is_some_and(|r| r.code == 250)
    }
}

impl fmt::Display for Dialogue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (stage, reply) in &self.stages {
            writeln!(f, "  {stage:<14} {reply}")?;
        }
        if let Some(e) = &self.io_error {
            writeln!(f, "  (connection: {e})")?;
        }
        Ok(())
    }
}

/// Sends one message over one SMTP connection to 127.0.0.1:`port` and records every reply.
/// Stops at the first refusal of connect, EHLO, MAIL or DATA; a refused RCPT lets the others go
/// on. `message` may use LF or CRLF line ends; it is sent with CRLF and dot-stuffed.
pub fn send(port: u16, mail_from: &str, rcpts: &[&str], message: &[u8]) -> Dialogue {
    let mut dialogue = Dialogue::default();
    if let Err(e) = converse(port, mail_from, rcpts, message, &mut dialogue) {
        dialogue.io_error = Some(e.to_string());
    }
    dialogue
}

fn converse(
    port: u16,
    mail_from: &str,
    rcpts: &[&str],
    message: &[u8],
    d: &mut Dialogue,
) -> std::io::Result<()> {
    let stream = TcpStream::connect(("127.0.0.1", port))?;
    // Generous: the end of DATA waits for the milter's decryption or encryption.
    stream.set_read_timeout(Some(Duration::from_secs(180)))?;
    let mut out = stream.try_clone()?;
    let mut input = BufReader::new(stream);

    let mut step =
        |stage: &str, command: Option<&[u8]>, d: &mut Dialogue| -> std::io::Result<bool> {
            if let Some(c) = command {
                out.write_all(c)?;
            }
            let reply = read_reply(&mut input)?;
            let ok = reply.is_positive();
            d.stages.push((stage.to_string(), reply));
            Ok(ok)
        };

    if !step("connect", None, d)? {
        return quit(&mut step, d);
    }
    if !step("EHLO", Some(b"EHLO client.example.net\r\n"), d)? {
        return quit(&mut step, d);
    }
    let mail = format!("MAIL FROM:<{mail_from}>\r\n");
    if !step("MAIL", Some(mail.as_bytes()), d)? {
        return quit(&mut step, d);
    }
    let mut accepted = 0;
    for rcpt in rcpts {
        let command = format!("RCPT TO:<{rcpt}>\r\n");
        if step(&format!("RCPT {rcpt}"), Some(command.as_bytes()), d)? {
            accepted += 1;
        }
    }
    if accepted == 0 {
        return quit(&mut step, d);
    }
    if !step("DATA", Some(b"DATA\r\n"), d)? {
        return quit(&mut step, d);
    }
    let body = dot_stuff(message);
    step("end of DATA", Some(&body), d)?;
    quit(&mut step, d)
}

/// Like `send`, but the client hangs up right after the final dot of DATA, without waiting
/// for the reply: the sender then cannot know whether the message was taken. Returns the
/// replies up to DATA's 354.
pub fn send_and_hang_up(port: u16, mail_from: &str, rcpts: &[&str], message: &[u8]) -> Dialogue {
    let mut d = Dialogue::default();
    let result = (|| -> std::io::Result<()> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut out = stream.try_clone()?;
        let mut input = BufReader::new(stream);
        let mut commands = vec![
            ("connect".to_string(), None),
            (
                "EHLO".into(),
                Some("EHLO client.example.net\r\n".to_string()),
            ),
        ];
        commands.push(("MAIL".into(), Some(format!("MAIL FROM:<{mail_from}>\r\n"))));
        for rcpt in rcpts {
            commands.push((
                format!("RCPT {rcpt}"),
                Some(format!("RCPT TO:<{rcpt}>\r\n")),
            ));
        }
        commands.push(("DATA".into(), Some("DATA\r\n".into())));
        for (stage, command) in commands {
            if let Some(c) = command {
                out.write_all(c.as_bytes())?;
            }
            // Every reply is read before the hang-up: unread input would make the close a
            // reset, which may cost the server the data it has not read yet.
            let reply = read_reply(&mut input)?;
            let ok = reply.is_positive();
            d.stages.push((stage, reply));
            if !ok {
                return Ok(());
            }
        }
        out.write_all(&dot_stuff(message))?;
        out.flush()?;
        Ok(())
    })();
    if let Err(e) = result {
        d.io_error = Some(e.to_string());
    }
    d
}

fn quit(
    step: &mut impl FnMut(&str, Option<&[u8]>, &mut Dialogue) -> std::io::Result<bool>,
    d: &mut Dialogue,
) -> std::io::Result<()> {
    // The server may already have closed the connection after a 421; that is not our problem.
    let _ = step("QUIT", Some(b"QUIT\r\n"), d);
    Ok(())
}

fn read_reply(input: &mut impl BufRead) -> std::io::Result<Reply> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if input.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("connection closed after {lines:?}"),
            ));
        }
        let line = line.trim_end_matches(['\r', '\n']);
        let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, line.to_string());
        let code: u16 = line.get(..3).and_then(|c| c.parse().ok()).ok_or_else(bad)?;
        let more = line.as_bytes().get(3) == Some(&b'-');
        lines.push(line.get(4..).unwrap_or("").to_string());
        if !more {
            return Ok(Reply { code, lines });
        }
    }
}

/// CRLF line ends, leading dots doubled, and the terminating `.` line.
pub fn dot_stuff(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 64);
    for line in to_crlf(message).split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b".") {
            out.push(b'.');
        }
        out.extend_from_slice(line);
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// Like `send`, and also how long the server took to answer the end of DATA (from the last
/// byte of the message to its reply), for latency figures.
pub fn send_timed(
    port: u16,
    mail_from: &str,
    rcpts: &[&str],
    message: &[u8],
) -> (Dialogue, Option<Duration>) {
    let mut d = Dialogue::default();
    let mut eom = None;
    let result = (|| -> std::io::Result<()> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(Duration::from_secs(180)))?;
        let mut out = stream.try_clone()?;
        let mut input = BufReader::new(stream);
        let mut commands: Vec<(String, Vec<u8>)> = vec![
            ("EHLO".into(), b"EHLO client.example.net\r\n".to_vec()),
            (
                "MAIL".into(),
                format!("MAIL FROM:<{mail_from}>\r\n").into_bytes(),
            ),
        ];
        for rcpt in rcpts {
            commands.push((
                format!("RCPT {rcpt}"),
                format!("RCPT TO:<{rcpt}>\r\n").into_bytes(),
            ));
        }
        commands.push(("DATA".into(), b"DATA\r\n".to_vec()));
        commands.push(("end of DATA".into(), dot_stuff(message)));
        let greeting = read_reply(&mut input)?;
        let ok = greeting.is_positive();
        d.stages.push(("connect".into(), greeting));
        if ok {
            for (stage, bytes) in commands {
                out.write_all(&bytes)?;
                let sent = std::time::Instant::now();
                let reply = read_reply(&mut input)?;
                if stage == "end of DATA" {
                    eom = Some(sent.elapsed());
                }
                let ok = reply.is_positive();
                d.stages.push((stage, reply));
                if !ok {
                    break;
                }
            }
        }
        out.write_all(b"QUIT\r\n")?;
        if let Ok(reply) = read_reply(&mut input) {
            d.stages.push(("QUIT".into(), reply));
        }
        Ok(())
    })();
    if let Err(e) = result {
        d.io_error = Some(e.to_string());
    }
    (d, eom)
}
