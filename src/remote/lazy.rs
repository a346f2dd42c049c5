//! Lazy fetching: a remote ocix artifact whose file blobs come into the
//! store when they are first needed (see [`lazyfs`](super::lazyfs), the
//! filesystem that serves them, and `ocix mount docker://...`).
//!
//! [`Lazy::open`] fetches only the artifact and the ocix manifest (what a
//! pull fetches first) and its access list, if it has one. Then
//! [`Lazy::ensure`] brings one blob: on its own, or with the neighbouring
//! members of its pack that the store lacks, in one `Range` request
//! bounded by [`DEMAND_SPAN`] wire bytes, doubled (up to [`DEMAND_MAX`])
//! for each fetch that goes on where the one before it ended, as a reader
//! going through a directory does (when the artifact carries an access
//! list, only neighbours the list names: a run that follows the list
//! fetches nothing it does not read). Every blob is verified against its
//! sha256 by the store's writer before it is named, so a store holds only
//! verified blobs whatever happens to the process; a blob that was already
//! in the store is hashed once before its first byte is served. Two
//! readers of one blob wait for one fetch; a failed fetch is reported to
//! the reader (and the log), and the next read tries again. A reader
//! that goes on in pack order is read ahead of ([`Lazy::read_ahead`]): the
//! next run comes while it reads this one, one run ahead at most.
//! [`Lazy::background`] fills the rest as a pull does (runs of a pack's
//! missing members, one request each), a few requests at a time, access
//! list first, then manifest order.
//!
//! When the artifact carries a lazy index (see [`lazyidx`](super::lazyidx)),
//! [`Lazy::open`] fetches it instead of the manifest: the tree without its
//! file digests. Blob `n` is then known by a placeholder until its chunk
//! of the digest table is fetched (checked against the index before use,
//! and kept). A demand fetch of pack members asks for their bytes and
//! their chunks at once (where members are in a pack follows from the
//! sizes and the pack's frames, not from digests) and checks both before
//! naming any member; in a store that held blobs before the mount (a
//! restart), a member's chunk comes first, so that one already stored is
//! not fetched again. A blob of its own
//! is fetched by its digest, so its chunk comes first. The background
//! prefetch fetches the whole table first and rebuilds the manifest from
//! the tree and the table: a digest other than the one the artifact names
//! stops it with an error; once every blob is in, the manifest is kept in
//! the store.

use super::client::{Client, backoff, range_skip};
use super::fetch::{fetch_blob, fetch_run, put_run};
use super::lazyidx::{ChunkMismatch, Index, IndexError, placeholder, placeholder_index};
use super::pack::{self, Member, Members};
use super::pull::{Fetched, fetch_manifest, prefetch_blobs_compact};
use super::{PullOptions, Remote, RemoteError, file_blobs_compact, runtime, transport};
use crate::manifest::{Compact, Digest};
use crate::store::{Store, Verifier};
use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};

/// Most wire bytes a demand fetch brings from a pack (the blob read and
/// its missing neighbours), unless reads go on in pack order (see
/// [`DEMAND_MAX`]).
pub const DEMAND_SPAN: u64 = 16 << 10;
/// While each demand fetch of a pack starts where the one before it ended
/// (a reader going through a directory in manifest order, give or take
/// [`SEQ_GAP`] members it skipped), each brings twice the bytes of the one
/// before, up to this.
pub const DEMAND_MAX: u64 = 256 << 10;
/// Members a reader may skip between two demand fetches that still count
/// as reading on in pack order.
const SEQ_GAP: usize = 16;
/// Most wire bytes one request of the background prefetch brings (a whole
/// run of missing pack members, cut at this size so that a reader waiting
/// for one of them does not wait for a whole pack).
pub const BACKGROUND_SPAN: u64 = 1 << 20;

/// Where a blob's bytes are in the artifact.
#[derive(Clone, Copy, Debug)]
enum Place {
    /// A layer of its own, by its digest or that of its zstd form.
    Single,
    /// Member `k` of pack `pack`.
    Member { pack: usize, k: usize },
}

/// One file blob of the manifest.
#[derive(Clone, Debug)]
pub struct Blob {
    /// Content digest; with a lazy index, the placeholder of this blob
    /// (see [`lazyidx::placeholder`](super::lazyidx::placeholder)), its
    /// content digest coming from the digest table.
    pub digest: Digest,
    /// Content size.
    pub size: u64,
    /// The first path naming it, in manifest order (what an access list
    /// records).
    pub path: Vec<u8>,
    place: Place,
}

/// What one fetch brings.
#[derive(Clone, Copy, Debug)]
enum Plan {
    /// The blob on its own.
    Single,
    /// Members `lo..hi` of pack `pack`, at most `span` wire bytes.
    Run { pack: usize, lo: usize, hi: usize, span: u64 },
}

#[derive(Default)]
struct State {
    inflight: HashSet<usize>,
    verified: HashSet<usize>,
    /// The last demand fetch of a pack member: its pack, the member after
    /// its run, its span (see [`DEMAND_MAX`]).
    ahead: Option<(usize, usize, u64)>,
    /// Where read-ahead requests go while it runs ([`Lazy::read_ahead`]).
    ahead_tx: Option<std::sync::mpsc::SyncSender<Ahead>>,
    /// The run read ahead last (pack, members `lo..hi`): a reader's first
    /// touch of it asks for the next.
    ahead_run: Option<(usize, usize, usize)>,
    /// Whether the store held blobs when a pack member was first needed
    /// (a mount restarted on the store of one before it), once looked.
    warm: Option<bool>,
}

/// A run claimed for the read-ahead thread: blob `i`, its plan, the
/// blobs claimed.
struct Ahead {
    i: usize,
    plan: Plan,
    run: Vec<usize>,
}

/// Where the access record goes.
struct Recorder {
    file: std::fs::File,
    seen: HashSet<usize>,
}

/// The digest table of an artifact with a lazy index, fetched a chunk at
/// a time.
struct Table {
    /// The lazy index (without its tree, which is the manifest).
    index: Index,
    /// The lazy index layer's digest.
    index_digest: Digest,
    /// The table layer's URL.
    url: String,
    /// The chunks fetched and checked so far.
    got: Vec<Mutex<Option<Arc<[Digest]>>>>,
}

/// A remote artifact served lazily from a store.
pub struct Lazy {
    rt: tokio::runtime::Runtime,
    client: Client,
    store: Store,
    manifest: Compact,
    manifest_bytes: Vec<u8>,
    manifest_digest: Digest,
    blobs: Vec<Blob>,
    /// Blob numbers by content digest (empty with a lazy index: see
    /// [`num`](Self::num)).
    index: HashMap<Digest, usize>,
    packs: Vec<Members>,
    /// Compressed file blobs: content digest -> (registry digest, size).
    zstd: HashMap<Digest, (Digest, u64)>,
    /// The digest table, when the mount started from a lazy index.
    table: Option<Table>,
    /// Blobs an access list names (`None`: no list).
    access: Option<HashSet<usize>>,
    /// Background order: access list first, then manifest order.
    order: Vec<usize>,
    state: Mutex<State>,
    cond: Condvar,
    log: Box<dyn Fn(&str) + Send + Sync>,
    record: Option<Mutex<Recorder>>,
    bytes: AtomicU64,
    fetched: AtomicUsize,
    /// The manifest rebuilt from the lazy index and the whole table, its
    /// digest checked, until it is kept in the store.
    rebuilt: Mutex<Option<Vec<u8>>>,
}

/// How a lazy source fetches.
pub struct LazyOptions {
    /// Connection settings, and paths to fetch first (`prefetch`, before
    /// the artifact's access list).
    pub pull: PullOptions,
    /// Where errors and what was fetched are told (one line each).
    pub log: Box<dyn Fn(&str) + Send + Sync>,
    /// Write the paths of the files opened, in first-access order, one a
    /// line, to this file (flushed line by line).
    pub record_access: Option<std::fs::File>,
    /// Fetch the manifest itself even when the artifact has a lazy index
    /// (for a caller that keeps the manifest before the first read).
    pub full_manifest: bool,
}

impl Lazy {
    /// Fetches `remote`'s artifact and its lazy index, or if it has none
    /// (or [`LazyOptions::full_manifest`]) its ocix manifest (kept in
    /// `store`), and its access list; no file blob yet.
    pub fn open(remote: &Remote, store: Store, opts: LazyOptions) -> Result<Lazy, RemoteError> {
        let t0 = std::time::Instant::now();
        let rt = runtime()?;
        let mut client = Client::new(remote.clone(), opts.pull.remote.clone(), false)?;
        let mut fetched: Fetched = rt.block_on(async {
            client.resolve_scheme().await;
            fetch_manifest(&client, &store, &opts.pull, !opts.full_manifest).await
        })?;
        let t_fetched = t0.elapsed();
        let (manifest, table) = match fetched.lazy.take() {
            None => {
                let m = Compact::from_bytes(&fetched.bytes)
                    .map_err(|err| RemoteError::Manifest { url: client.blob_url(&fetched.digest), err })?;
                (m, None)
            }
            Some(l) => {
                let url = client.blob_url(&l.index);
                let mut index = Index::parse(&l.index_bytes).map_err(|err| RemoteError::LazyIndex { url, err })?;
                let (td, tsize) = l.table;
                if index.table != td || tsize != index.blobs() as u64 * 32 {
                    let url = client.blob_url(&td);
                    let err = super::lazyidx::IndexError::Bad("digest table layer (not the one the index names)");
                    return Err(RemoteError::LazyIndex { url, err });
                }
                let tree = std::mem::replace(&mut index.tree, crate::manifest::compact::Builder::new().finish());
                let got = (0..index.chunks.len()).map(|_| Mutex::new(None)).collect();
                (tree, Some(Table { index, index_digest: l.index, url: client.blob_url(&td), got }))
            }
        };
        let t_decoded = t0.elapsed();
        // with a lazy index, blob `n` is the placeholder `n` (in manifest
        // order, as packs take them): no walk, no map
        let all: Vec<(Digest, u64)> = match &table {
            Some(t) => t.index.sizes.iter().enumerate().map(|(n, &s)| (placeholder(n), s)).collect(),
            None => file_blobs_compact(&manifest),
        };
        let packs = if fetched.packs.is_empty() {
            Vec::new()
        } else {
            pack::members(&all, fetched.threshold, &fetched.packs)
                .map_err(|err| RemoteError::Packs { url: client.remote_name(), err })?
        };
        let index: HashMap<Digest, usize> = match table {
            Some(_) => HashMap::new(),
            None => all.iter().enumerate().map(|(i, (d, _))| (*d, i)).collect(),
        };
        let num = |d: &Digest| blob_number(table.is_some(), &index, all.len(), d);
        let mut blobs: Vec<Blob> =
            all.iter().map(|&(d, size)| Blob { digest: d, size, path: Vec::new(), place: Place::Single }).collect();
        for (p, (_, _, members)) in packs.iter().enumerate() {
            for (k, m) in members.iter().enumerate() {
                if let Some(i) = num(&m.digest) {
                    blobs[i].place = Place::Member { pack: p, k };
                }
            }
        }
        let mut cur = manifest.cursor();
        while let Some((path, n)) = cur.next_entry() {
            if let Some(f) = n.file()
                && let Some(d) = f.digest
                && let Some(i) = num(d)
                && blobs[i].path.is_empty()
            {
                blobs[i].path = path.to_vec();
            }
        }
        let mut first_paths = opts.pull.prefetch.clone();
        first_paths.extend(fetched.access.iter().cloned());
        let (first, _) = prefetch_blobs_compact(&manifest, &first_paths);
        let mut order = Vec::with_capacity(blobs.len());
        let mut seen = vec![false; blobs.len()];
        for (d, _) in &first {
            if let Some(i) = num(d)
                && !std::mem::replace(&mut seen[i], true)
            {
                order.push(i);
            }
        }
        let access = (!first_paths.is_empty()).then(|| order.iter().copied().collect::<HashSet<usize>>());
        order.extend((0..blobs.len()).filter(|&i| !seen[i]));
        let record = opts.record_access.map(|file| Mutex::new(Recorder { file, seen: HashSet::new() }));
        (opts.log)(&format!(
            "{} fetched in {} ms, decoded in {} ms; {} blobs ({} in {} packs) set up in {} ms",
            if table.is_some() { "artifact and lazy index" } else { "artifact and manifest" },
            t_fetched.as_millis(),
            (t_decoded - t_fetched).as_millis(),
            blobs.len(),
            packs.iter().map(|p| p.2.len()).sum::<usize>(),
            packs.len(),
            (t0.elapsed() - t_decoded).as_millis()
        ));
        Ok(Lazy {
            rt,
            client,
            store,
            manifest,
            manifest_bytes: fetched.bytes,
            manifest_digest: fetched.digest,
            blobs,
            index,
            packs,
            zstd: fetched.zstd,
            table,
            access,
            order,
            state: Mutex::new(State::default()),
            cond: Condvar::new(),
            log: opts.log,
            record,
            bytes: AtomicU64::new(0),
            fetched: AtomicUsize::new(0),
            rebuilt: Mutex::new(None),
        })
    }

    /// The decoded manifest.
    pub fn manifest(&self) -> &Compact {
        &self.manifest
    }

    /// Its bytes, as fetched (empty when the mount started from a lazy
    /// index: then the manifest is rebuilt once the digest table is in,
    /// see [`background`](Self::background)).
    pub fn manifest_bytes(&self) -> &[u8] {
        &self.manifest_bytes
    }

    /// The digest of the manifest the artifact names.
    pub fn manifest_digest(&self) -> &Digest {
        &self.manifest_digest
    }

    /// What the metadata image of [`manifest`](Self::manifest) is cached
    /// by: the manifest's digest, or with a lazy index (whose tree names
    /// placeholders) that index's digest.
    pub fn image_key(&self) -> Digest {
        self.table.as_ref().map_or(self.manifest_digest, |t| t.index_digest)
    }

    /// Whether the mount started from a lazy index.
    pub fn from_index(&self) -> bool {
        self.table.is_some()
    }

    /// The content digest of blob `i`, fetching its chunk of the digest
    /// table if needed.
    pub fn real(&self, i: usize) -> Result<Digest, RemoteError> {
        match &self.table {
            None => Ok(self.blobs[i].digest),
            Some(t) => {
                if let Some(d) = self.known(i) {
                    return Ok(d);
                }
                let c = i / t.index.chunk;
                self.rt.handle().block_on(self.fetch_chunks(t, c, c + 1))?;
                self.known(i).ok_or_else(|| unreachable_chunk(t, c))
            }
        }
    }

    /// The content digest of blob `i` if known without a fetch.
    fn known(&self, i: usize) -> Option<Digest> {
        match &self.table {
            None => Some(self.blobs[i].digest),
            Some(t) => {
                let g = t.got[i / t.index.chunk].lock().unwrap_or_else(|p| p.into_inner());
                g.as_ref().map(|c| c[i % t.index.chunk])
            }
        }
    }

    /// Chunks `lo..hi` of the table, those not yet known, with one `Range`
    /// request (from the first missing to the last), each checked against
    /// the digest the lazy index names before any use. No lock is held
    /// while fetching: two callers may fetch a chunk both, each checks it.
    async fn fetch_chunks(&self, t: &Table, lo: usize, hi: usize) -> Result<(), RemoteError> {
        let have = |c: usize| t.got[c].lock().unwrap_or_else(|p| p.into_inner()).is_some();
        let Some(first) = (lo..hi).find(|&c| !have(c)) else { return Ok(()) };
        let last = (first..hi).rev().find(|&c| !have(c)).unwrap_or(first);
        let (start, _) = t.index.chunk_range(first);
        let (_, end) = t.index.chunk_range(last);
        let bytes = get_range(&self.client, &t.url, start, end).await?;
        for c in first..=last {
            let (a, b) = t.index.chunk_range(c);
            let got = checked_chunk(t, c, &bytes[(a - start) as usize..(b - start) as usize])?;
            let mut g = t.got[c].lock().unwrap_or_else(|p| p.into_inner());
            if g.is_none() {
                *g = Some(got);
            }
        }
        Ok(())
    }

    /// With a lazy index (the background prefetch's first step): the
    /// whole digest table (one request, each chunk checked), then the
    /// manifest rebuilt from the tree and the table, which must have the
    /// digest the artifact names; kept for [`background`](Self::background)
    /// to store once every blob is in.
    fn whole_table(&self, t: &Table) -> Result<(), RemoteError> {
        self.rt.block_on(self.fetch_chunks(t, 0, t.got.len()))?;
        let mut all = Vec::with_capacity(self.blobs.len());
        for i in 0..self.blobs.len() {
            all.push(self.known(i).ok_or_else(|| unreachable_chunk(t, i / t.index.chunk))?);
        }
        let url = t.url.clone();
        let bytes = super::lazyidx::rebuild(&self.manifest, &all)
            .map_err(|e| RemoteError::LazyIndex { url: url.clone(), err: IndexError::Rebuild(Box::new(e)) })?;
        let actual = Digest::of(&bytes);
        if actual != self.manifest_digest {
            let why = super::lazyidx::Mismatch { index: t.index_digest, expected: self.manifest_digest, actual };
            let err = IndexError::Mismatch(Box::new(why));
            return Err(RemoteError::LazyIndex { url, err });
        }
        *self.rebuilt.lock().unwrap_or_else(|p| p.into_inner()) = Some(bytes);
        Ok(())
    }

    /// With a lazy index and every blob in the store: the manifest that
    /// [`whole_table`](Self::whole_table) rebuilt and checked, kept in the
    /// store. Logs what it did.
    fn keep_manifest(&self) {
        let Some(bytes) = self.rebuilt.lock().unwrap_or_else(|p| p.into_inner()).take() else { return };
        let line = match self.store.put_bytes(&bytes) {
            Ok(_) => format!(
                "manifest {} rebuilt from the lazy index and the digest table, its digest checked, kept in the store",
                self.manifest_digest
            ),
            Err(e) => format!("error: keeping the rebuilt manifest {}: {e}", self.manifest_digest),
        };
        (self.log)(&line);
    }

    /// The store blobs go into.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The distinct file blobs, in manifest order.
    pub fn blobs(&self) -> &[Blob] {
        &self.blobs
    }

    /// The index of blob `d` in [`blobs`](Self::blobs).
    pub fn find(&self, d: &Digest) -> Option<usize> {
        self.num(d)
    }

    /// Bytes received for blobs so far, and blobs fetched.
    pub fn fetched(&self) -> (u64, usize) {
        (self.bytes.load(Ordering::Relaxed), self.fetched.load(Ordering::Relaxed))
    }

    /// The number of the blob `d` names: with a lazy index, a
    /// placeholder's.
    fn num(&self, d: &Digest) -> Option<usize> {
        blob_number(self.table.is_some(), &self.index, self.blobs.len(), d)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes sure blob `i` is in the store: fetched on demand (with
    /// neighbours, see [`plan`](Self::plan)) unless it is there or being
    /// fetched by another caller, whose fetch is waited for.
    pub fn ensure(&self, i: usize) -> Result<(), RemoteError> {
        self.ensure_for(i, "on first read")
    }

    /// Starts reading ahead for readers that go through a pack in order
    /// (a directory read file after file): once two demand fetches in a
    /// row follow each other in one pack, the run after the second is
    /// fetched by a thread of its own while the reader reads, and the
    /// reader's first touch of a run read ahead asks for the next, so the
    /// link's round trips overlap the reading. One run (at most
    /// [`DEMAND_MAX`] bytes) is ever ahead of the reader. Nothing is read
    /// ahead with an access list: what it names is fetched at mount, and
    /// nothing else is fetched unless read. Ends with
    /// [`end_read_ahead`](Self::end_read_ahead).
    pub fn read_ahead(self: &Arc<Self>) -> std::thread::JoinHandle<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Ahead>(1);
        if self.access.is_none() {
            self.lock().ahead_tx = Some(tx);
        }
        let me = self.clone();
        // every run sent is claimed (its readers wait for it): each is
        // fetched, also those still queued when the sender goes
        std::thread::spawn(move || {
            while let Ok(a) = rx.recv() {
                if let Err(e) = me.fetch_claimed(a.i, a.plan, &a.run, "read ahead", true) {
                    let path = crate::manifest::path_display(&me.blobs[a.i].path);
                    (me.log)(&format!("error: {} ({path}), read ahead: {e}", me.shown(a.i)));
                }
            }
        })
    }

    /// Ends the thread [`read_ahead`](Self::read_ahead) started (once the
    /// fetches it was given end).
    pub fn end_read_ahead(&self) {
        self.lock().ahead_tx = None;
    }

    /// Whether the store held any blob when first asked (see
    /// [`State::warm`]).
    fn warm(&self) -> bool {
        let mut st = self.lock();
        self.warm_locked(&mut st)
    }

    fn warm_locked(&self, st: &mut State) -> bool {
        *st.warm.get_or_insert_with(|| {
            std::fs::read_dir(self.store.root().join("blobs/sha256")).is_ok_and(|mut d| d.next().is_some())
        })
    }

    /// Claims the run that starts at member `k` of `pack` for the
    /// read-ahead thread and hands it over, if the thread runs and is not
    /// busy. Not in a store that held blobs before the mount (a member
    /// whose chunk is unknown might be fetched again).
    fn ask_ahead(&self, st: &mut State, pack: usize, k: usize) {
        let Some(tx) = st.ahead_tx.clone() else { return };
        let Some(n) = self.packs[pack].2.get(k).and_then(|m| self.num(&m.digest)) else { return };
        if st.verified.contains(&n)
            || st.inflight.contains(&n)
            || self.known(n).is_some_and(|d| self.store.has(&d))
            || self.warm_locked(st)
        {
            return;
        }
        let before = st.ahead;
        let (plan, run) = self.claim(n, st);
        let Plan::Run { lo, hi, .. } = plan else {
            return self.unclaim(st, &run, before);
        };
        st.ahead_run = Some((pack, lo, hi));
        if let Err(std::sync::mpsc::TrySendError::Full(a) | std::sync::mpsc::TrySendError::Disconnected(a)) =
            tx.try_send(Ahead { i: n, plan, run })
        {
            self.unclaim(st, &a.run, before);
        }
    }

    /// Undoes a [`claim`](Self::claim) that was not handed over.
    fn unclaim(&self, st: &mut State, run: &[usize], ahead: Option<(usize, usize, u64)>) {
        for j in run {
            st.inflight.remove(j);
        }
        st.ahead = ahead;
        st.ahead_run = None;
    }

    /// A reader's touch of blob `i`, verified: the first touch of the run
    /// read ahead last asks for the run after it.
    fn touched(&self, i: usize, st: &mut State) {
        if let (Place::Member { pack, k }, Some((p, lo, hi))) = (self.blobs[i].place, st.ahead_run)
            && p == pack
            && (lo..hi).contains(&k)
        {
            st.ahead_run = None;
            if let Some((p, next, _)) = st.ahead.filter(|a| a.0 == pack) {
                self.ask_ahead(st, p, next);
            }
        }
    }

    /// Claims what [`plan`](Self::plan) says for blob `i`: the whole run at
    /// once, so that no other caller fetches any of its blobs meanwhile
    /// (each waits for this fetch).
    fn claim(&self, i: usize, st: &mut State) -> (Plan, Vec<usize>) {
        let plan = self.plan(i, st);
        let run: Vec<usize> = match plan {
            Plan::Single => vec![i],
            Plan::Run { pack, lo, hi, span } => {
                st.ahead = Some((pack, hi, span));
                self.packs[pack].2[lo..hi].iter().filter_map(|m| self.num(&m.digest)).collect()
            }
        };
        st.inflight.extend(run.iter().copied());
        (plan, run)
    }

    /// [`ensure`](Self::ensure), saying `why` in the log.
    fn ensure_for(&self, i: usize, why: &str) -> Result<(), RemoteError> {
        // a blob of its own is fetched by its digest: that needs its chunk
        // of the table first; a pack member's chunk comes with its data
        let d = match self.blobs[i].place {
            Place::Single => Some(self.real(i)?),
            // in a store that held blobs before (a restarted mount), the
            // member may be there: its chunk (one small request) tells,
            // before its run is fetched again
            Place::Member { .. } if self.known(i).is_none() && self.warm() => Some(self.real(i)?),
            Place::Member { .. } => self.known(i),
        };
        let mut st = self.lock();
        loop {
            if st.verified.contains(&i) {
                self.touched(i, &mut st);
                return Ok(());
            }
            if st.inflight.contains(&i) {
                st = self.cond.wait(st).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            if d.is_some_and(|d| self.store.has(&d)) {
                return Ok(());
            }
            let (plan, run) = self.claim(i, &mut st);
            drop(st);
            return self.fetch_claimed(i, plan, &run, why, false);
        }
    }

    /// Fetches a claimed run (see [`claim`](Self::claim)) and releases it:
    /// its readers are woken. After a reader's fetch that went on where
    /// the one before ended, the run after it is read ahead.
    fn fetch_claimed(&self, i: usize, plan: Plan, run: &[usize], why: &str, ahead: bool) -> Result<(), RemoteError> {
        let before = self.bytes.load(Ordering::Relaxed);
        let mut r = self.fetch(i, plan);
        // what a failed run stored is verified: a reader of a member
        // that arrived is served, whatever became of its neighbours
        let stored: Vec<usize> = match &r {
            Ok(()) => run.to_vec(),
            Err(_) => run.iter().copied().filter(|&j| self.known(j).is_some_and(|d| self.store.has(&d))).collect(),
        };
        if let Err(e) = &r
            && stored.contains(&i)
        {
            (self.log)(&format!("error: a neighbour of {} fetched {why}: {e}", self.shown(i)));
            r = Ok(());
        }
        if r.is_ok() {
            let b = &self.blobs[i];
            (self.log)(&format!(
                "fetched {} ({}) {why}, with {} neighbour(s), {} bytes",
                self.shown(i),
                crate::manifest::path_display(&b.path),
                stored.len().saturating_sub(1),
                self.bytes.load(Ordering::Relaxed).saturating_sub(before)
            ));
        }
        let mut st = self.lock();
        for j in run {
            st.inflight.remove(j);
        }
        st.verified.extend(stored);
        // a reader that went on where its last fetch ended reads on: the
        // run after this one is claimed now, before the reader gets there,
        // and fetched while it reads this one
        if let (false, true, Plan::Run { pack, hi, span, .. }) = (ahead, r.is_ok(), plan)
            && span > DEMAND_SPAN
        {
            self.ask_ahead(&mut st, pack, hi);
        }
        self.cond.notify_all();
        r
    }

    /// What to fetch for blob `i`: itself, or the run of its pack's
    /// members around it that are missing and not being fetched (a member
    /// whose digest is not yet known counts as missing), without members
    /// an access list leaves out, within [`DEMAND_SPAN`] wire bytes, or
    /// twice the last run's span when it goes on where that run ended
    /// (see [`DEMAND_MAX`]).
    fn plan(&self, i: usize, st: &State) -> Plan {
        let Place::Member { pack, k } = self.blobs[i].place else { return Plan::Single };
        let members = &self.packs[pack].2;
        let span = match st.ahead {
            Some((p, next, last)) if p == pack && k >= next && k - next <= SEQ_GAP => {
                last.saturating_mul(2).clamp(DEMAND_SPAN, DEMAND_MAX)
            }
            _ => DEMAND_SPAN,
        };
        let wanted = |j: usize| -> bool {
            let Some(n) = self.num(&members[j].digest) else { return false };
            if self.access.as_ref().is_some_and(|a| !a.contains(&n)) {
                return false;
            }
            !st.verified.contains(&n) && !st.inflight.contains(&n) && !self.known(n).is_some_and(|d| self.store.has(&d))
        };
        let (mut lo, mut hi, mut len) = (k, k + 1, members[k].len);
        while hi < members.len() && len.saturating_add(members[hi].len) <= span && wanted(hi) {
            len += members[hi].len;
            hi += 1;
        }
        while lo > 0 && len.saturating_add(members[lo - 1].len) <= span && wanted(lo - 1) {
            lo -= 1;
            len += members[lo].len;
        }
        Plan::Run { pack, lo, hi, span }
    }

    /// Fetches what `plan` says for blob `i`. A run's bytes and, with a
    /// lazy index, the chunks of the table naming its members come at
    /// once (two concurrent requests, the run at most [`DEMAND_MAX`] bytes
    /// held in memory); each member is checked against its digest from a
    /// checked chunk before it is named in the store.
    fn fetch(&self, i: usize, plan: Plan) -> Result<(), RemoteError> {
        let progress = |n: u64| {
            self.bytes.fetch_add(n, Ordering::Relaxed);
        };
        let h = self.rt.handle();
        let n = match plan {
            Plan::Single => {
                let b = &self.blobs[i];
                let d = self.real(i)?;
                let via = match b.place {
                    Place::Single => self.zstd.get(&d).copied(),
                    Place::Member { .. } => None,
                };
                h.block_on(fetch_blob(&self.client, &d, b.size, via, &self.store, &progress))?;
                1
            }
            Plan::Run { pack, lo, hi, .. } => {
                let (pd, coding, members) = &self.packs[pack];
                let members = &members[lo..hi];
                let nums: Vec<Option<usize>> = members.iter().map(|m| self.num(&m.digest)).collect();
                let url = self.client.blob_url(pd);
                let (start, end) = (members[0].off, members[members.len() - 1].off + members[members.len() - 1].len);
                let chunks = async {
                    let Some(t) = &self.table else { return Ok(()) };
                    let (a, b) = nums
                        .iter()
                        .flatten()
                        .fold((usize::MAX, 0), |(a, b), &n| (a.min(n / t.index.chunk), b.max(n / t.index.chunk + 1)));
                    if a >= b { Ok(()) } else { self.fetch_chunks(t, a, b).await }
                };
                let (chunks, data) =
                    h.block_on(async { tokio::join!(chunks, get_range(&self.client, &url, start, end)) });
                chunks?;
                let data = data?;
                progress(data.len() as u64);
                let mut run = Vec::with_capacity(members.len());
                for (m, n) in members.iter().zip(&nums) {
                    let digest = match n {
                        Some(n) => self.real(*n)?,
                        None => m.digest,
                    };
                    run.push(Member { digest, ..*m });
                }
                put_run(&url, *coding, &run, &data, &self.store)?;
                hi - lo
            }
        };
        self.fetched.fetch_add(n, Ordering::Relaxed);
        Ok(())
    }

    /// Blob `i` ready to serve: fetched if missing, hashed if it was in the
    /// store before and not yet checked, its path recorded (see
    /// [`LazyOptions::record_access`]). Errors are logged too.
    pub fn open_blob(&self, i: usize) -> Result<std::fs::File, RemoteError> {
        let r = self.open_verified(i);
        match &r {
            Ok(_) => self.record(i),
            Err(e) => {
                let b = &self.blobs[i];
                (self.log)(&format!("error: {} ({}): {e}", self.shown(i), crate::manifest::path_display(&b.path)));
            }
        }
        r
    }

    /// Blob `i` in messages: its digest, or its number while the digest
    /// table has not told it.
    fn shown(&self, i: usize) -> String {
        match self.known(i) {
            Some(d) => format!("blob {d}"),
            None => format!("blob number {i} (digest not yet known)"),
        }
    }

    fn open_verified(&self, i: usize) -> Result<std::fs::File, RemoteError> {
        self.ensure(i)?;
        let b = &self.blobs[i];
        let d = self.real(i)?;
        let mut f = std::fs::File::from(self.store.open_blob(&d)?);
        if !self.lock().verified.contains(&i) {
            let shown = self.store.blob_path(&d).display().to_string();
            let mut v = Verifier::new(d, b.size);
            let mut buf = vec![0u8; 1 << 18];
            loop {
                let n = f.read(&mut buf).map_err(|err| RemoteError::Io { path: shown.clone(), err })?;
                if n == 0 {
                    break;
                }
                v.update(&buf[..n]);
            }
            v.finish(&shown).map_err(RemoteError::Store)?;
            self.lock().verified.insert(i);
        }
        Ok(f)
    }

    fn record(&self, i: usize) {
        let Some(r) = &self.record else { return };
        let mut r = r.lock().unwrap_or_else(|p| p.into_inner());
        if r.seen.insert(i) {
            let mut line = self.blobs[i].path.clone();
            line.push(b'\n');
            if let Err(e) = r.file.write_all(&line) {
                (self.log)(&format!("error: writing the access record: {e}"));
            }
        }
    }

    /// The blobs an access list names (the artifact's, or paths given to
    /// fetch first), fetched at once as a first read would (each with its
    /// neighbours the list names, their chunks of the table alongside),
    /// `threads` fetches at a time, in the list's order, until done or
    /// `stop` is set: what a first command reads is there before it reads
    /// it, and nothing else is fetched. Nothing without a list.
    pub fn fetch_first(&self, threads: usize, stop: &AtomicBool) {
        let Some(a) = &self.access else { return };
        let first = &self.order[..a.len().min(self.order.len())];
        let next = AtomicUsize::new(0);
        let t0 = std::time::Instant::now();
        std::thread::scope(|s| {
            for _ in 0..threads.max(1) {
                s.spawn(|| {
                    while !stop.load(Ordering::Relaxed) {
                        let Some(&i) = first.get(next.fetch_add(1, Ordering::Relaxed)) else { break };
                        if let Err(e) = self.ensure_for(i, "as the access list names it") {
                            let b = &self.blobs[i];
                            let path = crate::manifest::path_display(&b.path);
                            (self.log)(&format!("error: {} ({path}), named by the access list: {e}", self.shown(i)));
                        }
                    }
                });
            }
        });
        if !stop.load(Ordering::Relaxed) {
            (self.log)(&format!(
                "the {} blobs the access list names are in the store ({} ms)",
                first.len(),
                t0.elapsed().as_millis()
            ));
        }
    }

    /// Fetches every blob the store lacks, as a pull does: each run of
    /// missing members of a pack with one request (cut at
    /// [`BACKGROUND_SPAN`]), each other blob on its own, `jobs` requests at
    /// a time, in priority order (access list first, then manifest order),
    /// until done or `stop` is set. Blobs a reader is fetching meanwhile
    /// are left to it. A fetch that fails is logged and its blobs left for
    /// a later read. With a lazy index the whole digest table comes first,
    /// and the manifest it rebuilds must be the one the artifact names:
    /// otherwise nothing is fetched and the error is returned (and
    /// logged); a table that cannot be fetched for a while (a transient
    /// failure) is asked for again, less and less often, until `stop`.
    /// Returns when finished.
    pub fn background(&self, jobs: usize, stop: &AtomicBool) -> Result<(), RemoteError> {
        if let Some(t) = &self.table {
            // a registry that fails for a while is waited for (reads go
            // on meanwhile); an artifact that does not hold together is not
            let mut attempt = 0u32;
            loop {
                match self.whole_table(t) {
                    Ok(()) => break,
                    Err(e) if e.transient() && !stop.load(Ordering::Relaxed) => {
                        attempt += 1;
                        let wait = backoff(attempt) * 8;
                        (self.log)(&format!(
                            "error: background prefetch: fetching the digest table (try {attempt}; again in {} ms): {e}",
                            wait.as_millis()
                        ));
                        let until = std::time::Instant::now() + wait;
                        while std::time::Instant::now() < until && !stop.load(Ordering::Relaxed) {
                            std::thread::sleep(std::time::Duration::from_millis(50));
                        }
                    }
                    Err(e) => {
                        (self.log)(&format!("error: background prefetch stopped: {e}"));
                        return Err(e);
                    }
                }
            }
        }
        let failed = AtomicUsize::new(0);
        let list = self.background_jobs();
        let next = AtomicUsize::new(0);
        // a thread a job at a time: decoding, hashing and storing what
        // arrives spreads over the cores as the requests do
        std::thread::scope(|s| {
            for _ in 0..jobs.max(1) {
                s.spawn(|| {
                    while !stop.load(Ordering::Relaxed) {
                        let Some(&job) = list.get(next.fetch_add(1, Ordering::Relaxed)) else { break };
                        if let Err((i, e)) = self.rt.handle().block_on(self.background_job(job)) {
                            failed.fetch_add(1, Ordering::Relaxed);
                            let b = &self.blobs[i];
                            (self.log)(&format!(
                                "error: background fetch of {} ({}): {e}",
                                self.shown(i),
                                crate::manifest::path_display(&b.path)
                            ));
                        }
                    }
                });
            }
        });
        if !stop.load(Ordering::Relaxed) {
            let (bytes, n) = self.fetched();
            let failed = failed.load(Ordering::Relaxed);
            (self.log)(&format!(
                "background prefetch done: {n} blobs fetched ({bytes} bytes) in all, {failed} fetches failed (their blobs are fetched when read)"
            ));
            if self.complete() {
                self.keep_manifest();
            }
        }
        Ok(())
    }

    /// What the background prefetch fetches, in priority order: each blob
    /// of its own the store lacks, each run of a pack's members it lacks
    /// (at most [`BACKGROUND_SPAN`] wire bytes each).
    fn background_jobs(&self) -> Vec<Job> {
        let mut rank = vec![usize::MAX; self.blobs.len()];
        for (r, &i) in self.order.iter().enumerate() {
            rank[i] = rank[i].min(r);
        }
        let present = |i: usize| self.known(i).is_some_and(|d| self.store.has(&d));
        let mut jobs: Vec<(usize, Job)> = Vec::new();
        for (i, b) in self.blobs.iter().enumerate() {
            if matches!(b.place, Place::Single) && !present(i) {
                jobs.push((rank[i], Job::Single(i)));
            }
        }
        for (p, (_, _, members)) in self.packs.iter().enumerate() {
            let mut run: Option<(usize, u64, usize)> = None; // (lo, wire bytes, best rank)
            for (k, m) in members.iter().enumerate() {
                let n = self.num(&m.digest);
                if n.is_none_or(present) {
                    if let Some((lo, _, r)) = run.take() {
                        jobs.push((r, Job::Run { pack: p, lo, hi: k }));
                    }
                    continue;
                }
                let r = n.map_or(usize::MAX, |n| rank[n]);
                run = match run {
                    Some((lo, len, best)) if len.saturating_add(m.len) <= BACKGROUND_SPAN => {
                        Some((lo, len + m.len, best.min(r)))
                    }
                    Some((lo, _, best)) => {
                        jobs.push((best, Job::Run { pack: p, lo, hi: k }));
                        Some((k, m.len, r))
                    }
                    None => Some((k, m.len, r)),
                };
            }
            if let Some((lo, _, r)) = run {
                jobs.push((r, Job::Run { pack: p, lo, hi: members.len() }));
            }
        }
        jobs.sort_by_key(|(r, _)| *r);
        jobs.into_iter().map(|(_, j)| j).collect()
    }

    /// One job of the background prefetch: its blobs that no reader has
    /// claimed, claimed, fetched (a run of members as adjacent runs, one
    /// request each), and released. The error names a blob it was for.
    async fn background_job(&self, job: Job) -> Result<(), (usize, RemoteError)> {
        let (pack, lo, hi) = match job {
            Job::Single(i) => (None, i, i + 1),
            Job::Run { pack, lo, hi } => (Some(pack), lo, hi),
        };
        let num = |k: usize| match pack {
            None => Some(k),
            Some(p) => self.num(&self.packs[p].2[k].digest),
        };
        // claim: adjacent runs of what is not verified nor being fetched
        let mut runs: Vec<(usize, usize)> = Vec::new();
        let mut claimed = Vec::new();
        {
            let mut st = self.lock();
            for k in lo..hi {
                let Some(n) = num(k) else { continue };
                if st.verified.contains(&n) || st.inflight.contains(&n) {
                    continue;
                }
                st.inflight.insert(n);
                claimed.push(n);
                match runs.last_mut() {
                    Some((_, end)) if *end == k => *end = k + 1,
                    _ => runs.push((k, k + 1)),
                }
            }
        }
        let progress = |n: u64| {
            self.bytes.fetch_add(n, Ordering::Relaxed);
        };
        let mut first_err = None;
        for &(a, b) in &runs {
            let r = match pack {
                None => match self.known(a) {
                    Some(d) => {
                        let via = self.zstd.get(&d).copied();
                        fetch_blob(&self.client, &d, self.blobs[a].size, via, &self.store, &progress).await.map(|_| ())
                    }
                    None => Err(unreachable_chunk_of(self, a)),
                },
                Some(p) => {
                    let (pd, coding, members) = &self.packs[p];
                    let run: Option<Vec<Member>> = members[a..b]
                        .iter()
                        .map(|m| {
                            let n = self.num(&m.digest)?;
                            Some(Member { digest: self.known(n)?, ..*m })
                        })
                        .collect();
                    match run {
                        Some(run) => {
                            fetch_run(&self.client, pd, *coding, &run, &self.store, &progress).await.map(|_| ())
                        }
                        None => Err(unreachable_chunk_of(self, num(a).unwrap_or(0))),
                    }
                }
            };
            if let Err(e) = r {
                first_err.get_or_insert((num(a).unwrap_or(0), e));
            }
        }
        let mut st = self.lock();
        let mut done = 0;
        for n in claimed {
            st.inflight.remove(&n);
            if self.known(n).is_some_and(|d| self.store.has(&d)) {
                st.verified.insert(n);
                done += 1;
            }
        }
        drop(st);
        self.cond.notify_all();
        self.fetched.fetch_add(done, Ordering::Relaxed);
        first_err.map_or(Ok(()), Err)
    }

    /// Whether every blob is in the store.
    pub fn complete(&self) -> bool {
        (0..self.blobs.len()).all(|i| self.known(i).is_some_and(|d| self.store.has(&d)))
    }
}

/// The number of the blob `d` names among `n`: a placeholder's with a lazy
/// index, else by the map of content digests.
fn blob_number(from_index: bool, index: &HashMap<Digest, usize>, n: usize, d: &Digest) -> Option<usize> {
    if from_index { placeholder_index(d).filter(|&i| i < n) } else { index.get(d).copied() }
}

/// What the background prefetch fetches with one job.
#[derive(Clone, Copy, Debug)]
enum Job {
    /// Blob `i`, a layer of its own.
    Single(usize),
    /// Members `lo..hi` of pack `pack`.
    Run { pack: usize, lo: usize, hi: usize },
}

/// A chunk of the table that should have been fetched and is not known
/// (not expected: every caller fetches it first).
fn unreachable_chunk(t: &Table, c: usize) -> RemoteError {
    RemoteError::Transport {
        op: "GET".into(),
        url: t.url.clone(),
        detail: format!("digest chunk {c} not known after its fetch"),
        transient: true,
    }
}

/// [`unreachable_chunk`] for blob `i` of `lazy`.
fn unreachable_chunk_of(lazy: &Lazy, i: usize) -> RemoteError {
    match &lazy.table {
        Some(t) => unreachable_chunk(t, i / t.index.chunk),
        None => {
            RemoteError::LazyIndex { url: lazy.client.remote_name(), err: IndexError::Bad("blob digest (not known)") }
        }
    }
}

/// Chunk `c` of `t`'s table from its bytes, if they have the digest the
/// lazy index names.
fn checked_chunk(t: &Table, c: usize, bytes: &[u8]) -> Result<Arc<[Digest]>, RemoteError> {
    let (start, end) = t.index.chunk_range(c);
    let actual = Digest::of(bytes);
    if actual != t.index.chunks[c] || bytes.len() as u64 != end - start {
        let why = Box::new(ChunkMismatch { chunk: c, start, end, expected: t.index.chunks[c], actual });
        return Err(RemoteError::DigestChunk { url: t.url.clone(), why });
    }
    Ok(bytes.chunks_exact(32).map(|d| Digest(d.try_into().expect("32 bytes"))).collect())
}

/// Bytes `start..end` of `url`, with one `Range` request (retried after a
/// transient failure).
async fn get_range(client: &Client, url: &str, start: u64, end: u64) -> Result<Vec<u8>, RemoteError> {
    let want = (end - start) as usize;
    let mut attempt = 0;
    loop {
        let r = async {
            let mut resp = client.get_range(url, &format!("bytes={start}-{}", end.saturating_sub(1))).await?;
            // a server that ignores Range sends the whole blob
            let mut skip = range_skip(&resp, url, start)?;
            let mut out = Vec::with_capacity(want);
            while out.len() < want {
                let Some(c) = resp.chunk().await.map_err(|e| transport("GET", url, e, client.timeout()))? else {
                    return Err(RemoteError::Transport {
                        op: "GET".into(),
                        url: url.to_string(),
                        detail: format!("body ended at byte {} of {start}..{end}", start + out.len() as u64),
                        transient: true,
                    });
                };
                let mut d: &[u8] = &c;
                let k = skip.min(d.len() as u64) as usize;
                d = &d[k..];
                skip -= k as u64;
                let room = want - out.len();
                out.extend_from_slice(&d[..d.len().min(room)]);
            }
            Ok(out)
        }
        .await;
        match r {
            Err(e) if e.transient() && attempt < client.retries() => {
                attempt += 1;
                tokio::time::sleep(backoff(attempt)).await;
            }
            r => return r,
        }
    }
}
