//! The lazy index: what a lazy mount needs before its first file, without
//! the per-file digests that are most of a manifest of many small files.
//!
//! A push stores two more layers beside the ocix manifest, each annotated
//! ([`ANN_MANIFEST`](super::artifact::ANN_MANIFEST)) with the digest of
//! the manifest they derive from:
//! - the lazy index ([`OCIX_LAZY`](crate::oci::media::OCIX_LAZY), zstd):
//!   the manifest's tree with every file digest replaced by a placeholder
//!   (the canonical encoding of that "skeleton"), for each regular file
//!   with content which distinct blob it holds (blobs in manifest order:
//!   the order packs use), and the sha256 of each chunk of the digest
//!   table;
//! - the digest table ([`OCIX_DIGESTS`](crate::oci::media::OCIX_DIGESTS),
//!   uncompressed): the distinct blobs' sha256s, 32 raw bytes each, in
//!   blob order, so a reader fetches the chunk of [`Index::chunk`] digests
//!   it needs with one `Range` request and checks it against the index
//!   before using it.
//!
//! Every byte stays verified: the OCI manifest names the index by digest,
//! the index names each table chunk by digest, each chunk names blobs.
//! Once the whole table is known, the canonical manifest is the skeleton
//! with the table's digests put back ([`Index::rebuild`]), and must have
//! the digest the index was pushed for.
//!
//! Encoding (before zstd), integers as LEB128 varints:
//! `MAGIC`, skeleton length, skeleton bytes, blob count `N`, file count
//! `F`, `F` blob references (0: the next new blob, `k`: blob `k - 1` again),
//! chunk size `C`, the table's digest (32 bytes), then `ceil(N / C)` chunk
//! digests (32 bytes each). Nothing may follow.

use super::MAX_MANIFEST;
use crate::manifest::{Compact, DecodeError, Digest, Entry, File, Kind, Manifest};

/// First bytes of a decoded lazy index.
pub const MAGIC: &[u8; 16] = b"ocix-lazy-index1";
/// Digests in one chunk of the table a push writes (4 KiB: one small
/// `Range` request per chunk, 32 bytes of index per chunk).
pub const CHUNK: usize = 128;
/// Largest chunk accepted.
pub const MAX_CHUNK: u64 = 1 << 16;
/// Largest decoded index accepted.
pub const MAX_INDEX: u64 = MAX_MANIFEST + (32 << 20);
/// The zstd level of the index (made once per push, fetched by every lazy
/// mount).
const LEVEL: i32 = 19;

/// What is wrong with a lazy index.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IndexError {
    /// Not zstd, or decoding to more than [`MAX_INDEX`] bytes.
    #[error("not a zstd stream of at most {MAX_INDEX} bytes: {0}")]
    Zstd(String),
    /// Other first bytes than [`MAGIC`].
    #[error("not an ocix lazy index (no magic)")]
    Magic,
    /// The bytes end inside a field.
    #[error("truncated: ends inside {0}")]
    Truncated(&'static str),
    /// A field's value is out of range.
    #[error("bad {0}")]
    Bad(&'static str),
    /// The skeleton manifest does not decode.
    #[error("skeleton manifest: {0}")]
    Skeleton(DecodeError),
    /// The skeleton carries a digest other than the placeholder.
    #[error("skeleton manifest names a file digest")]
    NotSkeleton,
    /// Bytes after the last chunk digest.
    #[error("{0} bytes after the end")]
    Trailing(usize),
    /// The tree with the table's digests put back does not encode.
    #[error("the manifest rebuilt from it and the digest table does not encode: {0}")]
    Rebuild(Box<DecodeError>),
    /// The tree with the table's digests put back is another manifest
    /// than the one the artifact names.
    #[error("{0}")]
    Mismatch(Box<Mismatch>),
}

/// A manifest rebuilt from a lazy index and its digest table whose digest
/// is not the one the artifact names.
#[derive(Debug, thiserror::Error)]
#[error(
    "the lazy index {index} and this digest table rebuild a manifest of digest {actual}, not {expected} as the \
     artifact names (the artifact does not hold together: nothing more is fetched in the background)"
)]
pub struct Mismatch {
    /// The lazy index layer's digest.
    pub index: Digest,
    /// The manifest digest the artifact names.
    pub expected: Digest,
    /// The digest of the manifest rebuilt.
    pub actual: Digest,
}

/// A chunk of the digest table whose bytes are not the ones the index
/// names.
#[derive(Debug, thiserror::Error)]
#[error("digest chunk {chunk} (bytes {start}..{end}) has sha256 {actual}, the lazy index names {expected} (not used)")]
pub struct ChunkMismatch {
    /// The chunk.
    pub chunk: usize,
    /// Its first byte in the table.
    pub start: u64,
    /// Its end.
    pub end: u64,
    /// The digest the lazy index names.
    pub expected: Digest,
    /// What the bytes hash to.
    pub actual: Digest,
}

/// A decoded lazy index.
#[derive(Debug)]
pub struct Index {
    /// The tree, each file's digest the placeholder of its blob
    /// ([`placeholder`]).
    pub tree: Compact,
    /// Content size of each blob, in blob order.
    pub sizes: Vec<u64>,
    /// Digests per chunk of the table.
    pub chunk: usize,
    /// The table layer's digest.
    pub table: Digest,
    /// Each chunk's sha256.
    pub chunks: Vec<Digest>,
}

/// The digest standing for blob `n` in a skeleton read back: no sha256 of
/// real content starts with this pattern.
pub fn placeholder(n: usize) -> Digest {
    let mut d = [0u8; 32];
    d[..16].copy_from_slice(b"ocix-lazy-blob\0\0");
    d[24..].copy_from_slice(&(n as u64).to_be_bytes());
    Digest(d)
}

/// The blob a placeholder stands for.
pub fn placeholder_index(d: &Digest) -> Option<usize> {
    if &d.0[..16] != b"ocix-lazy-blob\0\0" || d.0[16..24] != [0; 8] {
        return None;
    }
    usize::try_from(u64::from_be_bytes(d.0[24..].try_into().ok()?)).ok()
}

/// Calls `f` on every regular file of `e` with content, in manifest order.
fn each_file(e: &mut Entry, f: &mut dyn FnMut(&mut File)) {
    match &mut e.kind {
        Kind::File(file) if file.digest.is_some() => f(file),
        Kind::Dir(children) => {
            for c in children.values_mut() {
                each_file(c, f);
            }
        }
        _ => {}
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn varint(&mut self, what: &'static str) -> Result<u64, IndexError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = self.0.split_first().ok_or(IndexError::Truncated(what))?;
            self.0 = rest;
            if shift == 63 && b > 1 {
                return Err(IndexError::Bad(what));
            }
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(IndexError::Bad(what))
    }

    fn take(&mut self, n: u64, what: &'static str) -> Result<&[u8], IndexError> {
        let n = usize::try_from(n).map_err(|_| IndexError::Truncated(what))?;
        if n > self.0.len() {
            return Err(IndexError::Truncated(what));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }

    fn digest(&mut self, what: &'static str) -> Result<Digest, IndexError> {
        let b = self.take(32, what)?;
        Ok(Digest(b.try_into().map_err(|_| IndexError::Truncated(what))?))
    }
}

/// The two layers of `m`: the lazy index (zstd) and the digest table.
pub fn build(m: &Manifest) -> Result<(Vec<u8>, Vec<u8>), DecodeError> {
    let mut tree = m.clone();
    let mut table: Vec<u8> = Vec::new();
    let mut seen = std::collections::HashMap::new();
    let mut refs = Vec::new();
    each_file(&mut tree.root, &mut |f| {
        let Some(d) = f.digest else { return };
        match seen.get(&d) {
            Some(&k) => put_varint(&mut refs, k + 1),
            None => {
                seen.insert(d, seen.len() as u64);
                table.extend_from_slice(&d.0);
                refs.push(0);
            }
        }
        f.digest = Some(Digest([0; 32]));
    });
    let files = {
        let mut n = 0u64;
        each_file(&mut tree.root, &mut |_| n += 1);
        n
    };
    let skeleton = tree.to_bytes()?;
    let mut out = Vec::with_capacity(skeleton.len() + refs.len() + table.len() / CHUNK + 64);
    out.extend_from_slice(MAGIC);
    put_varint(&mut out, skeleton.len() as u64);
    out.extend_from_slice(&skeleton);
    put_varint(&mut out, seen.len() as u64);
    put_varint(&mut out, files);
    out.extend_from_slice(&refs);
    put_varint(&mut out, CHUNK as u64);
    out.extend_from_slice(&Digest::of(&table).0);
    for c in table.chunks(32 * CHUNK) {
        out.extend_from_slice(&Digest::of(c).0);
    }
    let z = zstd::bulk::compress(&out, LEVEL).expect("zstd compresses a buffer");
    Ok((z, table))
}

impl Index {
    /// Decodes a lazy index layer (zstd bytes, already checked against
    /// their digest).
    pub fn parse(wire: &[u8]) -> Result<Index, IndexError> {
        let mut dec = zstd::bulk::Decompressor::new().map_err(|e| IndexError::Zstd(e.to_string()))?;
        dec.set_parameter(zstd::stream::raw::DParameter::WindowLogMax(27))
            .map_err(|e| IndexError::Zstd(e.to_string()))?;
        // room for what the frame says it holds (a push writes its size),
        // never more than the limit
        let room = match zstd::zstd_safe::get_frame_content_size(wire) {
            Ok(Some(n)) if n > MAX_INDEX => return Err(IndexError::Zstd(format!("the frame holds {n} bytes"))),
            Ok(Some(n)) => n,
            _ => MAX_INDEX,
        };
        let raw = dec.decompress(wire, room as usize).map_err(|e| IndexError::Zstd(e.to_string()))?;
        let mut c = Cursor(&raw);
        if c.take(MAGIC.len() as u64, "the magic").ok() != Some(&MAGIC[..]) {
            return Err(IndexError::Magic);
        }
        let n = c.varint("the skeleton's length")?;
        let mut tree = Compact::from_bytes(c.take(n, "the skeleton")?).map_err(IndexError::Skeleton)?;
        let blobs = c.varint("the blob count")?;
        let files = c.varint("the file count")?;
        // every blob is named by a file, every file takes at least a byte
        if blobs > files || files > c.0.len() as u64 {
            return Err(IndexError::Bad("blob or file count"));
        }
        let mut refs = Vec::with_capacity(files as usize);
        for _ in 0..files {
            refs.push(c.varint("the blob references")?);
        }
        let chunk = c.varint("the chunk size")?;
        if chunk == 0 || chunk > MAX_CHUNK {
            return Err(IndexError::Bad("chunk size"));
        }
        let table = c.digest("the table's digest")?;
        let count = blobs.div_ceil(chunk);
        if count.saturating_mul(32) > c.0.len() as u64 {
            return Err(IndexError::Truncated("the chunk digests"));
        }
        let mut chunks = Vec::with_capacity(count as usize);
        for _ in 0..count {
            chunks.push(c.digest("the chunk digests")?);
        }
        if !c.0.is_empty() {
            return Err(IndexError::Trailing(c.0.len()));
        }
        // the skeleton's files, their references and sizes must agree
        let mut sizes: Vec<u64> = Vec::with_capacity(blobs as usize);
        let mut k = 0usize;
        tree.map_digests(|size, d| {
            if *d != Digest([0; 32]) {
                return Err(IndexError::NotSkeleton);
            }
            let Some(&r) = refs.get(k) else {
                return Err(IndexError::Bad("file count (fewer references than files)"));
            };
            k += 1;
            let n = if r == 0 {
                sizes.push(size);
                sizes.len() - 1
            } else {
                match usize::try_from(r - 1).ok().filter(|&n| n < sizes.len()) {
                    Some(n) if sizes[n] == size => n,
                    Some(_) => return Err(IndexError::Bad("blob reference (sizes differ)")),
                    None => return Err(IndexError::Bad("blob reference (to a blob not yet named)")),
                }
            };
            Ok(Some(placeholder(n)))
        })?;
        if k as u64 != files {
            return Err(IndexError::Bad("file count (more references than files)"));
        }
        if sizes.len() as u64 != blobs {
            return Err(IndexError::Bad("blob count"));
        }
        Ok(Index { tree, sizes, chunk: chunk as usize, table, chunks })
    }

    /// Blobs in the table.
    pub fn blobs(&self) -> usize {
        self.sizes.len()
    }

    /// The byte range of chunk `c` in the table.
    pub fn chunk_range(&self, c: usize) -> (u64, u64) {
        let lo = c * self.chunk;
        let hi = (lo + self.chunk).min(self.blobs());
        (lo as u64 * 32, hi as u64 * 32)
    }
}

/// The canonical manifest: `tree` (an [`Index::tree`]) with each
/// placeholder replaced by `digests[n]` (the whole table, in blob order),
/// encoded.
pub fn rebuild(tree: &Compact, digests: &[Digest]) -> Result<Vec<u8>, DecodeError> {
    let mut m = tree.clone();
    m.map_digests(|_, d| {
        Ok::<_, std::convert::Infallible>(match placeholder_index(d) {
            Some(n) => digests.get(n).copied(),
            None => Some(*d),
        })
    })
    .unwrap_or_else(|never| match never {});
    m.to_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Meta;
    use std::collections::BTreeMap;

    fn file(data: &[u8]) -> Entry {
        let digest = (!data.is_empty()).then(|| Digest::of(data));
        Entry {
            meta: Meta { mode: 0o644, ..Meta::default() },
            kind: Kind::File(File { size: data.len() as u64, digest, zeros: Vec::new() }),
        }
    }

    fn tree() -> Manifest {
        let mut sub = BTreeMap::new();
        for i in 0..300u32 {
            sub.insert(format!("f{i:03}").into_bytes(), file(format!("content {}", i % 200).as_bytes()));
        }
        let mut root = BTreeMap::new();
        root.insert(b"a".to_vec(), file(b"same"));
        root.insert(b"b".to_vec(), file(b""));
        root.insert(b"c".to_vec(), Entry { meta: Meta { mode: 0o755, ..Meta::default() }, kind: Kind::Dir(sub) });
        root.insert(b"d".to_vec(), file(b"same"));
        Manifest { root: Entry { meta: Meta { mode: 0o755, ..Meta::default() }, kind: Kind::Dir(root) } }
    }

    #[test]
    fn round_trip_rebuilds_the_manifest() {
        let m = tree();
        let (z, table) = build(&m).unwrap();
        let ix = Index::parse(&z).unwrap();
        assert_eq!(ix.blobs(), 201);
        assert_eq!(table.len(), 201 * 32);
        assert_eq!(ix.table, Digest::of(&table));
        assert_eq!(ix.chunks.len(), 2);
        let (a, b) = ix.chunk_range(1);
        assert_eq!(ix.chunks[1], Digest::of(&table[a as usize..b as usize]));
        let digests: Vec<Digest> = table.chunks(32).map(|c| Digest(c.try_into().unwrap())).collect();
        assert_eq!(rebuild(&ix.tree, &digests).unwrap(), m.to_bytes().unwrap());
        // the same content is one blob
        let fa = ix.tree.get(b"a").and_then(|n| n.file()).unwrap();
        let fd = ix.tree.get(b"d").and_then(|n| n.file()).unwrap();
        assert_eq!(fa.digest, fd.digest);
        assert_eq!(placeholder_index(fa.digest.unwrap()), Some(0));
        assert_eq!(placeholder_index(&Digest::of(b"x")), None);
    }

    #[test]
    fn damaged_indexes_are_refused() {
        let (z, _) = build(&tree()).unwrap();
        let raw = zstd::bulk::decompress(&z, MAX_INDEX as usize).unwrap();
        let enc = |b: &[u8]| zstd::bulk::compress(b, 1).unwrap();
        assert!(matches!(Index::parse(b"not zstd"), Err(IndexError::Zstd(_))));
        assert!(matches!(Index::parse(&z[..z.len() - 3]), Err(IndexError::Zstd(_))));
        for cut in [3, 20, raw.len() / 2, raw.len() - 40, raw.len() - 1] {
            assert!(Index::parse(&enc(&raw[..cut])).is_err(), "cut at {cut} accepted");
        }
        let mut long = raw.clone();
        long.push(0);
        assert!(matches!(Index::parse(&enc(&long)), Err(IndexError::Trailing(1))));
        let mut magic = raw.clone();
        magic[0] ^= 1;
        assert!(matches!(Index::parse(&enc(&magic)), Err(IndexError::Magic)));
        // a reference to a blob not yet named
        let m = tree();
        let mut c = Cursor(&raw[16..]);
        let n = c.varint("").unwrap();
        c.take(n, "").unwrap();
        let (blobs, files) = (c.varint("").unwrap(), c.varint("").unwrap());
        assert_eq!(blobs, 201);
        assert!(files > 201);
        let refs_at = raw.len() - c.0.len();
        let mut bad = raw.clone();
        bad[refs_at] = 5;
        assert!(Index::parse(&enc(&bad)).is_err());
        assert!(m.to_bytes().is_ok());
    }
}
