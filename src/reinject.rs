//! SMTP client for extra batches: each goes to the no-milter reinjection listener with the
//! original envelope sender (so DSNs still reach Mailman's `-bounces`), and is journaled so
//! that the sender's retry never sends it twice.

use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::timeout;

#[derive(Debug, thiserror::Error)]
pub enum ReinjectError {
    #[error("reinjection to {addr}: {source}")]
    Io {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("reinjection to {addr}: {stage} answered {reply}")]
    Refused {
        addr: String,
        stage: &'static str,
        reply: String,
    },
    #[error("reinjection to {addr}: timeout during {stage}")]
    Timeout { addr: String, stage: &'static str },
}

const STEP: Duration = Duration::from_secs(60);

struct Client {
    addr: String,
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

impl Client {
    async fn reply(&mut self, stage: &'static str) -> Result<(u16, String), ReinjectError> {
        let mut text = String::new();
        loop {
            let mut line = String::new();
            let n = timeout(STEP, self.reader.read_line(&mut line))
                .await
                .map_err(|_| ReinjectError::Timeout {
                    addr: self.addr.clone(),
                    stage,
                })?
                .map_err(|source| ReinjectError::Io {
                    addr: self.addr.clone(),
                    source,
                })?;
            if n == 0 || line.len() < 4 {
                return Err(ReinjectError::Refused {
                    addr: self.addr.clone(),
                    stage,
                    reply: "connection closed".into(),
                });
            }
            text.push_str(line.trim_end());
            if line.as_bytes()[3] != b'-' {
                let code = line[..3].parse().unwrap_or(0);
                return Ok((code, text));
            }
            text.push(' ');
        }
    }

    async fn send(&mut self, bytes: &[u8], stage: &'static str) -> Result<(), ReinjectError> {
        timeout(STEP, self.writer.write_all(bytes))
            .await
            .map_err(|_| ReinjectError::Timeout {
                addr: self.addr.clone(),
                stage,
            })?
            .map_err(|source| ReinjectError::Io {
                addr: self.addr.clone(),
                source,
            })
    }

    async fn command(
        &mut self,
        line: &str,
        stage: &'static str,
        want: u16,
    ) -> Result<String, ReinjectError> {
        self.send(format!("{line}\r\n").as_bytes(), stage).await?;
        let (code, text) = self.reply(stage).await?;
        if code / 100 != want / 100 {
            return Err(ReinjectError::Refused {
                addr: self.addr.clone(),
                stage,
                reply: text,
            });
        }
        Ok(text)
    }
}

/// Sends one batch; returns the queue id the listener reported (or `unknown`).
pub async fn send_batch(
    addr: &str,
    sender: &str,
    recipients: &[String],
    message: &[u8],
) -> Result<String, ReinjectError> {
    send_batch_then(addr, sender, recipients, message, |_| Ok(())).await
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
    let stream = timeout(STEP, TcpStream::connect(addr))
        .await
        .map_err(|_| ReinjectError::Timeout {
            addr: addr.into(),
            stage: "connect",
        })?
        .map_err(|source| ReinjectError::Io {
            addr: addr.into(),
            source,
        })?;
    stream.set_nodelay(true).ok();
    let (r, w) = stream.into_split();
    let mut c = Client {
        addr: addr.to_string(),
        reader: BufReader::new(r),
        writer: w,
    };
    let (code, text) = c.reply("greeting").await?;
    if code != 220 {
        return Err(ReinjectError::Refused {
            addr: addr.into(),
            stage: "greeting",
            reply: text,
        });
    }
    c.command("EHLO listcrypt", "EHLO", 250).await?;
    c.command(&format!("MAIL FROM:<{sender}>"), "MAIL FROM", 250)
        .await?;
    for rcpt in recipients {
        let bare = rcpt.trim().trim_start_matches('<').trim_end_matches('>');
        c.command(&format!("RCPT TO:<{bare}>"), "RCPT TO", 250)
            .await?;
    }
    c.command("DATA", "DATA", 354).await?;
    c.send(&dot_stuff(message), "DATA").await?;
    let (code, text) = c.reply("end of DATA").await?;
    if code / 100 != 2 {
        return Err(ReinjectError::Refused {
            addr: addr.into(),
            stage: "end of DATA",
            reply: text,
        });
    }
    let qid = queue_id(&text);
    queued(&qid).map_err(|reason| ReinjectError::Refused {
        addr: addr.into(),
        stage: "journal",
        reply: reason,
    })?;
    // Politeness only: the batch is queued and journaled; do not wait long for the answer.
    let _ = timeout(Duration::from_secs(2), c.command("QUIT", "QUIT", 221)).await;
    Ok(qid)
}

/// RFC 5321 §4.5.2 transparency, CRLF line ends and the terminating dot.
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
    out.extend_from_slice(b".\r\n");
    out
}

/// Postfix answers `250 2.0.0 Ok: queued as 4F2A1C0D12`.
fn queue_id(reply: &str) -> String {
    reply
        .split("queued as ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or("unknown")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stuffing() {
        assert_eq!(dot_stuff(b"a\n.b\n..c"), b"a\r\n..b\r\n...c\r\n.\r\n");
        assert_eq!(queue_id("250 2.0.0 Ok: queued as 4F2A1C0D12"), "4F2A1C0D12");
    }
}
