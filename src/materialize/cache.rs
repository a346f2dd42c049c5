//! Small blobs read lately, kept for the next file with the same content: a
//! tree often holds one small file many times (licences, empty modules,
//! identical configs), and a hit writes it without opening, reading and
//! closing its blob again. Only content already verified against its digest
//! is kept; memory is bounded (oldest dropped first). The cache is split in
//! shards by digest, each with its own lock, so writer threads seldom wait
//! for each other on it. Only contents the manifest names more than once
//! are kept: most contents are named once, and copying each of them into
//! the cache cost more than the hits saved.

use crate::manifest::Digest;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex};

/// Hashes a digest by its first 8 bytes: they are already uniform, and only
/// digests of content verified here are kept, which nobody can choose to
/// share a prefix. SipHash over all 32 bytes cost as much as the rest of
/// the lookup.
#[derive(Default)]
struct PrefixHasher(u64);

impl Hasher for PrefixHasher {
    fn write(&mut self, bytes: &[u8]) {
        if let Some(b) = bytes.first_chunk::<8>() {
            self.0 ^= u64::from_le_bytes(*b);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Largest blob kept, and the most bytes kept at once (in all shards).
pub(super) const MAX_BLOB: usize = 16 << 10;
const MAX_BYTES: usize = 2 << 20;
const SHARDS: usize = 16;

#[derive(Default)]
struct Inner {
    map: HashMap<Digest, Arc<[u8]>, BuildHasherDefault<PrefixHasher>>,
    order: VecDeque<Digest>,
    bytes: usize,
}

#[derive(Default)]
pub(super) struct BlobCache {
    shards: [Mutex<Inner>; SHARDS],
    /// The first 8 bytes of the digests of small contents named more than
    /// once, sorted (two digests that share them only cost a copy kept in
    /// vain).
    repeated: Vec<u64>,
}

impl BlobCache {
    /// A cache for the small contents that `digests` (those of small files,
    /// in any order) name more than once.
    pub(super) fn for_digests<'d>(digests: impl Iterator<Item = &'d Digest>) -> Self {
        let mut all: Vec<u64> = digests.map(Digest::prefix).collect();
        all.sort_unstable();
        let mut repeated: Vec<u64> = all.windows(2).filter(|w| w[0] == w[1]).map(|w| w[0]).collect();
        repeated.dedup();
        BlobCache { shards: Default::default(), repeated }
    }

    /// Whether a content is worth looking up and keeping: one the manifest
    /// names more than once.
    pub(super) fn wanted(&self, d: &Digest) -> bool {
        self.repeated.binary_search(&d.prefix()).is_ok()
    }

    fn shard(&self, d: &Digest) -> &Mutex<Inner> {
        &self.shards[usize::from(d.0[0]) % SHARDS]
    }

    pub(super) fn get(&self, d: &Digest) -> Option<Arc<[u8]>> {
        self.shard(d).lock().unwrap_or_else(|p| p.into_inner()).map.get(d).cloned()
    }

    /// Keeps `data`, whose sha256 is `d` (checked by the caller).
    pub(super) fn put(&self, d: Digest, data: &[u8]) {
        if data.len() > MAX_BLOB {
            return;
        }
        let data: Arc<[u8]> = Arc::from(data);
        let mut g = self.shard(&d).lock().unwrap_or_else(|p| p.into_inner());
        if g.map.contains_key(&d) {
            return;
        }
        g.bytes += data.len();
        g.map.insert(d, data);
        g.order.push_back(d);
        while g.bytes > MAX_BYTES / SHARDS {
            let Some(old) = g.order.pop_front() else { break };
            if let Some(v) = g.map.remove(&old) {
                g.bytes -= v.len();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(i: u32, len: usize) -> (Digest, Vec<u8>) {
        let data: Vec<u8> = i.to_le_bytes().iter().copied().cycle().take(len).collect();
        (Digest::of(&data), data)
    }

    #[test]
    fn keeps_small_blobs_and_drops_the_oldest_past_its_bound() {
        let c = BlobCache::default();
        let (d, data) = blob(1, 100);
        c.put(d, &data);
        assert_eq!(c.get(&d).as_deref(), Some(&data[..]));
        let (big, bdata) = blob(2, MAX_BLOB + 1);
        c.put(big, &bdata);
        assert!(c.get(&big).is_none(), "a blob above MAX_BLOB is not kept");
        // far more than MAX_BYTES: the first ones go, the bytes stay bounded
        let all: Vec<_> = (10..10 + 4 * (MAX_BYTES / MAX_BLOB) as u32).map(|i| blob(i, MAX_BLOB)).collect();
        for (d, data) in &all {
            c.put(*d, data);
        }
        let kept: usize = c.shards.iter().map(|s| s.lock().unwrap().bytes).sum();
        assert!(kept <= MAX_BYTES, "{kept} bytes kept");
        assert!(c.get(&all[0].0).is_none(), "the oldest was dropped");
        let (last, ldata) = all.last().unwrap();
        assert_eq!(c.get(last).as_deref(), Some(&ldata[..]));
    }

    #[test]
    fn wants_only_the_contents_named_more_than_once() {
        let (a, b, c) = (blob(1, 10).0, blob(2, 10).0, blob(3, 10).0);
        let cache = BlobCache::for_digests([a, b, a, c, a, c].iter());
        assert!(cache.wanted(&a) && cache.wanted(&c));
        assert!(!cache.wanted(&b), "named once");
        assert!(!cache.wanted(&blob(4, 10).0), "not named");
        assert_eq!(cache.repeated.len(), 2, "each repeated content once");
        assert!(!BlobCache::default().wanted(&a));
    }
}
