//! When long blocking work must stop. Pure pipelines check it between their steps; the
//! milter sets it from `limits.message_timeout` and cancels it when its waiter goes away.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// When long blocking work must stop: at an instant, or when cancelled (its waiter gave up).
/// `spawn_blocking` cannot be cancelled, so the work checks this between its steps.
#[derive(Clone, Debug)]
pub struct Deadline {
    at: Option<Instant>,
    cancelled: Arc<AtomicBool>,
    /// Steps admitted so far, shared between clones.
    admitted: Arc<AtomicUsize>,
}

impl Deadline {
    /// No deadline (the CLI, benchmarks).
    pub fn none() -> Deadline {
        Deadline {
            at: None,
            cancelled: Arc::new(AtomicBool::new(false)),
            admitted: Arc::new(AtomicUsize::new(0)),
        }
    }

    pub fn after(limit: Duration) -> Deadline {
        Deadline {
            at: Instant::now().checked_add(limit),
            cancelled: Arc::new(AtomicBool::new(false)),
            admitted: Arc::new(AtomicUsize::new(0)),
        }
    }

    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
    }

    pub fn expired(&self) -> bool {
        self.cancelled.load(Ordering::Acquire) || self.at.is_some_and(|at| Instant::now() >= at)
    }

    /// Whether the next step may run; counts the steps that did.
    pub fn admit(&self) -> bool {
        if self.expired() {
            return false;
        }
        self.admitted.fetch_add(1, Ordering::AcqRel);
        true
    }

    /// How many steps were admitted (batches encrypted, phases run).
    pub fn admitted(&self) -> usize {
        self.admitted.load(Ordering::Acquire)
    }

    /// Cancels this deadline when dropped: the waiter went away (the MTA hung up).
    pub fn cancel_on_drop(&self) -> CancelOnDrop {
        CancelOnDrop(self.clone())
    }
}

pub struct CancelOnDrop(Deadline);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_expires_when_cancelled_or_past() {
        let d = Deadline::after(Duration::from_secs(3600));
        assert!(!d.expired());
        drop(d.cancel_on_drop());
        assert!(d.expired());
        assert!(Deadline::after(Duration::ZERO).expired());
        assert!(!Deadline::none().expired());
    }
}
