//! The `user.rootlesscontainers` xattr: how a tree unpacked without privilege
//! remembers the owner each entry should have had (the rootlesscontainers
//! convention, which umoci also reads and writes).
//!
//! The value is the protobuf message `Resource { uint32 uid = 1; uint32 gid =
//! 2; }`. An id of 0 is written as `u32::MAX` ("no change"), and an entry
//! owned by 0:0 carries no xattr at all, exactly as umoci does, so either tool
//! reads the other's trees.

/// The xattr name.
pub const XATTR: &[u8] = b"user.rootlesscontainers";
/// "No change": stands for id 0 in the payload.
pub const NOOP_ID: u32 = u32::MAX;

/// What is wrong with an owner to record or a payload read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RootlessError {
    /// An id no file can have.
    #[error(transparent)]
    Id(#[from] crate::manifest::LimitError),
    /// The payload ends inside a varint.
    #[error("truncated varint")]
    TruncatedVarint,
    /// A varint of more than 10 bytes.
    #[error("varint longer than 10 bytes")]
    LongVarint,
    /// An id field beyond 32 bits.
    #[error("field {field}: {value} does not fit 32 bits")]
    Wide {
        /// The field number.
        field: u64,
        /// Its value.
        value: u64,
    },
    /// The payload ends inside a fixed-width field.
    #[error("truncated fixed-width field")]
    TruncatedFixed,
    /// A length beyond this machine's address space.
    #[error("length too large")]
    LongLength,
    /// The payload ends inside a length-delimited field.
    #[error("truncated length-delimited field")]
    TruncatedLength,
    /// A protobuf wire type that does not exist.
    #[error("unsupported wire type {0}")]
    WireType(u64),
}

/// Encodes the payload for `uid:gid`, or `None` for 0:0 (no xattr).
/// Refuses the id 4294967295: the payload would say "no change", which
/// reads back as 0, so the entry would come back owned by root.
pub fn encode(uid: u32, gid: u32) -> Result<Option<Vec<u8>>, RootlessError> {
    for (what, id) in [("uid", uid), ("gid", gid)] {
        crate::manifest::check_id(what, id.into())?;
    }
    if uid == 0 && gid == 0 {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(12);
    for (tag, id) in [(0x08u8, uid), (0x10u8, gid)] {
        let v = if id == 0 { NOOP_ID } else { id };
        out.push(tag);
        let mut v = v as u64;
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                break;
            }
            out.push(b | 0x80);
        }
    }
    Ok(Some(out))
}

/// Decodes a payload to `(uid, gid)`; absent fields and `NOOP_ID` mean 0.
/// Unknown fields are skipped as protobuf requires; malformed input is an
/// error describing what is wrong.
pub fn decode(mut b: &[u8]) -> Result<(u32, u32), RootlessError> {
    fn varint(b: &mut &[u8]) -> Result<u64, RootlessError> {
        let mut v = 0u64;
        for i in 0..10 {
            let Some((&x, rest)) = b.split_first() else { return Err(RootlessError::TruncatedVarint) };
            *b = rest;
            v |= ((x & 0x7f) as u64) << (7 * i);
            if x & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(RootlessError::LongVarint)
    }
    let (mut uid, mut gid) = (0u32, 0u32);
    while !b.is_empty() {
        let key = varint(&mut b)?;
        let (field, wire) = (key >> 3, key & 7);
        match wire {
            0 => {
                let v = varint(&mut b)?;
                let id = u32::try_from(v).map_err(|_| RootlessError::Wide { field, value: v })?;
                let id = if id == NOOP_ID { 0 } else { id };
                match field {
                    1 => uid = id,
                    2 => gid = id,
                    _ => {}
                }
            }
            1 | 5 => {
                let n = if wire == 1 { 8 } else { 4 };
                b = b.get(n..).ok_or(RootlessError::TruncatedFixed)?;
            }
            2 => {
                let n = varint(&mut b)?;
                let n = usize::try_from(n).map_err(|_| RootlessError::LongLength)?;
                b = b.get(n..).ok_or(RootlessError::TruncatedLength)?;
            }
            _ => return Err(RootlessError::WireType(wire)),
        }
    }
    Ok((uid, gid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_noop() {
        assert_eq!(encode(0, 0), Ok(None));
        for (u, g) in [(1000, 1000), (0, 65534), (100000, 0), (1, 2), (4294967294, 4294967294)] {
            assert_eq!(decode(&encode(u, g).unwrap().unwrap()).unwrap(), (u, g));
        }
        // 0 is carried as NoopID (0xffffffff, varint ff ff ff ff 0f)
        assert_eq!(encode(0, 5).unwrap().unwrap(), vec![0x08, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x10, 0x05]);
    }

    #[test]
    fn malformed() {
        assert!(decode(&[0x08]).is_err());
        assert!(decode(&[0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]).is_err());
        assert!(decode(&[0x0b]).is_err());
        assert_eq!(decode(&[]).unwrap(), (0, 0));
    }

    #[test]
    fn id_4294967295_is_refused_not_written_as_no_change() {
        // written, it would read back as 0: the entry would become root's
        for (u, g) in [(u32::MAX, 0), (0, u32::MAX), (5, u32::MAX)] {
            let e = encode(u, g).expect_err("encoded 4294967295");
            let e = e.to_string();
            assert!(e.contains("4294967295") && e.contains("chown"), "{e}");
        }
    }
}
