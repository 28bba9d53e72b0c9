//! SMTP client for extra batches: each goes to the no-milter reinjection listener with the
//! original envelope sender (so DSNs still reach Mailman's `-bounces`), and is journaled so
//! that the sender's retry never sends it twice. An intent is journaled before the final dot,
//! so a batch cut between the dot and the journal is known to be in doubt, never forgotten.
//!
//! Our own client rather than lettre's: listcrypt needs the envelope exactly as Postfix gave it
//! (lettre's `Address` refuses some addresses Postfix accepts), every RCPT's own answer, and
//! replies read with a bound on each line before it is buffered.

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// Longest reply line we read, CRLF included (RFC 5321 §4.5.3.1.5 allows 512; Postfix stays
/// far below either).
pub const MAX_REPLY_LINE: usize = 1000;
/// Most lines in one reply (an EHLO answer has about a dozen).
pub const MAX_REPLY_LINES: usize = 100;
/// Each step: connecting, one command and its reply, the message and the reply to it.
const STEP: Duration = Duration::from_secs(60);
/// QUIT only closes politely once the batch is queued: do not wait long for its answer.
const QUIT_WAIT: Duration = Duration::from_secs(2);

/// One SMTP reply (RFC 5321 §4.2): its code and its lines as sent, joined by spaces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmtpReply {
    pub code: u16,
    pub text: String,
}

impl SmtpReply {
    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }

    /// 5yz: the listener will never take it; 4yz may succeed later.
    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }
}

impl std::fmt::Display for SmtpReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// Why bytes from the listener are not an SMTP reply.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReplyError {
    #[error("reply line longer than {MAX_REPLY_LINE} octets")]
    LineTooLong,
    #[error("reply of more than {MAX_REPLY_LINES} lines")]
    TooManyLines,
    #[error("malformed reply line {0:?}")]
    Malformed(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ReinjectError {
    #[error("reinjection to {addr}: {stage}: {source}")]
    Io {
        addr: String,
        stage: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("reinjection to {addr}: connection closed during {stage}")]
    Closed { addr: String, stage: &'static str },
    #[error("reinjection to {addr}: {stage} answered {reply}")]
    Refused {
        addr: String,
        stage: &'static str,
        reply: SmtpReply,
    },
    #[error("reinjection to {addr}: {stage}: {source}")]
    BadReply {
        addr: String,
        stage: &'static str,
        #[source]
        source: ReplyError,
    },
    #[error("reinjection to {addr}: timeout during {stage}")]
    Timeout { addr: String, stage: &'static str },
    #[error("reinjection to {addr}: envelope address {address:?} has a line break or NUL")]
    BadAddress { addr: String, address: String },
    #[error("reinjection to {addr}: a batch without recipients")]
    NoRecipients { addr: String },
    #[error("reinjection to {addr}: queued as {queue_id} but not journaled: {reason}")]
    Journal {
        addr: String,
        queue_id: String,
        reason: String,
    },
    #[error("reinjection to {addr}: intent not journaled, so the message was not sent: {reason}")]
    Intent { addr: String, reason: String },
}

/// The stage whose failure leaves the batch's fate unknown: the final dot went out (or was
/// going out), and the listener's verdict on it never came back.
const END_OF_DATA: &str = "end of DATA";

impl ReinjectError {
    /// Whether the listener may have queued the batch although this send failed: the
    /// connection broke or timed out after the whole message was sent.
    pub fn in_doubt(&self) -> bool {
        match self {
            ReinjectError::Io { stage, .. }
            | ReinjectError::Closed { stage, .. }
            | ReinjectError::BadReply { stage, .. }
            | ReinjectError::Timeout { stage, .. } => *stage == END_OF_DATA,
            _ => false,
        }
    }

    /// The listener's permanent refusal of the message itself (e.g. `552` over its size
    /// limit): every recipient of the batch is refused with it.
    pub fn refused_message(&self) -> Option<&SmtpReply> {
        match self {
            ReinjectError::Refused { stage, reply, .. }
                if *stage == END_OF_DATA && reply.is_permanent() =>
            {
                Some(reply)
            }
            _ => None,
        }
    }
}

/// What a refused recipient does to its batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnRefusedRcpt {
    /// Nothing is sent; the first refusal is the batch's error.
    AbortBatch,
    /// The accepted recipients get the message; refusals come back in [`Delivery::refused`].
    Report,
}

/// The outcome of one batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// The queue id the listener reported (`unknown` if its reply names none); `None` when it
    /// accepted no recipient, so that no message was sent.
    pub queue_id: Option<String>,
    /// Recipients the listener refused at RCPT, each with its reply.
    pub refused: Vec<(String, SmtpReply)>,
}

/// Sends one batch; returns the queue id the listener reported (or `unknown`). A refused
/// recipient fails the whole batch, before any message is sent.
pub async fn send_batch(
    addr: &str,
    sender: &str,
    recipients: &[String],
    message: &[u8],
) -> Result<String, ReinjectError> {
    send_batch_then(addr, sender, recipients, message, |_| Ok(())).await
}

/// No intent to journal (replies and notices, which no retry repeats).
fn no_intent(_: &[String]) -> Result<(), String> {
    Ok(())
}

/// Like [`send_batch`], calling `queued` with the queue id as soon as the listener accepted
/// the message — before QUIT, whose answer can take long and does not matter any more — so
/// the journal records the batch with the smallest window for a duplicate.
pub async fn send_batch_then(
    addr: &str,
    sender: &str,
    recipients: &[String],
    message: &[u8],
    queued: impl FnOnce(&str) -> Result<(), String>,
) -> Result<String, ReinjectError> {
    let delivery = deliver(
        addr,
        sender,
        recipients,
        message,
        OnRefusedRcpt::AbortBatch,
        no_intent,
        |qid, _| queued(qid),
    )
    .await?;
    // With `AbortBatch` and at least one recipient, a delivery that returns has a queue id.
    Ok(delivery.queue_id.unwrap_or_else(|| "unknown".into()))
}

/// Sends `message` from `sender` (empty for the null sender `<>`) to `recipients`, each RCPT
/// answered on its own. Once the body is out, `intent` gets the accepted recipients before
/// the final dot is sent; its error drops the connection without the dot (the listener
/// discards the message) and becomes [`ReinjectError::Intent`]. Right after the listener's
/// 2yz to the message, `queued` gets the queue id and the accepted recipients; its error
/// becomes [`ReinjectError::Journal`].
pub async fn deliver(
    addr: &str,
    sender: &str,
    recipients: &[String],
    message: &[u8],
    on_refused: OnRefusedRcpt,
    intent: impl FnOnce(&[String]) -> Result<(), String>,
    queued: impl FnOnce(&str, &[String]) -> Result<(), String>,
) -> Result<Delivery, ReinjectError> {
    if recipients.is_empty() {
        return Err(ReinjectError::NoRecipients { addr: addr.into() });
    }
    let sender = envelope_address(addr, sender)?;
    let recipients = recipients
        .iter()
        .map(|r| envelope_address(addr, r))
        .collect::<Result<Vec<_>, _>>()?;
    let mut c = Connection::open(addr).await?;
    c.expect(220, "greeting").await?;
    let ehlo = c.command("EHLO listcrypt", "EHLO").await?;
    // RFC 6531 §3.4: a non-ASCII envelope needs SMTPUTF8, if the listener offers it.
    let utf8 = !sender.is_ascii() || recipients.iter().any(|r| !r.is_ascii());
    let mail = if utf8 && offers(&ehlo, "SMTPUTF8") {
        format!("MAIL FROM:<{sender}> SMTPUTF8")
    } else {
        format!("MAIL FROM:<{sender}>")
    };
    let mail = c.command(&mail, "MAIL FROM").await?;
    c.check(mail, 250, "MAIL FROM")?;
    let mut accepted = Vec::new();
    let mut refused = Vec::new();
    for rcpt in recipients {
        let reply = c.command(&format!("RCPT TO:<{rcpt}>"), "RCPT TO").await?;
        if reply.code / 100 == 2 {
            accepted.push(rcpt);
        } else if on_refused == OnRefusedRcpt::AbortBatch {
            c.quit().await;
            return Err(c.refused("RCPT TO", reply));
        } else {
            refused.push((rcpt, reply));
        }
    }
    if accepted.is_empty() {
        c.quit().await;
        return Ok(Delivery {
            queue_id: None,
            refused,
        });
    }
    let data = c.command("DATA", "DATA").await?;
    c.check(data, 354, "DATA")?;
    c.send(&dot_stuff(message), "message body").await?;
    // Without the dot the listener queues nothing: until the intent is durable, it stays out.
    if let Err(reason) = intent(&accepted) {
        return Err(ReinjectError::Intent {
            addr: addr.into(),
            reason,
        });
    }
    c.send(b".\r\n", END_OF_DATA).await?;
    let end = c.reply(END_OF_DATA).await?;
    c.check(end.clone(), 250, END_OF_DATA)?;
    let queue_id = queue_id(&end.text);
    if let Err(reason) = queued(&queue_id, &accepted) {
        c.quit().await;
        return Err(ReinjectError::Journal {
            addr: addr.into(),
            queue_id,
            reason,
        });
    }
    c.quit().await;
    Ok(Delivery {
        queue_id: Some(queue_id),
        refused,
    })
}

/// The address between the angle brackets; a line break or NUL would smuggle in a command.
fn envelope_address(addr: &str, address: &str) -> Result<String, ReinjectError> {
    let bare = address.trim().trim_start_matches('<').trim_end_matches('>');
    if bare.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
        return Err(ReinjectError::BadAddress {
            addr: addr.into(),
            address: address.into(),
        });
    }
    Ok(bare.to_string())
}

/// Whether an EHLO reply lists `keyword` (RFC 5321 §4.1.1.1: one extension a line after the
/// first).
fn offers(ehlo: &SmtpReply, keyword: &str) -> bool {
    ehlo.text
        .split(['-', ' '])
        .any(|word| word.eq_ignore_ascii_case(keyword))
}

/// Parses one reply from the start of `input`: the reply and the bytes it took, `None` while
/// it is incomplete. Lines end in LF (a CR before it is dropped); text that is not UTF-8 is
/// kept lossily. Never reads past [`MAX_REPLY_LINE`] bytes of an unfinished line, so a caller
/// that buffers until this answers holds a bounded amount.
pub fn parse_reply(input: &[u8]) -> Result<Option<(SmtpReply, usize)>, ReplyError> {
    let mut code = None;
    let mut text = String::new();
    let mut at = 0;
    for _ in 0..MAX_REPLY_LINES {
        let rest = &input[at..];
        let Some(end) = rest.iter().take(MAX_REPLY_LINE).position(|&b| b == b'\n') else {
            return if rest.len() >= MAX_REPLY_LINE {
                Err(ReplyError::LineTooLong)
            } else {
                Ok(None)
            };
        };
        at += end + 1;
        let line = &rest[..end];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let (this, last) = reply_line(line)?;
        if *code.get_or_insert(this) != this {
            return Err(ReplyError::Malformed(lossy(line)));
        }
        if !text.is_empty() {
            text.push(' ');
        }
        text.push_str(lossy(line).trim_end());
        if last {
            return Ok(Some((SmtpReply { code: this, text }, at)));
        }
    }
    Err(ReplyError::TooManyLines)
}

/// The code of one reply line and whether it is the last (RFC 5321 §4.2: `XYZ-text` goes on,
/// `XYZ text` or a bare `XYZ` ends).
fn reply_line(line: &[u8]) -> Result<(u16, bool), ReplyError> {
    let malformed = || ReplyError::Malformed(lossy(line));
    let (digits, rest) = line.split_at_checked(3).ok_or_else(malformed)?;
    if !(b'2'..=b'5').contains(&digits[0]) || !digits.iter().all(u8::is_ascii_digit) {
        return Err(malformed());
    }
    let code = digits
        .iter()
        .fold(0u16, |c, d| c * 10 + u16::from(d - b'0'));
    match rest.first() {
        None | Some(b' ') => Ok((code, true)),
        Some(b'-') => Ok((code, false)),
        Some(_) => Err(malformed()),
    }
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// One SMTP session with the listener.
struct Connection {
    addr: String,
    stream: TcpStream,
    /// Bytes read and not yet part of a reply.
    buf: Vec<u8>,
}

impl Connection {
    async fn open(addr: &str) -> Result<Connection, ReinjectError> {
        let stream = timeout(STEP, TcpStream::connect(addr))
            .await
            .map_err(|_| ReinjectError::Timeout {
                addr: addr.into(),
                stage: "connect",
            })?
            .map_err(|source| ReinjectError::Io {
                addr: addr.into(),
                stage: "connect",
                source,
            })?;
        stream.set_nodelay(true).ok();
        Ok(Connection {
            addr: addr.into(),
            stream,
            buf: Vec::with_capacity(512),
        })
    }

    async fn reply(&mut self, stage: &'static str) -> Result<SmtpReply, ReinjectError> {
        match timeout(STEP, self.read_reply()).await {
            Err(_) => Err(ReinjectError::Timeout {
                addr: self.addr.clone(),
                stage,
            }),
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(failure)) => Err(match failure {
                ReadFailure::Io(source) => ReinjectError::Io {
                    addr: self.addr.clone(),
                    stage,
                    source,
                },
                ReadFailure::Closed => ReinjectError::Closed {
                    addr: self.addr.clone(),
                    stage,
                },
                ReadFailure::Reply(source) => ReinjectError::BadReply {
                    addr: self.addr.clone(),
                    stage,
                    source,
                },
            }),
        }
    }

    async fn read_reply(&mut self) -> Result<SmtpReply, ReadFailure> {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some((reply, used)) = parse_reply(&self.buf).map_err(ReadFailure::Reply)? {
                self.buf.drain(..used);
                return Ok(reply);
            }
            let n = self
                .stream
                .read(&mut chunk)
                .await
                .map_err(ReadFailure::Io)?;
            if n == 0 {
                return Err(ReadFailure::Closed);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    async fn send(&mut self, bytes: &[u8], stage: &'static str) -> Result<(), ReinjectError> {
        timeout(STEP, self.stream.write_all(bytes))
            .await
            .map_err(|_| ReinjectError::Timeout {
                addr: self.addr.clone(),
                stage,
            })?
            .map_err(|source| ReinjectError::Io {
                addr: self.addr.clone(),
                stage,
                source,
            })
    }

    /// Sends one command line and reads its reply, whatever the code.
    async fn command(
        &mut self,
        line: &str,
        stage: &'static str,
    ) -> Result<SmtpReply, ReinjectError> {
        self.send(format!("{line}\r\n").as_bytes(), stage).await?;
        self.reply(stage).await
    }

    async fn expect(&mut self, want: u16, stage: &'static str) -> Result<SmtpReply, ReinjectError> {
        let reply = self.reply(stage).await?;
        self.check(reply, want, stage)
    }

    /// `reply` if its class is `want`'s (2yz for 250, 3yz for 354), else the stage's refusal.
    fn check(
        &self,
        reply: SmtpReply,
        want: u16,
        stage: &'static str,
    ) -> Result<SmtpReply, ReinjectError> {
        if reply.code / 100 == want / 100 {
            Ok(reply)
        } else {
            Err(self.refused(stage, reply))
        }
    }

    fn refused(&self, stage: &'static str, reply: SmtpReply) -> ReinjectError {
        ReinjectError::Refused {
            addr: self.addr.clone(),
            stage,
            reply,
        }
    }

    /// Politeness only: whatever happened, the outcome is already known.
    async fn quit(&mut self) {
        let _ = timeout(QUIT_WAIT, self.command("QUIT", "QUIT")).await;
    }
}

enum ReadFailure {
    Io(std::io::Error),
    Closed,
    Reply(ReplyError),
}

/// RFC 5321 §4.5.2 transparency and CRLF line ends, up to (not including) the terminating
/// dot, which goes out on its own once the intent is journaled.
fn dot_stuff(message: &[u8]) -> Vec<u8> {
    let crlf = crate::mime::to_crlf(message);
    let mut out = Vec::with_capacity(crlf.len() + 64);
    let mut at_line_start = true;
    for &b in &crlf {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Postfix answers `250 2.0.0 Ok: queued as 4F2A1C0D12`, Sendmail `250 2.0.0 6B6H3WGl026126
/// Message accepted for delivery` (srvrsmtp.c): the id is the word before that phrase.
fn queue_id(reply: &str) -> String {
    let postfix = reply
        .split("queued as ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next());
    let sendmail = || {
        let (before, _) = reply.split_once(" Message accepted for delivery")?;
        let id = before.split_whitespace().last()?;
        // Not the enhanced status code of a reply that names no id.
        (!id.chars().all(|c| c.is_ascii_digit() || c == '.')).then_some(id)
    };
    postfix.or_else(sendmail).unwrap_or("unknown").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncBufReadExt, BufReader};
    use tokio::net::TcpListener;

    fn reply(code: u16, text: &str) -> SmtpReply {
        SmtpReply {
            code,
            text: text.into(),
        }
    }

    #[test]
    fn stuffing() {
        assert_eq!(dot_stuff(b"a\n.b\n..c"), b"a\r\n..b\r\n...c\r\n");
        assert_eq!(queue_id("250 2.0.0 Ok: queued as 4F2A1C0D12"), "4F2A1C0D12");
    }

    #[test]
    fn sendmail_queue_id() {
        // Sendmail 8.17's reply to the end of DATA, with and without the enhanced code.
        assert_eq!(
            queue_id("2.0.0 6B6H3WGl026126 Message accepted for delivery"),
            "6B6H3WGl026126"
        );
        assert_eq!(
            queue_id("250 6B6H3WGl026126 Message accepted for delivery"),
            "6B6H3WGl026126"
        );
        assert_eq!(queue_id("2.0.0 Message accepted for delivery"), "unknown");
        assert_eq!(queue_id("2.0.0 stored"), "unknown");
    }

    #[test]
    fn single_and_multi_line_replies() {
        let input = b"250-mail.example.org\r\n250-PIPELINING\r\n250 SMTPUTF8\r\n354 go";
        let (r, used) = parse_reply(input).unwrap().unwrap();
        assert_eq!(
            r,
            reply(250, "250-mail.example.org 250-PIPELINING 250 SMTPUTF8")
        );
        assert_eq!(&input[used..], b"354 go");
        assert!(offers(&r, "smtputf8") && !offers(&r, "CHUNKING"));
        // RFC 5321 §4.2: a code alone is a whole reply; bare LF ends a line too.
        assert_eq!(
            parse_reply(b"221\n").unwrap().unwrap(),
            (reply(221, "221"), 4)
        );
    }

    #[test]
    fn unfinished_replies_wait_for_more() {
        for partial in [
            &b""[..],
            b"25",
            b"250",
            b"250-first\r\n",
            b"250-first\r\n250 la",
        ] {
            assert_eq!(parse_reply(partial), Ok(None), "{partial:?}");
        }
    }

    #[test]
    fn non_ascii_and_short_lines_are_errors_or_text_never_panics() {
        let (r, _) = parse_reply("550 5.1.1 <jö@example.org>: unknown\r\n".as_bytes())
            .unwrap()
            .unwrap();
        assert_eq!(r.code, 550);
        assert!(r.is_permanent());
        let (r, _) = parse_reply(b"451 \xff\xfe temporary\r\n").unwrap().unwrap();
        assert_eq!(r.text, "451 \u{fffd}\u{fffd} temporary");
        for bad in [
            &b"25\r\n"[..],
            b"\r\n",
            "é50 x\r\n".as_bytes(),
            "2é0 x\r\n".as_bytes(),
            "250é\r\n".as_bytes(),
            b"250x\r\n",
            b"150 no such class\r\n",
            b"250-one code\r\n550 another\r\n",
        ] {
            assert!(
                matches!(parse_reply(bad), Err(ReplyError::Malformed(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn lines_and_replies_are_bounded() {
        let mut long = b"250 ".to_vec();
        long.resize(MAX_REPLY_LINE - 2, b'a');
        long.extend_from_slice(b"\r\n");
        assert_eq!(parse_reply(&long).unwrap().unwrap().1, MAX_REPLY_LINE);
        let mut too_long = b"250 ".to_vec();
        too_long.resize(MAX_REPLY_LINE, b'a');
        assert_eq!(parse_reply(&too_long), Err(ReplyError::LineTooLong));
        too_long.extend_from_slice(b"\r\n");
        assert_eq!(parse_reply(&too_long), Err(ReplyError::LineTooLong));
        let many = b"250-x\r\n".repeat(MAX_REPLY_LINES);
        assert_eq!(parse_reply(&many), Err(ReplyError::TooManyLines));
        let mut just = b"250-x\r\n".repeat(MAX_REPLY_LINES - 1);
        just.extend_from_slice(b"250 x\r\n");
        assert_eq!(parse_reply(&just).unwrap().unwrap().1, just.len());
    }

    /// The seeds of the fuzz target, mutated by a fixed PRNG: the parser's answer is
    /// consistent for every input (a reply uses a prefix; none exceeds the bounds).
    #[test]
    fn parser_survives_mutated_seeds() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/smtp_reply");
        let seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| std::fs::read(e.unwrap().path()).unwrap())
            .collect();
        assert!(seeds.len() >= 4, "seeds in {dir:?}");
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move |n: usize| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1) as u64) as usize
        };
        let tokens: [&[u8]; 7] = [b"\r\n", b"\n", b"-", b" ", b"250", b"\xc3", b"\xff"];
        for i in 0..20_000 {
            let mut v = seeds[i % seeds.len()].clone();
            for _ in 0..=next(6) {
                let pos = next(v.len() + 1);
                match next(4) {
                    0 if !v.is_empty() => {
                        let at = pos.min(v.len() - 1);
                        v[at] ^= 1 << next(8);
                    }
                    1 => drop(v.splice(pos..pos, tokens[next(tokens.len())].iter().copied())),
                    2 => v.truncate(pos),
                    _ => drop(v.splice(pos..pos, std::iter::repeat_n(b'a', next(1200)))),
                }
            }
            if let Ok(Some((r, used))) = parse_reply(&v) {
                assert!(used > 0 && used <= v.len());
                assert!((200..600).contains(&r.code));
                assert!(v[..used].ends_with(b"\n"));
                assert!(r.text.len() <= used * 3);
            }
        }
    }

    /// A listener speaking RFC 5321 from a script: refuses the RCPTs of `refuse`, records
    /// every line it reads, and answers the message with `end` (or hangs up if `None`).
    async fn listener(
        refuse: &'static [&'static str],
        end: Option<&'static str>,
    ) -> (String, Arc<Mutex<Vec<String>>>) {
        let (addr, seen, _) = scripted(refuse, end).await;
        (addr, seen)
    }

    /// [`listener`], plus a flag set once the client's side of the connection is closed.
    async fn scripted(
        refuse: &'static [&'static str],
        end: Option<&'static str>,
    ) -> (String, Arc<Mutex<Vec<String>>>, Arc<AtomicBool>) {
        let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = server.local_addr().unwrap().to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let closed = Arc::new(AtomicBool::new(false));
        let eof = closed.clone();
        tokio::spawn(async move {
            let (stream, _) = server.accept().await.unwrap();
            let (r, mut w) = stream.into_split();
            let mut lines = BufReader::new(r).lines();
            w.write_all(b"220 reinject.example.org ESMTP\r\n")
                .await
                .unwrap();
            let mut in_data = false;
            while let Ok(Some(line)) = lines.next_line().await {
                log.lock().unwrap().push(line.clone());
                let answer: &str = if in_data {
                    if line != "." {
                        continue;
                    }
                    in_data = false;
                    match end {
                        Some(end) => end,
                        None => return,
                    }
                } else if line.starts_with("EHLO") {
                    "250-reinject.example.org\r\n250-PIPELINING\r\n250 8BITMIME"
                } else if let Some(rcpt) = line.strip_prefix("RCPT TO:") {
                    if refuse.iter().any(|r| rcpt == format!("<{r}>")) {
                        "550 5.1.1 Recipient address rejected: User unknown"
                    } else {
                        "250 2.1.5 Ok"
                    }
                } else if line == "DATA" {
                    in_data = true;
                    "354 End data with <CR><LF>.<CR><LF>"
                } else if line == "QUIT" {
                    "221 2.0.0 Bye"
                } else {
                    "250 2.1.0 Ok"
                };
                w.write_all(format!("{answer}\r\n").as_bytes())
                    .await
                    .unwrap();
            }
            eof.store(true, Ordering::SeqCst);
        });
        (addr, seen, closed)
    }

    fn batch() -> Vec<String> {
        ["a@example.org", "<b@example.org>", "c@example.org"]
            .map(String::from)
            .to_vec()
    }

    #[tokio::test]
    async fn one_refused_recipient_of_three_is_reported_and_the_others_get_it() {
        let (addr, seen) = listener(
            &["b@example.org"],
            Some("250 2.0.0 Ok: queued as 4F2A1C0D12"),
        )
        .await;
        let mut journaled = None;
        let delivery = deliver(
            &addr,
            "",
            &batch(),
            b"Subject: x\n\n.hidden dot\n",
            OnRefusedRcpt::Report,
            |_| Ok(()),
            |qid, accepted| {
                journaled = Some((qid.to_string(), accepted.to_vec()));
                Ok(())
            },
        )
        .await
        .unwrap();
        assert_eq!(delivery.queue_id.as_deref(), Some("4F2A1C0D12"));
        assert_eq!(delivery.refused.len(), 1);
        assert_eq!(delivery.refused[0].0, "b@example.org");
        assert_eq!(delivery.refused[0].1.code, 550);
        assert_eq!(
            journaled,
            Some((
                "4F2A1C0D12".into(),
                vec!["a@example.org".into(), "c@example.org".into()]
            ))
        );
        let seen = seen.lock().unwrap().clone();
        assert_eq!(
            seen,
            [
                "EHLO listcrypt",
                "MAIL FROM:<>",
                "RCPT TO:<a@example.org>",
                "RCPT TO:<b@example.org>",
                "RCPT TO:<c@example.org>",
                "DATA",
                "Subject: x",
                "",
                "..hidden dot",
                ".",
                "QUIT",
            ]
        );
    }

    #[tokio::test]
    async fn send_batch_keeps_all_or_nothing() {
        let (addr, seen) = listener(&["b@example.org"], Some("250 2.0.0 Ok: queued as X")).await;
        let err = send_batch(&addr, "list-bounces@example.org", &batch(), b"body\n")
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ReinjectError::Refused { stage: "RCPT TO", reply, .. } if reply.code == 550),
            "{err}"
        );
        assert!(!err.in_doubt());
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen[1], "MAIL FROM:<list-bounces@example.org>");
        assert!(!seen.iter().any(|l| l == "DATA"), "{seen:?}");
        assert_eq!(seen.last().map(String::as_str), Some("QUIT"));

        let (addr, _) = listener(&[], Some("250 2.0.0 Ok: queued as 4F2A1C0D12")).await;
        let mut journaled = String::new();
        let qid = send_batch_then(&addr, "", &batch(), b"body\n", |q| {
            journaled = q.into();
            Ok(())
        })
        .await
        .unwrap();
        assert_eq!(
            (qid.as_str(), journaled.as_str()),
            ("4F2A1C0D12", "4F2A1C0D12")
        );
    }

    #[tokio::test]
    async fn all_refused_sends_no_message() {
        let (addr, seen) = listener(
            &["a@example.org", "b@example.org", "c@example.org"],
            Some("250 Ok"),
        )
        .await;
        let delivery = deliver(
            &addr,
            "",
            &batch(),
            b"x\n",
            OnRefusedRcpt::Report,
            |_| panic!("no message, no intent"),
            |_, _| panic!("nothing was queued"),
        )
        .await
        .unwrap();
        assert_eq!(delivery.queue_id, None);
        assert_eq!(delivery.refused.len(), 3);
        assert!(!seen.lock().unwrap().iter().any(|l| l == "DATA"));
    }

    #[tokio::test]
    async fn a_hang_up_after_the_message_is_in_doubt() {
        let (addr, _) = listener(&[], None).await;
        let err = send_batch(&addr, "", &batch(), b"x\n").await.unwrap_err();
        assert!(err.in_doubt(), "{err}");
        let (addr, _) = listener(&[], Some("451 4.3.0 Error: queue file write error")).await;
        let err = send_batch(&addr, "", &batch(), b"x\n").await.unwrap_err();
        assert!(!err.in_doubt(), "{err}");
        assert!(err.to_string().contains("451 4.3.0"), "{err}");
    }

    #[tokio::test]
    async fn a_journal_failure_keeps_the_queue_id() {
        let (addr, _) = listener(&[], Some("250 2.0.0 Ok: queued as 4F2A1C0D12")).await;
        let err = send_batch_then(&addr, "", &batch(), b"x\n", |_| Err("disk full".into()))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ReinjectError::Journal { queue_id, .. } if queue_id == "4F2A1C0D12"),
            "{err}"
        );
    }

    /// Polls `done` for up to 5 s from a synchronous callback (the listener runs on another
    /// worker thread meanwhile).
    fn wait_until(mut done: impl FnMut() -> bool) -> bool {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !done() {
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_intent_is_journaled_after_the_body_and_before_the_dot() {
        let (addr, seen) = listener(
            &["b@example.org"],
            Some("250 2.0.0 Ok: queued as 4F2A1C0D12"),
        )
        .await;
        let order = Mutex::new(Vec::new());
        let delivery = deliver(
            &addr,
            "list-bounces@example.org",
            &batch(),
            b"Subject: x\n\nlast body line\n",
            OnRefusedRcpt::Report,
            |accepted| {
                // The listener has the whole body, and no dot yet.
                let body_in =
                    wait_until(|| seen.lock().unwrap().iter().any(|l| l == "last body line"));
                let dot = seen.lock().unwrap().iter().any(|l| l == ".");
                let line = format!("intent {accepted:?} body={body_in} dot={dot}");
                order.lock().unwrap().push(line);
                Ok(())
            },
            |qid, _| {
                order.lock().unwrap().push(format!("queued {qid}"));
                Ok(())
            },
        )
        .await
        .unwrap();
        assert_eq!(delivery.queue_id.as_deref(), Some("4F2A1C0D12"));
        assert_eq!(
            order.into_inner().unwrap(),
            [
                r#"intent ["a@example.org", "c@example.org"] body=true dot=false"#,
                "queued 4F2A1C0D12"
            ]
        );
        assert!(seen.lock().unwrap().iter().any(|l| l == "."));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_intent_that_cannot_be_journaled_keeps_the_dot_back() {
        let (addr, seen, closed) = scripted(&[], Some("250 2.0.0 Ok: queued as 4F2A1C0D12")).await;
        let err = deliver(
            &addr,
            "",
            &batch(),
            b"Subject: x\n\nbody\n",
            OnRefusedRcpt::Report,
            |_| Err("database or disk is full".into()),
            |_, _| panic!("nothing can be queued without the dot"),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(&err, ReinjectError::Intent { reason, .. } if reason.contains("disk is full")),
            "{err}"
        );
        assert!(!err.in_doubt(), "{err}");
        assert!(err.refused_message().is_none());
        // The connection is dropped in DATA: the listener never saw the end of the message.
        let closed_in_time = tokio::time::timeout(Duration::from_secs(5), async {
            while !closed.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(closed_in_time.is_ok(), "the connection is closed");
        let seen = seen.lock().unwrap().clone();
        assert!(seen.iter().any(|l| l == "body"), "{seen:?}");
        assert!(!seen.iter().any(|l| l == "." || l == "QUIT"), "{seen:?}");
    }

    /// A listener that sends `greeting` and hangs up.
    async fn greeting_only(greeting: Vec<u8>) -> String {
        let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = server.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut stream, _) = server.accept().await.unwrap();
            let _ = stream.write_all(&greeting).await;
        });
        addr
    }

    #[tokio::test]
    async fn hostile_greetings_are_errors_not_panics() {
        for (greeting, want) in [
            (b"22\xc3\xa9 hello\r\n".to_vec(), "malformed"),
            (b"2".to_vec(), "closed"),
            (vec![b'2'; 5000], "longer than"),
            (b"554 5.3.2 no service\r\n".to_vec(), "554 5.3.2"),
        ] {
            let addr = greeting_only(greeting).await;
            let err = send_batch(&addr, "", &batch(), b"x\n").await.unwrap_err();
            assert!(err.to_string().contains(want), "{want}: {err}");
        }
    }

    #[tokio::test]
    async fn line_breaks_in_an_address_never_reach_the_listener() {
        let recipients = vec!["a@example.org>\r\nRCPT TO:<b@example.org".to_string()];
        let err = send_batch("127.0.0.1:9", "", &recipients, b"x\n")
            .await
            .unwrap_err();
        assert!(matches!(err, ReinjectError::BadAddress { .. }), "{err}");
    }
}
