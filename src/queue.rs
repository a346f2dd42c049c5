//! A bounded queue between a walk and its worker threads (scan's hashing
//! threads, materialize's writers): a mutex and two condition variables.
//! A thread with nothing to do sleeps in the kernel until it is woken,
//! without spinning or yielding, and a wake-up is sent only to a thread
//! that waits, so a busy queue costs no system call per item.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};

struct State<T> {
    items: VecDeque<T>,
    closed: bool,
    /// Threads asleep in `pop` / in `push`.
    takers: usize,
    givers: usize,
}

pub(crate) struct Queue<T> {
    state: Mutex<State<T>>,
    not_empty: Condvar,
    not_full: Condvar,
    cap: usize,
}

impl<T> Queue<T> {
    /// A queue that holds at most `cap` items (at least one).
    pub(crate) fn new(cap: usize) -> Self {
        Queue {
            state: Mutex::new(State { items: VecDeque::new(), closed: false, takers: 0, givers: 0 }),
            not_empty: Condvar::new(),
            not_full: Condvar::new(),
            cap: cap.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // a thread that panicked holding the lock left the queue whole
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds `item`, sleeping while the queue is full; gives it back once
    /// the queue is closed.
    pub(crate) fn push(&self, item: T) -> Result<(), T> {
        let mut s = self.lock();
        while s.items.len() >= self.cap && !s.closed {
            s.givers += 1;
            s = self.not_full.wait(s).unwrap_or_else(|p| p.into_inner());
            s.givers -= 1;
        }
        if s.closed {
            return Err(item);
        }
        s.items.push_back(item);
        let wake = s.takers > 0;
        drop(s);
        if wake {
            self.not_empty.notify_one();
        }
        Ok(())
    }

    fn took(&self, s: MutexGuard<'_, State<T>>, item: Option<T>) -> Option<T> {
        let wake = item.is_some() && s.givers > 0;
        drop(s);
        if wake {
            self.not_full.notify_one();
        }
        item
    }

    /// Takes the oldest item, sleeping while the queue is empty; `None`
    /// once it is closed and empty.
    pub(crate) fn pop(&self) -> Option<T> {
        let mut s = self.lock();
        while s.items.is_empty() && !s.closed {
            s.takers += 1;
            s = self.not_empty.wait(s).unwrap_or_else(|p| p.into_inner());
            s.takers -= 1;
        }
        let item = s.items.pop_front();
        self.took(s, item)
    }

    /// Takes the oldest item if there is one, without waiting.
    pub(crate) fn try_pop(&self) -> Option<T> {
        let mut s = self.lock();
        let item = s.items.pop_front();
        self.took(s, item)
    }

    /// No more items: `push` refuses, `pop` returns what is left, then
    /// `None`; every sleeping thread is woken.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.not_empty.notify_all();
        self.not_full.notify_all();
    }
}

/// Closes the queue when dropped, also while unwinding from a panic, so no
/// thread waits for ever on a queue nobody serves.
pub(crate) struct CloseOnDrop<'q, T>(pub(crate) &'q Queue<T>);

impl<T> Drop for CloseOnDrop<'_, T> {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Closes a queue when the last of `live` threads drops it: the last
/// worker to stop, by returning or by panicking, closes the queue of
/// results so the walk never waits for results that cannot come.
pub(crate) struct CloseWhenLast<'q, T> {
    pub(crate) queue: &'q Queue<T>,
    pub(crate) live: &'q std::sync::atomic::AtomicUsize,
}

impl<T> Drop for CloseWhenLast<'_, T> {
    fn drop(&mut self) {
        if self.live.fetch_sub(1, std::sync::atomic::Ordering::AcqRel) == 1 {
            self.queue.close();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_come_out_in_order_and_close_ends_the_queue() {
        let q = Queue::new(2);
        std::thread::scope(|s| {
            let t = s.spawn(|| {
                let mut got = Vec::new();
                while let Some(i) = q.pop() {
                    got.push(i);
                }
                got
            });
            for i in 0..100 {
                q.push(i).unwrap();
            }
            q.close();
            assert_eq!(t.join().unwrap(), (0..100).collect::<Vec<_>>());
        });
        assert_eq!(q.push(1), Err(1));
        assert_eq!(q.try_pop(), None);
    }

    #[test]
    fn every_item_is_taken_once_and_close_ends_the_takers() {
        let q = Queue::new(2);
        let taken = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| {
                    while let Some(i) = q.pop() {
                        taken.lock().unwrap().push(i);
                    }
                });
            }
            for i in 0..1000 {
                q.push(i).unwrap();
            }
            q.close();
        });
        let mut t = taken.into_inner().unwrap();
        t.sort();
        assert_eq!(t, (0..1000).collect::<Vec<_>>());
        assert_eq!(q.push(5), Err(5));
    }
}
