//! The zero-run rule of `ocix.cddl`, in one place: a regular file's zero
//! runs are the maximal runs of whole 4096-byte blocks, aligned within the
//! file, whose bytes are all zero, stored as (first block, count). They
//! derive from the content alone, so every source that builds a manifest
//! (`ocix scan` reading a file, `ocix import` reading a layer) feeds the
//! content through [`ZeroRuns`] and gets the same runs for the same bytes.
//!
//! Sources feed the content in order: bytes they have ([`ZeroRuns::data`],
//! or [`ZeroRuns::block`] a block at a time when they also need to know
//! which blocks are zero), and zeros they know without reading them, such as
//! a hole the filesystem or a sparse tar entry reports
//! ([`ZeroRuns::zeros`]).

use super::BLOCK;

/// Whether every byte is zero.
#[inline]
pub fn is_zero(b: &[u8]) -> bool {
    // A quick look at the head settles most data blocks; the full fold has
    // no early exit, so it vectorizes.
    let head = b.len().min(16);
    b[..head].iter().all(|&x| x == 0) && b.iter().fold(0u8, |a, &x| a | x) == 0
}

/// Finds the zero runs of content of a known size, fed in order.
#[derive(Debug)]
pub struct ZeroRuns {
    /// `floor(size / BLOCK)`: no run reaches past the whole blocks.
    full_blocks: u64,
    /// Bytes fed so far.
    pos: u64,
    /// Whether the block being fed is all zero so far.
    cur_zero: bool,
    runs: Vec<(u64, u64)>,
}

impl ZeroRuns {
    /// For content of `size` bytes.
    pub fn new(size: u64) -> Self {
        ZeroRuns { full_blocks: size / BLOCK, pos: 0, cur_zero: true, runs: Vec::new() }
    }

    /// Feeds content bytes, in pieces of any size.
    pub fn data(&mut self, mut d: &[u8]) {
        while !d.is_empty() {
            let take = ((BLOCK - self.pos % BLOCK) as usize).min(d.len());
            self.block(&d[..take]);
            d = &d[take..];
        }
    }

    /// Feeds bytes that end at or before the next block boundary (usually a
    /// whole aligned block, or the last partial one); returns whether they
    /// completed a whole all-zero block, which now counts in a run. Bytes
    /// that would cross a boundary are fed as [`ZeroRuns::data`] and give
    /// `false`.
    #[inline]
    pub fn block(&mut self, b: &[u8]) -> bool {
        if b.is_empty() {
            return false;
        }
        if b.len() as u64 > BLOCK - self.pos % BLOCK {
            self.data(b);
            return false;
        }
        if self.cur_zero && !is_zero(b) {
            self.cur_zero = false;
        }
        self.pos += b.len() as u64;
        self.pos % BLOCK == 0 && self.end_block()
    }

    /// Feeds `n` zero bytes without materializing them.
    pub fn zeros(&mut self, mut n: u64) {
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
            let last = first.saturating_add(whole).min(self.full_blocks);
            if last > first {
                self.add(first, last - first);
            }
            self.pos = self.pos.saturating_add(whole * BLOCK);
        }
        self.pos = self.pos.saturating_add(n % BLOCK);
    }

    /// The runs found: ascending, neither overlapping nor adjacent.
    pub fn finish(self) -> Vec<(u64, u64)> {
        self.runs
    }

    /// Closes the block that just ended at `pos`; returns whether it joined
    /// a run.
    fn end_block(&mut self) -> bool {
        let b = self.pos / BLOCK - 1;
        let zero = self.cur_zero && b < self.full_blocks;
        if zero {
            self.add(b, 1);
        }
        self.cur_zero = true;
        zero
    }

    fn add(&mut self, start: u64, count: u64) {
        match self.runs.last_mut() {
            Some((s, n)) if *s + *n == start => *n += count,
            _ => self.runs.push((start, count)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: usize = BLOCK as usize;

    /// Runs of `data` fed in pieces of `piece` bytes.
    fn runs_in_pieces(data: &[u8], piece: usize) -> Vec<(u64, u64)> {
        let mut z = ZeroRuns::new(data.len() as u64);
        for c in data.chunks(piece) {
            z.data(c);
        }
        z.finish()
    }

    /// Runs of `data`, checked to be the same whatever the pieces.
    fn runs_of(data: &[u8]) -> Vec<(u64, u64)> {
        let r = runs_in_pieces(data, 1000);
        for piece in [1, 7, B - 1, B, B + 1, 3 * B, 1 << 20] {
            assert_eq!(runs_in_pieces(data, piece), r, "piece {piece}");
        }
        r
    }

    #[test]
    fn zero_runs_from_content() {
        let mut d = vec![1u8; B];
        d.extend_from_slice(&[0; 2 * B]);
        d.extend_from_slice(&[2; B]);
        d.extend_from_slice(&[0; B]);
        d.extend_from_slice(&[0; 100]); // partial last block: never a run
        assert_eq!(runs_of(&d), vec![(1, 2), (4, 1)]);

        let mut d = vec![0u8; 5 * B + 100];
        d[B + 7] = 1; // block 1 not zero
        d[3 * B] = 2; // block 3 not zero
        assert_eq!(runs_of(&d), vec![(0, 1), (2, 1), (4, 1)]);
    }

    #[test]
    fn partial_last_block_never_counts() {
        assert_eq!(runs_of(&[0; B - 1]), vec![]);
        assert_eq!(runs_of(&[0; B]), vec![(0, 1)]);
        assert_eq!(runs_of(&[0; B + 1]), vec![(0, 1)]);
        let mut z = ZeroRuns::new(3 * BLOCK - 1);
        z.zeros(3 * BLOCK - 1);
        assert_eq!(z.finish(), vec![(0, 2)]);
        // more zeros than the declared size still stop at its whole blocks
        let mut z = ZeroRuns::new(BLOCK + 10);
        z.zeros(5 * BLOCK);
        assert_eq!(z.finish(), vec![(0, 1)]);
    }

    #[test]
    fn unaligned_zeros_never_count() {
        // 6000 zero bytes from offset 2048 cover no whole aligned block
        let mut d = vec![1u8; 3 * B];
        d[2048..8048].fill(0);
        assert_eq!(runs_of(&d), vec![]);
        let mut z = ZeroRuns::new(d.len() as u64);
        z.data(&d[..2048]);
        z.zeros(6000);
        z.data(&d[8048..]);
        assert_eq!(z.finish(), vec![]);
        // one byte in a block spoils it, wherever it is
        for at in [0, 1, B / 2, B - 1] {
            let mut d = vec![0u8; 2 * B];
            d[B + at] = 9;
            assert_eq!(runs_of(&d), vec![(0, 1)], "at {at}");
        }
    }

    #[test]
    fn adjacent_runs_merge() {
        // zero blocks seen as bytes, as blocks and as known zeros, one run
        let mut z = ZeroRuns::new(10 * BLOCK);
        z.data(&[1; B]);
        z.data(&[0; B]);
        assert!(z.block(&[0; B]));
        z.zeros(2 * BLOCK);
        z.data(&[0; 100]);
        z.zeros(BLOCK - 100);
        z.zeros(100);
        z.data(&[0; B - 100]);
        assert!(!z.block(&[5; B]));
        assert!(z.block(&[0; B]));
        assert_eq!(z.finish(), vec![(1, 6), (8, 1)]);
    }

    #[test]
    fn runs_span_chunk_boundaries() {
        // the way scan feeds: 1 MiB chunks, then block by block or as holes
        let chunk = 1 << 20;
        let mut d = vec![7u8; 3 * chunk + 100];
        d[chunk - 2 * B..2 * chunk + B].fill(0);
        let want = vec![((chunk - 2 * B) as u64 / BLOCK, (chunk + 3 * B) as u64 / BLOCK)];
        assert_eq!(runs_of(&d), want);
        let mut z = ZeroRuns::new(d.len() as u64);
        for (i, c) in d.chunks(chunk).enumerate() {
            if i == 1 {
                z.zeros(c.len() as u64); // a hole the filesystem reported
                continue;
            }
            for b in c.chunks(B) {
                let zero = z.block(b);
                assert_eq!(zero, b.len() == B && is_zero(b));
            }
        }
        assert_eq!(z.finish(), want);
    }

    #[test]
    fn zeros_match_data() {
        let b = BLOCK;
        for (pre, hole, post) in [(0u64, 3 * b, 10u64), (100, 5 * b + 17, b), (b, b, 0), (10, 10, 10), (0, 0, 0)] {
            let size = pre + hole + post;
            let mut data = vec![1u8; pre as usize];
            data.extend(vec![0u8; hole as usize]);
            data.extend(vec![1u8; post as usize]);
            let mut z = ZeroRuns::new(size);
            z.data(&data[..pre as usize]);
            z.zeros(hole);
            z.data(&data[(pre + hole) as usize..]);
            assert_eq!(z.finish(), runs_of(&data), "{pre} {hole} {post}");
        }
    }

    #[test]
    fn only_zeros() {
        let d = vec![0u8; 9 * B];
        assert_eq!(runs_of(&d), vec![(0, 9)]);
        let mut z = ZeroRuns::new(9 * BLOCK);
        z.zeros(9 * BLOCK);
        assert_eq!(z.finish(), vec![(0, 9)]);
    }

    #[test]
    fn empty_file() {
        assert_eq!(runs_of(&[]), vec![]);
        let mut z = ZeroRuns::new(0);
        assert!(!z.block(&[]));
        z.data(&[]);
        z.zeros(0);
        assert_eq!(z.finish(), vec![]);
    }

    #[test]
    fn is_zero_sees_every_byte() {
        assert!(is_zero(&[]));
        assert!(is_zero(&[0; B]));
        for len in [1, 7, 8, 15, 16, 17, 63, B] {
            for at in [0, len / 2, len - 1] {
                let mut v = vec![0u8; len];
                v[at] = 0x80;
                assert!(!is_zero(&v), "len {len} at {at}");
            }
        }
    }
}
