//! Automatic snapshots with retention (sanoid / zfs-auto-snapshot): a volume's
//! `snapshot.policy` says how many snapshots of each period to keep; the daemon takes one
//! per period on time and prunes the oldest past the count. Pure planning here (the clock is
//! a parameter, so tests run weeks of simulated time); the daemon acts on the plan.
//!
//! - A snapshot is named `auto-PERIOD-YYYYMMDDTHHMMZ` after the start of its period (UTC).
//! - Only the current period is taken: after downtime one snapshot per period catches up,
//!   never the missed ones (no burst).
//! - Past the count, the oldest go, except held snapshots and origins of clones: they are
//!   kept, and the plan says why.
//! - A period set to 0 prunes its snapshots; a volume without a policy is left alone.

use crate::error::{Error, Result};
use std::collections::BTreeMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Period {
    Frequent,
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Yearly,
}

impl Period {
    pub const ALL: [Period; 6] = [Period::Frequent, Period::Hourly, Period::Daily, Period::Weekly, Period::Monthly, Period::Yearly];

    pub fn name(self) -> &'static str {
        match self {
            Period::Frequent => "frequent",
            Period::Hourly => "hourly",
            Period::Daily => "daily",
            Period::Weekly => "weekly",
            Period::Monthly => "monthly",
            Period::Yearly => "yearly",
        }
    }

    fn parse(s: &str) -> Option<Period> {
        Period::ALL.into_iter().find(|p| p.name() == s)
    }

    /// The start (seconds since the epoch, UTC) of the period holding `t`: a quarter hour,
    /// an hour, a day, a week from Monday, a month, a year.
    pub fn start(self, t: i64) -> i64 {
        let day = t.div_euclid(86_400);
        match self {
            Period::Frequent => t - t.rem_euclid(900),
            Period::Hourly => t - t.rem_euclid(3600),
            Period::Daily => day * 86_400,
            // 1970-01-01 was a Thursday: Monday is 3 days before day 0 mod 7.
            Period::Weekly => (day - (day + 3).rem_euclid(7)) * 86_400,
            Period::Monthly => {
                let (y, m, _) = civil(day);
                days_from_civil(y, m, 1) * 86_400
            }
            Period::Yearly => days_from_civil(civil(day).0, 1, 1) * 86_400,
        }
    }
}

/// (year, month 1-12, day 1-31) of a day number (days since 1970-01-01), proleptic
/// Gregorian (Howard Hinnant's algorithm).
fn civil(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// How many snapshots of each period to keep (periods not named keep none).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    pub keep: BTreeMap<Period, u32>,
}

impl Policy {
    /// `hourly:24,daily:7,weekly:4,monthly:0` (any of frequent, hourly, daily, weekly,
    /// monthly, yearly; each at most once, counts up to 10,000).
    pub fn parse(s: &str) -> Result<Policy> {
        let bad = |why: String| Error::Invalid(format!("snapshot.policy {s:?}: {why} (example: hourly:24,daily:7,weekly:4,monthly:0)"));
        let mut keep = BTreeMap::new();
        for part in s.split(',').map(str::trim) {
            let (p, n) = part.split_once(':').ok_or_else(|| bad(format!("{part:?} is not PERIOD:COUNT")))?;
            let period = Period::parse(p.trim()).ok_or_else(|| {
                bad(format!("no period {p:?}; periods: {}", Period::ALL.map(|p| p.name()).join(", ")))
            })?;
            let n: u32 = n.trim().parse().ok().filter(|n| *n <= 10_000).ok_or_else(|| bad(format!("{n:?} is not a count from 0 to 10000")))?;
            if keep.insert(period, n).is_some() {
                return Err(bad(format!("{} is given twice", period.name())));
            }
        }
        Ok(Policy { keep })
    }

    /// The canonical text (periods in order).
    pub fn text(&self) -> String {
        self.keep.iter().map(|(p, n)| format!("{}:{n}", p.name())).collect::<Vec<_>>().join(",")
    }
}

/// The snapshot name of `period` starting at `start`.
pub fn name(period: Period, start: i64) -> String {
    let day = start.div_euclid(86_400);
    let (y, m, d) = civil(day);
    let s = start.rem_euclid(86_400);
    format!("auto-{}-{y:04}{m:02}{d:02}T{:02}{:02}Z", period.name(), s / 3600, s % 3600 / 60)
}

/// The period and start of an automatic snapshot's name; None for other names.
pub fn parse_name(n: &str) -> Option<(Period, i64)> {
    let rest = n.strip_prefix("auto-")?;
    let (p, t) = rest.split_once('-')?;
    let period = Period::parse(p)?;
    let b = t.as_bytes();
    if b.len() != 14 || b[8] != b'T' || b[13] != b'Z' || !t[..8].bytes().chain(t[9..13].bytes()).all(|c| c.is_ascii_digit()) {
        return None;
    }
    let num = |r: std::ops::Range<usize>| t[r].parse::<i64>().ok();
    let (y, m, d, hh, mm) = (num(0..4)?, num(4..6)?, num(6..8)?, num(9..11)?, num(11..13)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 {
        return None;
    }
    let start = days_from_civil(y, m as u32, d as u32) * 86_400 + hh * 3600 + mm * 60;
    (name(period, start) == n).then_some((period, start))
}

/// A snapshot of the volume, as the planner sees it.
#[derive(Clone, Debug)]
pub struct Existing {
    pub name: String,
    /// Why it may not be pruned (held, origin of a clone); None: it may.
    pub keep: Option<String>,
}

/// What to do now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Snapshots to take, in period order.
    pub take: Vec<String>,
    /// Snapshots to destroy, oldest first.
    pub prune: Vec<String>,
    /// Snapshots past their count that stay, with the reason.
    pub kept: Vec<(String, String)>,
}

/// The plan for a volume with `policy` at time `now`, given its snapshots.
pub fn plan(policy: &Policy, now: i64, existing: &[Existing]) -> Plan {
    let mut out = Plan::default();
    for period in Period::ALL {
        let keep = policy.keep.get(&period).copied().unwrap_or(0);
        let mut mine: Vec<(i64, &str, Option<&str>)> = existing
            .iter()
            .filter_map(|e| parse_name(&e.name).filter(|(p, _)| *p == period).map(|(_, s)| (s, e.name.as_str(), e.keep.as_deref())))
            .collect();
        if keep == 0 && mine.is_empty() {
            continue;
        }
        let current = period.start(now);
        let fresh = name(period, current);
        if keep > 0 && !mine.iter().any(|m| m.0 >= current) {
            out.take.push(fresh.clone());
            mine.push((current, "", None));
        }
        // Newest first; the first `keep` stay.
        mine.sort_by(|a, b| b.0.cmp(&a.0));
        for (_, n, why) in mine.into_iter().skip(keep as usize) {
            match why {
                Some(w) => out.kept.push((n.to_string(), w.to_string())),
                None => out.prune.push(n.to_string()),
            }
        }
    }
    out.prune.sort_by_key(|n| parse_name(n).map(|x| x.1));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn period_starts_are_boundaries_at_or_before_the_time() {
        // 2026-12-01 16:23:06 UTC is a Tuesday.
        let t = 1_796_142_186;
        assert_eq!(name(Period::Hourly, Period::Hourly.start(t)), "auto-hourly-20261201T1600Z");
        assert_eq!(name(Period::Frequent, Period::Frequent.start(t)), "auto-frequent-20261201T1615Z");
        assert_eq!(name(Period::Daily, Period::Daily.start(t)), "auto-daily-20261201T0000Z");
        assert_eq!(name(Period::Weekly, Period::Weekly.start(t)), "auto-weekly-20261130T0000Z");
        assert_eq!(name(Period::Monthly, Period::Monthly.start(t)), "auto-monthly-20261201T0000Z");
        assert_eq!(name(Period::Yearly, Period::Yearly.start(t)), "auto-yearly-20260101T0000Z");
        // Brute force over four years, hour by hour: a start is at or before the time, in
        // the same period, and the period changes exactly at a start.
        for p in Period::ALL {
            let mut prev = p.start(t);
            let mut h = t;
            while h < t + 4 * 366 * 86_400 {
                let s = p.start(h);
                assert!(s <= h && s >= prev && p.start(s) == s, "{p:?} at {h}: {s}");
                assert_eq!(parse_name(&name(p, s)), Some((p, s)));
                if s != prev {
                    assert_eq!(p.start(h - 3600), prev, "{p:?}: a period began between hours");
                }
                prev = s;
                h += 3600;
            }
        }
        assert_eq!(civil(days_from_civil(2028, 2, 29)), (2028, 2, 29));
    }

    #[test]
    fn policies_parse_or_say_what_is_wrong() {
        let p = Policy::parse("hourly:24, daily:7,weekly:4,monthly:0").unwrap();
        assert_eq!(p.text(), "hourly:24,daily:7,weekly:4,monthly:0");
        for bad in ["", "hourly", "hourly:x", "hourly:-1", "minutely:3", "hourly:1,hourly:2", "daily:20000"] {
            assert!(matches!(Policy::parse(bad), Err(Error::Invalid(_))), "{bad:?} was accepted");
        }
        for n in ["auto-hourly-20261301T0000Z", "auto-hourly-2026120T10000Z", "manual", "auto-daily-20261201T0000Zx"] {
            assert_eq!(parse_name(n), None, "{n}");
        }
    }

    /// Six weeks of 5-minute ticks with the daemon down now and then and some snapshots
    /// held, against a brute-force model: per period, the snapshots are the starts of the
    /// last `keep` periods in which the daemon ran, plus the held ones past them.
    #[test]
    fn retention_over_weeks_matches_a_brute_force_model() {
        let policy = Policy::parse("frequent:4,hourly:24,daily:7,weekly:4,monthly:2").unwrap();
        let t0 = 1_796_142_186;
        let mut snaps: BTreeMap<String, Option<String>> = BTreeMap::new();
        let mut up_at: Vec<i64> = Vec::new();
        let mut rng = 12345u64;
        let mut down_until = 0;
        let mut t = t0;
        while t < t0 + 42 * 86_400 {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            if t >= down_until && rng >> 54 == 0 {
                down_until = t + ((rng >> 20) % (3 * 86_400)) as i64; // down up to 3 days
            }
            if t >= down_until {
                up_at.push(t);
                let existing: Vec<Existing> = snaps.iter().map(|(n, k)| Existing { name: n.clone(), keep: k.clone() }).collect();
                let p = plan(&policy, t, &existing);
                assert_eq!(p.take.len(), p.take.iter().collect::<std::collections::BTreeSet<_>>().len());
                for n in &p.take {
                    let held = (rng >> 40) % 97 == 0;
                    snaps.insert(n.clone(), held.then(|| "held".to_string()));
                }
                for n in &p.prune {
                    assert!(snaps.remove(n).unwrap().is_none(), "pruned a held snapshot {n}");
                }
                // The model.
                let mut want: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
                for (period, keep) in &policy.keep {
                    let mut starts: Vec<i64> = up_at.iter().map(|u| period.start(*u)).collect();
                    starts.dedup();
                    for s in starts.iter().rev().take(*keep as usize) {
                        want.insert(name(*period, *s));
                    }
                }
                for (n, k) in &snaps {
                    if k.is_some() {
                        want.insert(n.clone());
                    }
                }
                let have: std::collections::BTreeSet<String> = snaps.keys().cloned().collect();
                assert_eq!(have, want, "at {t}");
            }
            t += 300;
        }
        assert!(snaps.keys().any(|n| n.starts_with("auto-weekly")) && up_at.len() < 42 * 288);
    }

    #[test]
    fn a_period_set_to_zero_prunes_and_others_are_left_alone() {
        let existing: Vec<Existing> = ["auto-daily-20261129T0000Z", "auto-daily-20261130T0000Z", "mine", "auto-hourly-20261201T1500Z"]
            .iter()
            .map(|n| Existing { name: n.to_string(), keep: None })
            .collect();
        let p = plan(&Policy::parse("daily:0,hourly:1").unwrap(), 1_796_142_186, &existing);
        assert_eq!(p.prune, vec!["auto-daily-20261129T0000Z", "auto-daily-20261130T0000Z", "auto-hourly-20261201T1500Z"]);
        assert_eq!(p.take, vec!["auto-hourly-20261201T1600Z"]);
    }
}
