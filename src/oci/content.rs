//! A regular file's content on its way from a layer into the store: hashed,
//! its zero runs found, and written as a blob whose all-zero blocks are left
//! as holes (so a layer full of zeros costs no disk).
//!
//! Zero runs follow `ocix.cddl`: maximal runs of whole 4096-byte blocks,
//! aligned within the file, all zero, inside the first `floor(size / 4096)`
//! blocks; they derive from the content alone, exactly as `ocix scan` derives
//! them, so imported and scanned manifests agree.

use crate::manifest::{BLOCK, Digest, File};
use crate::store::{BlobWriter, Store, StoreError};
use sha2::{Digest as _, Sha256};

/// Finds the zero runs of a stream of known size.
#[derive(Debug)]
pub struct ZeroRuns {
    full_blocks: u64,
    pos: u64,
    cur_zero: bool,
    runs: Vec<(u64, u64)>,
}

impl ZeroRuns {
    /// For content of `size` bytes.
    pub fn new(size: u64) -> Self {
        ZeroRuns { full_blocks: size / BLOCK, pos: 0, cur_zero: true, runs: Vec::new() }
    }

    fn end_block(&mut self) {
        let b = self.pos / BLOCK - 1;
        if self.cur_zero && b < self.full_blocks {
            self.add(b, 1);
        }
        self.cur_zero = true;
    }

    fn add(&mut self, start: u64, count: u64) {
        match self.runs.last_mut() {
            Some((s, n)) if *s + *n == start => *n += count,
            _ => self.runs.push((start, count)),
        }
    }

    /// Feeds content bytes.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let in_block = (self.pos % BLOCK) as usize;
            let take = (BLOCK as usize - in_block).min(data.len());
            if self.cur_zero && !is_zero(&data[..take]) {
                self.cur_zero = false;
            }
            self.pos += take as u64;
            data = &data[take..];
            if self.pos % BLOCK == 0 {
                self.end_block();
            }
        }
    }

    /// Feeds `n` zero bytes without materializing them.
    pub fn feed_zeros(&mut self, mut n: u64) {
        // Finish the current partial block.
        let in_block = self.pos % BLOCK;
        if in_block != 0 {
            let take = (BLOCK - in_block).min(n);
            self.pos += take;
            n -= take;
            if self.pos % BLOCK == 0 {
                self.end_block();
            }
        }
        let whole = n / BLOCK;
        if whole > 0 {
            let first = self.pos / BLOCK;
            let last = (first + whole).min(self.full_blocks);
            if last > first {
                self.add(first, last - first);
            }
            self.pos += whole * BLOCK;
        }
        self.pos += n % BLOCK;
    }

    /// The runs found.
    pub fn finish(self) -> Vec<(u64, u64)> {
        self.runs
    }
}

/// Whether every byte is zero.
pub fn is_zero(data: &[u8]) -> bool {
    let chunks = data.chunks_exact(8);
    let rest = chunks.remainder();
    chunks.into_iter().all(|c| c.iter().fold(0u8, |a, &b| a | b) == 0) && rest.iter().all(|&b| b == 0)
}

enum Out<'s> {
    Store(BlobWriter<'s>),
    Hash(Sha256),
}

/// One file's content being received.
pub struct Content<'s> {
    out: Out<'s>,
    zeros: ZeroRuns,
    size: u64,
    pos: u64,
    /// The start of a block not yet complete (stored output only).
    pending: Vec<u8>,
}

impl<'s> Content<'s> {
    /// Starts a file of `size` bytes; without a store, only hashes.
    pub fn new(store: Option<&'s Store>, size: u64) -> Result<Self, StoreError> {
        let out = match store {
            Some(s) if size > 0 => Out::Store(s.writer()?),
            _ => Out::Hash(Sha256::new()),
        };
        Ok(Content { out, zeros: ZeroRuns::new(size), size, pos: 0, pending: Vec::new() })
    }

    /// Appends content; whole aligned zero blocks become holes.
    pub fn write(&mut self, mut data: &[u8]) -> Result<(), StoreError> {
        self.zeros.feed(data);
        self.pos += data.len() as u64;
        let Out::Store(w) = &mut self.out else {
            if let Out::Hash(h) = &mut self.out {
                h.update(data);
            }
            return Ok(());
        };
        // Blocks are judged whole: a partial one waits in `pending`.
        if !self.pending.is_empty() {
            let k = (BLOCK as usize - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..k]);
            data = &data[k..];
            if self.pending.len() < BLOCK as usize {
                return Ok(());
            }
            emit(w, &self.pending)?;
            self.pending.clear();
        }
        let whole = data.len() / BLOCK as usize * BLOCK as usize;
        emit(w, &data[..whole])?;
        self.pending.extend_from_slice(&data[whole..]);
        Ok(())
    }

    /// Appends `n` zero bytes (a sparse file's hole).
    pub fn write_zeros(&mut self, mut n: u64) -> Result<(), StoreError> {
        self.zeros.feed_zeros(n);
        self.pos += n;
        match &mut self.out {
            Out::Hash(h) => {
                const Z: [u8; 4096] = [0; 4096];
                while n > 0 {
                    let k = n.min(Z.len() as u64) as usize;
                    h.update(&Z[..k]);
                    n -= k as u64;
                }
            }
            Out::Store(w) => {
                if !self.pending.is_empty() {
                    let k = (BLOCK - self.pending.len() as u64).min(n);
                    self.pending.resize(self.pending.len() + k as usize, 0);
                    n -= k;
                    if (self.pending.len() as u64) < BLOCK {
                        return Ok(());
                    }
                    emit(w, &self.pending)?;
                    self.pending.clear();
                }
                let whole = n / BLOCK * BLOCK;
                w.skip_zeros(whole);
                self.pending.resize((n - whole) as usize, 0);
            }
        }
        Ok(())
    }

    /// Bytes so far.
    pub fn len(&self) -> u64 {
        self.pos
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.pos == 0
    }

    /// Names the blob and describes the file. The caller has written exactly
    /// the declared size.
    pub fn finish(mut self) -> Result<File, StoreError> {
        debug_assert_eq!(self.pos, self.size);
        if let Out::Store(w) = &mut self.out {
            if is_zero(&self.pending) {
                w.skip_zeros(self.pending.len() as u64);
            } else {
                w.write(&self.pending)?;
            }
        }
        let zeros = self.zeros.finish();
        if self.size == 0 {
            return Ok(File { size: 0, digest: None, zeros });
        }
        let digest = match self.out {
            Out::Store(w) => w.finish(None)?,
            Out::Hash(h) => Digest(h.finalize().into()),
        };
        Ok(File { size: self.size, digest: Some(digest), zeros })
    }
}

/// Writes whole blocks: all-zero ones become holes, runs of others one write.
fn emit(w: &mut BlobWriter<'_>, data: &[u8]) -> Result<(), StoreError> {
    let b = BLOCK as usize;
    let mut i = 0;
    while i < data.len() {
        let end = (i + b).min(data.len());
        if is_zero(&data[i..end]) {
            w.skip_zeros((end - i) as u64);
            i = end;
            continue;
        }
        let mut j = end;
        while j < data.len() {
            let e = (j + b).min(data.len());
            if is_zero(&data[j..e]) {
                break;
            }
            j = e;
        }
        w.write(&data[i..j])?;
        i = j;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs_of(data: &[u8]) -> Vec<(u64, u64)> {
        let mut z = ZeroRuns::new(data.len() as u64);
        // Feed in odd-sized pieces to exercise block boundaries.
        for c in data.chunks(1000) {
            z.feed(c);
        }
        z.finish()
    }

    #[test]
    fn zero_runs_from_content() {
        let b = BLOCK as usize;
        let mut d = vec![0u8; 5 * b + 100];
        d[b + 7] = 1; // block 1 not zero
        d[3 * b] = 2; // block 3 not zero
        assert_eq!(runs_of(&d), vec![(0, 1), (2, 1), (4, 1)]);
        // the partial last block never counts
        assert_eq!(runs_of(&[0u8; 4095]), vec![]);
        assert_eq!(runs_of(&vec![0u8; 2 * b]), vec![(0, 2)]);
    }

    #[test]
    fn feed_zeros_matches_feed() {
        let b = BLOCK;
        for (pre, hole, post) in [(0u64, 3 * b, 10u64), (100, 5 * b + 17, b), (b, b, 0), (10, 10, 10), (0, 0, 0)] {
            let size = pre + hole + post;
            let mut data = vec![1u8; pre as usize];
            data.extend(vec![0u8; hole as usize]);
            data.extend(vec![1u8; post as usize]);
            let mut z = ZeroRuns::new(size);
            z.feed(&data[..pre as usize]);
            z.feed_zeros(hole);
            z.feed(&data[(pre + hole) as usize..]);
            assert_eq!(z.finish(), runs_of(&data), "{pre} {hole} {post}");
        }
    }

    #[test]
    fn stored_blob_equals_content_whatever_the_pieces() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::create(t.path()).unwrap();
        let b = BLOCK as usize;
        let mut data = vec![0u8; 10 * b + 123];
        data[b + 5] = 1;
        data[7 * b..7 * b + 10].fill(3);
        data[10 * b + 100] = 4;
        for piece in [1usize, 1000, 1536, 4096, 5000, 1 << 20] {
            let mut c = Content::new(Some(&store), data.len() as u64).unwrap();
            let mut off = 0;
            for (i, ch) in data.chunks(piece).enumerate() {
                // interleave holes written as zeros through write_zeros
                if i % 3 == 2 && is_zero(ch) {
                    c.write_zeros(ch.len() as u64).unwrap();
                } else {
                    c.write(ch).unwrap();
                }
                off += ch.len();
            }
            assert_eq!(off, data.len());
            let f = c.finish().unwrap();
            assert_eq!(f.digest, Some(Digest::of(&data)), "piece {piece}");
            assert_eq!(std::fs::read(store.blob_path(&f.digest.unwrap())).unwrap(), data, "piece {piece}");
            assert_eq!(f.zeros, vec![(0, 1), (2, 5), (8, 2)]);
        }
    }
}
