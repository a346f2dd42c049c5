//! Progress of long work, as the library tells it: a scan hashing files, an
//! unpack writing them, a pull or push moving blobs. The library never
//! draws anything; it reports to a [`Reporter`] its caller hands in (the
//! command line draws bars on a terminal, a test can count). Beside the
//! pipeline rather than in it: every stage may report, none depends on how.
//!
//! A stage starts one [`Task`] per piece of work and reports bytes done
//! (and, where it counts things, items done) to it; dropping the task ends
//! it. [`Progress`] is the handle options carry: cloneable, printable with
//! `{:?}`, and silent by default.

use std::fmt;
use std::sync::Arc;

/// What is under way, so that a reporter can label it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Work {
    /// A tree being read and its files hashed; the total is not known.
    Scan,
    /// A manifest's files being written into a rootfs.
    Unpack,
    /// Blobs being fetched from a remote.
    Pull,
    /// Blobs being sent to a remote.
    Push,
}

/// Where progress goes: implemented by whoever shows it.
pub trait Reporter: Send + Sync {
    /// `work` begins; `bytes` is how much of it there is when known. The
    /// task returned hears of it until it is dropped.
    fn start(&self, work: Work, bytes: Option<u64>) -> Box<dyn Task>;
}

/// One piece of work under way. Called from many threads at once.
pub trait Task: Send + Sync {
    /// `n` more bytes done.
    fn advance(&self, n: u64);
    /// Items done so far (entries met, blobs fetched), out of `total` when
    /// known.
    fn items(&self, done: u64, total: Option<u64>);
}

/// Where a stage reports: a [`Reporter`], or nowhere (the default).
#[derive(Clone, Default)]
pub struct Progress(Option<Arc<dyn Reporter>>);

impl Progress {
    /// Reports to `r`.
    pub fn to(r: Arc<dyn Reporter>) -> Self {
        Progress(Some(r))
    }

    /// Reports nowhere.
    pub fn silent() -> Self {
        Progress(None)
    }

    /// Whether anything hears of the work.
    pub fn is_silent(&self) -> bool {
        self.0.is_none()
    }

    /// Starts `work` of `bytes` (when known): a task that reports to the
    /// reporter, or does nothing.
    pub fn start(&self, work: Work, bytes: Option<u64>) -> Box<dyn Task> {
        match &self.0 {
            Some(r) => r.start(work, bytes),
            None => Box::new(Silent),
        }
    }
}

impl fmt::Debug for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() { "Progress(reported)" } else { "Progress(silent)" })
    }
}

/// A task nobody hears of.
struct Silent;

impl Task for Silent {
    fn advance(&self, _: u64) {}
    fn items(&self, _: u64, _: Option<u64>) {}
}
