//! Automatic snapshots: a `snapshot.policy` makes the daemon take one snapshot per period
//! (the first ones as soon as it is set), prune past the counts, keep held snapshots and
//! say so, and record all of it in the history. The schedule over weeks of time is tested
//! with an injected clock in `volume::autosnap`.

use crate::util::{pattern, Daemon};
use std::fs;
use std::time::{Duration, Instant};

fn snapshots(d: &Daemon) -> Vec<String> {
    let list = d.json(&["list", "--json"]);
    let mut out: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["type"] == "snapshot")
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect();
    out.sort();
    out
}

/// Waits (up to 60 s: the daemon acts at once, a loaded CI machine may not) until the
/// snapshots of `v` satisfy `ok`.
fn wait_for(d: &Daemon, what: &str, ok: impl Fn(&[String]) -> bool) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = snapshots(d);
        if ok(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what}: snapshots are {s:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_snapshot_policy_takes_prunes_keeps_held_and_is_recorded() {
    let mut d = Daemon::start();
    let m = d.volume("v");
    fs::write(m.join("f"), pattern(1, 100_000)).unwrap();
    d.ok(&["snapshot", "v@mine"]);

    // Bad policies are refused and change nothing.
    for bad in ["hourly", "minutely:3", "hourly:1,hourly:2", "daily:-1"] {
        let err = d.fails(&["set", &format!("snapshot.policy={bad}"), "v"]);
        assert!(err.contains("snapshot.policy"), "{err}");
    }
    assert_eq!(d.ok(&["get", "snapshot.policy", "v"]).split_whitespace().last(), Some("none"));

    d.ok(&["set", "snapshot.policy=hourly:2, daily:1", "v"]);
    assert!(d.ok(&["get", "snapshot.policy", "v"]).contains("hourly:2,daily:1"));
    let s = wait_for(&d, "hourly and daily taken", |s| {
        s.iter().any(|n| n.starts_with("v@auto-hourly-")) && s.iter().any(|n| n.starts_with("v@auto-daily-"))
    });
    assert_eq!(s.len(), 3, "{s:?}");
    let list = d.ok(&["list", "-o", "name,policy"]);
    assert!(list.lines().any(|l| l.starts_with("v ") && l.contains("hourly:2,daily:1")), "{list}");
    // The snapshot holds the file as it was.
    let daily = s.iter().find(|n| n.contains("daily")).unwrap().trim_start_matches("v@").to_string();
    assert!(fs::read(m.join(".snapshots").join(&daily).join("f")).unwrap() == pattern(1, 100_000));

    // Counts of 0 prune; a held snapshot stays, and the log says why.
    d.ok(&["hold", &format!("v@{daily}"), "keep"]);
    d.ok(&["set", "snapshot.policy=hourly:0,daily:0", "v"]);
    let s = wait_for(&d, "hourly pruned", |s| !s.iter().any(|n| n.contains("hourly")));
    assert_eq!(s, vec![format!("v@{daily}"), "v@mine".to_string()]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !d.log().contains("is past its snapshot.policy count but kept: held (keep)") {
        assert!(Instant::now() < deadline, "the kept snapshot was not reported:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    // Without a policy, nothing is pruned any more.
    d.ok(&["release", &format!("v@{daily}"), "keep"]);
    d.ok(&["set", "snapshot.policy=none", "v"]);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(snapshots(&d), vec![format!("v@{daily}"), "v@mine".to_string()]);

    let h = d.json(&["history", "--json"]);
    let ops: Vec<String> = h.as_array().unwrap().iter().map(|e| e["request"].to_string()).collect();
    assert!(ops.iter().any(|o| o.contains("auto-hourly") && o.contains("destroy")), "{ops:?}");
    assert!(ops.iter().any(|o| o.contains("auto-daily") && o.contains("snapshot")), "{ops:?}");
    d.fsck_clean();
}

/// An automatic snapshot a clone was made from stays past its count after its volume is
/// renamed (the clone's origin is kept by ids, not by the name it had).
#[test]
fn the_origin_of_a_clone_stays_after_its_volume_is_renamed() {
    let d = Daemon::start();
    d.ok(&["create", "v"]);
    d.ok(&["set", "snapshot.policy=hourly:1", "v"]);
    let s = wait_for(&d, "hourly taken", |s| s.iter().any(|n| n.starts_with("v@auto-hourly-")));
    let hourly = s[0].trim_start_matches("v@").to_string();
    d.ok(&["clone", &format!("v@{hourly}"), "c"]);
    d.ok(&["rename", "v", "w"]);
    d.ok(&["set", "snapshot.policy=hourly:0", "w"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !d.log().contains("is past its snapshot.policy count but kept: the origin of a clone") {
        assert!(Instant::now() < deadline, "the origin was not reported kept:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(snapshots(&d), vec![format!("w@{hourly}")]);
    d.fsck_clean();
}
