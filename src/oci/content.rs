//! A regular file's content on its way from a layer into the store: hashed,
//! its zero runs found, and written as a blob whose all-zero blocks are left
//! as holes (so a layer full of zeros costs no disk).
//!
//! Zero runs follow `ocix.cddl` and are found by the same [`ZeroRuns`] that
//! `ocix scan` uses, so imported and scanned manifests agree.

use crate::manifest::zeros::{ZeroRuns, is_zero};
use crate::manifest::{BLOCK, Digest, File};
use crate::store::{BlobWriter, Store, StoreError};
use sha2::{Digest as _, Sha256};

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
            Some(s) if size > 0 => Out::Store(s.writer_sized(size)?),
            _ => Out::Hash(Sha256::new()),
        };
        Ok(Content { out, zeros: ZeroRuns::new(size), size, pos: 0, pending: Vec::new() })
    }

    /// Appends content; whole aligned zero blocks become holes.
    pub fn write(&mut self, mut data: &[u8]) -> Result<(), StoreError> {
        self.zeros.data(data);
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
        self.zeros.zeros(n);
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
