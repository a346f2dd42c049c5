//! `--uid-map` / `--gid-map`: shifting the manifest's (container) ids to host
//! ids when unpacking as root, in umoci's `container:host:size` form.

use std::fmt;
use std::str::FromStr;

/// One range of an id mapping: container ids `container..container+size`
/// become host ids `host..host+size`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct IdMap {
    /// First id inside the container (as in the manifest).
    pub container: u32,
    /// First id on the host (as written to disk).
    pub host: u32,
    /// Number of ids in the range (at least 1).
    pub size: u32,
}

impl fmt::Display for IdMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.container, self.host, self.size)
    }
}

impl FromStr for IdMap {
    type Err = String;

    /// Parses `container:host:size`.
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let [c, h, n] = parts.as_slice() else {
            return Err(format!("{s:?}: expected container:host:size"));
        };
        let num = |x: &str, what: &str| x.parse::<u32>().map_err(|e| format!("{s:?}: {what} {x:?}: {e}"));
        let m = IdMap { container: num(c, "container id")?, host: num(h, "host id")?, size: num(n, "size")? };
        if m.size == 0 {
            return Err(format!("{s:?}: size must be at least 1"));
        }
        // 4294967295 is (uid_t)-1, chown's "leave unchanged": not an id on
        // either side
        let last = u64::from(crate::manifest::NO_CHANGE_ID);
        if u64::from(m.container) + u64::from(m.size) > last || u64::from(m.host) + u64::from(m.size) > last {
            return Err(format!(
                "{s:?}: range reaches 4294967295, which is -1, the \"no change\" value of chown, \
                 not an id (ids stop at 4294967294)"
            ));
        }
        Ok(m)
    }
}

/// Maps `id` through `maps`: identity when there are no maps, the first
/// range containing it otherwise, `None` when no range does. The result may
/// be 4294967295 only with maps not made by parsing; callers check it.
pub fn map_id(maps: &[IdMap], id: u32) -> Option<u32> {
    if maps.is_empty() {
        return Some(id);
    }
    maps.iter().find_map(|m| {
        let off = id.checked_sub(m.container)?;
        (off < m.size).then(|| m.host + off)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_map() {
        let m: IdMap = "0:100000:65536".parse().unwrap();
        assert_eq!(m, IdMap { container: 0, host: 100000, size: 65536 });
        assert_eq!(map_id(&[m], 0), Some(100000));
        assert_eq!(map_id(&[m], 65535), Some(165535));
        assert_eq!(map_id(&[m], 65536), None);
        assert_eq!(map_id(&[], 7), Some(7));
        for bad in ["", "1:2", "1:2:0", "a:1:1", "1:2:3:4", "4294967295:0:2", "-1:0:1"] {
            assert!(bad.parse::<IdMap>().is_err(), "{bad}");
        }
    }

    #[test]
    fn ranges_reaching_chowns_no_change_id_are_refused() {
        for bad in ["0:4294967295:1", "0:4294967200:96", "4294967295:0:1", "4294967294:0:2"] {
            let e = bad.parse::<IdMap>().expect_err(bad);
            assert!(e.contains("4294967295") && e.contains("chown"), "{e}");
        }
        for good in ["0:4294967294:1", "4294967294:0:1", "1:0:4294967294"] {
            let m: IdMap = good.parse().unwrap();
            assert_ne!(map_id(&[m], m.container + m.size - 1), Some(u32::MAX), "{good}");
        }
    }
}
