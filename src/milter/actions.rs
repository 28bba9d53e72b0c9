//! Applying decisions through the milter protocol: SMTP replies, header and body edits, and
//! waiting for CPU work while telling the MTA we are alive.

use super::SessionError;
use crate::message::{Reply, Rewrite};
use crate::refusal::Refusal;
use indymilter::{ContextActions, EomActions, SetErrorReply, SmtpReply, Status};
use std::ffi::CString;
use std::time::Duration;

/// Sets the SMTP reply for a refusal; the status follows its class (4xx tempfail, 5xx reject).
pub fn refuse(reply: &mut SmtpReply, refusal: Refusal) -> Status {
    let r = refusal.reply();
    crate::metrics::refusal(r.xcode);
    set_reply(reply, &r)
}

pub fn set_reply(reply: &mut SmtpReply, r: &Reply) -> Status {
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

/// Awaits CPU work, telling the MTA we are alive so its content timeout does not fire.
/// Past `limit` we stop waiting and answer 451 (our own timeout): the MTA keeps the mail.
pub async fn with_progress<T>(
    mut work: tokio::task::JoinHandle<T>,
    actions: &EomActions,
    limit: Duration,
) -> Result<T, SessionError> {
    let deadline = tokio::time::Instant::now() + limit;
    // Wake for progress every 10 s, and exactly at the deadline.
    loop {
        let tick = deadline
            .saturating_duration_since(tokio::time::Instant::now())
            .min(Duration::from_secs(10));
        tokio::select! {
            r = &mut work => return Ok(r?),
            _ = tokio::time::sleep(tick) => {
                if tokio::time::Instant::now() >= deadline {
                    work.abort();
                    return Err(SessionError::Timeout(limit.as_secs()));
                }
                let _ = actions.progress().await;
            }
        }
    }
}

/// Applies a rewrite through milter actions: delete each removed field from its last
/// occurrence down (indices are per name, 1-based), append the new fields, replace the body.
pub async fn apply(
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

/// Deletes recipients, each exactly as the MTA gave it at RCPT.
pub async fn delete_recipients(
    actions: &EomActions,
    recipients: &[String],
) -> Result<(), indymilter::ActionError> {
    for r in recipients {
        actions.delete_recipient(r.as_str()).await?;
    }
    Ok(())
}
