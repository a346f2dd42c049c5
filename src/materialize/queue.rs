//! The queue between the walk and the writer threads: bounded, holding
//! batches of files, guarded by a mutex with two condition variables. An
//! idle thread sleeps in the kernel until it is woken, never spinning or
//! yielding, and a wake-up is sent only when a thread is waiting, so a busy
//! queue costs no system call per batch.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};

struct State<T> {
    items: VecDeque<T>,
    closed: bool,
    /// Threads waiting in `pop` / in `push`.
    poppers: usize,
    pushers: usize,
}

pub(super) struct Queue<T> {
    state: Mutex<State<T>>,
    not_empty: Condvar,
    not_full: Condvar,
    cap: usize,
}

impl<T> Queue<T> {
    pub(super) fn new(cap: usize) -> Self {
        Queue {
            state: Mutex::new(State { items: VecDeque::new(), closed: false, poppers: 0, pushers: 0 }),
            not_empty: Condvar::new(),
            not_full: Condvar::new(),
            cap: cap.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds `item`, waiting while the queue is full. Gives it back when the
    /// queue is closed (no thread would take it).
    pub(super) fn push(&self, item: T) -> Result<(), T> {
        let mut s = self.lock();
        while s.items.len() >= self.cap && !s.closed {
            s.pushers += 1;
            s = self.not_full.wait(s).unwrap_or_else(|p| p.into_inner());
            s.pushers -= 1;
        }
        if s.closed {
            return Err(item);
        }
        s.items.push_back(item);
        let wake = s.poppers > 0;
        drop(s);
        if wake {
            self.not_empty.notify_one();
        }
        Ok(())
    }

    /// Takes the oldest item, waiting while the queue is empty; `None` once
    /// it is closed and empty.
    pub(super) fn pop(&self) -> Option<T> {
        let mut s = self.lock();
        loop {
            if let Some(item) = s.items.pop_front() {
                let wake = s.pushers > 0;
                drop(s);
                if wake {
                    self.not_full.notify_one();
                }
                return Some(item);
            }
            if s.closed {
                return None;
            }
            s.poppers += 1;
            s = self.not_empty.wait(s).unwrap_or_else(|p| p.into_inner());
            s.poppers -= 1;
        }
    }

    /// No more items: `pop` drains what is queued, then returns `None`;
    /// `push` refuses.
    pub(super) fn close(&self) {
        self.lock().closed = true;
        self.not_empty.notify_all();
        self.not_full.notify_all();
    }
}

/// Closes the queue when dropped, also while unwinding from a panic, so no
/// thread waits for ever on a queue nobody serves.
pub(super) struct CloseOnDrop<'q, T>(pub(super) &'q Queue<T>);

impl<T> Drop for CloseOnDrop<'_, T> {
    fn drop(&mut self) {
        self.0.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
