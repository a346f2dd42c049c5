//! Small blobs read lately, kept for the next file with the same content: a
//! tree often holds one small file many times (licences, empty modules,
//! identical configs), and a hit writes it without opening, reading and
//! closing its blob again. Only content already verified against its digest
//! is kept; memory is bounded (oldest dropped first). The cache is split in
//! shards by digest, each with its own lock, so writer threads seldom wait
//! for each other on it.

use crate::manifest::Digest;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

/// Largest blob kept, and the most bytes kept at once (in all shards).
const MAX_BLOB: usize = 16 << 10;
const MAX_BYTES: usize = 2 << 20;
const SHARDS: usize = 16;

#[derive(Default)]
struct Inner {
    map: HashMap<Digest, Arc<[u8]>>,
    order: VecDeque<Digest>,
    bytes: usize,
}

#[derive(Default)]
pub(super) struct BlobCache([Mutex<Inner>; SHARDS]);

impl BlobCache {
    fn shard(&self, d: &Digest) -> &Mutex<Inner> {
        &self.0[usize::from(d.0[0]) % SHARDS]
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
