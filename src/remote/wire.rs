//! Compression on the wire: how a file blob travels between a store and a
//! registry.
//!
//! A blob's identity is always the sha256 of its content, as the ocix
//! manifest names it; what a registry holds may be that content compressed
//! with zstd, to move fewer bytes:
//! - a file blob above the pack threshold becomes a layer of media type
//!   [`OCIX_FILE_ZSTD`](crate::oci::media::OCIX_FILE_ZSTD) (the registry digest is the compressed
//!   bytes'; the annotation [`ANN_CONTENT`] names the content digest) when
//!   that saves at least one part in 20, else it stays a plain
//!   [`OCIX_FILE`](crate::oci::media::OCIX_FILE) layer;
//! - a pack of small blobs becomes [`OCIX_PACK_ZSTD`](crate::oci::media::OCIX_PACK_ZSTD): one zstd frame
//!   per member, concatenated, the frames' lengths listed in the
//!   annotation [`ANN_FRAMES`], so a run of members can still be fetched
//!   with one `Range` request.
//!
//! A puller decodes as bytes arrive ([`Sink`]) and names the result only
//! when the content's size and sha256 match the manifest: the compressed
//! bytes need no digest of their own to be trusted. A frame that would
//! decode to more than the manifest's size is refused as soon as it does,
//! and the decoder's window is capped ([`WINDOW_LOG_MAX`]), so memory stays
//! bounded whatever a server sends.

use crate::manifest::Digest;
use crate::store::{BlobWriter, Store, StoreError};
use zstd::stream::raw::{DParameter, Decoder, InBuffer, Operation as _, OutBuffer};

/// Layer annotation of a compressed file blob: its content digest.
pub const ANN_CONTENT: &str = "io.ocix.file.digest";
/// Layer annotation of a compressed pack: its frames' lengths, in member
/// order, comma-separated.
pub const ANN_FRAMES: &str = "io.ocix.pack.frames";
/// The zstd level a push compresses with.
pub const LEVEL: i32 = 3;
/// Largest zstd window accepted (8 MiB; a push at [`LEVEL`] uses at most
/// 2 MiB): bounds a decoder's memory.
pub const WINDOW_LOG_MAX: u32 = 23;

/// How a blob's bytes travel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Coding {
    /// As they are.
    Plain,
    /// One zstd frame.
    Zstd,
}

/// Whether a compressed form of `size` content bytes is worth sending.
pub fn worth_it(compressed: u64, size: u64) -> bool {
    compressed.saturating_mul(20) <= size.saturating_mul(19)
}

/// What went wrong with the bytes a server sent for one blob.
#[derive(Debug)]
pub enum SinkError {
    /// The store failed (or the content's digest differs: `Corrupt`).
    Store(StoreError),
    /// More content than the manifest's size.
    TooLong {
        /// At least this many content bytes.
        got: u64,
    },
    /// Less content than the manifest's size once the wire bytes ended.
    TooShort {
        /// Content bytes decoded.
        got: u64,
    },
    /// The zstd stream is malformed.
    Decode(String),
}

impl From<StoreError> for SinkError {
    fn from(e: StoreError) -> Self {
        SinkError::Store(e)
    }
}

/// One blob arriving: wire bytes in, content into a store temporary file,
/// named by [`finish`](Self::finish) only if it is exactly the expected
/// content.
pub struct Sink<'s> {
    store: &'s Store,
    coding: Coding,
    size: u64,
    w: BlobWriter<'s>,
    dec: Option<Decoder<'static>>,
    wire: u64,
    frame_done: bool,
    buf: Vec<u8>,
    /// The first wire bytes (a zstd frame header), for errors.
    first: Vec<u8>,
}

impl<'s> Sink<'s> {
    /// A sink for `size` content bytes arriving as `coding`.
    pub fn new(store: &'s Store, coding: Coding, size: u64) -> Result<Self, SinkError> {
        let mut s = Sink {
            store,
            coding,
            size,
            w: store.writer()?,
            dec: None,
            wire: 0,
            frame_done: false,
            buf: Vec::new(),
            first: Vec::new(),
        };
        s.start_decoder()?;
        Ok(s)
    }

    fn start_decoder(&mut self) -> Result<(), SinkError> {
        if self.coding == Coding::Zstd {
            let mut d = Decoder::new().map_err(|e| SinkError::Decode(e.to_string()))?;
            d.set_parameter(DParameter::WindowLogMax(WINDOW_LOG_MAX)).map_err(|e| SinkError::Decode(e.to_string()))?;
            self.dec = Some(d);
            if self.buf.is_empty() {
                self.buf = vec![0; 128 << 10];
            }
        }
        Ok(())
    }

    /// Starts over (a server that ignored a `Range` sends everything again).
    pub fn restart(&mut self) -> Result<(), SinkError> {
        self.w = self.store.writer()?;
        self.wire = 0;
        self.frame_done = false;
        self.first.clear();
        self.start_decoder()
    }

    /// Wire bytes taken so far: where a resumed request starts.
    pub fn wire_len(&self) -> u64 {
        self.wire
    }

    /// Content bytes so far.
    pub fn content_len(&self) -> u64 {
        self.w.len()
    }

    /// Takes the next wire bytes.
    pub fn write(&mut self, data: &[u8]) -> Result<(), SinkError> {
        let Some(dec) = &mut self.dec else {
            let got = self.w.len() + data.len() as u64;
            if got > self.size {
                return Err(SinkError::TooLong { got });
            }
            self.w.write(data)?;
            self.wire += data.len() as u64;
            return Ok(());
        };
        if self.first.len() < 18 {
            let room = (18 - self.first.len()).min(data.len());
            self.first.extend_from_slice(&data[..room]);
        }
        let mut input = InBuffer::around(data);
        loop {
            if self.frame_done {
                if input.pos() < data.len() {
                    return Err(SinkError::Decode("more than one zstd frame, or bytes after the frame (a blob travels as exactly one frame; a skippable frame counts)".into()));
                }
                break;
            }
            let mut out = OutBuffer::around(&mut self.buf[..]);
            let first = &mut self.first;
            let hint = dec.run(&mut input, &mut out).map_err(|e| {
                match crate::oci::zstd_window_note(&e, first, WINDOW_LOG_MAX) {
                    Some(note) => SinkError::Decode(format!("{e}: {note}")),
                    None => SinkError::Decode(e.to_string()),
                }
            })?;
            let n = out.pos();
            let got = self.w.len() + n as u64;
            if got > self.size {
                return Err(SinkError::TooLong { got });
            }
            self.w.write(&self.buf[..n])?;
            if hint == 0 {
                self.frame_done = true;
                continue;
            }
            if input.pos() == data.len() && n < self.buf.len() {
                break;
            }
        }
        self.wire += data.len() as u64;
        Ok(())
    }

    /// Names the content by `d` if it is complete and has that digest.
    pub fn finish(self, d: &Digest) -> Result<(), SinkError> {
        if self.coding == Coding::Zstd && !self.frame_done {
            return Err(SinkError::Decode("the zstd frame is incomplete".into()));
        }
        if self.w.len() != self.size {
            return Err(SinkError::TooShort { got: self.w.len() });
        }
        self.w.finish(Some(*d))?;
        Ok(())
    }
}

/// One frame of `data` at [`LEVEL`] (a pack member).
pub fn compress_frame(data: &[u8]) -> std::io::Result<Vec<u8>> {
    zstd::bulk::compress(data, LEVEL)
}

/// The frames' lengths of a compressed pack, as [`ANN_FRAMES`] says them.
pub fn frames_annotation(frames: &[u64]) -> String {
    frames.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
}

/// What is wrong with an [`ANN_FRAMES`] annotation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FramesError {
    /// More lengths than the pack has members.
    #[error("{ANN_FRAMES} lists more than {0} frames")]
    TooMany(u64),
    /// A part that is not a number.
    #[error("{ANN_FRAMES}: {0:?} is not a length")]
    NotALength(String),
    /// A length of 0.
    #[error("{ANN_FRAMES}: a frame of 0 bytes")]
    Empty,
    /// The lengths add up past u64.
    #[error("{ANN_FRAMES}: lengths overflow")]
    Overflow,
    /// Fewer lengths than the pack has members.
    #[error("{ANN_FRAMES} lists {listed} frames, the pack holds {count}")]
    Count {
        /// Lengths listed.
        listed: usize,
        /// Members of the pack.
        count: u64,
    },
    /// The lengths do not add up to the pack's size.
    #[error("{ANN_FRAMES} adds up to {sum} bytes, the pack has {size}")]
    Sum {
        /// What they add up to.
        sum: u64,
        /// The pack's size.
        size: u64,
    },
}

/// Parses [`ANN_FRAMES`]: `count` positive lengths adding up to `size`.
pub fn parse_frames(s: &str, count: u64, size: u64) -> Result<Vec<u64>, FramesError> {
    let mut out = Vec::new();
    let mut sum = 0u64;
    for part in s.split(',') {
        if out.len() as u64 >= count {
            return Err(FramesError::TooMany(count));
        }
        let n: u64 = part.parse().map_err(|_| FramesError::NotALength(part.to_string()))?;
        if n == 0 {
            return Err(FramesError::Empty);
        }
        sum = sum.checked_add(n).ok_or(FramesError::Overflow)?;
        out.push(n);
    }
    if out.len() as u64 != count {
        return Err(FramesError::Count { listed: out.len(), count });
    }
    if sum != size {
        return Err(FramesError::Sum { sum, size });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let t = tempfile::tempdir().unwrap();
        let s = Store::create(t.path()).unwrap();
        (t, s)
    }

    fn content() -> Vec<u8> {
        (0..300_000u32).map(|i| (i % 251) as u8 ^ (i >> 12) as u8).collect()
    }

    fn feed(sink: &mut Sink<'_>, wire: &[u8], step: usize) -> Result<(), SinkError> {
        for c in wire.chunks(step) {
            sink.write(c)?;
        }
        Ok(())
    }

    #[test]
    fn zstd_in_any_chunking_gives_the_content() {
        let (_t, s) = store();
        let data = content();
        let wire = compress_frame(&data).unwrap();
        assert!(worth_it(wire.len() as u64, data.len() as u64));
        let d = Digest::of(&data);
        for step in [1, 7, 4096, wire.len()] {
            let mut k = Sink::new(&s, Coding::Zstd, data.len() as u64).unwrap();
            feed(&mut k, &wire, step).unwrap();
            assert_eq!(k.wire_len(), wire.len() as u64);
            k.finish(&d).unwrap();
        }
        assert_eq!(std::fs::read(s.blob_path(&d)).unwrap(), data);
    }

    #[test]
    fn resumed_zstd_continues_where_it_stopped() {
        let (_t, s) = store();
        let data = content();
        let wire = compress_frame(&data).unwrap();
        let mut k = Sink::new(&s, Coding::Zstd, data.len() as u64).unwrap();
        let cut = wire.len() / 3;
        k.write(&wire[..cut]).unwrap();
        // a second request starts at wire_len()
        let from = k.wire_len() as usize;
        k.write(&wire[from..]).unwrap();
        k.finish(&Digest::of(&data)).unwrap();
        // and a restart starts from zero
        let mut k = Sink::new(&s, Coding::Zstd, data.len() as u64).unwrap();
        k.write(&wire[..cut]).unwrap();
        k.restart().unwrap();
        k.write(&wire).unwrap();
        k.finish(&Digest::of(&data)).unwrap();
    }

    #[test]
    fn hostile_wire_bytes_are_refused_and_never_named() {
        let (_t, s) = store();
        let data = content();
        let d = Digest::of(&data);
        let n = data.len() as u64;
        let wire = compress_frame(&data).unwrap();
        // truncated frame
        let mut k = Sink::new(&s, Coding::Zstd, n).unwrap();
        k.write(&wire[..wire.len() - 1]).unwrap();
        assert!(matches!(k.finish(&d), Err(SinkError::Decode(_))));
        // trailing bytes after the frame
        let mut k = Sink::new(&s, Coding::Zstd, n).unwrap();
        let mut long = wire.clone();
        long.push(0);
        assert!(matches!(k.write(&long), Err(SinkError::Decode(_))));
        // a frame decoding to more than the manifest says (a bomb)
        let bomb = compress_frame(&vec![0u8; 64 << 20]).unwrap();
        assert!(bomb.len() < 64 << 10);
        let mut k = Sink::new(&s, Coding::Zstd, n).unwrap();
        assert!(matches!(feed(&mut k, &bomb, 1024), Err(SinkError::TooLong { .. })));
        // less content than declared
        let mut k = Sink::new(&s, Coding::Zstd, n + 1).unwrap();
        k.write(&wire).unwrap();
        assert!(matches!(k.finish(&d), Err(SinkError::TooShort { .. })));
        // garbage
        let mut k = Sink::new(&s, Coding::Zstd, n).unwrap();
        assert!(matches!(k.write(b"this is not zstd at all"), Err(SinkError::Decode(_))));
        // right size, other content: a digest mismatch
        let mut other = data.clone();
        other[5] ^= 1;
        let mut k = Sink::new(&s, Coding::Zstd, n).unwrap();
        k.write(&compress_frame(&other).unwrap()).unwrap();
        assert!(matches!(k.finish(&d), Err(SinkError::Store(StoreError::Corrupt { .. }))));
        // a frame asking for a window above the cap
        let mut enc = zstd::stream::raw::Encoder::new(19).unwrap();
        use zstd::stream::raw::{CParameter, Operation as _};
        enc.set_parameter(CParameter::WindowLog(27)).unwrap();
        enc.set_pledged_src_size(None).unwrap();
        let big = vec![7u8; 1 << 20];
        let mut wide = vec![0u8; 1 << 20];
        let st = enc.run_on_buffers(&big, &mut wide).unwrap();
        let mut used = st.bytes_written;
        let mut out = OutBuffer::around(&mut wide[used..]);
        enc.finish(&mut out, true).unwrap();
        used += out.pos();
        let mut k = Sink::new(&s, Coding::Zstd, 1 << 20).unwrap();
        match k.write(&wide[..used]) {
            Err(SinkError::Decode(e)) => {
                assert!(e.contains("window of 134217728 bytes; the limit is 8388608 bytes (2^23)"), "{e}")
            }
            _ => panic!("a window above the cap was accepted"),
        }
        assert!(!s.has(&d));
        // plain: too long
        let mut k = Sink::new(&s, Coding::Plain, 3).unwrap();
        assert!(matches!(k.write(b"four"), Err(SinkError::TooLong { got: 4 })));
    }

    #[test]
    fn frames_annotation_round_trip_and_checks() {
        assert_eq!(parse_frames(&frames_annotation(&[3, 4, 5]), 3, 12).unwrap(), vec![3, 4, 5]);
        assert!(parse_frames("3,4,5", 2, 12).is_err());
        assert!(parse_frames("3,4,5", 4, 12).is_err());
        assert!(parse_frames("3,4,5", 3, 13).is_err());
        assert!(parse_frames("3,0,9", 3, 12).is_err());
        assert!(parse_frames("3,x,9", 3, 12).is_err());
        assert!(parse_frames("18446744073709551615,1", 2, 0).is_err());
        assert!(parse_frames("", 1, 0).is_err());
    }
}
