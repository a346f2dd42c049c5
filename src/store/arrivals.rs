//! Blobs still on their way: a store being filled (by a pull) while it is
//! read (by an unpack). The filler names each blob as usual and wakes the
//! readers; a reader that finds a blob missing waits until it is named or
//! the filler has finished without it. This is what lets
//! `ocix unpack docker://...` write each file as soon as its blob arrives
//! instead of after the whole pull.

use crate::manifest::Digest;
use std::collections::HashSet;
use std::sync::{Condvar, Mutex};

/// Arrival notices of one store being filled. Attach it with
/// [`Store::with_arrivals`](super::Store::with_arrivals); the filler calls
/// [`close`](Self::close) when it is done, whatever the outcome (readers
/// would wait forever otherwise).
#[derive(Debug, Default)]
pub struct Arrivals {
    state: Mutex<State>,
    cv: Condvar,
    /// The store was made empty for this filler alone: every blob in it
    /// was named here, so no set of digests is kept.
    every: bool,
}

#[derive(Debug, Default)]
struct State {
    /// Counts blobs named so far: a reader waits for it to change.
    named: u64,
    /// The blobs named: verified by the filler, in this process.
    digests: HashSet<Digest>,
    /// Set once the filler has finished.
    closed: Option<Filled>,
}

/// How the filling of a store ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Filled {
    /// Every blob it was to bring is in.
    Complete,
    /// It stopped early, for this reason.
    Stopped(String),
}

impl Arrivals {
    /// A store about to be filled.
    pub fn new() -> Self {
        Self::default()
    }

    /// A store made empty for this filler alone (the temporary store of
    /// one run), which nothing else writes: every blob found in it was
    /// named, and verified, here. No set of the digests named is kept (a
    /// million files' would take tens of megabytes), and
    /// [`Store::fetched_here`](super::Store::fetched_here) holds for every
    /// blob found in the store.
    pub fn fresh() -> Self {
        Arrivals { every: true, ..Self::default() }
    }

    /// The filler named a blob (called by the store).
    pub(super) fn named(&self, d: Digest) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.named += 1;
        if !self.every {
            s.digests.insert(d);
        }
        drop(s);
        self.cv.notify_all();
    }

    /// The filler has finished, the first call saying how. Blocked readers
    /// wake; those whose blob is still missing get an error carrying why
    /// the filler stopped.
    pub fn close(&self, end: Filled) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.closed.is_none() {
            s.closed = Some(end);
        }
        drop(s);
        self.cv.notify_all();
    }

    /// The count of blobs named so far, or the filler's end. Read it before
    /// looking for a blob, then [`wait_after`](Self::wait_after) that count:
    /// a blob named in between is never missed.
    pub(super) fn mark(&self) -> Result<u64, Filled> {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match &s.closed {
            Some(end) => Err(end.clone()),
            None => Ok(s.named),
        }
    }

    /// A blob the filler wrote was there already: readers look again.
    pub(super) fn woke(&self) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.named += 1;
        drop(s);
        self.cv.notify_all();
    }

    /// Whether the filler named `d` (and so verified it) in this process.
    pub(super) fn has_named(&self, d: &Digest) -> bool {
        self.every || self.state.lock().unwrap_or_else(|p| p.into_inner()).digests.contains(d)
    }

    /// Blocks until more than `mark` blobs are named or the filler ends;
    /// the caller then looks again.
    pub(super) fn wait_after(&self, mark: u64) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        while s.closed.is_none() && s.named == mark {
            s = self.cv.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }
}
