//! Per-connection session: a configuration snapshot taken at connect, per-message state reset
//! at MAIL and dropped on abort. The session only collects the transaction and the message;
//! its mode's processor decides at end of message.

use super::actions::{apply, refuse};
use super::{inbound, key_address, notification, outbound, SessionError};
use crate::config::{Config, Unmanaged};
use crate::inbound::Target;
use crate::keys::ListKeys;
use crate::refusal::{RcptOutcome, Refusal};
use crate::state::{Daemon, Reservation};
use bytes::Bytes;
use indymilter::{EomActions, ProtoOpts, SmtpReply, SocketInfo, Status};
use std::ffi::CString;
use std::fmt;
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Inbound,
    Outbound,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Inbound => "inbound",
            Side::Outbound => "outbound",
        })
    }
}

/// What the transaction is, each mode owning what its processor needs at end of message.
enum Mode {
    /// Inbound: recipients so far (one list, no list, or the key address).
    Inbound(crate::inbound::Transaction),
    /// Outbound from one list, encrypting to its recipients.
    Outbound(crate::outbound::Transaction),
    /// Mail to a list's key address: answered by listcrypt, never passed on.
    KeyAddress(Arc<ListKeys>),
    /// A notification Postfix generated itself (null sender, daemon port 0): its recipients
    /// are decided as inbound ones; one to a list's posting or command address gets those
    /// rules, any other is checked at end of message for quoted list mail.
    Notification(crate::inbound::Transaction),
    /// Mailman talking to its own addresses: passed as it is, minus forged copies of
    /// listcrypt's own header fields (removed at end of message).
    Loopback,
    /// Mail of no managed list.
    PassThrough,
}

/// The message as the MTA handed it over, for the processor at end of message.
pub(super) struct Message {
    pub queue_id: String,
    pub sender: String,
    pub bytes: Vec<u8>,
    pub header_names: Vec<String>,
}

/// The message being received, held once: each header field and body chunk is written into
/// `bytes` (CRLF, as the MTA would deliver it) as it arrives, and counted against the budget.
struct Msg {
    sender: String,
    mode: Mode,
    bytes: Vec<u8>,
    header_names: Vec<String>,
    /// Header size as the size limit counts it (name, value and separators).
    header_bytes: usize,
    body_bytes: usize,
    /// Whether the blank line ending the header is written.
    in_body: bool,
    reservation: Reservation,
}

impl Msg {
    fn size(&self) -> u64 {
        (self.header_bytes + self.body_bytes) as u64
    }

    /// Appends `parts`, counting what the buffer allocates (not only what it uses) against the
    /// budget of messages in flight; `false` appends nothing.
    fn append(&mut self, parts: &[&[u8]], limit: u64) -> bool {
        let needed = self.bytes.len() + parts.iter().map(|p| p.len()).sum::<usize>();
        let had = self.bytes.capacity();
        if needed > had {
            // Doubling, as Vec would, keeps the copies on growth amortised.
            let capacity = needed.max(had * 2);
            if !self.reservation.grow((capacity - had) as u64, limit) {
                return false;
            }
            self.bytes.reserve_exact(capacity - self.bytes.len());
        }
        for p in parts {
            self.bytes.extend_from_slice(p);
        }
        true
    }

    /// The whole message, and its share of the budget, held until the processor is done.
    fn into_message(mut self, queue_id: &str) -> (Mode, Message, Reservation) {
        if !self.in_body {
            // A message without body: two octets, not worth a refusal at end of message.
            self.bytes.extend_from_slice(b"\r\n");
        }
        let message = Message {
            queue_id: queue_id.to_string(),
            sender: self.sender,
            bytes: self.bytes,
            header_names: self.header_names,
        };
        (self.mode, message, self.reservation)
    }
}

/// What the processors share: the daemon and this connection's configuration snapshot.
pub(super) struct Context {
    pub daemon: Arc<Daemon>,
    pub config: Arc<Config>,
}

/// The queue id placeholder before DATA, as Postfix's own log writes it for refusals at RCPT.
pub(super) const NOQUEUE: &str = "NOQUEUE";

/// The MTA's client as Postfix logs it (`host[address]`), for lines without a queue id.
pub fn client_name(host: &str, socket: &SocketInfo) -> String {
    match socket {
        // Sendmail names a client without a verified name `[address]`; Postfix `unknown`.
        SocketInfo::Inet(addr) if host.is_empty() || host.starts_with('[') => {
            format!("[{}]", addr.ip())
        }
        SocketInfo::Inet(addr) => format!("{host}[{}]", addr.ip()),
        _ if host.is_empty() => "unknown".into(),
        _ => host.to_string(),
    }
}

pub struct Session {
    cx: Context,
    side: Side,
    /// The MTA's queue id once it named one (Postfix at DATA, Sendmail at MAIL; `NOQUEUE`
    /// before), for every log line.
    queue_id: String,
    /// The SMTP client the MTA reported at connect, for lines written before a queue id.
    client: String,
    msg: Option<Msg>,
    /// Stages the MTA sends without waiting for answers (`SMFIP_NR_CONN`, `_HDR`, `_BODY`,
    /// negotiated when it offers them): a refusal decided at a header field or body chunk
    /// waits in `deferred` for the next stage that is answered (the body, or end of message).
    unanswered: ProtoOpts,
    deferred: Option<Refusal>,
}

/// The first ESMTP argument exactly as the MTA sent it (e.g. `<bob@example.org>`).
fn raw_arg(args: &[CString]) -> String {
    args.first()
        .map(|a| a.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn bare_address(raw: &str) -> String {
    raw.trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .to_string()
}

impl Session {
    pub fn new(daemon: Arc<Daemon>, side: Side, client: String) -> Session {
        let config = daemon.config();
        Session {
            cx: Context { daemon, config },
            side,
            queue_id: NOQUEUE.into(),
            client,
            msg: None,
            unanswered: ProtoOpts::empty(),
            deferred: None,
        }
    }

    /// Set at negotiation, before the MTA names the client.
    pub fn set_client(&mut self, client: String) {
        self.client = client;
    }

    /// Whether the MTA waits for no answer at `stage` (one `NOREPLY_*` option).
    pub fn unanswered(&self, stage: ProtoOpts) -> bool {
        self.unanswered.contains(stage)
    }

    /// The `NOREPLY_*` options negotiated.
    pub fn set_unanswered(&mut self, stages: ProtoOpts) {
        self.unanswered = stages;
    }

    /// A refusal decided at a header the MTA did not wait for, to be given at the next answer.
    pub fn defer(&mut self, refusal: Refusal) {
        self.deferred.get_or_insert(refusal);
    }

    pub fn deferred(&self) -> bool {
        self.deferred.is_some()
    }

    pub fn take_deferred(&mut self) -> Option<Refusal> {
        self.deferred.take()
    }

    pub fn side(&self) -> Side {
        self.side
    }

    /// The queue id for log lines: known from DATA on.
    pub fn queue_id(&self) -> &str {
        &self.queue_id
    }

    /// The SMTP client as `host[address]`.
    pub fn client(&self) -> &str {
        &self.client
    }

    pub fn mail(
        &mut self,
        args: Vec<CString>,
        internal: bool,
        queue_id: Option<String>,
        reply: &mut SmtpReply,
    ) -> Result<Status, SessionError> {
        self.msg = None;
        self.deferred = None;
        self.queue_id = queue_id.unwrap_or_else(|| NOQUEUE.into());
        let sender = bare_address(&raw_arg(&args));
        let keyring = self.cx.daemon.keyring()?;
        let mode = match self.side {
            Side::Inbound if internal && sender.is_empty() => {
                Mode::Notification(crate::inbound::Transaction::new(keyring, &sender))
            }
            Side::Inbound => Mode::Inbound(crate::inbound::Transaction::new(keyring, &sender)),
            Side::Outbound => match crate::outbound::Transaction::new(keyring, &sender) {
                Some(tx) => Mode::Outbound(tx),
                None => return Ok(self.foreign_outbound(&sender, reply)),
            },
        };
        self.msg = Some(Msg {
            sender,
            mode,
            bytes: Vec::new(),
            header_names: Vec::new(),
            header_bytes: 0,
            body_bytes: 0,
            in_body: false,
            reservation: Reservation::new(self.cx.daemon.budget()),
        });
        Ok(Status::Continue)
    }

    /// Outbound mail that belongs to no managed list, per `unmanaged_outbound`.
    fn foreign_outbound(&self, sender: &str, reply: &mut SmtpReply) -> Status {
        match self.cx.config.unmanaged_outbound {
            Unmanaged::Accept => {
                tracing::debug!(
                    "{}: outbound: sender {sender} is no managed list's; passing; client={} from=<{sender}>",
                    self.queue_id,
                    self.client
                );
                Status::Accept
            }
            Unmanaged::Reject => {
                let r = Refusal::NotListMail;
                tracing::info!(
                    "{}: outbound: mail from {sender} refused: {r}; client={} from=<{sender}>",
                    self.queue_id,
                    self.client
                );
                refuse(reply, r)
            }
        }
    }

    pub fn rcpt(
        &mut self,
        args: Vec<CString>,
        reply: &mut SmtpReply,
    ) -> Result<Status, SessionError> {
        let msg = self.msg.as_mut().ok_or(SessionError::OutOfOrder("RCPT"))?;
        let raw = raw_arg(&args);
        let (outcome, who) = match &mut msg.mode {
            Mode::Inbound(tx) | Mode::Notification(tx) => (tx.rcpt(&raw), self.side.to_string()),
            Mode::Outbound(tx) => (tx.rcpt(&raw), tx.list().address.clone()),
            _ => (RcptOutcome::Accept, String::new()),
        };
        match outcome {
            RcptOutcome::Accept => Ok(Status::Continue),
            RcptOutcome::Refuse(r) => {
                let rcpt = bare_address(&raw);
                // The envelope and client as Postfix's own NOQUEUE line has them, to match it
                // (Sendmail's queue id instead of NOQUEUE: it has one from MAIL on).
                tracing::info!(
                    "{}: {who}: recipient {rcpt} refused: {r}; client={} from=<{}> to=<{rcpt}>",
                    self.queue_id,
                    self.client,
                    msg.sender
                );
                Ok(refuse(reply, r))
            }
        }
    }

    /// From DATA on the transaction is complete: settle the mode for end of message.
    pub fn data(&mut self, queue_id: Option<String>) -> Result<Status, SessionError> {
        if let Some(id) = queue_id {
            self.queue_id = id;
        }
        let msg = self.msg.as_mut().ok_or(SessionError::OutOfOrder("DATA"))?;
        let mode = std::mem::replace(&mut msg.mode, Mode::PassThrough);
        msg.mode = match mode {
            Mode::Inbound(tx) => match tx.target() {
                Target::Nobody | Target::Unmanaged => Mode::PassThrough,
                Target::KeyAddress(list) => Mode::KeyAddress(list.clone()),
                Target::List { .. } => Mode::Inbound(tx),
            },
            // Nothing that quotes a message reaches a list's posting or command address
            // without that address's rules.
            Mode::Notification(tx) => match tx.target() {
                Target::List { post, command, .. } if *post || *command => Mode::Inbound(tx),
                Target::KeyAddress(list) => Mode::KeyAddress(list.clone()),
                _ => Mode::Notification(tx),
            },
            Mode::Outbound(tx) if tx.route() == Some(crate::outbound::Route::Loopback) => {
                Mode::Loopback
            }
            other => other,
        };
        Ok(match msg.mode {
            // Nothing to do for mail that is no list's.
            Mode::PassThrough => Status::Accept,
            _ => Status::Continue,
        })
    }

    pub fn header(
        &mut self,
        name: CString,
        value: CString,
        reply: &mut SmtpReply,
    ) -> Result<Status, SessionError> {
        Ok(match self.take_header(name, value)? {
            None => Status::Continue,
            Some(r) => refuse(reply, r),
        })
    }

    /// One header field: kept, or the message's refusal (logged here, once).
    pub fn take_header(
        &mut self,
        name: CString,
        value: CString,
    ) -> Result<Option<Refusal>, SessionError> {
        let limit = self.size_limit();
        let msg = self
            .msg
            .as_mut()
            .ok_or(SessionError::OutOfOrder("header"))?;
        // The header counts against the size limit too (the MTA bounds it as well).
        msg.header_bytes += name.as_bytes().len() + value.as_bytes().len() + 4;
        if msg.size() > limit {
            return Ok(Some(self.too_large_refusal()));
        }
        // A header field with a bare CR or LF or a control character is refused here, as the
        // inbound pipeline refuses it for `process`: rebuilt as CRLF it would forge a field.
        if matches!(msg.mode, Mode::Inbound(_)) && !crate::mime::header_value_ok(value.as_bytes()) {
            let r = Refusal::MalformedHeader;
            tracing::info!("{}: {}: message refused: {r}", self.queue_id, self.side);
            self.msg = None;
            return Ok(Some(r));
        }
        let value = crate::mime::header_crlf(value.as_bytes());
        let field: [&[u8]; 4] = [name.as_bytes(), b":", &value, b"\r\n"];
        if !msg.append(&field, self.cx.config.limits.max_inflight_bytes) {
            return Ok(Some(self.over_budget_refusal()));
        }
        msg.header_names.push(name.to_string_lossy().into_owned());
        Ok(None)
    }

    /// Outbound mail must fit its encrypted copy in `max_outbound_copy_bytes` too.
    fn size_limit(&self) -> u64 {
        let limits = &self.cx.config.limits;
        match self.side {
            Side::Inbound => limits.max_message_bytes,
            Side::Outbound => limits.outbound_message_bytes(),
        }
    }

    pub fn body(&mut self, chunk: &Bytes, reply: &mut SmtpReply) -> Result<Status, SessionError> {
        Ok(match self.take_body(chunk)? {
            None => Status::Continue,
            Some(r) => refuse(reply, r),
        })
    }

    /// One body chunk: kept (or not needed), or the message's refusal (logged here, once).
    pub fn take_body(&mut self, chunk: &Bytes) -> Result<Option<Refusal>, SessionError> {
        let limit = self.size_limit();
        let msg = self.msg.as_mut().ok_or(SessionError::OutOfOrder("body"))?;
        if msg.size() + chunk.len() as u64 > limit {
            return Ok(Some(self.too_large_refusal()));
        }
        // Owner and bounce mail, and Mailman's loopback, pass as they are: only the header
        // matters to us.
        match &msg.mode {
            Mode::Inbound(tx) if !tx.needs_body() => return Ok(None),
            Mode::Loopback => return Ok(None),
            _ => {}
        }
        // The blank line that ends the header goes in before the first chunk.
        let separator: &[u8] = if msg.in_body { b"" } else { b"\r\n" };
        if !msg.append(
            &[separator, chunk],
            self.cx.config.limits.max_inflight_bytes,
        ) {
            return Ok(Some(self.over_budget_refusal()));
        }
        msg.in_body = true;
        msg.body_bytes += chunk.len();
        Ok(None)
    }

    /// All sessions together hold as much as `max_inflight_bytes` allows: the client retries.
    fn over_budget_refusal(&mut self) -> Refusal {
        let r = Refusal::OverMemoryBudget;
        tracing::info!("{}: {}: message deferred: {r}", self.queue_id(), self.side);
        self.msg = None;
        r
    }

    fn too_large_refusal(&mut self) -> Refusal {
        let r = Refusal::MessageTooLarge;
        tracing::info!("{}: {}: message refused: {r}", self.queue_id(), self.side);
        self.msg = None;
        r
    }

    pub fn abort(&mut self) {
        self.msg = None;
        self.deferred = None;
    }

    /// End of message: the mode's processor decides.
    pub async fn eom(
        &mut self,
        queue_id: &str,
        actions: &EomActions,
        reply: &mut SmtpReply,
    ) -> Result<Status, SessionError> {
        self.queue_id = queue_id.to_string();
        let msg = self
            .msg
            .take()
            .ok_or(SessionError::OutOfOrder("end of message"))?;
        let (mode, message, _held) = msg.into_message(queue_id);
        let cx = &self.cx;
        let failed = failure_label(&mode);
        let result = match mode {
            Mode::Inbound(tx) => inbound::finish(cx, tx, message, actions, reply).await,
            Mode::Outbound(tx) => outbound::finish(cx, tx, message, actions).await,
            Mode::KeyAddress(list) => key_address::finish(cx, list, message, actions).await,
            Mode::Notification(_) => notification::finish(cx, message, actions).await,
            Mode::Loopback => {
                let rewrite = crate::inbound::strip_own_headers();
                apply(actions, &message.header_names, &rewrite).await?;
                Ok(Status::Continue)
            }
            Mode::PassThrough => Ok(Status::Accept),
        };
        // The processors count their own decisions; an error becomes the callback's tempfail.
        if let (Err(_), Some((list, direction))) = (&result, failed) {
            crate::metrics::decision(&list, direction, crate::metrics::Outcome::Tempfail);
        }
        result
    }
}

/// The list and direction an end-of-message error is counted under, for modes that decide.
fn failure_label(mode: &Mode) -> Option<(String, crate::metrics::Direction)> {
    use crate::metrics::Direction;
    match mode {
        Mode::Inbound(tx) => match tx.target() {
            Target::List { list, .. } => Some((list.address.clone(), Direction::Inbound)),
            _ => None,
        },
        Mode::Outbound(tx) => Some((tx.list().address.clone(), Direction::Outbound)),
        Mode::KeyAddress(list) => Some((list.address.clone(), Direction::KeyAddress)),
        _ => None,
    }
}
