//! Batches: which recipients share one encrypted copy, and encrypting them on the cores.

use super::copy::encrypt_message;
use super::PlanError;
use crate::keys::{normalize_address, ListKeys};
use crate::message::Rewrite;

/// Splits the accepted recipients into batches: members who need their key id shown get a
/// copy of their own (never revealing anyone else's); SEIPDv2 only for batches whose members
/// all advertise it; then chunks of the list's `batch_size`. Deterministic, so a retried
/// transaction batches the same way.
pub fn plan_batches(list: &ListKeys, recipients: &[String]) -> Vec<Vec<String>> {
    let mut v1 = Vec::new();
    let mut v2 = Vec::new();
    let mut singles = Vec::new();
    for r in recipients {
        let Some(m) = list.member(&normalize_address(r)) else {
            continue;
        };
        if m.show_key_id {
            singles.push(vec![r.clone()]);
            continue;
        }
        let seipdv2 = list
            .recipient(&normalize_address(r))
            .and_then(|(_, k)| k.as_ref().ok())
            .is_some_and(|k| k.features.supports_seipdv2());
        if seipdv2 {
            v2.push(r.clone());
        } else {
            v1.push(r.clone());
        }
    }
    let size = list.policy.batch_size.max(1) as usize;
    let mut batches: Vec<Vec<String>> = v1.chunks(size).map(|c| c.to_vec()).collect();
    batches.extend(v2.chunks(size).map(|c| c.to_vec()));
    batches.extend(singles);
    batches
}

/// Encrypts every batch, spreading the batches over the cores. Each encryption holds a permit
/// of the process's crypto pool, so concurrent messages together use no more threads than cores.
pub fn encrypt_batches(
    message: &[u8],
    list: &ListKeys,
    batches: &[Vec<String>],
) -> Result<Vec<Rewrite>, PlanError> {
    let pool = crate::crypto_pool::global();
    let encrypt = |batch: &[String]| pool.run(|| encrypt_message(message, list, batch));
    let threads = pool.size();
    if batches.len() <= 1 || threads <= 1 {
        return batches.iter().map(|b| encrypt(b)).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut results: Vec<Option<Result<Rewrite, PlanError>>> =
        (0..batches.len()).map(|_| None).collect();
    let slots: Vec<std::sync::Mutex<&mut Option<Result<Rewrite, PlanError>>>> =
        results.iter_mut().map(std::sync::Mutex::new).collect();
    std::thread::scope(|scope| {
        for _ in 0..threads.min(batches.len()) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= batches.len() {
                    break;
                }
                let r = encrypt(&batches[i]);
                **slots[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
            });
        }
    });
    drop(slots);
    results
        .into_iter()
        .map(|r| r.unwrap_or(Err(PlanError::Malformed("batch not encrypted"))))
        .collect()
}
