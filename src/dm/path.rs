//! LwM2M data-model paths: `/O`, `/O/I`, `/O/I/R`, `/O/I/R/RI`, and the root `/`.

use core::fmt;

/// A path into the data model; each level is present only if the previous ones are.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Path {
    ids: [u16; 4],
    len: u8,
}

/// Why a path could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path has more than four levels")]
    TooDeep,
    #[error("path segment {0:?} is not an integer in 0..=65534")]
    BadSegment(String),
}

impl Path {
    pub const ROOT: Path = Path {
        ids: [0; 4],
        len: 0,
    };

    pub fn object(oid: u16) -> Path {
        Path {
            ids: [oid, 0, 0, 0],
            len: 1,
        }
    }

    pub fn instance(oid: u16, iid: u16) -> Path {
        Path {
            ids: [oid, iid, 0, 0],
            len: 2,
        }
    }

    pub fn resource(oid: u16, iid: u16, rid: u16) -> Path {
        Path {
            ids: [oid, iid, rid, 0],
            len: 3,
        }
    }

    pub fn resource_instance(oid: u16, iid: u16, rid: u16, riid: u16) -> Path {
        Path {
            ids: [oid, iid, rid, riid],
            len: 4,
        }
    }

    /// Parses URI path segments (as from Uri-Path options); 65535 is reserved and refused.
    pub fn from_segments<S: AsRef<str>>(segs: &[S]) -> Result<Path, PathError> {
        let segs: Vec<&str> = segs
            .iter()
            .map(|s| s.as_ref())
            .filter(|s| !s.is_empty())
            .collect();
        if segs.len() > 4 {
            return Err(PathError::TooDeep);
        }
        let mut p = Path::ROOT;
        for s in segs {
            let v: u16 = s
                .parse()
                .ok()
                .filter(|v| *v != u16::MAX && !s.starts_with('+'))
                .ok_or_else(|| PathError::BadSegment(s.to_string()))?;
            p.ids[p.len as usize] = v;
            p.len += 1;
        }
        Ok(p)
    }

    /// Parses "/3/0/0".
    pub fn parse(s: &str) -> Result<Path, PathError> {
        let segs: Vec<&str> = s.split('/').collect();
        Path::from_segments(&segs)
    }

    /// Number of levels: 0 for the root, 4 for a resource instance.
    pub fn depth(&self) -> usize {
        self.len as usize
    }

    pub fn is_root(&self) -> bool {
        self.len == 0
    }

    pub fn oid(&self) -> Option<u16> {
        (self.len >= 1).then_some(self.ids[0])
    }

    pub fn iid(&self) -> Option<u16> {
        (self.len >= 2).then_some(self.ids[1])
    }

    pub fn rid(&self) -> Option<u16> {
        (self.len >= 3).then_some(self.ids[2])
    }

    pub fn riid(&self) -> Option<u16> {
        (self.len >= 4).then_some(self.ids[3])
    }

    /// True if `other` is this path or lies below it.
    pub fn contains(&self, other: &Path) -> bool {
        other.len >= self.len && self.ids[..self.depth()] == other.ids[..self.depth()]
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.len == 0 {
            return f.write_str("/");
        }
        for id in &self.ids[..self.depth()] {
            write!(f, "/{id}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display_round_trip() {
        for s in ["/", "/3", "/3/0", "/3/0/0", "/3/0/11/0", "/65534/1"] {
            assert_eq!(Path::parse(s).unwrap().to_string(), s);
        }
        assert_eq!(Path::parse("3/0/1").unwrap(), Path::resource(3, 0, 1));
    }

    #[test]
    fn bad_paths_are_refused() {
        assert_eq!(Path::parse("/1/2/3/4/5"), Err(PathError::TooDeep));
        for s in ["/x", "/65535", "/-1", "/+1", "/3/99999", "/3/ 1"] {
            assert!(Path::parse(s).is_err(), "{s}");
        }
    }

    #[test]
    fn containment() {
        assert!(Path::object(3).contains(&Path::resource(3, 0, 1)));
        assert!(!Path::object(3).contains(&Path::object(30)));
        assert!(Path::ROOT.contains(&Path::object(0)));
    }
}
