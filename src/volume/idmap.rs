//! Owner remapping of a clone (`clone --owner`, `--uid-map`, `--gid-map`): the files keep the
//! ids they were stored with, and the clone's mounts show them through its maps, so a
//! remapped clone of a 200,000-file template costs what a plain clone costs.
//!
//! A map is a list of ranges `FROM:TO:COUNT`: a stored id `FROM + i` shows as `TO + i`. Ids in
//! no range show as they are, except ids inside a target range that no range maps there,
//! which show as the overflow id 65534 (so two stored ids never show as one). New files and
//! chown store the shown id through the inverse; an id the inverse cannot represent (one a
//! range maps away, so storing it would show something else) is refused with EOVERFLOW, as on
//! a Linux idmapped mount. A clone of a remapped clone adds a layer: shown ids go through the
//! origin's layers, then its own.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

pub const OVERFLOW_ID: u32 = 65534;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Range {
    pub from: u32,
    pub to: u32,
    pub count: u32,
}

impl Range {
    /// `FROM:TO[:COUNT]` (COUNT 1 when left out).
    pub fn parse(s: &str) -> Result<Range> {
        let bad = || Error::Invalid(format!("id map {s:?}: expected FROM:TO[:COUNT] with numbers, COUNT at least 1"));
        let p: Vec<&str> = s.split(':').collect();
        let n = |x: &str| x.trim().parse::<u32>().map_err(|_| bad());
        let r = match p.as_slice() {
            [f, t] => Range { from: n(f)?, to: n(t)?, count: 1 },
            [f, t, c] => Range { from: n(f)?, to: n(t)?, count: n(c)? },
            _ => return Err(bad()),
        };
        if r.count == 0 || r.from.checked_add(r.count - 1).is_none() || r.to.checked_add(r.count - 1).is_none() {
            return Err(bad());
        }
        Ok(r)
    }

    fn text(&self) -> String {
        format!("{}:{}:{}", self.from, self.to, self.count)
    }

    fn src(&self, id: u32) -> bool {
        id >= self.from && id - self.from < self.count
    }

    fn dst(&self, id: u32) -> bool {
        id >= self.to && id - self.to < self.count
    }
}

/// One layer: uid and gid ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layer {
    #[serde(default)]
    pub uid: Vec<Range>,
    #[serde(default)]
    pub gid: Vec<Range>,
}

fn overlap(rs: &[Range], key: impl Fn(&Range) -> (u32, u32)) -> bool {
    let mut v: Vec<(u32, u32)> = rs.iter().map(key).collect();
    v.sort_unstable();
    v.windows(2).any(|w| w[0].0 as u64 + w[0].1 as u64 > w[1].0 as u64)
}

impl Layer {
    /// Refuses ranges whose sources or targets overlap (an id would map two ways).
    pub fn check(&self) -> Result<()> {
        for (what, rs) in [("uid", &self.uid), ("gid", &self.gid)] {
            if overlap(rs, |r| (r.from, r.count)) || overlap(rs, |r| (r.to, r.count)) {
                return Err(Error::Invalid(format!("{what} maps overlap: {}", rs.iter().map(Range::text).collect::<Vec<_>>().join(", "))));
            }
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.uid.is_empty() && self.gid.is_empty()
    }
}

fn show(rs: &[Range], id: u32) -> u32 {
    if let Some(r) = rs.iter().find(|r| r.src(id)) {
        return r.to + (id - r.from);
    }
    if rs.iter().any(|r| r.dst(id)) {
        return OVERFLOW_ID;
    }
    id
}

fn store(rs: &[Range], id: u32) -> Option<u32> {
    if let Some(r) = rs.iter().find(|r| r.dst(id)) {
        return Some(r.from + (id - r.to));
    }
    if rs.iter().any(|r| r.src(id)) {
        return None;
    }
    Some(id)
}

/// The layers of a volume, oldest (the origin's) first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMap(pub Vec<Layer>);

impl IdMap {
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(Layer::is_empty)
    }

    pub fn show_uid(&self, id: u32) -> u32 {
        self.0.iter().fold(id, |x, l| show(&l.uid, x))
    }

    pub fn show_gid(&self, id: u32) -> u32 {
        self.0.iter().fold(id, |x, l| show(&l.gid, x))
    }

    /// The stored uid that shows as `id`; None when there is none (EOVERFLOW to a caller).
    pub fn store_uid(&self, id: u32) -> Option<u32> {
        self.0.iter().rev().try_fold(id, |x, l| store(&l.uid, x))
    }

    pub fn store_gid(&self, id: u32) -> Option<u32> {
        self.0.iter().rev().try_fold(id, |x, l| store(&l.gid, x))
    }

    /// This map with `layer` on top (a clone of a remapped volume).
    pub fn with(&self, layer: Layer) -> IdMap {
        let mut v = self.0.clone();
        if !layer.is_empty() {
            v.push(layer);
        }
        IdMap(v)
    }

    /// `uid 1000:2000:1, ...; gid ...` per layer, `none` without one.
    pub fn text(&self) -> String {
        if self.is_empty() {
            return "none".into();
        }
        self.0
            .iter()
            .map(|l| {
                let part = |n: &str, rs: &[Range]| (!rs.is_empty()).then(|| format!("{n} {}", rs.iter().map(Range::text).collect::<Vec<_>>().join(",")));
                [part("uid", &l.uid), part("gid", &l.gid)].into_iter().flatten().collect::<Vec<_>>().join(" ")
            })
            .collect::<Vec<_>>()
            .join(" then ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_map_both_ways_and_refuse_what_they_cannot_store() {
        let l = Layer { uid: vec![Range::parse("1000:2000:10").unwrap()], gid: vec![Range::parse("100:500").unwrap()] };
        l.check().unwrap();
        let m = IdMap(vec![l]);
        assert_eq!((m.show_uid(1003), m.show_uid(0), m.show_uid(2005)), (2003, 0, OVERFLOW_ID));
        assert_eq!((m.store_uid(2003).unwrap(), m.store_uid(0).unwrap()), (1003, 0));
        assert_eq!(m.store_uid(1003), None, "1003 is mapped away: storing it would show 2003");
        assert_eq!((m.show_gid(100), m.store_gid(500).unwrap()), (500, 100));
        // Every id that shows as something stores back to itself.
        for s in 0..3000 {
            let shown = m.show_uid(s);
            if shown != OVERFLOW_ID {
                assert_eq!(m.store_uid(shown).unwrap(), s);
            }
        }
        // A second layer composes.
        let m2 = m.with(Layer { uid: vec![Range::parse("2003:3000").unwrap()], gid: vec![] });
        assert_eq!(m2.show_uid(1003), 3000);
        assert_eq!(m2.store_uid(3000).unwrap(), 1003);
        assert_eq!(m2.text(), "uid 1000:2000:10 gid 100:500:1 then uid 2003:3000:1");
        for bad in ["1000", "a:b", "1:2:0", "1:2:3:4", "4294967295:1:2"] {
            assert!(Range::parse(bad).is_err(), "{bad}");
        }
        let o = Layer { uid: vec![Range::parse("0:10:5").unwrap(), Range::parse("3:20:5").unwrap()], gid: vec![] };
        assert!(o.check().is_err());
    }
}
