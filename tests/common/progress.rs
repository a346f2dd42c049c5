//! A progress reporter that keeps what it hears, for tests of what the
//! library reports.

use ocix::progress::{Reporter, Task, Work};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Every piece of work started, with its declared bytes, the bytes reported
/// done, and whether it has ended.
#[derive(Default)]
pub struct Tally(Mutex<Vec<Arc<Heard>>>);

/// One piece of work as reported.
#[derive(Debug, Default)]
pub struct Heard {
    pub work: Mutex<Option<Work>>,
    pub bytes: Mutex<Option<u64>>,
    pub done: AtomicU64,
    pub items: Mutex<Vec<(u64, Option<u64>)>>,
    pub ended: std::sync::atomic::AtomicBool,
}

impl Tally {
    /// The work started so far, in order.
    pub fn heard(&self) -> Vec<Arc<Heard>> {
        self.0.lock().unwrap().clone()
    }

    /// The work started so far of this kind.
    pub fn of(&self, w: Work) -> Vec<Arc<Heard>> {
        self.heard().into_iter().filter(|h| *h.work.lock().unwrap() == Some(w)).collect()
    }
}

impl Reporter for Tally {
    fn start(&self, work: Work, bytes: Option<u64>) -> Box<dyn Task> {
        let h = Arc::new(Heard { work: Mutex::new(Some(work)), bytes: Mutex::new(bytes), ..Heard::default() });
        self.0.lock().unwrap().push(h.clone());
        Box::new(Listening(h))
    }
}

struct Listening(Arc<Heard>);

impl Task for Listening {
    fn advance(&self, n: u64) {
        self.0.done.fetch_add(n, Ordering::Relaxed);
    }
    fn items(&self, done: u64, total: Option<u64>) {
        self.0.items.lock().unwrap().push((done, total));
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        self.0.ended.store(true, Ordering::Relaxed);
    }
}
