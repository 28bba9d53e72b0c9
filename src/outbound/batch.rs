//! Batches: which recipients share one encrypted copy, and encrypting them on the cores.

use super::copy::{prepare, Budget};
use super::PlanError;
use crate::deadline::Deadline;
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
    encrypt_batches_until(message, list, batches, &Deadline::none())
}

/// [`encrypt_batches`], stopping with [`PlanError::Timeout`] once `deadline` passed: checked
/// before each batch, since the blocking thread cannot be cancelled from outside.
pub fn encrypt_batches_until(
    message: &[u8],
    list: &ListKeys,
    batches: &[Vec<String>],
    deadline: &Deadline,
) -> Result<Vec<Rewrite>, PlanError> {
    encrypt_batches_within(message, list, batches, &mut Budget::new(), deadline, None)
}

/// [`encrypt_batches_until`] with the message's `>From` verification budget given (the inner
/// entity is prepared once, whatever the number of batches) and the key encapsulations made
/// ahead, if any.
pub(crate) fn encrypt_batches_within(
    message: &[u8],
    list: &ListKeys,
    batches: &[Vec<String>],
    budget: &mut Budget,
    deadline: &Deadline,
    prekeys: Option<&crate::pgp::Prekeys>,
) -> Result<Vec<Rewrite>, PlanError> {
    if batches.is_empty() {
        return Ok(Vec::new());
    }
    if !deadline.admit() {
        return Err(PlanError::Timeout);
    }
    let prepared = prepare(message, list, budget)?;
    let pool = crate::crypto_pool::global();
    let encrypt = |batch: &[String]| {
        if !deadline.admit() {
            return Err(PlanError::Timeout);
        }
        pool.run(|| prepared.encrypt_ahead(list, batch, prekeys))
    };
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

#[cfg(test)]
mod tests {
    use super::super::copy::tests::{list_with, mangled_post};
    use super::*;

    #[test]
    fn five_batches_restore_from_lines_once() {
        let (list, alice) = list_with(5);
        let batches: Vec<Vec<String>> = (0..5).map(|i| vec![format!("m{i}@x.test")]).collect();
        let mut budget = Budget::new();
        let rewrites = encrypt_batches_within(
            &mangled_post(&alice),
            &list,
            &batches,
            &mut budget,
            &Deadline::none(),
            None,
        )
        .unwrap();
        assert_eq!(rewrites.len(), 5);
        // One message's restoration (as sent, all undone, first undone), not one per batch.
        assert_eq!(budget.used(), 3);
    }

    use crate::config::Policy;
    use crate::keys::Member;
    use crate::pgp::testkit::general_purpose;
    use crate::store::Role;

    fn list() -> ListKeys {
        let cert = general_purpose;
        ListKeys::new(
            "enc@lists.example.test".into(),
            Policy::default(),
            cert("<enc@lists.example.test>"),
            vec![Member {
                address: "bob@example.test".into(),
                cert: cert("<bob@example.test>"),
                role: Role::Member,
                show_key_id: false,
            }],
        )
    }

    fn post() -> Vec<u8> {
        let mut m = b"From: a@example.test\r\nSubject: s\r\nMIME-Version: 1.0\r\n\
Content-Type: text/plain\r\n\r\n"
            .to_vec();
        m.extend(b"the plans, at length\r\n".repeat(16 * 1024));
        m
    }

    #[test]
    fn expired_deadline_encrypts_nothing() {
        let batches = vec![vec!["<bob@example.test>".to_string()]; 4];
        let deadline = Deadline::after(std::time::Duration::ZERO);
        let r = encrypt_batches_until(&post(), &list(), &batches, &deadline);
        assert!(matches!(r, Err(PlanError::Timeout)));
        assert_eq!(deadline.admitted(), 0);
    }

    /// A waiter that gives up mid-way stops the remaining batches (the blocking thread itself
    /// checks; nothing outside can stop it).
    #[test]
    fn cancelled_deadline_stops_before_all_batches() {
        const N: usize = 64;
        let batches = vec![vec!["<bob@example.test>".to_string()]; N];
        let deadline = Deadline::none();
        let (list, post) = (list(), post());
        let watcher = {
            let deadline = deadline.clone();
            std::thread::spawn(move || {
                while deadline.admitted() < 2 {
                    std::thread::yield_now();
                }
                deadline.cancel();
            })
        };
        let r = encrypt_batches_until(&post, &list, &batches, &deadline);
        watcher.join().unwrap();
        assert!(matches!(r, Err(PlanError::Timeout)));
        assert!(
            deadline.admitted() < N,
            "{} of {N} batches",
            deadline.admitted()
        );
    }
}
