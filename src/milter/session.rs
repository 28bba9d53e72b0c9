//! Per-connection session: a configuration snapshot taken at connect, per-message state reset
//! at MAIL and dropped on abort.

use crate::daemon::Daemon;
use crate::inbound::{self, Envelope, ListAddress, Verdict};
use crate::keys::{Keyring, ListKeys};
use crate::message::{Reply, Rewrite};
use crate::outbound::{self, RcptDecision};
use bytes::Bytes;
use indymilter::{ContextActions, EomActions, SetErrorReply, SmtpReply, Status};
use std::ffi::CString;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

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

/// What kind of transaction the recipients so far make.
enum Mode {
    /// No recipient yet.
    Empty,
    /// Only recipients that are no managed list's (inbound) — passed untouched.
    Unmanaged,
    /// Inbound to one list; `enforce` when its posting address is among the recipients,
    /// `command` when one of its command addresses is.
    InboundList {
        list: Arc<ListKeys>,
        enforce: bool,
        command: bool,
    },
    /// Outbound from one list, encrypting to `recipients` (as given at RCPT).
    OutboundList {
        list: Arc<ListKeys>,
        loopback: Option<bool>,
        recipients: Vec<String>,
    },
    /// Outbound mail that belongs to no managed list: passed untouched.
    Foreign,
    /// Mail to a list's key address: answered by listcrypt, never passed on.
    KeyAddress { list: Arc<ListKeys> },
    /// A notification Postfix generated itself (null sender, daemon port 0): checked at end of
    /// message for quoted list posts.
    Notification,
}

struct Msg {
    sender: String,
    keyring: Arc<Keyring>,
    mode: Mode,
    /// The MTA's queue id once DATA made it known (`NONE` before).
    queue_id: String,
    headers: Vec<(String, Vec<u8>)>,
    header_bytes: usize,
    body: Vec<u8>,
}

pub struct Session {
    daemon: Arc<Daemon>,
    config: Arc<crate::config::Config>,
    side: Side,
    msg: Option<Msg>,
}

fn set_reply(reply: &mut SmtpReply, r: &Reply) -> Status {
    let text = [r.reason.as_str()];
    if reply.set_error_reply(r.code, Some(r.xcode), text).is_err() {
        tracing::error!("could not set SMTP reply {r}");
        return Status::Tempfail;
    }
    if r.is_temporary() {
        Status::Tempfail
    } else {
        Status::Reject
    }
}

/// The first ESMTP argument exactly as the MTA sent it (e.g. `<bob@example.org>`).
fn raw_arg(args: &[CString]) -> String {
    args.first()
        .map(|a| a.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn normalized(addrs: &[String]) -> Vec<String> {
    addrs
        .iter()
        .map(|a| crate::keys::normalize_address(a))
        .collect()
}

/// `451 4.3.0` for a failure of ours (the MTA keeps the mail and retries).
pub fn internal_failure(reply: &mut SmtpReply) -> Status {
    set_reply(reply, &Reply::internal("temporary failure, please retry"))
}

fn arg_address(args: &[CString]) -> String {
    args.first()
        .map(|a| {
            a.to_string_lossy()
                .trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_string()
        })
        .unwrap_or_default()
}

impl Session {
    pub fn new(daemon: Arc<Daemon>, side: Side) -> Session {
        let config = daemon.config();
        Session {
            daemon,
            config,
            side,
            msg: None,
        }
    }

    pub fn mail(&mut self, args: Vec<CString>, internal: bool, reply: &mut SmtpReply) -> Status {
        let sender = arg_address(&args);
        let keyring = match self.daemon.keyring() {
            Ok(k) => k,
            Err(e) => {
                tracing::error!("NONE: {}: cannot load keys and bindings: {e}", self.side);
                self.msg = None;
                return set_reply(reply, &Reply::internal("temporary failure, please retry"));
            }
        };
        let mode = match self.side {
            Side::Inbound if internal && sender.is_empty() => Mode::Notification,
            Side::Inbound => Mode::Empty,
            Side::Outbound => match outbound::list_for_sender(&keyring, &sender) {
                Some(list) => Mode::OutboundList {
                    list,
                    loopback: None,
                    recipients: Vec::new(),
                },
                None => Mode::Foreign,
            },
        };
        if let Mode::Foreign = mode {
            self.msg = None;
            return match self.config.unmanaged_outbound {
                crate::config::Unmanaged::Accept => {
                    tracing::debug!(
                        "NONE: outbound: sender {sender} is no managed list's; passing"
                    );
                    Status::Accept
                }
                crate::config::Unmanaged::Reject => {
                    let r = Reply::new(
                        "550",
                        "5.7.1",
                        "this listener only carries mail of encrypted lists",
                    );
                    tracing::info!("NONE: outbound: mail from {sender} refused: {r}");
                    set_reply(reply, &r)
                }
            };
        }
        self.msg = Some(Msg {
            sender,
            keyring,
            mode,
            queue_id: "NONE".into(),
            headers: Vec::new(),
            header_bytes: 0,
            body: Vec::new(),
        });
        Status::Continue
    }

    pub fn rcpt(&mut self, args: Vec<CString>, reply: &mut SmtpReply) -> Status {
        let Some(msg) = self.msg.as_mut() else {
            tracing::error!("NONE: {}: RCPT without MAIL", self.side);
            return internal_failure(reply);
        };
        let rcpt = arg_address(&args);
        let mixed = Reply::new("452", "4.5.3", "one list per transaction, please retry");
        match &mut msg.mode {
            Mode::KeyAddress { .. } => {
                tracing::info!("NONE: inbound: recipient {rcpt} deferred: {}", mixed.reason);
                set_reply(reply, &mixed)
            }
            Mode::Empty | Mode::Unmanaged | Mode::InboundList { .. } => {
                let found = inbound::lookup(&msg.keyring, &rcpt);
                match (&mut msg.mode, found) {
                    (Mode::Empty, Some((list, ListAddress::Key))) => {
                        msg.mode = Mode::KeyAddress { list };
                    }
                    // The key address is answered by listcrypt alone: never mixed.
                    (_, Some((_, ListAddress::Key))) => {
                        tracing::info!(
                            "NONE: inbound: recipient {rcpt} deferred: {}",
                            mixed.reason
                        );
                        return set_reply(reply, &mixed);
                    }
                    (Mode::Empty, Some((list, kind))) => {
                        msg.mode = Mode::InboundList {
                            list,
                            enforce: kind.enforced(),
                            command: kind.is_command(),
                        };
                    }
                    (Mode::Empty, None) => msg.mode = Mode::Unmanaged,
                    (Mode::Unmanaged, None) => {}
                    (
                        Mode::InboundList {
                            list,
                            enforce,
                            command,
                        },
                        Some((other, kind)),
                    ) if other.address == list.address => {
                        *enforce |= kind.enforced();
                        *command |= kind.is_command();
                    }
                    _ => {
                        // Decrypted text must reach nobody but the list: split the transaction.
                        tracing::info!(
                            "NONE: inbound: recipient {rcpt} deferred: {}",
                            mixed.reason
                        );
                        return set_reply(reply, &mixed);
                    }
                }
                Status::Continue
            }
            Mode::OutboundList {
                list,
                loopback,
                recipients,
            } => match outbound::rcpt(&msg.keyring, list, &rcpt, *loopback) {
                RcptDecision::Encrypt => {
                    *loopback = Some(false);
                    // Kept exactly as given: Postfix's delete_recipient matches it verbatim.
                    recipients.push(raw_arg(&args));
                    Status::Continue
                }
                RcptDecision::Loopback => {
                    *loopback = Some(true);
                    Status::Continue
                }
                RcptDecision::Refuse(r) => {
                    tracing::info!("NONE: {}: recipient {rcpt} refused: {r}", list.address);
                    set_reply(reply, &r)
                }
            },
            Mode::Foreign | Mode::Notification => Status::Continue,
        }
    }

    pub fn data(&mut self, queue_id: Option<String>, reply: &mut SmtpReply) -> Status {
        if let (Some(msg), Some(id)) = (self.msg.as_mut(), queue_id) {
            msg.queue_id = id;
        }
        match self.msg.as_ref().map(|m| &m.mode) {
            // Nothing to do for mail that is no list's, nor for Mailman's loopback.
            Some(Mode::Unmanaged) | Some(Mode::Foreign) => Status::Accept,
            // Owner and bounce addresses go on: forged listcrypt fields are removed at the end.
            Some(Mode::OutboundList {
                loopback: Some(true),
                ..
            }) => Status::Accept,
            Some(_) => Status::Continue,
            None => {
                tracing::error!("NONE: {}: DATA without a transaction", self.side);
                internal_failure(reply)
            }
        }
    }

    pub fn header(&mut self, name: CString, value: CString, reply: &mut SmtpReply) -> Status {
        let Some(msg) = self.msg.as_mut() else {
            tracing::error!("NONE: {}: header without a transaction", self.side);
            return internal_failure(reply);
        };
        // The header counts against the size limit too (the MTA bounds it as well).
        msg.header_bytes += name.as_bytes().len() + value.as_bytes().len() + 4;
        if msg.header_bytes as u64 > self.config.limits.max_message_bytes {
            let r = Reply::new("552", "5.3.4", "message exceeds the size limit");
            tracing::info!("{}: {}: message refused: {r}", msg.queue_id, self.side);
            self.msg = None;
            return set_reply(reply, &r);
        }
        msg.headers
            .push((name.to_string_lossy().into_owned(), value.into_bytes()));
        Status::Continue
    }

    pub fn body(&mut self, chunk: &Bytes, reply: &mut SmtpReply) -> Status {
        let Some(msg) = self.msg.as_mut() else {
            tracing::error!("NONE: {}: body without a transaction", self.side);
            return internal_failure(reply);
        };
        if (msg.header_bytes + msg.body.len() + chunk.len()) as u64
            > self.config.limits.max_message_bytes
        {
            let r = Reply::new("552", "5.3.4", "message exceeds the size limit");
            tracing::info!("{}: {}: message refused: {r}", msg.queue_id, self.side);
            self.msg = None;
            return set_reply(reply, &r);
        }
        // Owner and bounce mail is passed as it is: only its header matters to us.
        if let Mode::InboundList {
            enforce: false,
            command: false,
            ..
        } = msg.mode
        {
            return Status::Continue;
        }
        msg.body.extend_from_slice(chunk);
        Status::Continue
    }

    fn message_timeout(&self) -> Duration {
        Duration::from_secs(self.config.limits.message_timeout)
    }

    pub fn abort(&mut self) {
        self.msg = None;
    }

    pub async fn eom(
        &mut self,
        queue_id: &str,
        actions: &EomActions,
        reply: &mut SmtpReply,
    ) -> Status {
        let Some(msg) = self.msg.take() else {
            tracing::error!(
                "{queue_id}: {}: end of message without a transaction",
                self.side
            );
            return internal_failure(reply);
        };
        let mut message = Vec::with_capacity(msg.body.len() + 4096);
        for (name, value) in &msg.headers {
            message.extend_from_slice(name.as_bytes());
            message.push(b':');
            message.extend_from_slice(&crate::mime::to_crlf(value));
            message.extend_from_slice(b"\r\n");
        }
        message.extend_from_slice(b"\r\n");
        message.extend_from_slice(&msg.body);
        let header_names: Vec<String> = msg.headers.iter().map(|(n, _)| n.clone()).collect();

        match msg.mode {
            Mode::InboundList {
                list,
                enforce: false,
                command: false,
            } => {
                // Owner mail and bounces reach Mailman as they are, minus any forged copy of
                // the header fields listcrypt sets.
                let rewrite = inbound::strip_own_headers();
                if header_names.iter().any(|n| rewrite.removes(n)) {
                    if let Err(e) = apply(actions, &header_names, &rewrite).await {
                        tracing::error!(
                            "{queue_id}: {}: could not rewrite the message: {e}",
                            list.address
                        );
                        return set_reply(reply, &Reply::internal("internal error"));
                    }
                    tracing::info!(
                        "{queue_id}: {}: forged listcrypt header fields removed",
                        list.address
                    );
                }
                Status::Accept
            }
            Mode::InboundList { list, enforce, .. } => {
                let limits = self.config.limits.clone();
                let sender = msg.sender.clone();
                let l = list.clone();
                // The posting address among the recipients makes the strict post rules apply.
                let work = tokio::task::spawn_blocking(move || {
                    inbound::process_transaction(
                        &Envelope { sender: &sender },
                        &message,
                        &l,
                        &limits,
                        enforce,
                    )
                });
                let verdict = match with_progress(work, actions, self.message_timeout()).await {
                    Ok(v) => v,
                    Err(e) => Verdict::Tempfail(Reply::internal(format!("internal error: {e}"))),
                };
                let verdict = match &verdict {
                    Verdict::Deliver {
                        replay: Some(d), ..
                    } => {
                        let retain = inbound::replay_retention(&self.config.limits);
                        match self.daemon.store().replay_record(&list.address, d, retain) {
                            Ok(seen) => inbound::apply_replay(verdict, seen, &list),
                            Err(e) => {
                                tracing::error!("{queue_id}: {}: replay record: {e}", list.address);
                                return set_reply(
                                    reply,
                                    &Reply::internal("state store unavailable"),
                                );
                            }
                        }
                    }
                    _ => verdict,
                };
                let who = &list.address;
                match verdict {
                    Verdict::Deliver {
                        rewrite,
                        hold,
                        summary,
                        ..
                    } => {
                        if let Err(e) = apply(actions, &header_names, &rewrite).await {
                            tracing::error!(
                                "{queue_id}: {who}: could not rewrite the message: {e}"
                            );
                            return set_reply(reply, &Reply::internal("internal error"));
                        }
                        match hold {
                            Some(r) => tracing::info!(
                                "{queue_id}: {who}: {summary}; held for moderation: {r}"
                            ),
                            None => tracing::info!("{queue_id}: {who}: {summary}"),
                        }
                        Status::Continue
                    }
                    Verdict::Reject(r) | Verdict::Tempfail(r) => {
                        tracing::info!("{queue_id}: {who}: post from {} refused: {r}", msg.sender);
                        set_reply(reply, &r)
                    }
                    Verdict::Discard(why) => {
                        tracing::info!(
                            "{queue_id}: {who}: post from {} discarded: {why}",
                            msg.sender
                        );
                        Status::Discard
                    }
                }
            }
            Mode::OutboundList {
                list, recipients, ..
            } => {
                let list_address = list.address.clone();
                match self
                    .outbound_eom(
                        queue_id,
                        &msg.sender,
                        list,
                        recipients,
                        message,
                        &header_names,
                        actions,
                    )
                    .await
                {
                    Ok(status) => status,
                    Err(e) => {
                        tracing::error!("{queue_id}: {list_address}: {e}; temporary failure");
                        set_reply(reply, &Reply::internal("temporary failure, please retry"))
                    }
                }
            }
            Mode::KeyAddress { list } => {
                match self
                    .key_address_eom(queue_id, &list, &msg.sender, message, actions)
                    .await
                {
                    Ok(()) => Status::Discard, // consumed: Mailman never sees it
                    Err(e) => {
                        tracing::error!("{queue_id}: {}: key address: {e}", list.address);
                        set_reply(reply, &Reply::internal("temporary failure, please retry"))
                    }
                }
            }
            Mode::Notification => {
                let Some(rewrite) = crate::dsn::reduce(&message, &msg.keyring) else {
                    return Status::Accept;
                };
                if let Err(e) = apply(actions, &header_names, &rewrite).await {
                    tracing::error!("{queue_id}: could not reduce a delivery notification: {e}");
                    return set_reply(reply, &Reply::internal("internal error"));
                }
                tracing::info!("{queue_id}: delivery notification for list mail reduced to a content-free notice");
                Status::Continue
            }
            _ => Status::Accept,
        }
    }

    /// Key address end of message: process (reading the store), hand the reply to the MTA,
    /// and only then commit the outcome's writes. An `Err` is a 451: before the reply is out
    /// nothing is recorded, so the sender's retry is answered again.
    async fn key_address_eom(
        &self,
        queue_id: &str,
        list: &Arc<ListKeys>,
        sender: &str,
        message: Vec<u8>,
        actions: &EomActions,
    ) -> Result<(), String> {
        let daemon = self.daemon.clone();
        let config = self.config.clone();
        let (l, sender) = (list.clone(), sender.to_string());
        let work = tokio::task::spawn_blocking(move || {
            let processor = crate::key_address::Processor {
                list: &l,
                store: daemon.store(),
                keyring_dir: &config.keyring_dir,
                limits: &config.limits,
            };
            processor.process(&sender, &message, std::time::SystemTime::now())
        });
        let outcome = with_progress(work, actions, self.message_timeout())
            .await?
            .map_err(|e| e.to_string())?;
        let queued = match &outcome.reply {
            Some(out) => {
                let to = [out.to.clone()];
                let qid =
                    crate::reinject::send_batch(&self.config.reinject_smtp, "", &to, &out.message)
                        .await
                        .map_err(|e| format!("{}; reply not sent: {e}", outcome.summary))?;
                format!("; reply queued as {qid}")
            }
            None => String::new(),
        };
        let (daemon, config) = (self.daemon.clone(), self.config.clone());
        let summary = outcome.summary.clone();
        let commit = tokio::task::spawn_blocking(move || {
            outcome.commit(daemon.store(), &config.keyring_dir)
        });
        with_progress(commit, actions, self.message_timeout())
            .await?
            .map_err(|e| format!("{summary}{queued}; not recorded: {e}"))?;
        tracing::info!("{queue_id}: {}: {summary}{queued}", list.address);
        Ok(())
    }

    /// Outbound end of message: skip recipients an earlier attempt already reinjected, batch
    /// the rest, encrypt every batch, reinject batches 2..n (journaled), and keep batch 1 in
    /// this transaction.
    #[allow(clippy::too_many_arguments)]
    async fn outbound_eom(
        &self,
        queue_id: &str,
        sender: &str,
        list: Arc<ListKeys>,
        recipients: Vec<String>,
        message: Vec<u8>,
        header_names: &[String],
        actions: &EomActions,
    ) -> Result<Status, String> {
        let store = self.daemon.store();
        let digest = body_digest(&message);
        let already: Vec<String> = store
            .journal_sent(sender, &digest)
            .map_err(|e| e.to_string())?;
        let (done, todo): (Vec<String>, Vec<String>) = recipients
            .into_iter()
            .partition(|r| already.contains(&crate::keys::normalize_address(r)));
        for r in &done {
            actions
                .delete_recipient(r.as_str())
                .await
                .map_err(|e| format!("delete recipient: {e}"))?;
        }
        if todo.is_empty() {
            tracing::info!(
                "{queue_id}: {}: every recipient already got this message in an earlier attempt; discarded",
                list.address
            );
            return Ok(Status::Discard);
        }
        let l = list.clone();
        let m = Arc::new(message);
        let m2 = m.clone();
        let work = tokio::task::spawn_blocking(move || {
            let batches = outbound::plan_batches(&l, &todo);
            outbound::encrypt_batches(&m2, &l, &batches).map(|r| (batches, r))
        });
        let (batches, rewrites) = with_progress(work, actions, self.message_timeout())
            .await
            .map_err(|e| format!("internal error: {e}"))?
            .map_err(|e| format!("cannot encrypt: {e}"))?;
        if batches.is_empty() {
            return Err("no batch planned".into());
        }
        let addr = self.config.reinject_smtp.clone();
        let retain = JOURNAL_RETENTION_SECS;
        let mut reinjected = Vec::new();
        for (batch, rewrite) in batches.iter().zip(&rewrites).skip(1) {
            let _ = actions.progress().await;
            let copy = rewrite.render(&m);
            let journal = |qid: &str| {
                store
                    .journal_record(sender, &digest, &normalized(batch), qid, retain)
                    .map_err(|e| e.to_string())
            };
            let qid = crate::reinject::send_batch_then(&addr, sender, batch, &copy, journal)
                .await
                .map_err(|e| e.to_string())?;
            reinjected.push(format!("{qid} ({} recipient(s))", batch.len()));
        }
        for batch in batches.iter().skip(1) {
            for r in batch {
                actions
                    .delete_recipient(r.as_str())
                    .await
                    .map_err(|e| format!("delete recipient: {e}"))?;
            }
        }
        apply(actions, header_names, &rewrites[0])
            .await
            .map_err(|e| format!("could not rewrite the message: {e}"))?;
        let n: usize = batches.iter().map(|b| b.len()).sum();
        let mut line = format!(
            "{queue_id}: {}: message from {sender} encrypted to {n} recipient(s) in {} batch(es), signed by the list",
            list.address,
            batches.len()
        );
        if !reinjected.is_empty() {
            line.push_str(&format!("; reinjected as {}", reinjected.join(", ")));
        }
        if !done.is_empty() {
            line.push_str(&format!(
                "; {} recipient(s) already served by an earlier attempt",
                done.len()
            ));
        }
        tracing::info!("{line}");
        Ok(Status::Continue)
    }
}

/// Journal entries outlive Mailman's retry period (5 days) with a margin.
const JOURNAL_RETENTION_SECS: u64 = 10 * 24 * 3600;

/// The journal key's message part: SHA-256 of the Message-ID and the body. Not the whole
/// header: the MTA's own Received field differs on every attempt. The Message-ID keeps two
/// posts with the same body apart (Mailman reuses it only across one post's chunks).
fn body_digest(message: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    match crate::mime::Entity::parse(message) {
        Ok(e) => {
            if let Some(id) = e.get("Message-ID") {
                h.update(crate::mime::header_text(id).as_bytes());
            }
            h.update([0]);
            h.update(e.body);
        }
        Err(_) => h.update(message),
    }
    h.finalize().into()
}

/// Awaits CPU work, telling the MTA we are alive so its content timeout does not fire.
/// Past `limit` we stop waiting and answer 451 (our own timeout): the MTA keeps the mail.
async fn with_progress<T>(
    mut work: tokio::task::JoinHandle<T>,
    actions: &EomActions,
    limit: Duration,
) -> Result<T, String> {
    let deadline = tokio::time::Instant::now() + limit;
    // Wake for progress every 10 s, and exactly at the deadline.
    loop {
        let tick = deadline
            .saturating_duration_since(tokio::time::Instant::now())
            .min(Duration::from_secs(10));
        tokio::select! {
            r = &mut work => return r.map_err(|e| e.to_string()),
            _ = tokio::time::sleep(tick) => {
                if tokio::time::Instant::now() >= deadline {
                    work.abort();
                    return Err(format!("timed out after {} s", limit.as_secs()));
                }
                let _ = actions.progress().await;
            }
        }
    }
}

/// Applies a rewrite through milter actions: delete each removed field from its last
/// occurrence down (indices are per name, 1-based), append the new fields, replace the body.
async fn apply(
    actions: &EomActions,
    names: &[String],
    rewrite: &Rewrite,
) -> Result<(), indymilter::ActionError> {
    for name in &rewrite.remove {
        let count = names
            .iter()
            .filter(|n| n.eq_ignore_ascii_case(name))
            .count();
        for index in (1..=count).rev() {
            let name = names
                .iter()
                .rev()
                .find(|n| n.eq_ignore_ascii_case(name))
                .expect("counted")
                .clone();
            actions
                .change_header(name, index as i32, None::<CString>)
                .await?;
        }
    }
    for (name, value) in &rewrite.add {
        // LEADING_SPACE is negotiated: the value carries its own space.
        let value = format!(" {value}");
        actions.add_header(name.as_str(), value.as_str()).await?;
    }
    if let Some(body) = &rewrite.body {
        for chunk in body.chunks(65_535) {
            actions.replace_body(chunk).await?;
        }
    }
    Ok(())
}
