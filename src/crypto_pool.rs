//! Permits for CPU-heavy OpenPGP work (inbound decryption, outbound encryption), one per core
//! for the whole process: concurrent messages share the cores instead of each taking them all.
//!
//! A permit is taken around the crypto itself, never around work that starts threads which
//! take permits of their own: with every permit held by such callers, their threads would
//! wait for ever. Work that fans out under a permit takes [`Pool::spare`] ones, never waiting.

use std::cell::Cell;
use std::marker::PhantomData;
use std::sync::{Condvar, Mutex, OnceLock};

pub struct Pool {
    size: usize,
    busy: Mutex<usize>,
    freed: Condvar,
}

/// Held while one thread does crypto work; dropping it lets the next one in.
pub struct Permit<'a> {
    /// `None` when this thread already held a permit: the inner one is free.
    pool: Option<&'a Pool>,
    /// Dropped on the thread that took it, which [`HOLDING`] is about.
    _thread: PhantomData<*const ()>,
}

/// Permits that were free at once, for threads a permit holder starts for one piece of work.
pub struct Spare<'a> {
    pool: &'a Pool,
    count: usize,
}

impl Spare<'_> {
    pub fn count(&self) -> usize {
        self.count
    }
}

impl Drop for Spare<'_> {
    fn drop(&mut self) {
        if self.count > 0 {
            *self.pool.busy.lock().unwrap_or_else(|e| e.into_inner()) -= self.count;
            self.pool.freed.notify_all();
        }
    }
}

thread_local! {
    /// Whether this thread holds a permit, so a nested call does not wait on itself.
    static HOLDING: Cell<bool> = const { Cell::new(false) };
}

impl Pool {
    pub fn new(size: usize) -> Pool {
        Pool {
            size: size.max(1),
            busy: Mutex::new(0),
            freed: Condvar::new(),
        }
    }

    /// How many threads may do crypto work at once.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Waits for a free permit (the calling thread blocks: call it off the async workers).
    pub fn acquire(&self) -> Permit<'_> {
        if HOLDING.with(Cell::get) {
            return Permit {
                pool: None,
                _thread: PhantomData,
            };
        }
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        while *busy >= self.size {
            busy = self.freed.wait(busy).unwrap_or_else(|e| e.into_inner());
        }
        *busy += 1;
        HOLDING.with(|h| h.set(true));
        Permit {
            pool: Some(self),
            _thread: PhantomData,
        }
    }

    /// A permit if one is free right now (or this thread holds one), without waiting: for
    /// callers that must not block, such as an async worker, which go elsewhere otherwise.
    pub fn try_acquire(&self) -> Option<Permit<'_>> {
        if HOLDING.with(Cell::get) {
            return Some(Permit {
                pool: None,
                _thread: PhantomData,
            });
        }
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        if *busy >= self.size {
            return None;
        }
        *busy += 1;
        HOLDING.with(|h| h.set(true));
        Some(Permit {
            pool: Some(self),
            _thread: PhantomData,
        })
    }

    /// Up to `want` permits that are free right now, without waiting.
    pub fn spare(&self, want: usize) -> Spare<'_> {
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        let count = want.min(self.size.saturating_sub(*busy));
        *busy += count;
        Spare { pool: self, count }
    }

    /// Runs `work` holding a permit.
    pub fn run<T>(&self, work: impl FnOnce() -> T) -> T {
        let _permit = self.acquire();
        work()
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if let Some(pool) = self.pool {
            HOLDING.with(|h| h.set(false));
            *pool.busy.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
            pool.freed.notify_one();
        }
    }
}

/// The process's pool, sized by the cores available to it.
pub fn global() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        Pool::new(
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Barrier;

    /// Sixteen threads all wanting to work at once: at most `size` are ever inside.
    #[test]
    fn at_most_size_threads_work_at_once() {
        let pool = Pool::new(3);
        let (inside, most, done) = (
            AtomicUsize::new(0),
            AtomicUsize::new(0),
            AtomicUsize::new(0),
        );
        let start = Barrier::new(16);
        std::thread::scope(|s| {
            for _ in 0..16 {
                s.spawn(|| {
                    start.wait();
                    for _ in 0..50 {
                        pool.run(|| {
                            let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                            most.fetch_max(now, Ordering::SeqCst);
                            std::thread::yield_now();
                            inside.fetch_sub(1, Ordering::SeqCst);
                            done.fetch_add(1, Ordering::SeqCst);
                        });
                    }
                });
            }
        });
        assert_eq!(done.load(Ordering::SeqCst), 16 * 50);
        assert!(most.load(Ordering::SeqCst) <= 3, "{most:?}");
    }

    /// The bound is the size, not one: three threads hold their permits at the same time.
    #[test]
    fn size_threads_hold_permits_together() {
        let pool = Pool::new(3);
        let met = Barrier::new(3);
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| pool.run(|| met.wait()));
            }
        });
    }

    #[test]
    fn spare_permits_are_only_the_free_ones_and_come_back() {
        let pool = Pool::new(4);
        pool.run(|| {
            let spare = pool.spare(8);
            assert_eq!(spare.count(), 3, "one of four is this thread's");
            assert_eq!(pool.spare(1).count(), 0, "none left to spare");
        });
        assert_eq!(pool.spare(8).count(), 4);
    }

    #[test]
    fn a_thread_holding_a_permit_can_nest_without_waiting_on_itself() {
        let pool = Pool::new(1);
        let n = pool.run(|| pool.run(|| 7));
        assert_eq!(n, 7);
        // Both permits are back: another thread gets one.
        std::thread::scope(|s| s.spawn(|| pool.run(|| ())).join().unwrap());
    }

    /// A worker that must not wait gets a permit only while one is free, nests on its own,
    /// and gives it back when done.
    #[test]
    fn try_acquire_never_waits_and_only_takes_a_free_permit() {
        let pool = Pool::new(1);
        let (held, release) = (Barrier::new(2), Barrier::new(2));
        std::thread::scope(|s| {
            let holder = s.spawn(|| {
                pool.run(|| {
                    held.wait();
                    release.wait();
                })
            });
            held.wait();
            assert!(pool.try_acquire().is_none(), "the only permit is taken");
            release.wait();
            holder.join().unwrap();
        });
        let permit = pool.try_acquire().expect("free again");
        assert!(pool.try_acquire().is_some(), "nested on the holding thread");
        let other = std::thread::scope(|s| s.spawn(|| pool.try_acquire().is_some()).join());
        assert!(!other.unwrap(), "another thread finds none free");
        drop(permit);
        let other = std::thread::scope(|s| s.spawn(|| pool.try_acquire().is_some()).join());
        assert!(other.unwrap(), "back after the drop");
    }
}
