//! Packs: small file blobs concatenated into one registry blob.
//!
//! A registry spends about a millisecond of CPU on every blob request, so a
//! tree of thousands of small files would be fetched request-bound. A push
//! therefore groups the distinct file blobs of at most a threshold size
//! (default [`DEFAULT_THRESHOLD`]), in manifest order, into packs: the
//! plain concatenation of their contents. Pack boundaries depend only on
//! the blobs themselves (a pack ends after a blob whose digest starts with
//! a value below [`CUT_BELOW`], or when it reaches [`PACK_MAX`]), so a new
//! version of a tree changes only the packs around its changed files.
//!
//! The artifact lists the packs as layers ([`OCIX_PACK`](crate::oci::media::OCIX_PACK), each with
//! its member count in the annotation [`ANN_COUNT`]) and records the
//! threshold ([`ANN_THRESHOLD`]); members and their offsets follow from the
//! ocix manifest (the small blobs in manifest order, and their sizes), or
//! for a compressed pack from its frames' lengths (see
//! [`wire`](super::wire)). A
//! pull fetches the byte ranges of the members it lacks (one request per
//! run of adjacent missing members, the whole pack for an empty store) and
//! verifies and stores each member on its own; file blobs above the
//! threshold are layers of their own and fetched one by one.

use super::wire::Coding;
use crate::manifest::Digest;

/// Layer annotation: how many blobs a pack holds.
pub const ANN_COUNT: &str = "io.ocix.pack.count";
/// Manifest annotation: blobs of at most this size are packed.
pub const ANN_THRESHOLD: &str = "io.ocix.pack.threshold";
/// Default threshold.
pub const DEFAULT_THRESHOLD: u64 = 256 << 10;
/// A pack is closed once it holds this many bytes.
pub const PACK_MAX: u64 = 8 << 20;
/// A pack is closed after a blob whose first two digest bytes (big endian)
/// are below this: about one blob in 128.
pub const CUT_BELOW: u16 = 512;

/// A pack as a layer: its registry digest and size, its member count,
/// and for a compressed pack its frames' lengths (see [`wire`](super::wire)), as the artifact lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackLayer {
    /// Registry digest.
    pub digest: Digest,
    /// Registry size.
    pub size: u64,
    /// Members.
    pub count: u64,
    /// Compressed: each member's zstd frame length.
    pub frames: Option<Vec<u64>>,
}

/// One pack: its members `(digest, size)` in order.
pub type Pack = Vec<(Digest, u64)>;

/// A pack member as a pull sees it: its content digest, where its bytes
/// are in the pack (`off`, `len`: wire bytes, a zstd frame in a compressed
/// pack) and its content size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    /// Content digest.
    pub digest: Digest,
    /// Offset in the pack.
    pub off: u64,
    /// Length in the pack.
    pub len: u64,
    /// Content size.
    pub size: u64,
}

/// A pack as a pull sees it: its digest, how its members travel, and the
/// members.
pub type Members = (Digest, Coding, Vec<Member>);

/// Splits the distinct file blobs (manifest order) into packs of the blobs
/// of at most `threshold` bytes, and the blobs left on their own. A
/// threshold of 0 packs nothing.
pub fn plan(files: &[(Digest, u64)], threshold: u64) -> (Vec<Pack>, Vec<(Digest, u64)>) {
    let mut packs = Vec::new();
    let mut singles = Vec::new();
    let mut cur: Pack = Vec::new();
    let mut cur_len = 0;
    for &(d, size) in files {
        if size == 0 || size > threshold {
            singles.push((d, size));
            continue;
        }
        cur.push((d, size));
        cur_len += size;
        if cur_len >= PACK_MAX || u16::from_be_bytes([d.0[0], d.0[1]]) < CUT_BELOW {
            packs.push(std::mem::take(&mut cur));
            cur_len = 0;
        }
    }
    if !cur.is_empty() {
        packs.push(cur);
    }
    (packs, singles)
}

/// Why an artifact's packs do not fit the manifest they carry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PackError {
    /// A member count beyond this machine's address space.
    #[error("pack {pack}: count {count} too large")]
    CountTooLarge {
        /// The pack.
        pack: Digest,
        /// Its claimed member count.
        count: u64,
    },
    /// A pack claims more members than the manifest has small blobs left.
    #[error("pack {pack} claims {count} blobs, only {left} small blobs left in the manifest")]
    TooFewBlobs {
        /// The pack.
        pack: Digest,
        /// Its claimed member count.
        count: u64,
        /// Small blobs not yet in a pack.
        left: usize,
    },
    /// A compressed pack lists fewer frames than members.
    #[error("pack {0}: fewer frames than members")]
    FewerFrames(Digest),
    /// The members' lengths add up past u64.
    #[error("pack {0}: its members' sizes overflow")]
    Overflow(Digest),
    /// The members' lengths do not add up to the pack's size.
    #[error("pack {pack}: {size} bytes, its {count} blobs add up to {sum}")]
    Size {
        /// The pack.
        pack: Digest,
        /// Its size.
        size: u64,
        /// Its member count.
        count: u64,
        /// What the members add up to.
        sum: u64,
    },
    /// The packs hold fewer blobs than the manifest has small ones.
    #[error("packs hold {packed} blobs, the manifest has {small} of at most {threshold} bytes")]
    Leftover {
        /// Blobs in the packs.
        packed: usize,
        /// Small blobs in the manifest.
        small: usize,
        /// The pack threshold.
        threshold: u64,
    },
}

/// The blobs of packs as a pull sees them, checked against the manifest:
/// `packs` in layer order. Returns each pack's members with their offsets,
/// or what is wrong.
pub fn members(files: &[(Digest, u64)], threshold: u64, packs: &[PackLayer]) -> Result<Vec<Members>, PackError> {
    let small: Vec<(Digest, u64)> = files.iter().copied().filter(|&(_, s)| s > 0 && s <= threshold).collect();
    let mut out = Vec::with_capacity(packs.len());
    let mut i = 0usize;
    for p in packs {
        let (pd, count) = (p.digest, p.count);
        let n = usize::try_from(count).map_err(|_| PackError::CountTooLarge { pack: pd, count })?;
        let end = i.checked_add(n).filter(|&e| e <= small.len()).ok_or(PackError::TooFewBlobs {
            pack: pd,
            count,
            left: small.len() - i,
        })?;
        let mut off = 0u64;
        let mut m = Vec::with_capacity(n);
        for (k, &(d, s)) in small[i..end].iter().enumerate() {
            let len = match &p.frames {
                Some(f) => f.get(k).copied().ok_or(PackError::FewerFrames(pd))?,
                None => s,
            };
            m.push(Member { digest: d, off, len, size: s });
            off = off.checked_add(len).ok_or(PackError::Overflow(pd))?;
        }
        if off != p.size {
            return Err(PackError::Size { pack: pd, size: p.size, count, sum: off });
        }
        let coding = if p.frames.is_some() { Coding::Zstd } else { Coding::Plain };
        out.push((pd, coding, m));
        i = end;
    }
    if i != small.len() {
        return Err(PackError::Leftover { packed: i, small: small.len(), threshold });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(n: usize, size: u64) -> Vec<(Digest, u64)> {
        (0..n).map(|i| (Digest::of(&(i as u64).to_le_bytes()), size)).collect()
    }

    #[test]
    fn plan_and_members_agree() {
        let mut f = files(2000, 100);
        f.push((Digest::of(b"big"), 1 << 20));
        let (packs, singles) = plan(&f, DEFAULT_THRESHOLD);
        assert_eq!(singles, vec![(Digest::of(b"big"), 1 << 20)]);
        assert!(packs.len() > 3 && packs.len() < 100, "{} packs", packs.len());
        let desc: Vec<PackLayer> = packs
            .iter()
            .map(|p| PackLayer {
                digest: Digest::of(b"x"),
                size: p.iter().map(|m| m.1).sum(),
                count: p.len() as u64,
                frames: None,
            })
            .collect();
        let m = members(&f, DEFAULT_THRESHOLD, &desc).unwrap();
        assert_eq!(m.iter().map(|(_, _, v)| v.len()).sum::<usize>(), 2000);
        assert_eq!(m[0].2[1], Member { digest: f[1].0, off: 100, len: 100, size: 100 });
        // compressed: offsets follow the frames
        let mut z = desc.clone();
        z[0].frames = Some((0..z[0].count).map(|k| 10 + k).collect());
        z[0].size = z[0].frames.as_ref().unwrap().iter().sum();
        let m = members(&f, DEFAULT_THRESHOLD, &z).unwrap();
        assert_eq!(m[0].1, Coding::Zstd);
        assert_eq!(m[0].2[2], Member { digest: f[2].0, off: 21, len: 12, size: 100 });
        // a count that does not add up is refused
        let mut bad = desc.clone();
        bad[0].count += 1;
        assert!(members(&f, DEFAULT_THRESHOLD, &bad).is_err());
        assert!(members(&f, DEFAULT_THRESHOLD, &desc[1..]).is_err());
    }

    #[test]
    fn a_changed_blob_moves_few_boundaries() {
        let f = files(3000, 1000);
        let mut g = f.clone();
        g[1500] = (Digest::of(b"changed"), 1000);
        let (a, _) = plan(&f, DEFAULT_THRESHOLD);
        let (b, _) = plan(&g, DEFAULT_THRESHOLD);
        let same = a.iter().filter(|p| b.contains(p)).count();
        assert!(same + 2 >= a.len(), "{same} of {} packs kept", a.len());
    }

    /// Sizes are the manifest's and the threshold the artifact's: members
    /// whose sizes add up past u64 are refused, not an overflow.
    #[test]
    fn member_offsets_that_overflow_are_refused() {
        let big = i64::MAX as u64;
        let f: Vec<(Digest, u64)> = (0..3u8).map(|i| (Digest::of(&[i]), big)).collect();
        let wrapped = big.wrapping_mul(3);
        let p = [PackLayer { digest: Digest::of(b"p"), size: wrapped, count: 3, frames: None }];
        assert!(members(&f, u64::MAX, &p).is_err());
    }

    #[test]
    fn threshold_zero_packs_nothing() {
        let f = files(10, 100);
        let (p, s) = plan(&f, 0);
        assert!(p.is_empty());
        assert_eq!(s.len(), 10);
    }
}
