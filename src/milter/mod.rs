//! The indymilter adapter: thin callbacks that fetch the per-connection session, call one
//! method, and turn its `Err` into `451 4.3.0` with one log line (`settle`, the only place).

mod actions;
mod archive;
mod inbound;
mod key_address;
mod notification;
mod outbound;
mod session;

use crate::keys::KeyError;
use crate::refusal::{Internal, Refusal};
use crate::state::Daemon;
use crate::store::StoreError;
use indymilter::{Actions, Callbacks, Config as MilterConfig, MacroStage, ProtoOpts, Status};
use session::{Session, NOQUEUE};
use std::ffi::CString;
use std::sync::Arc;

pub use session::Side;

/// A failure of ours while handling a message: always a temporary failure for the MTA.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("{0} without a transaction")]
    OutOfOrder(&'static str),
    #[error("cannot load keys and bindings: {0}")]
    Keys(#[from] KeyError),
    #[error("state store: {0}")]
    Store(#[from] StoreError),
    #[error("milter action failed: {0}")]
    Action(#[from] indymilter::ActionError),
    #[error("timed out after {0} s")]
    Timeout(u64),
    #[error("worker failed: {0}")]
    Worker(#[from] tokio::task::JoinError),
    #[error("cannot encrypt: {0}")]
    Plan(#[from] crate::outbound::PlanError),
    #[error("reinjection: {0}")]
    Reinject(#[from] crate::reinject::ReinjectError),
    #[error("journal: {0}")]
    Journal(String),
    #[error("key address: {0}")]
    KeyAddress(#[from] crate::key_address::KeyAddressError),
    #[error("archive: {0}")]
    Archive(#[from] crate::archive::ArchiveError),
}

impl SessionError {
    fn cause(&self) -> Internal {
        match self {
            SessionError::Keys(_) | SessionError::Store(_) => Internal::State,
            SessionError::Archive(crate::archive::ArchiveError::Store(_)) => Internal::State,
            SessionError::Timeout(_) => Internal::Timeout,
            SessionError::Plan(crate::outbound::PlanError::Timeout) => Internal::Timeout,
            _ => Internal::Failure,
        }
    }
}

/// The one place where a failure of ours becomes `451 4.3.0` and a log line with the queue id.
fn settle(
    result: Result<Status, SessionError>,
    session: &Session,
    reply: &mut indymilter::SmtpReply,
) -> Status {
    match result {
        Ok(status) => status,
        Err(e) => {
            log_failure(&e, session);
            actions::refuse(reply, Refusal::Internal(e.cause()))
        }
    }
}

/// The log line of a failure of ours (its reply is `451 4.3.0`).
fn log_failure(e: &SessionError, session: &Session) {
    if session.queue_id() == NOQUEUE {
        tracing::error!(
            "{NOQUEUE}: {}: {e}; temporary failure; client={}",
            session.side(),
            session.client()
        );
    } else {
        tracing::error!(
            "{}: {}: {e}; temporary failure",
            session.queue_id(),
            session.side()
        );
    }
}

/// A stage the MTA does not wait for: a refusal decided here waits for the next answered
/// one, and once refused, the rest of the message is not looked at.
fn unanswered(
    session: &mut Session,
    stage: impl FnOnce(&mut Session) -> Result<Option<Refusal>, SessionError>,
) -> Status {
    if !session.deferred() {
        match stage(session) {
            Ok(None) => {}
            Ok(Some(r)) => session.defer(r),
            Err(e) => {
                log_failure(&e, session);
                session.defer(Refusal::Internal(e.cause()));
            }
        }
    }
    Status::Noreply
}

/// The first answered stage after a refused header field or body chunk gives the refusal
/// (logged when it was decided).
fn deferred(session: &mut Session, reply: &mut indymilter::SmtpReply) -> Status {
    match session.take_deferred() {
        Some(r) => actions::refuse(reply, r),
        None => Status::Continue,
    }
}

/// The stages listcrypt does not need to answer, where the MTA offers it.
const UNANSWERED: ProtoOpts = ProtoOpts::NOREPLY_CONNECT
    .union(ProtoOpts::NOREPLY_HEADER)
    .union(ProtoOpts::NOREPLY_BODY);

/// Actions the MTA must grant: header edits and body replacement (both sides), recipient
/// deletion (batch splitting), and inbound the envelope sender (`inbound_envelope_sender`).
fn needed_actions(side: Side) -> Actions {
    let both =
        Actions::ADD_HEADER | Actions::CHANGE_HEADER | Actions::REPLACE_BODY | Actions::DELETE_RCPT;
    match side {
        Side::Inbound => both | Actions::CHANGE_SENDER,
        Side::Outbound => both,
    }
}

/// The milter callbacks of one listener: negotiation and connection here, the transaction's
/// callbacks in `transaction_callbacks`.
pub fn callbacks(daemon: Arc<Daemon>, side: Side) -> Callbacks<Session> {
    let negotiated = daemon.clone();
    let cb = Callbacks::new()
        .on_negotiate(move |cx, actions, opts| {
            let daemon = negotiated.clone();
            Box::pin(async move {
                let needed = needed_actions(side);
                if !actions.contains(needed) || !opts.contains(ProtoOpts::LEADING_SPACE) {
                    tracing::error!(
                        "{side}: the MTA does not offer the milter actions listcrypt needs \
                         (header change, body replacement, recipient deletion, inbound sender \
                         change, leading space); refusing service"
                    );
                }
                cx.requested_actions = needed;
                cx.requested_opts |= ProtoOpts::LEADING_SPACE;
                // Connect, header fields and body chunks without a round trip each, where the
                // MTA offers it (Postfix and Sendmail do): connect is never refused, and a
                // refusal decided at a header field or body chunk is given at the next answer
                // (end of message at the latest), which the SMTP client sees the same: after
                // DATA.
                let unanswered = opts & UNANSWERED;
                tracing::debug!("{side}: the MTA waits for no answer at {unanswered:?}");
                if !unanswered.is_empty() {
                    cx.requested_opts |= unanswered;
                    let mut session = Session::new(daemon.clone(), side, String::new());
                    session.set_unanswered(unanswered);
                    cx.data = Some(session);
                }
                // Requesting macros replaces Postfix's defaults: ask only for what we use. A
                // daemon port of 0 marks mail that Postfix made itself (DSNs).
                cx.requested_macros.insert(
                    MacroStage::Connect,
                    CString::new("{daemon_port}").expect("no NUL"),
                );
                // Sendmail knows the queue id from MAIL on (Postfix from DATA): RCPT refusals
                // then name it, as Sendmail's own log lines do.
                for stage in [
                    MacroStage::Mail,
                    MacroStage::Data,
                    MacroStage::Eoh,
                    MacroStage::Eom,
                ] {
                    cx.requested_macros
                        .insert(stage, CString::new("i").expect("no NUL"));
                }
                Status::Continue
            })
        })
        .on_connect(move |cx, host, addr| {
            let daemon = daemon.clone();
            Box::pin(async move {
                let client = session::client_name(&host.to_string_lossy(), &addr);
                match cx.data.as_mut() {
                    Some(session) => {
                        session.set_client(client);
                        if session.unanswered(ProtoOpts::NOREPLY_CONNECT) {
                            return Status::Noreply;
                        }
                    }
                    None => cx.data = Some(Session::new(daemon, side, client)),
                }
                Status::Continue
            })
        });
    transaction_callbacks(cb)
}

/// MAIL to end of message: each fetches the session, calls one method and settles.
fn transaction_callbacks(cb: Callbacks<Session>) -> Callbacks<Session> {
    let cb = cb
        .on_mail(|cx, args| {
            Box::pin(async move {
                let internal = cx
                    .macros
                    .get(c"{daemon_port}")
                    .is_some_and(|p| p.to_bytes() == b"0");
                let queue_id = queue_id_macro(&cx.macros);
                match cx.data.as_mut() {
                    Some(s) => {
                        let r = s.mail(args, internal, queue_id, &mut cx.reply);
                        settle(r, s, &mut cx.reply)
                    }
                    None => missing_session(&mut cx.reply),
                }
            })
        })
        .on_rcpt(|cx, args| {
            Box::pin(async move {
                match cx.data.as_mut() {
                    Some(s) => {
                        let r = s.rcpt(args, &mut cx.reply);
                        settle(r, s, &mut cx.reply)
                    }
                    None => missing_session(&mut cx.reply),
                }
            })
        })
        .on_data(|cx| {
            Box::pin(async move {
                // Postfix knows the queue id from DATA on: the refusals that follow name it.
                let queue_id = queue_id_macro(&cx.macros);
                match cx.data.as_mut() {
                    Some(s) => {
                        let r = s.data(queue_id);
                        settle(r, s, &mut cx.reply)
                    }
                    None => missing_session(&mut cx.reply),
                }
            })
        });
    content_callbacks(cb)
}

/// The message itself: header, body, end of message, abort.
fn content_callbacks(cb: Callbacks<Session>) -> Callbacks<Session> {
    cb.on_header(|cx, name, value| {
        Box::pin(async move {
            match cx.data.as_mut() {
                Some(s) if s.unanswered(ProtoOpts::NOREPLY_HEADER) => {
                    unanswered(s, |s| s.take_header(name, value))
                }
                Some(s) => {
                    let r = s.header(name, value, &mut cx.reply);
                    settle(r, s, &mut cx.reply)
                }
                None => missing_session(&mut cx.reply),
            }
        })
    })
    .on_body(|cx, chunk| {
        Box::pin(async move {
            match cx.data.as_mut() {
                Some(s) if s.unanswered(ProtoOpts::NOREPLY_BODY) => {
                    unanswered(s, |s| s.take_body(&chunk))
                }
                Some(s) if s.deferred() => deferred(s, &mut cx.reply),
                Some(s) => {
                    let r = s.body(&chunk, &mut cx.reply);
                    settle(r, s, &mut cx.reply)
                }
                None => missing_session(&mut cx.reply),
            }
        })
    })
    .on_eom(|cx| {
        Box::pin(async move {
            let queue_id = cx
                .macros
                .get(c"i")
                .map(|v| v.to_string_lossy().into_owned())
                .unwrap_or_else(|| NOQUEUE.into());
            match cx.data.as_mut() {
                Some(s) if s.deferred() => deferred(s, &mut cx.reply),
                Some(s) => {
                    let r = s.eom(&queue_id, &cx.actions, &mut cx.reply).await;
                    settle(r, s, &mut cx.reply)
                }
                None => missing_session(&mut cx.reply),
            }
        })
    })
    .on_abort(|cx| {
        Box::pin(async move {
            if let Some(s) = cx.data.as_mut() {
                s.abort();
            }
            Status::Continue
        })
    })
}

/// The MTA's queue id (macro `i`), if it sent a non-empty one.
fn queue_id_macro(macros: &indymilter::Macros) -> Option<String> {
    macros
        .get(c"i")
        .map(|v| v.to_string_lossy().into_owned())
        .filter(|v| !v.is_empty())
}

/// Our own failure: never a silent pass, always `451 4.3.0` with a log line.
fn missing_session(reply: &mut indymilter::SmtpReply) -> Status {
    tracing::error!("{NOQUEUE}: milter session state missing; temporary failure");
    actions::refuse(reply, Refusal::Internal(Internal::Failure))
}

pub fn milter_config(side: Side) -> MilterConfig {
    MilterConfig {
        actions: needed_actions(side),
        ..MilterConfig::default()
    }
}
