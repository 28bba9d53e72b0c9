//! Outbound: a post goes into the list's encrypted archive before any copy of it leaves, and
//! only once for all of Mailman's transactions of it. Archiving that fails is a 451, so no
//! post is distributed unarchived; Mailman retries the transaction.

use super::session::Context;
use super::SessionError;
use crate::archive::{self, ArchiveError, LockedMbox, RECORD_RETENTION_SECS};
use crate::config::Archive;
use crate::keys::KeyHome;
use crate::outbound::Transaction;
use crate::reinject::{self, ReinjectError};
use crate::state::block_in_place;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

/// One archiver at a time per list in this daemon: two transactions of one post must not
/// both find it unarchived. (Daemons on other hosts: see `archive decrypt`'s de-duplication.)
static LOCKS: LazyLock<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>> =
    LazyLock::new(Default::default);

fn list_lock(list: &str) -> Arc<tokio::sync::Mutex<()>> {
    let mut locks = LOCKS.lock().unwrap_or_else(|e| e.into_inner());
    locks.entry(list.to_string()).or_default().clone()
}

/// Archives `message` if the list archives and it is a post not yet archived.
pub(super) async fn post(
    cx: &Context,
    qid: &str,
    tx: &Transaction,
    message: &Arc<Vec<u8>>,
) -> Result<(), SessionError> {
    let list = tx.list().clone();
    let mode = list.policy.archive;
    if mode == Archive::Off {
        return Ok(());
    }
    if !archive::is_post(message) {
        tracing::debug!(
            "{qid}: {}: not a post (digest or notice): not archived",
            list.address
        );
        return Ok(());
    }
    let digest = archive::post_digest(message);
    let lock = list_lock(&list.address);
    let _held = lock.lock().await;
    let (l, msg, config, sender) = (
        list.clone(),
        message.clone(),
        cx.config.clone(),
        tx.sender().to_string(),
    );
    let sealed = cx
        .daemon
        .blocking(move |d| -> Result<Option<Vec<u8>>, ArchiveError> {
            let store = d.store();
            if store.archived(&l.address, &digest)? {
                return Ok(None);
            }
            let key = archive::load_key(KeyHome::of(&config.keyring_dir, store), &l.address)?
                .ok_or_else(|| ArchiveError::NoKey(l.address.clone()))?;
            let entry = archive::seal(&msg, &l, &key, &digest)?;
            if mode == Archive::Address {
                return Ok(Some(entry));
            }
            let mut mbox = LockedMbox::open(&config.state_dir, &l.address)?;
            mbox.append(&sender, &entry)?;
            store.archive_record(&l.address, &digest, RECORD_RETENTION_SECS)?;
            Ok(None)
        })
        .await??;
    match sealed {
        None if mode == Archive::Mbox => {
            tracing::info!(
                "{qid}: {}: post archived in the mbox (or already there)",
                list.address
            );
            Ok(())
        }
        None => Ok(()),
        Some(entry) => send(cx, qid, tx, &digest, &entry).await,
    }
}

/// Sends the sealed post to `archive_address` through the reinjection listener, recorded
/// right after its 250 like a journaled batch.
async fn send(
    cx: &Context,
    qid: &str,
    tx: &Transaction,
    digest: &[u8; 32],
    entry: &[u8],
) -> Result<(), SessionError> {
    let list = &tx.list().address;
    let Some(to) = tx.list().policy.archive_address.clone() else {
        return Err(ArchiveError::NoAddress(list.clone()).into());
    };
    let store = cx.daemon.store();
    let queued = |_: &str| {
        block_in_place(|| store.archive_record(list, digest, RECORD_RETENTION_SECS))
            .map_err(|e| e.to_string())
    };
    // The plain bounces address, never a member's VERP form: a bounce of the archive copy
    // must not count against a member.
    let (local, domain) = tx.list().parts();
    let sender = format!("{local}-bounces@{domain}");
    let to = [to];
    let sent = reinject::send_batch_then(&cx.config.reinject_smtp, &sender, &to, entry, queued);
    match sent.await {
        Ok(id) => {
            tracing::info!("{qid}: {list}: post archived, sent to the archive address as {id}");
            Ok(())
        }
        Err(ReinjectError::Journal {
            queue_id, reason, ..
        }) => {
            tracing::error!(
                "{qid}: {list}: archive copy queued as {queue_id} but not recorded ({reason}); a retry could archive it again"
            );
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}
