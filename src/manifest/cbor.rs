//! The subset of CBOR (RFC 8949) an OCIX manifest uses, written and read in
//! the core deterministic encoding of section 4.2.1.
//!
//! The writer always emits the shortest head for every integer and length and
//! definite lengths only. The reader accepts nothing else: a non-shortest head,
//! an indefinite length, a simple value or float, or a length longer than the
//! bytes that remain is an error carrying the byte offset. No allocation is
//! ever sized by a length the input claims before that length has been checked
//! against the bytes actually present.

/// CBOR major types used by the manifest.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Major {
    /// Major type 0.
    Unsigned,
    /// Major type 1.
    Negative,
    /// Major type 2.
    Bytes,
    /// Major type 3.
    Text,
    /// Major type 4.
    Array,
    /// Major type 5.
    Map,
    /// Major type 6.
    Tag,
}

impl Major {
    fn code(self) -> u8 {
        match self {
            Major::Unsigned => 0,
            Major::Negative => 1,
            Major::Bytes => 2,
            Major::Text => 3,
            Major::Array => 4,
            Major::Map => 5,
            Major::Tag => 6,
        }
    }

    /// Human name, for error messages.
    pub fn name(self) -> &'static str {
        match self {
            Major::Unsigned => "unsigned integer",
            Major::Negative => "negative integer",
            Major::Bytes => "byte string",
            Major::Text => "text string",
            Major::Array => "array",
            Major::Map => "map",
            Major::Tag => "tag",
        }
    }
}

/// Appends deterministic CBOR to a byte vector.
#[derive(Default)]
pub struct Writer {
    /// The bytes written so far.
    pub buf: Vec<u8>,
}

impl Writer {
    /// Writes a head with the shortest argument encoding.
    pub fn head(&mut self, major: Major, arg: u64) {
        let m = major.code() << 5;
        if arg < 24 {
            self.buf.push(m | arg as u8);
        } else if arg <= u8::MAX as u64 {
            self.buf.push(m | 24);
            self.buf.push(arg as u8);
        } else if arg <= u16::MAX as u64 {
            self.buf.push(m | 25);
            self.buf.extend_from_slice(&(arg as u16).to_be_bytes());
        } else if arg <= u32::MAX as u64 {
            self.buf.push(m | 26);
            self.buf.extend_from_slice(&(arg as u32).to_be_bytes());
        } else {
            self.buf.push(m | 27);
            self.buf.extend_from_slice(&arg.to_be_bytes());
        }
    }

    /// Writes an unsigned integer.
    pub fn uint(&mut self, v: u64) {
        self.head(Major::Unsigned, v);
    }

    /// Writes a signed integer (major type 0 or 1).
    pub fn int(&mut self, v: i64) {
        if v >= 0 {
            self.head(Major::Unsigned, v as u64);
        } else {
            // -1 - n == v  =>  n = -1 - v, never overflows for i64.
            self.head(Major::Negative, (-1 - v) as u64);
        }
    }

    /// Writes a byte string.
    pub fn bytes(&mut self, b: &[u8]) {
        self.head(Major::Bytes, b.len() as u64);
        self.buf.extend_from_slice(b);
    }

    /// Writes a text string.
    pub fn text(&mut self, s: &str) {
        self.head(Major::Text, s.len() as u64);
        self.buf.extend_from_slice(s.as_bytes());
    }
}

/// What went wrong while reading, without location (the caller adds it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CborError {
    /// Byte offset in the input where the offending item starts.
    pub offset: usize,
    /// What is wrong.
    pub what: String,
}

/// Strict reader over a byte source of a known length (a slice, or a file
/// read through a bounded window): items are copied into the window only as
/// they are read, so a manifest file is never held whole.
pub struct Reader<'a> {
    src: Box<dyn std::io::Read + 'a>,
    /// The window: `buf[lo..hi]` are read but not yet consumed.
    buf: Vec<u8>,
    lo: usize,
    hi: usize,
    /// Absolute offset of `buf[lo]`.
    pos: usize,
    /// Length of the whole input.
    total: usize,
}

/// Bytes asked of the source at a time.
const WINDOW: usize = 256 * 1024;

/// Shorthand result.
pub type Result<T> = std::result::Result<T, CborError>;

impl<'a> Reader<'a> {
    /// Starts reading at the beginning of `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Self::from_read(Box::new(data), data.len())
    }

    /// Starts reading `total` bytes from `src`; a source that ends before
    /// `total` bytes, or goes on after them, is an error.
    pub fn from_read(src: Box<dyn std::io::Read + 'a>, total: usize) -> Self {
        Reader { src, buf: Vec::new(), lo: 0, hi: 0, pos: 0, total }
    }

    /// Current byte offset.
    pub fn offset(&self) -> usize {
        self.pos
    }

    /// Bytes not yet consumed.
    pub fn remaining(&self) -> usize {
        self.total - self.pos
    }

    /// Makes `n` bytes (at most [`Self::remaining`]) present in the window.
    fn fill(&mut self, n: usize) -> Result<()> {
        if self.hi - self.lo >= n {
            return Ok(());
        }
        if self.buf.len() - self.lo < n {
            self.buf.copy_within(self.lo..self.hi, 0);
            self.hi -= self.lo;
            self.lo = 0;
            if self.buf.len() < n {
                // never more than the input holds
                let want = n.max(WINDOW.min(self.remaining()));
                self.buf.resize(want, 0);
            }
        }
        while self.hi - self.lo < n {
            // never past the input's end: the bytes after it are checked by finish
            let unread = self.remaining() - (self.hi - self.lo);
            let end = self.buf.len().min(self.hi + unread);
            match self.src.read(&mut self.buf[self.hi..end]) {
                Ok(0) => {
                    let at = self.pos + (self.hi - self.lo);
                    return self.err_at(at, format!("input ended at byte {at}, before its {} bytes", self.total));
                }
                Ok(k) => self.hi += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let at = self.pos + (self.hi - self.lo);
                    return self.err_at(at, format!("cannot read: {e}"));
                }
            }
        }
        Ok(())
    }

    /// Builds an error at `offset`.
    pub fn err_at<T>(&self, offset: usize, what: impl Into<String>) -> Result<T> {
        Err(CborError { offset, what: what.into() })
    }

    fn take(&mut self, n: usize) -> Result<&[u8]> {
        if n > self.remaining() {
            return self.err_at(self.pos, format!("needs {n} more bytes but only {} remain", self.remaining()));
        }
        self.fill(n)?;
        let s = &self.buf[self.lo..self.lo + n];
        self.lo += n;
        self.pos += n;
        Ok(s)
    }

    /// Reads the next head, enforcing shortest-form arguments and rejecting
    /// indefinite lengths, reserved values and major type 7.
    pub fn head(&mut self) -> Result<(Major, u64)> {
        let start = self.pos;
        let ib = self.take(1)?[0];
        let major = match ib >> 5 {
            0 => Major::Unsigned,
            1 => Major::Negative,
            2 => Major::Bytes,
            3 => Major::Text,
            4 => Major::Array,
            5 => Major::Map,
            6 => Major::Tag,
            _ => {
                let what = match ib {
                    0xff => "unexpected break byte 0xff (it ends an indefinite length, which OCIX does not use)".into(),
                    0xf9..=0xfb => format!("float (initial byte 0x{ib:02x}): floats are not used by OCIX"),
                    0xf4 | 0xf5 => format!("boolean (initial byte 0x{ib:02x}): simple values are not used by OCIX"),
                    0xf6 | 0xf7 => {
                        format!("null or undefined (initial byte 0x{ib:02x}): simple values are not used by OCIX")
                    }
                    _ => format!("simple value or reserved byte 0x{ib:02x}: not used by OCIX"),
                };
                return self.err_at(start, what);
            }
        };
        let ai = ib & 0x1f;
        let arg = match ai {
            0..=23 => ai as u64,
            24 => {
                let v = self.take(1)?[0] as u64;
                if v < 24 {
                    return self.err_at(start, format!("non-shortest encoding of {v}"));
                }
                v
            }
            25 => {
                let b = self.take(2)?;
                let v = u16::from_be_bytes([b[0], b[1]]) as u64;
                if v <= u8::MAX as u64 {
                    return self.err_at(start, format!("non-shortest encoding of {v}"));
                }
                v
            }
            26 => {
                let b = self.take(4)?;
                let v = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as u64;
                if v <= u16::MAX as u64 {
                    return self.err_at(start, format!("non-shortest encoding of {v}"));
                }
                v
            }
            27 => {
                let b = self.take(8)?;
                let v = u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
                if v <= u32::MAX as u64 {
                    return self.err_at(start, format!("non-shortest encoding of {v}"));
                }
                v
            }
            31 => return self.err_at(start, "indefinite length is not allowed"),
            _ => return self.err_at(start, format!("reserved additional information {ai}")),
        };
        Ok((major, arg))
    }

    /// Reads a head and requires the given major type.
    pub fn expect(&mut self, want: Major) -> Result<u64> {
        let start = self.pos;
        let (major, arg) = self.head()?;
        if major != want {
            return self.err_at(start, format!("expected {}, found {}", want.name(), major.name()));
        }
        Ok(arg)
    }

    /// Reads an unsigned integer.
    pub fn uint(&mut self) -> Result<u64> {
        self.expect(Major::Unsigned)
    }

    /// Reads a signed integer that fits i64.
    pub fn int(&mut self) -> Result<i64> {
        let start = self.pos;
        let (major, arg) = self.head()?;
        match major {
            Major::Unsigned if arg <= i64::MAX as u64 => Ok(arg as i64),
            Major::Negative if arg <= i64::MAX as u64 => Ok(-1 - arg as i64),
            Major::Unsigned | Major::Negative => self.err_at(start, "integer out of 64-bit signed range"),
            _ => self.err_at(start, format!("expected integer, found {}", major.name())),
        }
    }

    /// Reads a byte string, borrowing from the window until the next read.
    pub fn bytes(&mut self) -> Result<&[u8]> {
        let len = self.expect(Major::Bytes)?;
        self.take_len(len)
    }

    /// Reads a text string, borrowing from the window until the next read;
    /// must be valid UTF-8.
    pub fn text(&mut self) -> Result<&str> {
        let start = self.pos;
        let len = self.expect(Major::Text)?;
        let b = self.take_len(len)?;
        match std::str::from_utf8(b) {
            Ok(s) => Ok(s),
            Err(_) => Err(CborError { offset: start, what: "text string is not valid UTF-8".into() }),
        }
    }

    fn take_len(&mut self, len: u64) -> Result<&[u8]> {
        if len > self.remaining() as u64 {
            return self
                .err_at(self.pos, format!("length {len} is larger than the {} bytes that remain", self.remaining()));
        }
        self.take(len as usize)
    }

    /// Reads an array head; the count is checked against the bytes that remain
    /// (every item takes at least one byte) so callers may reserve it.
    pub fn array(&mut self) -> Result<usize> {
        let n = self.expect(Major::Array)?;
        self.check_count(n, 1)
    }

    /// Reads a map head; the count is checked against the bytes that remain.
    pub fn map(&mut self) -> Result<usize> {
        let n = self.expect(Major::Map)?;
        self.check_count(n, 2)
    }

    fn check_count(&self, n: u64, per_item: u64) -> Result<usize> {
        if n.saturating_mul(per_item) > self.remaining() as u64 {
            return self.err_at(
                self.pos,
                format!("count {n} is larger than the {} bytes that remain could hold", self.remaining()),
            );
        }
        Ok(n as usize)
    }

    /// Fails unless every byte has been consumed and the source has ended.
    pub fn finish(&mut self) -> Result<()> {
        if self.remaining() != 0 {
            return self.err_at(self.pos, format!("{} trailing bytes after the manifest", self.remaining()));
        }
        let mut one = [0u8; 1];
        loop {
            match self.src.read(&mut one) {
                Ok(0) => return Ok(()),
                Ok(_) => return self.err_at(self.pos, "input grew while it was read: bytes after the manifest"),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return self.err_at(self.pos, format!("cannot read: {e}")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortest_heads_round_trip() {
        for v in [0u64, 23, 24, 255, 256, 65535, 65536, u32::MAX as u64, u32::MAX as u64 + 1, u64::MAX] {
            let mut w = Writer::default();
            w.uint(v);
            let mut r = Reader::new(&w.buf);
            assert_eq!(r.uint().unwrap(), v);
            r.finish().unwrap();
        }
        for v in [-1i64, -24, -25, -256, -257, i64::MIN] {
            let mut w = Writer::default();
            w.int(v);
            assert_eq!(Reader::new(&w.buf).int().unwrap(), v);
        }
    }

    #[test]
    fn non_shortest_rejected() {
        for bad in [
            &[0x18, 0x05][..],
            &[0x19, 0x00, 0xff],
            &[0x1a, 0, 0, 0xff, 0xff],
            &[0x1b, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff],
        ] {
            let e = Reader::new(bad).uint().unwrap_err();
            assert!(e.what.contains("non-shortest"), "{e:?}");
        }
    }

    #[test]
    fn indefinite_and_floats_rejected() {
        assert!(Reader::new(&[0x5f]).bytes().unwrap_err().what.contains("indefinite"));
        assert!(Reader::new(&[0x9f]).array().unwrap_err().what.contains("indefinite"));
        assert!(Reader::new(&[0xf9, 0, 0]).head().unwrap_err().what.contains("floats"));
        assert!(Reader::new(&[0x1c]).head().unwrap_err().what.contains("reserved"));
    }

    #[test]
    fn major_seven_bytes_say_what_they_are() {
        let what = |b: &[u8]| Reader::new(b).head().unwrap_err().what;
        assert!(what(&[0xff]).contains("unexpected break byte 0xff"), "{}", what(&[0xff]));
        assert!(what(&[0xf5]).contains("boolean"));
        assert!(what(&[0xf6]).contains("null"));
        assert!(what(&[0xfb, 0, 0, 0, 0, 0, 0, 0, 0]).contains("float"));
        assert!(what(&[0xe0]).contains("simple value"));
    }

    #[test]
    fn claimed_lengths_checked_before_use() {
        // byte string claiming 2^32 bytes with 1 present
        let e = Reader::new(&[0x5b, 0, 0, 0, 1, 0, 0, 0, 0, 0xaa]).bytes().unwrap_err();
        assert!(e.what.contains("larger than"), "{e:?}");
        let e = Reader::new(&[0x9a, 0x10, 0, 0, 0]).array().unwrap_err();
        assert!(e.what.contains("larger than"), "{e:?}");
        let e = Reader::new(&[0xb9, 0x01, 0x00, 0x00]).map().unwrap_err();
        assert!(e.what.contains("larger than"), "{e:?}");
    }

    #[test]
    fn truncated_head() {
        assert!(Reader::new(&[0x19, 0x01]).uint().is_err());
        assert!(Reader::new(&[]).uint().is_err());
    }
}
