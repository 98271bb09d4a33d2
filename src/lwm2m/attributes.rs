//! Notification attributes (LwM2M 1.1 TS §5.1.2): pmin, pmax, gt, lt, st, as set by
//! Write-Attributes, kept in memory per server and per path level, with inheritance
//! object → instance → resource → resource instance.

use std::collections::BTreeMap;

use crate::dm::{DmError, Path};

/// The attributes set at one path (None: not set there).
#[derive(Copy, Clone, Debug, Default, PartialEq)]
pub struct Attributes {
    pub pmin: Option<u32>,
    pub pmax: Option<u32>,
    pub gt: Option<f64>,
    pub lt: Option<f64>,
    pub st: Option<f64>,
}

impl Attributes {
    /// `self` with every attribute `deeper` sets taking precedence.
    fn overlaid(self, deeper: &Attributes) -> Attributes {
        Attributes {
            pmin: deeper.pmin.or(self.pmin),
            pmax: deeper.pmax.or(self.pmax),
            gt: deeper.gt.or(self.gt),
            lt: deeper.lt.or(self.lt),
            st: deeper.st.or(self.st),
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == Attributes::default()
    }

    /// True if a value condition (gt, lt, st) is set.
    pub fn has_value_conditions(&self) -> bool {
        self.gt.is_some() || self.lt.is_some() || self.st.is_some()
    }

    /// The `;pmin=5;pmax=30` suffix of a Discover link.
    pub fn link_params(&self) -> String {
        let mut s = String::new();
        if let Some(v) = self.pmin {
            s.push_str(&format!(";pmin={v}"));
        }
        if let Some(v) = self.pmax {
            s.push_str(&format!(";pmax={v}"));
        }
        for (k, v) in [("gt", self.gt), ("lt", self.lt), ("st", self.st)] {
            if let Some(v) = v {
                s.push_str(&format!(";{k}={v}"));
            }
        }
        s
    }

    /// Consistency rules of §5.1.2: lt < gt, and lt + 2·st < gt when all three are set.
    fn check(&self) -> Result<(), DmError> {
        if let (Some(lt), Some(gt)) = (self.lt, self.gt) {
            if lt >= gt {
                return Err(DmError::BadRequest);
            }
            if let Some(st) = self.st {
                if lt + 2.0 * st >= gt {
                    return Err(DmError::BadRequest);
                }
            }
        }
        Ok(())
    }
}

/// One parsed Write-Attributes query item: set a value, or remove it (`pmin` without `=`).
#[derive(Copy, Clone, Debug, PartialEq)]
enum Change {
    Pmin(Option<u32>),
    Pmax(Option<u32>),
    Gt(Option<f64>),
    Lt(Option<f64>),
    St(Option<f64>),
}

fn parse_item(item: &str) -> Result<Change, DmError> {
    let (key, value) = match item.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (item, None),
    };
    let period = |v: Option<&str>| -> Result<Option<u32>, DmError> {
        v.map(|v| v.parse::<u32>().map_err(|_| DmError::BadRequest))
            .transpose()
    };
    let number = |v: Option<&str>| -> Result<Option<f64>, DmError> {
        v.map(|v| {
            v.parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .ok_or(DmError::BadRequest)
        })
        .transpose()
    };
    Ok(match key {
        "pmin" => Change::Pmin(period(value)?),
        "pmax" => Change::Pmax(period(value)?),
        "gt" => Change::Gt(number(value)?),
        "lt" => Change::Lt(number(value)?),
        "st" => match number(value)? {
            Some(st) if st < 0.0 => return Err(DmError::BadRequest),
            st => Change::St(st),
        },
        _ => return Err(DmError::BadRequest),
    })
}

/// The attributes one server has set, by path.
#[derive(Clone, Debug, Default)]
pub struct AttributeStore {
    by_path: BTreeMap<Path, Attributes>,
}

impl AttributeStore {
    /// Applies a Write-Attributes query to `path`, all or nothing. `numeric` says whether
    /// the path is a numeric resource (gt, lt, st are refused elsewhere).
    pub fn write(&mut self, path: &Path, query: &[String], numeric: bool) -> Result<(), DmError> {
        if path.depth() == 0 {
            return Err(DmError::MethodNotAllowed);
        }
        let mut a = self.at(path);
        for item in query {
            match parse_item(item)? {
                Change::Pmin(v) => a.pmin = v,
                Change::Pmax(v) => a.pmax = v,
                Change::Gt(v) => a.gt = v,
                Change::Lt(v) => a.lt = v,
                Change::St(v) => a.st = v,
            }
        }
        if a.has_value_conditions() && !numeric {
            return Err(DmError::BadRequest);
        }
        a.check()?;
        if a.is_empty() {
            self.by_path.remove(path);
        } else {
            self.by_path.insert(*path, a);
        }
        Ok(())
    }

    /// The attributes set at exactly `path`.
    pub fn at(&self, path: &Path) -> Attributes {
        self.by_path.get(path).copied().unwrap_or_default()
    }

    /// The attributes in force at `path`: each level's settings override its parent's.
    pub fn effective(&self, path: &Path) -> Attributes {
        let (o, i, r) = (path.oid(), path.iid(), path.rid());
        let levels = [
            o.map(Path::object),
            o.zip(i).map(|(o, i)| Path::instance(o, i)),
            o.zip(i).zip(r).map(|((o, i), r)| Path::resource(o, i, r)),
            path.riid().map(|_| *path),
        ];
        levels
            .iter()
            .flatten()
            .fold(Attributes::default(), |a, level| {
                a.overlaid(&self.at(level))
            })
    }

    /// Drops every attribute at or below `path` (its instance was deleted).
    pub fn remove_under(&mut self, path: &Path) {
        self.by_path.retain(|p, _| !path.contains(p));
    }

    /// Every path with attributes set there, in path order (for persistence).
    pub fn iter(&self) -> impl Iterator<Item = (&Path, &Attributes)> {
        self.by_path.iter()
    }

    /// True when no attribute is set anywhere.
    pub fn is_empty(&self) -> bool {
        self.by_path.is_empty()
    }

    /// Sets the attributes at `path` as a whole (restoring from persistence), with the
    /// checks Write-Attributes applies: a non-root path, finite values, a non-negative
    /// step, and the §5.1.2 consistency rules. Nothing changes when refused.
    pub fn set(&mut self, path: Path, a: Attributes) -> Result<(), DmError> {
        if path.depth() == 0 {
            return Err(DmError::MethodNotAllowed);
        }
        let finite = [a.gt, a.lt, a.st].iter().flatten().all(|v| v.is_finite());
        if !finite || a.st.is_some_and(|st| st < 0.0) {
            return Err(DmError::BadRequest);
        }
        a.check()?;
        if a.is_empty() {
            self.by_path.remove(&path);
        } else {
            self.by_path.insert(path, a);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn inheritance_from_object_to_resource() {
        let mut s = AttributeStore::default();
        s.write(&Path::object(3303), &q(&["pmin=10", "pmax=60"]), false)
            .unwrap();
        s.write(
            &Path::resource(3303, 0, 5700),
            &q(&["pmin=2", "gt=25.5"]),
            true,
        )
        .unwrap();
        let e = s.effective(&Path::resource(3303, 0, 5700));
        assert_eq!((e.pmin, e.pmax, e.gt), (Some(2), Some(60), Some(25.5)));
        let e = s.effective(&Path::instance(3303, 1));
        assert_eq!((e.pmin, e.pmax, e.gt), (Some(10), Some(60), None));
        assert_eq!(
            s.at(&Path::resource(3303, 0, 5700)).link_params(),
            ";pmin=2;gt=25.5"
        );
        // Removing without a value.
        s.write(&Path::resource(3303, 0, 5700), &q(&["pmin", "gt"]), true)
            .unwrap();
        assert!(s.at(&Path::resource(3303, 0, 5700)).is_empty());
    }

    #[test]
    fn bad_writes_change_nothing() {
        let mut s = AttributeStore::default();
        let p = Path::resource(3303, 0, 5700);
        s.write(&p, &q(&["pmin=1"]), true).unwrap();
        for bad in [
            q(&["pmin=2", "pmax=x"]),
            q(&["pmin=-1"]),
            q(&["lt=30", "gt=20"]),
            q(&["lt=10", "gt=20", "st=5"]),
            q(&["st=-1"]),
            q(&["foo=1"]),
            q(&["gt=NaN"]),
        ] {
            assert_eq!(s.write(&p, &bad, true), Err(DmError::BadRequest), "{bad:?}");
        }
        assert_eq!(
            s.write(&Path::instance(3303, 0), &q(&["gt=1"]), false),
            Err(DmError::BadRequest)
        );
        assert_eq!(s.at(&p).pmin, Some(1));
        assert!(s.at(&Path::instance(3303, 0)).is_empty());
        s.write(&p, &q(&["lt=10", "gt=20", "st=4"]), true).unwrap();
        s.remove_under(&Path::instance(3303, 0));
        assert!(s.at(&p).is_empty());
    }

    #[test]
    fn set_applies_the_write_attributes_checks() {
        let mut s = AttributeStore::default();
        let p = Path::resource(3303, 0, 5700);
        let good = Attributes {
            pmin: Some(1),
            lt: Some(10.0),
            gt: Some(20.0),
            st: Some(4.0),
            ..Attributes::default()
        };
        s.set(p, good).unwrap();
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![(&p, &good)]);
        for bad in [
            Attributes {
                gt: Some(f64::NAN),
                ..good
            },
            Attributes {
                st: Some(-1.0),
                ..good
            },
            Attributes {
                lt: Some(30.0),
                ..good
            },
        ] {
            assert_eq!(s.set(p, bad), Err(DmError::BadRequest));
        }
        assert_eq!(s.set(Path::ROOT, good), Err(DmError::MethodNotAllowed));
        assert_eq!(s.at(&p), good);
        s.set(p, Attributes::default()).unwrap();
        assert!(s.is_empty());
    }
}
