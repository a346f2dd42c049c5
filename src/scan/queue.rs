//! The queue between the walk and the hashing threads (batches of files
//! one way, batches of results the other): a mutex and two condition
//! variables. A thread with nothing to do sleeps in the kernel until it is
//! woken, without spinning or yielding, and a wake-up is sent only to a
//! thread that waits.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};

struct State<T> {
    items: VecDeque<T>,
    closed: bool,
    /// Threads asleep in `pop` / in `push`.
    takers: usize,
    givers: usize,
}

pub(super) struct Queue<T> {
    state: Mutex<State<T>>,
    not_empty: Condvar,
    not_full: Condvar,
    cap: usize,
}

impl<T> Queue<T> {
    /// A queue that holds at most `cap` items (at least one).
    pub(super) fn new(cap: usize) -> Self {
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
    pub(super) fn push(&self, item: T) -> Result<(), T> {
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
    pub(super) fn pop(&self) -> Option<T> {
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
    pub(super) fn try_pop(&self) -> Option<T> {
        let mut s = self.lock();
        let item = s.items.pop_front();
        self.took(s, item)
    }

    /// No more items: `push` refuses, `pop` returns what is left, then
    /// `None`; every sleeping thread is woken.
    pub(super) fn close(&self) {
        self.lock().closed = true;
        self.not_empty.notify_all();
        self.not_full.notify_all();
    }
}

/// Closes a queue when dropped: the last hashing thread to stop, by
/// returning or by panicking, closes the queue of results so the walk
/// never waits for results that cannot come.
pub(super) struct CloseOnDrop<'q, T> {
    pub(super) queue: &'q Queue<T>,
    pub(super) live: &'q std::sync::atomic::AtomicUsize,
}

impl<T> Drop for CloseOnDrop<'_, T> {
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
}
