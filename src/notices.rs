//! Mail listcrypt writes to members and owners about keys: a member's key that expires soon
//! (`notify-expiry`), and members whose keys are unusable (`notify-expiry`, and the daemon's
//! key refresh when a refresh leaves a key unusable). Each is encrypted to its addressee,
//! rate-limited per kind, and sent through the reinjection listener.

use crate::config::Config;
use crate::key_address::KeyAddressError;
use crate::keys;
use crate::reinject::ReinjectError;
use crate::store::{Role, Store, StoreError};
use std::io::Write;

#[derive(Debug, thiserror::Error)]
pub enum NoticeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The notice could not be made (encrypted to its addressee).
    #[error("{0}")]
    Build(#[from] KeyAddressError),
    /// The reinjection listener did not take it; the rate limiter forgot the unsent ones.
    #[error("{0}")]
    Send(#[from] ReinjectError),
}

type Result<T> = std::result::Result<T, NoticeError>;

/// One notice: the list it speaks for, its rate kind, and the encrypted message.
pub struct Notice {
    list: String,
    kind: &'static str,
    mail: crate::key_address::OutMail,
}

/// Tells each member whose key expires before `horizon` (at most weekly); returns one line per
/// member whose key is unusable already, for the owners.
pub fn member_notices(
    store: &dyn Store,
    list: &keys::ListKeys,
    horizon: std::time::SystemTime,
    notices: &mut Vec<Notice>,
    out: &mut dyn Write,
) -> Result<Vec<String>> {
    let mut unusable = Vec::new();
    for m in &list.members {
        if let Some(line) = unusable_line(m) {
            unusable.push(line);
            continue;
        }
        let Some(Some(until)) = keys::usable_until(&m.cert) else {
            continue;
        };
        if until > horizon || !store.rate_allow(&list.address, &m.address, "expiry", 6 * 86_400)? {
            continue;
        }
        let date = keys::format_date(
            until
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        );
        let body = format!(
            "Your key {fpr}, bound to {addr} on the encrypted list {list},\r\n\
             can be used for encryption until {date}. After that you will receive no\r\n\
             more mail from the list. Extend its expiry and send the updated public key\r\n\
             to {list_local}-{suffix}@{domain}, or bind a new key there.\r\n",
            fpr = m.cert.fingerprint(),
            addr = m.address,
            list = list.address,
            list_local = list.parts().0,
            suffix = list.policy.key_suffix,
            domain = list.parts().1,
        );
        let mail =
            crate::key_address::notice(list, &m.address, &m.cert, "Your key expires soon", &body)?;
        writeln!(
            out,
            "{}: {} key expires {date}: notified",
            list.address, m.address
        )
        .ok();
        notices.push(Notice {
            list: list.address.clone(),
            kind: "expiry",
            mail,
        });
    }
    Ok(unusable)
}

/// The owners' notice line for a member whose key is unusable (expired, revoked…).
pub fn unusable_line(m: &keys::Member) -> Option<String> {
    let why = keys::check_member_cert(&m.cert, &m.address).err()?;
    Some(format!("  {} ({}): {why}", m.address, m.cert.fingerprint()))
}

/// Tells each owner with a usable key which members have none (at most daily). Also used by
/// the daemon's key refresh (`crate::refresh`) when a member's key became unusable.
pub fn owner_notices(
    store: &dyn Store,
    list: &keys::ListKeys,
    unusable: &[String],
    notices: &mut Vec<Notice>,
    out: &mut dyn Write,
) -> Result<()> {
    if unusable.is_empty() {
        return Ok(());
    }
    for owner in list.members.iter().filter(|m| m.role == Role::Owner) {
        if keys::check_member_cert(&owner.cert, &owner.address).is_err()
            || !store.rate_allow(&list.address, &owner.address, "unusable", 86_400)?
        {
            continue;
        }
        let body = format!(
            "These members of {} have no usable key; they receive no list mail:\r\n{}\r\n",
            list.address,
            unusable.join("\r\n")
        );
        let mail = crate::key_address::notice(
            list,
            &owner.address,
            &owner.cert,
            "Members without a usable key",
            &body,
        )?;
        writeln!(
            out,
            "{}: owner {} told about {} unusable key(s)",
            list.address,
            owner.address,
            unusable.len()
        )
        .ok();
        notices.push(Notice {
            list: list.address.clone(),
            kind: "unusable",
            mail,
        });
    }
    Ok(())
}

/// Sends the notices in order through the reinjection listener; on the first failure the
/// rest are forgotten by the rate limiter, so the next run tries them again.
pub async fn deliver(config: &Config, store: &dyn Store, notices: &[Notice]) -> Result<()> {
    for (i, notice) in notices.iter().enumerate() {
        let sent = crate::reinject::send_batch(
            &config.reinject_smtp,
            "",
            std::slice::from_ref(&notice.mail.to),
            &notice.mail.message,
        )
        .await;
        if let Err(e) = sent {
            // Not sent: the next run tries these again instead of waiting a period.
            for n in &notices[i..] {
                let _ = store.rate_forget(&n.list, &n.mail.to, n.kind);
            }
            return Err(e.into());
        }
    }
    Ok(())
}
