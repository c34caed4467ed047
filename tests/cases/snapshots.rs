//! Snapshots, clones, rollback, destroy in any order, holds, space accounting.

use crate::util::{pattern, Daemon};
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// LOGICAL and REFERENCED of a mounted view, recounted from what a reader sees: every
/// block-sized piece of every file (once per inode), all-zero pieces being holes, each stored
/// without trailing zeros; REFERENCED counts each distinct content once.
fn content_space(root: &Path, bs: usize) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let (mut logical, mut distinct) = (0u64, std::collections::HashSet::new());
    let mut inodes = std::collections::HashSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() && inodes.insert(e.metadata().unwrap().ino()) {
                for piece in fs::read(e.path()).unwrap().chunks(bs) {
                    let end = piece.iter().rposition(|b| *b != 0).map(|i| i + 1).unwrap_or(0);
                    if end > 0 {
                        logical += end as u64;
                        distinct.insert(piece[..end].to_vec());
                    }
                }
            }
        }
    }
    (logical, distinct.iter().map(|p| p.len() as u64).sum())
}

/// Every file under `root` with its bytes (symlinks as their target, dirs as empty).
fn tree(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                out.insert(rel + "/", Vec::new());
                stack.push(p);
            } else if ft.is_symlink() {
                out.insert(rel, fs::read_link(&p).unwrap().into_os_string().into_encoded_bytes());
            } else {
                out.insert(rel, fs::read(&p).unwrap());
            }
        }
    }
    out
}

fn populate(m: &Path, seed: u64) {
    fs::create_dir_all(m.join("dir/sub")).unwrap();
    fs::write(m.join("big"), pattern(seed, 300_000)).unwrap();
    fs::write(m.join("dir/small"), pattern(seed + 1, 100)).unwrap();
    fs::write(m.join("dir/sub/mid"), pattern(seed + 2, 70_000)).unwrap();
    std::os::unix::fs::symlink("dir/small", m.join("link")).unwrap();
}

#[test]
fn clones_and_snapshots_are_isolated() {
    let mut d = Daemon::start();
    let v = d.volume("v");
    populate(&v, 1);
    let before = tree(&v);
    d.ok(&["snapshot", "v@s1"]);
    d.ok(&["clone", "v@s1", "c1"]);
    d.ok(&["clone", "v", "c2"]);
    let c1 = d.mount("c1");
    let c2 = d.mount("c2");
    let s1 = d.mount("v@s1");
    assert_eq!(tree(&c1), before);
    assert_eq!(tree(&c2), before);
    assert_eq!(tree(&s1), before);
    // One byte in the middle of a shared block, in the clone only.
    OpenOptions::new().write(true).open(c1.join("big")).unwrap().write_all_at(b"X", 100_000).unwrap();
    // Directory changes in a shared directory, attributes and xattrs.
    fs::write(c1.join("dir/new"), b"new").unwrap();
    fs::remove_file(c1.join("dir/small")).unwrap();
    fs::rename(c1.join("dir/sub"), c1.join("dir/moved")).unwrap();
    fs::set_permissions(c1.join("big"), fs::Permissions::from_mode(0o600)).unwrap();
    File::options().write(true).open(c1.join("big")).unwrap().set_len(200_000).unwrap();
    // And in the origin after the snapshot.
    fs::write(v.join("dir/origin-only"), b"o").unwrap();
    OpenOptions::new().write(true).open(v.join("dir/sub/mid")).unwrap().write_all_at(b"YY", 65_535).unwrap();
    assert_eq!(tree(&s1), before, "snapshot changed");
    assert_eq!(tree(&c2), before, "sibling clone changed");
    let vt = tree(&v);
    assert_eq!(vt["big"], before["big"], "origin saw the clone's write");
    assert!(vt.contains_key("dir/small") && vt.contains_key("dir/sub/") && !vt.contains_key("dir/new"));
    assert_eq!(fs::metadata(v.join("big")).unwrap().permissions().mode() & 0o777, 0o644);
    let ct = tree(&c1);
    assert!(!ct.contains_key("dir/origin-only") && !ct.contains_key("dir/small"));
    assert_eq!(ct["dir/moved/mid"], before["dir/sub/mid"]);
    let mut want = before["big"][..200_000].to_vec();
    want[100_000] = b'X';
    assert_eq!(ct["big"], want);
    // The snapshot is read-only.
    assert!(fs::write(s1.join("x"), b"x").is_err());
    // Every mounted volume shows its snapshots, read-only, under the hidden .snapshots.
    assert_eq!(tree(&v.join(".snapshots/s1")), before);
    assert!(!tree(&v).keys().any(|k| k.starts_with(".snapshots")), "listed in readdir");
    assert!(fs::write(v.join(".snapshots/s1/x"), b"x").is_err());
    assert!(fs::create_dir(v.join(".snapshots")).is_err());
    d.ok(&["snapshot", "v@s2"]);
    let names: Vec<String> = fs::read_dir(v.join(".snapshots")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert!(names.contains(&"s1".to_string()) && names.contains(&"s2".to_string()), "{names:?}");
    assert_eq!(tree(&v.join(".snapshots/s2")), tree(&v));
    // Clone of a clone, and its writes stay its own.
    d.ok(&["snapshot", "c1@a"]);
    d.ok(&["clone", "c1@a", "cc"]);
    let cc = d.mount("cc");
    assert_eq!(tree(&cc), ct);
    fs::write(cc.join("dir/new"), b"changed in cc").unwrap();
    assert_eq!(fs::read(c1.join("dir/new")).unwrap(), b"new");
    let list = d.json(&["list", "--json"]);
    let cc_row = list.as_array().unwrap().iter().find(|r| r["name"] == "cc").unwrap();
    assert_eq!(cc_row["origin"], "c1@a");
    d.fsck_clean();
}

/// A clone names its origin as things are called now: after a rename of the origin's
/// volume, a destroy of its snapshot, and a new volume and snapshot taking the old names
/// (a destroyed origin by its last name).
#[test]
fn clones_name_their_origin_as_things_are_called_now() {
    let d = Daemon::start();
    d.ok(&["create", "a"]);
    d.ok(&["snapshot", "a@s1"]);
    d.ok(&["clone", "a@s1", "c"]);
    d.ok(&["clone", "a", "live"]);
    let origin = |v: &str| d.json(&["get", "origin", v, "--json"])["origin"].as_str().unwrap().to_string();
    let listed = |v: &str| {
        let list = d.json(&["list", "--json"]);
        list.as_array().unwrap().iter().find(|r| r["name"] == v).unwrap()["origin"].as_str().unwrap().to_string()
    };
    assert_eq!((origin("c"), listed("c")), ("a@s1".to_string(), "a@s1".to_string()));
    assert!(origin("live").starts_with("a (live, epoch "), "{}", origin("live"));
    d.ok(&["rename", "a", "b"]);
    assert_eq!((origin("c"), listed("c")), ("b@s1".to_string(), "b@s1".to_string()));
    assert!(listed("live").starts_with("b (live, epoch "), "{}", listed("live"));
    d.ok(&["destroy", "b@s1"]);
    assert_eq!(origin("c"), "b@s1 (destroyed)");
    // A destroyed origin keeps the name it had last, not the one it had at the clone.
    d.ok(&["destroy", "b"]);
    d.ok(&["create", "a"]);
    d.ok(&["snapshot", "a@s1"]);
    assert_eq!(origin("c"), "b@s1 (destroyed)", "a new a@s1 is not c's origin");
    let live = origin("live");
    assert!(live.starts_with("b (live, epoch ") && live.ends_with(") (destroyed)"), "{live}");
    assert_eq!(origin("a"), "-");
    d.fsck_clean();
}

/// A name removed in a clone (a whiteout over the origin's entry) taken again by a rename, a
/// hard link and a rename exchange; the origin and its snapshot keep theirs, and fsck finds
/// no version left behind.
#[test]
fn names_removed_in_a_clone_are_taken_again_by_rename_and_link() {
    let mut d = Daemon::start();
    let v = d.volume("v");
    populate(&v, 3);
    let before = tree(&v);
    d.ok(&["snapshot", "v@s"]);
    d.ok(&["clone", "v@s", "c"]);
    let c = d.mount("c");
    fs::remove_file(c.join("dir/small")).unwrap();
    fs::remove_file(c.join("link")).unwrap();
    // The whiteouts are then of an older epoch no snapshot keeps: the new names replace them.
    d.ok(&["snapshot", "c@x"]);
    d.ok(&["destroy", "c@x"]);
    fs::write(c.join("a"), b"renamed").unwrap();
    fs::rename(c.join("a"), c.join("dir/small")).unwrap();
    fs::write(c.join("b"), b"linked").unwrap();
    fs::hard_link(c.join("b"), c.join("link")).unwrap();
    // An exchange of a new name with one the clone shares with the origin.
    fs::write(c.join("e"), b"exchanged").unwrap();
    let (e, big) = (std::ffi::CString::new(c.join("e").to_str().unwrap()).unwrap(), std::ffi::CString::new(c.join("big").to_str().unwrap()).unwrap());
    let r = unsafe { libc::renameat2(libc::AT_FDCWD, e.as_ptr(), libc::AT_FDCWD, big.as_ptr(), libc::RENAME_EXCHANGE) };
    assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
    let check = |c: &Path| {
        let t = tree(c);
        assert_eq!(t["dir/small"], b"renamed");
        assert_eq!(t["link"], b"linked");
        assert_eq!(t["big"], b"exchanged");
        assert_eq!(t["e"], before["big"]);
        assert!(!t.contains_key("a"));
        assert_eq!(std::os::unix::fs::MetadataExt::nlink(&fs::metadata(c.join("link")).unwrap()), 2);
    };
    check(&c);
    // The same after a restart (the names come from the store, not the kernel's caches).
    d.stop();
    d.restart();
    let c = d.mount("c");
    check(&c);
    assert_eq!(tree(&d.mount("v")), before, "the origin changed");
    assert_eq!(tree(&d.mount("v@s")), before, "the snapshot changed");
    d.fsck_clean();
}

#[test]
fn snapshot_is_an_atomic_cut_of_concurrent_writes() {
    let mut d = Daemon::start();
    let v = d.volume("v");
    const THREADS: usize = 4;
    const REC: usize = 32;
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..THREADS).map(|_| AtomicU64::new(0)).collect());
    let mut handles = Vec::new();
    for t in 0..THREADS {
        let (stop, acked, path) = (stop.clone(), acked.clone(), v.join(format!("f{t}")));
        handles.push(std::thread::spawn(move || {
            let mut f = OpenOptions::new().create(true).append(true).open(path).unwrap();
            let mut seq = 1u64;
            while !stop.load(Ordering::SeqCst) {
                let rec = format!("{t:04}:{seq:020}:{:05}\n", seq % 99_999);
                assert_eq!(rec.len(), REC);
                f.write_all(rec.as_bytes()).unwrap();
                acked[t].store(seq, Ordering::SeqCst);
                seq += 1;
            }
        }));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    let before: Vec<u64> = acked.iter().map(|a| a.load(Ordering::SeqCst)).collect();
    d.ok(&["snapshot", "v@cut"]);
    let after: Vec<u64> = acked.iter().map(|a| a.load(Ordering::SeqCst)).collect();
    std::thread::sleep(std::time::Duration::from_millis(100));
    stop.store(true, Ordering::SeqCst);
    for h in handles {
        h.join().unwrap();
    }
    let s = d.mount("v@cut");
    for t in 0..THREADS {
        let data = fs::read(s.join(format!("f{t}"))).unwrap();
        assert_eq!(data.len() % REC, 0, "file {t} holds a torn record");
        let n = (data.len() / REC) as u64;
        for (i, rec) in data.chunks(REC).enumerate() {
            let want = format!("{t:04}:{:020}:{:05}\n", i + 1, (i as u64 + 1) % 99_999);
            assert_eq!(rec, want.as_bytes(), "file {t} record {i} is not the prefix");
        }
        assert!(n >= before[t], "file {t}: {n} records, {} were acknowledged before the snapshot", before[t]);
        assert!(n <= after[t] + 1, "file {t}: {n} records, only {} acknowledged when it returned", after[t]);
    }
    d.fsck_clean();
}

#[test]
fn rollback_keeps_newer_snapshots_and_mounted_views_see_it() {
    let mut d = Daemon::start();
    let v = d.volume("v");
    let write = |name: &str, seed: u64| fs::write(v.join(name), pattern(seed, 150_000)).unwrap();
    write("f", 1);
    d.ok(&["snapshot", "v@s1"]);
    write("f", 2);
    fs::write(v.join("only-after-s1"), b"x").unwrap();
    d.ok(&["snapshot", "v@s2"]);
    write("f", 3);
    d.ok(&["snapshot", "v@s3"]);
    write("f", 4);
    // Keep the file's pages in the kernel's cache, and a handle open, across the rollback.
    assert_eq!(fs::read(v.join("f")).unwrap(), pattern(4, 150_000));
    d.ok(&["rollback", "v@s1"]);
    assert_eq!(fs::read(v.join("f")).unwrap(), pattern(1, 150_000), "stale data after rollback");
    assert!(!v.join("only-after-s1").exists(), "stale name after rollback");
    for (snap, seed) in [("s2", 2), ("s3", 3)] {
        let m = d.mount(&format!("v@{snap}"));
        assert_eq!(fs::read(m.join("f")).unwrap(), pattern(seed, 150_000), "{snap} changed");
    }
    // Writes after the rollback change no snapshot.
    write("f", 5);
    d.ok(&["snapshot", "v@s4"]);
    let m1 = d.mount("v@s1");
    assert_eq!(fs::read(m1.join("f")).unwrap(), pattern(1, 150_000));
    let list = d.ok(&["list", "-t", "snapshot"]);
    for s in ["v@s1", "v@s2", "v@s3", "v@s4"] {
        assert!(list.contains(s), "{s} missing from {list}");
    }
    // Roll back to a snapshot taken before an earlier rollback. The kernel was told
    // `only-after-s1` is missing (cached as absent since the check above) and sees it again.
    // A file the rollback takes away while it is open and written: its writes and its fsync
    // fail, none claims what the rollback discarded is saved.
    let mut open = fs::File::create(v.join("open-across")).unwrap();
    std::io::Write::write_all(&mut open, b"discarded").unwrap();
    open.sync_all().unwrap();
    std::io::Write::write_all(&mut open, b" too").unwrap();
    d.ok(&["rollback", "v@s3"]);
    assert_eq!(fs::read(v.join("f")).unwrap(), pattern(3, 150_000));
    assert!(v.join("only-after-s1").exists(), "a name looked up as missing stays hidden after rollback");
    assert!(!v.join("open-across").exists());
    assert_eq!(open.sync_all().unwrap_err().raw_os_error(), Some(libc::ENOENT), "fsync of a file the rollback took away");
    assert!(std::io::Write::write_all(&mut open, b"later").is_err());
    drop(open);
    d.fsck_clean();
}

/// Builds origin `o`, its snapshot `o@s`, a clone `c` of it with a snapshot `c@t` and a clone
/// of that `cc`, each with writes of its own; returns the trees of the survivors' views.
fn family(d: &mut Daemon, p: &str) -> BTreeMap<String, BTreeMap<String, Vec<u8>>> {
    let (o, c, cc) = (format!("{p}o"), format!("{p}c"), format!("{p}cc"));
    let om = d.volume(&o);
    populate(&om, 7);
    d.ok(&["snapshot", &format!("{o}@s")]);
    fs::write(om.join("big"), pattern(8, 200_000)).unwrap();
    d.ok(&["clone", &format!("{o}@s"), &c]);
    let cm = d.mount(&c);
    fs::write(cm.join("dir/small"), pattern(9, 50_000)).unwrap();
    d.ok(&["snapshot", &format!("{c}@t")]);
    fs::write(cm.join("clone-later"), pattern(10, 90_000)).unwrap();
    d.ok(&["clone", &format!("{c}@t"), &cc]);
    let ccm = d.mount(&cc);
    fs::remove_file(ccm.join("big")).unwrap();
    let mut trees = BTreeMap::new();
    for (name, m) in [(o.clone(), om), (c.clone(), cm), (cc.clone(), ccm)] {
        trees.insert(name, tree(&m));
        d.unmount(&m);
    }
    for s in [format!("{o}@s"), format!("{c}@t")] {
        let m = d.mount(&s);
        trees.insert(s.clone(), tree(&m));
        d.unmount(&m);
    }
    trees
}

#[test]
fn destroy_in_any_order_keeps_survivors_and_frees_everything() {
    let mut d = Daemon::start();
    let names = ["o", "o@s", "c", "c@t", "cc"];
    // Every order of destroying origin, snapshot, clone, clone's snapshot, clone of clone.
    let mut orders = vec![vec![0usize, 1, 2, 3, 4]];
    let mut perm = vec![0usize, 1, 2, 3, 4];
    // Heap's algorithm over 5 elements: all 120 orders; test a spread of 12 of them.
    let mut all = Vec::new();
    fn heap(k: usize, a: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
        if k == 1 {
            out.push(a.clone());
            return;
        }
        for i in 0..k {
            heap(k - 1, a, out);
            let j = if k % 2 == 0 { i } else { 0 };
            a.swap(j, k - 1);
        }
    }
    heap(5, &mut perm, &mut all);
    orders.extend(all.iter().step_by(10).cloned());
    for (n, order) in orders.iter().enumerate() {
        let p = format!("p{n}");
        let trees = family(&mut d, &p);
        let mut alive: Vec<String> = names.iter().map(|x| format!("{p}{x}")).collect();
        for &i in order {
            let victim = format!("{p}{}", names[i]);
            if !alive.contains(&victim) {
                continue; // went with its volume
            }
            d.ok(&["destroy", &victim]);
            alive.retain(|a| a != &victim && !(victim.find('@').is_none() && a.starts_with(&format!("{victim}@"))));
            d.ok(&["gc"]);
            for a in &alive {
                let m = d.mount(a);
                assert!(tree(&m) == trees[a], "order {order:?}: {a} changed after destroying {victim}");
                d.unmount(&m);
            }
        }
        d.fsck_clean();
        assert_eq!(d.physical(), 0, "order {order:?}: space left after destroying everything");
    }
}

#[test]
fn holds_and_bad_input_change_nothing() {
    let mut d = Daemon::start();
    let v = d.volume("v");
    fs::write(v.join("f"), b"x").unwrap();
    d.ok(&["snapshot", "v@s"]);
    d.ok(&["hold", "v@s", "keep"]);
    d.ok(&["create", "other"]);
    let before = d.ok(&["list", "--json"]);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["destroy", "v@s"], "held"),
        (vec!["destroy", "v"], "mounted"),
        (vec!["snapshot", "v@s"], "already exists"),
        (vec!["snapshot", "v@"], "empty snapshot name"),
        (vec!["snapshot", "ghost@s"], "no volume"),
        (vec!["snapshot", "v"], "VOL@SNAP"),
        (vec!["clone", "v@s", "other"], "already exists"),
        (vec!["clone", "v@nope", "x"], "no snapshot"),
        (vec!["clone", "v@s", "bad/name"], "'/'"),
        (vec!["rollback", "v@nope"], "no snapshot"),
        (vec!["rollback", "v"], "VOL@SNAP"),
        (vec!["hold", "v@s", "keep"], "already has hold"),
        (vec!["release", "v@s", "nope"], "no hold"),
        (vec!["mount", "v@nope", "/tmp"], "no snapshot"),
        (vec!["hold", "v@s", "a@b"], "contains '@'"),
        (vec!["get", "v@nope"], "no snapshot"),
        (vec!["list", "ghost"], "no volume named \"ghost\""),
        (vec!["list", "v", "v@nope"], "no snapshot v@nope"),
    ];
    for (args, want) in cases {
        let err = d.fails(&args);
        assert!(err.contains(want), "clonefs {args:?}: {err:?} should mention {want:?}");
        assert_eq!(d.ok(&["list", "--json"]), before, "clonefs {args:?} changed something");
    }
    // `list` of names shows those: a volume with its snapshots, or one snapshot.
    assert_eq!(d.ok(&["list", "-H", "-o", "name", "v"]), "v\nv@s\n");
    assert_eq!(d.ok(&["list", "-H", "-o", "name", "other", "v@s"]), "other\nv@s\n");
    assert_eq!(d.ok(&["list", "-H", "-o", "name", "-t", "volume", "v"]), "v\n");
    // Holds show in `list` and `get`; zfs's order (TAG, then VOL@SNAP) works too.
    d.ok(&["hold", "backup", "v@s"]);
    assert_eq!(d.ok(&["list", "-H", "-o", "name,holds", "-t", "snapshot"]), "v@s\tbackup,keep\n");
    assert_eq!(d.json(&["get", "holds,name", "v@s", "--json"]), serde_json::json!({"holds": "backup,keep", "name": "v@s"}));
    d.ok(&["release", "backup", "v@s"]);
    d.ok(&["release", "v@s", "keep"]);
    assert_eq!(d.json(&["get", "holds", "v@s", "--json"])["holds"], "none");
    d.ok(&["destroy", "v@s"]);
    d.fsck_clean();
    // History holds what changed the store, failures too, and not what only read it.
    d.ok(&["snapshot", "v@t"]);
    d.ok(&["diff", "v@t"]);
    let history = d.ok(&["history"]);
    assert!(history.contains("destroy name=v@s") && history.contains("failed  snapshot name=v@s"), "{history}");
    assert!(!history.contains("diff ") && !history.contains("list") && !history.contains("fsck"), "{history}");
}

#[test]
fn unique_bytes_are_what_destroy_frees() {
    let mut d = Daemon::start();
    let v = d.volume("v");
    fs::write(v.join("a"), pattern(1, 1 << 20)).unwrap();
    fs::write(v.join("b"), pattern(2, 1 << 20)).unwrap();
    d.ok(&["snapshot", "v@s1"]);
    // Overwrite a: the old a is held only by s1. b stays shared with the head.
    fs::write(v.join("a"), pattern(3, 1 << 20)).unwrap();
    d.ok(&["snapshot", "v@s2"]);
    File::open(v.join("a")).unwrap().sync_all().unwrap();
    let list = d.json(&["list", "--json"]);
    let row = |n: &str| list.as_array().unwrap().iter().find(|r| r["name"] == n).unwrap().clone();
    let s1_unique = row("v@s1")["unique"].as_u64().unwrap();
    // Stored blocks drop trailing zero bytes, so random data may store a few bytes less.
    assert!(s1_unique > (1 << 20) - 64 && s1_unique <= 1 << 20, "{list}");
    assert_eq!(row("v@s2")["unique"].as_u64().unwrap(), 0);
    let before = d.physical();
    d.ok(&["destroy", "v@s1"]);
    d.ok(&["gc"]);
    assert_eq!(before - d.physical(), s1_unique);
    d.fsck_clean();
    // The volume's unique bytes are what destroying it frees, once no clone shares them.
    d.unmount(&v);
    let vrow = d.json(&["list", "--json"]);
    let vu = vrow.as_array().unwrap().iter().find(|r| r["name"] == "v").unwrap()["unique"].as_u64().unwrap();
    let before = d.physical();
    d.ok(&["destroy", "v"]);
    d.ok(&["gc"]);
    assert_eq!(before - d.physical(), vu);
    assert_eq!(d.physical(), 0);
}

/// A snapshot among many: its UNIQUE counts the versions born since the snapshot before it
/// that no later one sees, not those written after it (`list` scans only those births).
#[test]
fn a_middle_snapshot_among_many_shows_what_destroying_it_frees() {
    let mut d = Daemon::start();
    let v = d.volume("v");
    fs::write(v.join("a"), pattern(1, 1 << 20)).unwrap();
    d.ok(&["snapshot", "v@s1"]);
    fs::write(v.join("a"), pattern(2, 1 << 20)).unwrap();
    d.ok(&["snapshot", "v@s2"]);
    // Pattern 2 is seen by s2 alone from here; pattern 3 by s3 and every later snapshot.
    fs::write(v.join("a"), pattern(3, 1 << 20)).unwrap();
    d.ok(&["snapshot", "v@s3"]);
    for i in 4..24 {
        fs::write(v.join("c"), pattern(100 + i, 64 << 10)).unwrap();
        d.ok(&["snapshot", &format!("v@s{i}")]);
    }
    let unique = |d: &Daemon, n: &str| {
        let list = d.json(&["list", "--json"]);
        list.as_array().unwrap().iter().find(|r| r["name"] == n).unwrap_or_else(|| panic!("{n} not in {list}"))["unique"].as_u64().unwrap()
    };
    let s2 = unique(&d, "v@s2");
    assert!(s2 > (1 << 20) - 64 && s2 <= 1 << 20, "v@s2 UNIQUE {s2}");
    assert_eq!(unique(&d, "v@s3"), 0);
    // Each of s4..s22 alone sees one version of c (the next snapshot sees the next one).
    let s10 = unique(&d, "v@s10");
    assert!(s10 > (64 << 10) - 64 && s10 <= 64 << 10, "v@s10 UNIQUE {s10}");
    for n in ["v@s2", "v@s10"] {
        let u = unique(&d, n);
        let before = d.physical();
        d.ok(&["destroy", n]);
        d.ok(&["gc"]);
        assert_eq!(before - d.physical(), u, "destroying {n} freed a different amount than its UNIQUE");
    }
    d.fsck_clean();
}

#[test]
fn kill_9_around_snapshot_clone_destroy_and_gc_leaves_a_clean_store() {
    let mut d = Daemon::start();
    let v = d.volume("v");
    for i in 0..30 {
        fs::write(v.join(format!("f{i}")), pattern(i, 100_000)).unwrap();
    }
    d.ok(&["snapshot", "v@a"]);
    for i in 0..30 {
        fs::write(v.join(format!("f{i}")), pattern(i + 100, 100_000)).unwrap();
    }
    d.ok(&["snapshot", "v@b"]);
    d.ok(&["clone", "v@a", "c"]);
    // Kill right after a destroy, before GC could finish.
    d.ok(&["destroy", "v@a"]);
    d.kill9();
    d.restart();
    d.fsck_clean();
    // Kill right after a rollback of an unmounted volume.
    d.ok(&["rollback", "v@b"]);
    d.kill9();
    d.restart();
    d.fsck_clean();
    let v = d.mount("v");
    assert_eq!(fs::read(v.join("f3")).unwrap(), pattern(103, 100_000));
    let c = d.mount("c");
    assert_eq!(fs::read(c.join("f3")).unwrap(), pattern(3, 100_000));
    // Kill while snapshots and clones are being taken of a busy volume.
    let vp = v.clone();
    let writer = std::thread::spawn(move || {
        for i in 0..2000u64 {
            if fs::write(vp.join(format!("w{}", i % 20)), pattern(i, 30_000)).is_err() {
                break;
            }
        }
    });
    for i in 0..5 {
        d.ok(&["snapshot", &format!("v@k{i}")]);
        d.ok(&["clone", "v", &format!("k{i}")]);
    }
    d.kill9();
    let _ = writer.join();
    d.restart();
    d.fsck_clean();
    let mut buf = Vec::new();
    File::open(d.mount("k4").join("f3")).unwrap().read_to_end(&mut buf).unwrap();
    assert_eq!(buf, pattern(103, 100_000));
}

#[test]
fn random_histories_keep_exact_accounting() {
    // `SEEDS_EXTRA=N` runs N more histories (by hand: 40 took under 3 minutes).
    let extra: Vec<u64> = std::env::var("SEEDS_EXTRA").map(|v| (1..=v.parse::<u64>().unwrap()).map(|i| i.wrapping_mul(0x9E3779B97F4A7C15) | 1).collect()).unwrap_or_default();
    for seed in [0x2545F4914F6CDD1Du64, 0x9E3779B97F4A7C15, 0xD1B54A32D192ED03].into_iter().chain(extra) {
        random_history(seed);
    }
}

/// Destroys `name` (a volume or a snapshot) and checks that GC then frees exactly the UNIQUE
/// that `list` reported for it.
fn destroy_frees_its_unique(d: &Daemon, name: &str) {
    let list = d.json(&["list", "--json"]);
    let unique = list.as_array().unwrap().iter().find(|r| r["name"] == name).unwrap()["unique"].as_u64().unwrap();
    let before = d.physical();
    d.ok(&["destroy", name]);
    d.ok(&["gc"]);
    assert_eq!(before - d.physical(), unique, "destroying {name} freed a different amount than its UNIQUE");
}

/// LOGICAL and REFERENCED in `list` of every mounted volume and of its snapshots (read
/// through `.snapshots`) equal a recount of what a reader sees there.
/// And LOGICAL, REFERENCED and UNIQUE of every volume and snapshot equal fsck's brute-force
/// recount over the whole store.
fn check_view_figures(d: &Daemon, vols: &[(String, std::path::PathBuf)], snaps: &[String], step: u64) {
    let list = d.json(&["list", "--json"]);
    let row = |name: &str| list.as_array().unwrap().iter().find(|r| r["name"] == name).unwrap().clone();
    let fsck = d.json(&["fsck", "--json"]);
    assert_eq!(fsck["errors"].as_array().unwrap().len(), 0, "step {step}: {fsck}");
    let recounted = fsck["views"].as_array().unwrap();
    assert_eq!(recounted.len(), list.as_array().unwrap().len());
    for v in recounted {
        let r = row(v["name"].as_str().unwrap());
        for f in ["logical", "referenced", "unique"] {
            assert_eq!(r[f], v[f], "step {step}: {}: list {f} differs from fsck's recount", v["name"]);
        }
    }
    let mut views: Vec<(String, std::path::PathBuf)> = vols.to_vec();
    for s in snaps {
        let (v, sn) = s.split_once('@').unwrap();
        if let Some((_, m)) = vols.iter().find(|(n, _)| n == v) {
            views.push((s.clone(), m.join(".snapshots").join(sn)));
        }
    }
    for (name, dir) in views {
        let r = row(&name);
        let (logical, referenced) = content_space(&dir, 64 << 10);
        assert_eq!(
            (r["logical"].as_u64().unwrap(), r["referenced"].as_u64().unwrap()),
            (logical, referenced),
            "step {step}: {name}: list LOGICAL/REFERENCED differ from a recount of its files"
        );
    }
}

/// Random writes, deletes, snapshots, clones, rollbacks, flattens and snapshot destroys (the
/// steps are printed, and shown when it fails); checks UNIQUE against what each destroy frees
/// and fsck at the end.
fn random_history(seed: u64) {
    let mut d = Daemon::start();
    let mut vols: Vec<(String, std::path::PathBuf)> = vec![("r".into(), d.volume("r"))];
    let mut snaps: Vec<String> = Vec::new();
    let mut x = seed;
    let mut rnd = |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    for step in 0..60u64 {
        let (vname, m) = vols[rnd(vols.len() as u64) as usize].clone();
        match rnd(8) {
            0 if rnd(2) == 0 => {
                // A small write anywhere: patches a shared block, or leaves a hole before it.
                let f = format!("f{}", rnd(8));
                let off = rnd(400_000);
                eprintln!("step {step}: pwrite {vname}/{f} at {off}");
                let file = OpenOptions::new().write(true).create(true).truncate(false).open(m.join(f)).unwrap();
                file.write_all_at(&pattern(rnd(5), 1000), off).unwrap();
            }
            0..=2 => {
                // Content seeds repeat so that blocks dedup across files and volumes.
                let len = 1 + rnd(300_000) as usize;
                let f = format!("f{}", rnd(8));
                eprintln!("step {step}: write {vname}/{f} {len}");
                fs::write(m.join(f), pattern(rnd(5), len)).unwrap();
            }
            3 => {
                let s = format!("{vname}@s{step}");
                eprintln!("step {step}: snapshot {s}");
                d.ok(&["snapshot", &s]);
                snaps.push(s);
            }
            4 if !snaps.is_empty() && vols.len() < 5 => {
                let src = snaps[rnd(snaps.len() as u64) as usize].clone();
                let name = format!("c{step}");
                eprintln!("step {step}: clone {src} {name}");
                d.ok(&["clone", &src, &name]);
                let cm = d.mount(&name);
                vols.push((name, cm));
            }
            5 if rnd(4) == 0 => {
                let own: Vec<&String> = snaps.iter().filter(|s| s.starts_with(&format!("{vname}@"))).collect();
                if let Some(s) = own.first() {
                    eprintln!("step {step}: rollback {s}");
                    d.ok(&["rollback", s]);
                }
            }
            5 if !snaps.is_empty() => {
                let s = snaps.remove(rnd(snaps.len() as u64) as usize);
                eprintln!("step {step}: destroy {s}");
                destroy_frees_its_unique(&d, &s);
            }
            6 if rnd(2) == 0 => {
                // Every volume stays mounted (clones of it too) and shows the same tree after.
                let vname = if vols.len() > 1 { vols[1 + rnd(vols.len() as u64 - 1) as usize].0.clone() } else { vname };
                eprintln!("step {step}: flatten {vname}");
                let trees: Vec<_> = vols.iter().map(|(_, vm)| tree(vm)).collect();
                let out = d.cli(&["flatten", &vname]);
                let err = String::from_utf8_lossy(&out.stderr);
                assert!(out.status.success() || err.contains("nothing to flatten"), "{err}");
                for (i, (n, vm)) in vols.iter().enumerate() {
                    assert!(tree(vm) == trees[i], "step {step}: {n} changed by flatten {vname}");
                }
            }
            _ => {
                let f = format!("f{}", rnd(8));
                eprintln!("step {step}: rm {vname}/{f}");
                let _ = fs::remove_file(m.join(f));
            }
        }
        if step % 10 == 9 {
            check_view_figures(&d, &vols, &snaps, step);
        }
    }
    // fsck recounts refcounts and every lineage's counters and finds no leaked version.
    d.fsck_clean();
    for (_, m) in vols.clone() {
        d.unmount(&m);
    }
    // Volumes go in a random order, origins before their clones too; each frees its UNIQUE.
    while !vols.is_empty() {
        let (name, _) = vols.remove(rnd(vols.len() as u64) as usize);
        eprintln!("destroy {name}");
        destroy_frees_its_unique(&d, &name);
    }
    d.fsck_clean();
    assert_eq!(d.physical(), 0);
}

#[test]
fn clone_and_snapshot_figures_count_what_they_can_read() {
    let mut d = Daemon::start();
    let v = d.volume("v");
    fs::write(v.join("a"), pattern(1, 1 << 20)).unwrap();
    fs::write(v.join("b"), pattern(2, 1 << 20)).unwrap();
    // A copy dedups inside the volume: LOGICAL counts it, REFERENCED does not.
    fs::write(v.join("c"), pattern(1, 1 << 20)).unwrap();
    d.ok(&["snapshot", "v@s"]);
    d.ok(&["clone", "v@s", "k"]);
    let k = d.mount("k");
    let list = d.json(&["list", "--json"]);
    let row = |l: &serde_json::Value, n: &str| -> (u64, u64, u64) {
        let r = l.as_array().unwrap().iter().find(|r| r["name"] == n).unwrap();
        (r["logical"].as_u64().unwrap(), r["referenced"].as_u64().unwrap(), r["unique"].as_u64().unwrap())
    };
    let (vl, vr, vu) = row(&list, "v");
    assert!(vr > (2 << 20) - 128 && vr <= 2 << 20 && vl > (3 << 20) - 192 && vl <= 3 << 20, "{list}");
    // The snapshot and the fresh clone read exactly what the volume reads; nothing is
    // unique to any of them while the others still read it.
    assert_eq!(row(&list, "v@s"), (vl, vr, 0));
    assert_eq!(row(&list, "k"), (vl, vr, 0));
    assert_eq!(vu, 0);
    // The clone rewrites b: it still reads 2 MiB, 1 MiB of it its own.
    fs::write(k.join("b"), pattern(5, 1 << 20)).unwrap();
    File::open(k.join("b")).unwrap().sync_all().unwrap();
    let list = d.json(&["list", "--json"]);
    let (kl, kr, ku) = row(&list, "k");
    assert!(ku > (1 << 20) - 64 && ku <= 1 << 20, "{list}");
    assert!(kr > (2 << 20) - 128 && kr <= 2 << 20 && kl > (3 << 20) - 192, "{list}");
    assert_eq!(row(&list, "v"), (vl, vr, 0));
    // df on the clone shows what it references.
    let df = std::process::Command::new("df").args(["-B1", "--output=used"]).arg(&k).output().unwrap();
    let used: u64 = String::from_utf8_lossy(&df.stdout).lines().nth(1).unwrap().trim().parse().unwrap();
    assert!(used.abs_diff(kr) < 8192, "df used {used}, referenced {kr}");
    // Destroying the origin while the clone lives frees nothing the clone's pin keeps, which
    // is what its UNIQUE said; the clone then frees everything.
    d.unmount(&v);
    let before = d.physical();
    d.ok(&["destroy", "v"]);
    d.ok(&["gc"]);
    assert_eq!(before, d.physical());
    let list = d.json(&["list", "--json"]);
    let (_, _, ku) = row(&list, "k");
    assert_eq!(ku, d.physical(), "{list}");
    assert_eq!(fs::read(k.join("a")).unwrap(), pattern(1, 1 << 20));
    d.fsck_clean();
}

#[test]
fn files_removed_after_a_snapshot_are_freed_with_it() {
    // Removed after the snapshot, with and without xattrs, small and over a purge batch: the
    // snapshot keeps them readable, and destroying it frees every block.
    let mut d = Daemon::start();
    d.ok(&["create", "v", "--block-size", "4K"]);
    let m = d.mount("v");
    fs::write(m.join("small"), pattern(1, 100_000)).unwrap();
    fs::write(m.join("big"), pattern(2, 20 << 20)).unwrap(); // 5,120 blocks: over a purge batch
    xattr_set(&m.join("small"), "user.k", b"v");
    File::open(m.join("big")).unwrap().sync_all().unwrap();
    d.ok(&["snapshot", "v@s"]);
    fs::remove_file(m.join("small")).unwrap();
    fs::remove_file(m.join("big")).unwrap();
    assert_eq!(fs::read(m.join(".snapshots/s/small")).unwrap(), pattern(1, 100_000));
    d.fsck_clean();
    assert!(d.physical() > 0);
    d.ok(&["destroy", "v@s"]);
    d.ok(&["gc"]);
    assert_eq!(d.physical(), 0, "blocks of files removed after a destroyed snapshot stay stored");
    d.fsck_clean();
}

fn xattr_set(p: &Path, name: &str, v: &[u8]) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    assert_eq!(unsafe { libc::setxattr(c.as_ptr(), n.as_ptr(), v.as_ptr().cast(), v.len(), 0) }, 0);
}

/// The value of xattr `name` of `p`, None if it has none.
fn xattr_get(p: &Path, name: &str) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 4096];
    let r = unsafe { libc::getxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        assert_eq!(std::io::Error::last_os_error().raw_os_error(), Some(libc::ENODATA), "getxattr {name} of {}", p.display());
        return None;
    }
    buf.truncate(r as usize);
    Some(buf)
}

/// Single-block reads (a random 4 KiB read is looked up by key, level by level) through a
/// clone of a clone see each level's holes, overwrites and fsync'd partial writes over the
/// origin's blocks, on a fresh mount where nothing comes from the page cache.
#[test]
fn block_reads_through_a_clone_chain_see_each_levels_changes() {
    use std::os::fd::AsRawFd;
    const BS: usize = 64 << 10;
    let mut d = Daemon::start();
    let o = d.volume("o");
    let mut want = pattern(1, 8 * BS);
    fs::write(o.join("f"), &want).unwrap();
    d.ok(&["snapshot", "o@s"]);
    d.ok(&["clone", "o@s", "c"]);
    let c = d.mount("c");
    let f = OpenOptions::new().write(true).open(c.join("f")).unwrap();
    let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    assert_eq!(unsafe { libc::fallocate(f.as_raw_fd(), punch, 2 * BS as i64, BS as i64) }, 0);
    want[2 * BS..3 * BS].fill(0);
    f.write_all_at(&pattern(2, BS), 5 * BS as u64).unwrap();
    want[5 * BS..6 * BS].copy_from_slice(&pattern(2, BS));
    f.write_all_at(&pattern(3, 4096), (6 * BS + 4096) as u64).unwrap();
    want[6 * BS + 4096..6 * BS + 8192].copy_from_slice(&pattern(3, 4096));
    f.sync_all().unwrap();
    drop(f);
    d.ok(&["snapshot", "c@t"]);
    d.ok(&["clone", "c@t", "cc"]);
    // Origin overwritten after the snapshot: no level of the chain may see it.
    fs::write(o.join("f"), pattern(4, 8 * BS)).unwrap();
    let cc = d.mount("cc");
    let f = File::open(cc.join("f")).unwrap();
    // Exact 4 KiB requests: no readahead turns them into multi-block reads.
    assert_eq!(unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) }, 0);
    for block in (0..8).rev() {
        for off in [0, 4096, BS - 4096] {
            let at = block * BS + off;
            let mut got = vec![0u8; 4096];
            f.read_exact_at(&mut got, at as u64).unwrap();
            assert!(got == want[at..at + 4096], "cc: block {block} offset {off} differs");
        }
    }
    drop(f);
    assert!(fs::read(cc.join("f")).unwrap() == want, "cc: whole-file read differs");
    d.unmount(&cc);
    let s = d.mount("o@s");
    assert!(fs::read(s.join("f")).unwrap() == pattern(1, 8 * BS), "o@s changed");
    d.fsck_clean();
}

/// A clone of a clone whose middle volume holds nothing of its own when the grandchild
/// first reads (its lookups then pass the middle by, invariant 23): the grandchild sees the
/// origin's data, names and modes, and what the middle writes after the cut stays unseen,
/// both by the mounted grandchild and after a remount (whose lookups read the middle).
#[test]
fn an_ancestor_with_nothing_of_its_own_is_passed_by_and_its_later_writes_stay_unseen() {
    let mut d = Daemon::start();
    let o = d.volume("o");
    fs::write(o.join("f"), pattern(1, 300_000)).unwrap();
    fs::set_permissions(o.join("f"), fs::Permissions::from_mode(0o640)).unwrap();
    fs::create_dir(o.join("dir")).unwrap();
    d.ok(&["snapshot", "o@s"]);
    d.ok(&["clone", "o@s", "mid"]);
    d.ok(&["snapshot", "mid@s"]);
    d.ok(&["clone", "mid@s", "g"]);
    let check = |g: &Path, what: &str| {
        assert!(fs::read(g.join("f")).unwrap() == pattern(1, 300_000), "{what}: data of f");
        assert_eq!(fs::metadata(g.join("f")).unwrap().permissions().mode() & 0o777, 0o640, "{what}: mode of f");
        assert!(g.join("dir").is_dir(), "{what}: dir");
        let mut names: Vec<String> = fs::read_dir(g).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        assert_eq!(names, ["dir", "f"], "{what}: names");
    };
    let g = d.mount("g");
    check(&g, "before");
    // The middle now gets versions of every kind, after the cut the grandchild reads.
    let mid = d.mount("mid");
    fs::write(mid.join("f"), pattern(2, 300_000)).unwrap();
    fs::set_permissions(mid.join("f"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(mid.join("new"), b"x").unwrap();
    fs::remove_dir(mid.join("dir")).unwrap();
    d.unmount(&mid);
    // With the kernel's caches dropped, through the mounted grandchild, whose lookups still
    // pass the middle by.
    fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
    check(&g, "mounted");
    d.unmount(&g);
    let g = d.mount("g");
    check(&g, "remounted");
    // Its own writes show over the origin's.
    fs::write(g.join("f"), pattern(3, 300_000)).unwrap();
    d.unmount(&g);
    let g = d.mount("g");
    assert!(fs::read(g.join("f")).unwrap() == pattern(3, 300_000), "the grandchild's own write");
    let mid = d.mount("mid");
    assert!(fs::read(mid.join("f")).unwrap() == pattern(2, 300_000), "the middle's write");
    assert!(fs::read(o.join("f")).unwrap() == pattern(1, 300_000), "the origin's data");
    d.fsck_clean();
}

/// Directories and files removed while snapshots are taken: a snapshot may cut between a
/// removal and the purge of what it removed, and keeps those inodes as it saw them (no
/// names, no links). fsck takes them (it reported "directory N has 0 names"), and such a
/// snapshot sends and receives.
#[test]
fn snapshots_cut_between_a_removal_and_its_purge_check_clean() {
    let mut d = Daemon::start();
    let m = d.volume("v");
    let stop = Arc::new(AtomicBool::new(false));
    let churn: Vec<_> = (0..2)
        .map(|t| {
            let (m, stop) = (m.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let (dir, file) = (m.join(format!("d{t}-{}", i % 8)), m.join(format!("f{t}-{}", i % 8)));
                    let _ = fs::create_dir(&dir).and_then(|_| fs::remove_dir(&dir));
                    let _ = fs::write(&file, b"x").and_then(|_| fs::remove_file(&file));
                    i += 1;
                }
            })
        })
        .collect();
    for i in 0..30 {
        d.ok(&["snapshot", &format!("v@s{i}")]);
    }
    stop.store(true, Ordering::Relaxed);
    for t in churn {
        t.join().unwrap();
    }
    d.fsck_clean();
    // Clones of them start clean too, mounted or not.
    for i in 0..30 {
        d.ok(&["clone", &format!("v@s{i}"), &format!("c{i}")]);
    }
    d.fsck_clean();
    for i in 0..30 {
        d.mount(&format!("c{i}"));
    }
    d.fsck_clean();
    let stream = d.tmp.path().join("s.stream");
    d.ok(&["send", "v@s29", "-o", stream.to_str().unwrap()]);
    d.ok(&["receive", "w", "-i", stream.to_str().unwrap()]);
    d.fsck_clean();
}

/// A clone removes a big file it inherited (more blocks than one purge batch, so its data
/// goes in batches before its record): each block is counted off once. The figures stayed
/// at half or went "below zero" (the store called itself damaged).
#[test]
fn a_clone_removing_a_big_inherited_file_keeps_exact_figures() {
    let mut d = Daemon::start();
    d.ok(&["create", "v", "--block-size", "4K"]);
    let v = d.mount("v");
    fs::write(v.join("big"), pattern(1, 20 << 20)).unwrap();
    fs::write(v.join("solo"), pattern(2, 18 << 20)).unwrap();
    // A second name for big's blocks (dedup): its counts are 2, so a double count-off
    // shows as wrong figures rather than an error.
    fs::write(v.join("twin"), pattern(1, 20 << 20)).unwrap();
    d.ok(&["snapshot", "v@s"]);
    d.ok(&["clone", "v@s", "c"]);
    let c = d.mount("c");
    fs::remove_file(c.join("big")).unwrap();
    fs::remove_file(c.join("solo")).unwrap();
    d.fsck_clean();
    let list = d.json(&["list", "--json"]);
    let row = list.as_array().unwrap().iter().find(|r| r["name"] == "c").unwrap().clone();
    // fsck recounted the figures; twin's blocks are stored without their trailing zeros.
    let logical = row["logical"].as_u64().unwrap();
    assert!(logical <= 20 << 20 && logical > (20 << 20) - (64 << 10), "the clone holds twin alone: {row}");
    assert!(fs::read(c.join("twin")).unwrap() == pattern(1, 20 << 20));
}

/// `flatten` makes a clone stand on its own: it, its snapshots and its own clones show the
/// same trees and figures as before; the origin can then go, freeing what only it kept
/// (exactly its UNIQUE), and the clone goes on working. The clone, its snapshot and a clone
/// of that snapshot stay mounted through it; a volume that is no clone is refused.
#[test]
fn flatten_parts_a_clone_from_its_origin() {
    let mut d = Daemon::start();
    let o = d.volume("o");
    populate(&o, 1);
    fs::write(o.join("rewritten"), pattern(7, 2 << 20)).unwrap();
    fs::write(o.join("dropped"), pattern(8, 1 << 20)).unwrap();
    xattr_set(&o.join("dir"), "user.k", b"origin");
    fs::hard_link(o.join("big"), o.join("big-link")).unwrap();
    d.ok(&["snapshot", "o@s"]);
    d.ok(&["clone", "o@s", "c"]);
    let c = d.mount("c");
    fs::write(c.join("rewritten"), pattern(9, 2 << 20)).unwrap();
    d.ok(&["snapshot", "c@early"]);
    fs::remove_file(c.join("dropped")).unwrap();
    fs::write(c.join("dir/small"), b"changed").unwrap();
    xattr_set(&c.join("dir"), "user.k", b"clone");
    d.ok(&["clone", "c@early", "g"]);
    let g = d.mount("g");
    fs::write(g.join("own"), pattern(10, 100_000)).unwrap();
    let before = [tree(&c), tree(&c.join(".snapshots/early")), tree(&g)];
    let figures = |d: &Daemon| d.ok(&["list", "-p", "-H", "-o", "name,logical,referenced", "c", "g"]);
    let figures_before = figures(&d);

    let err = d.fails(&["flatten", "o"]);
    assert!(err.contains("nothing to flatten"), "{err}");
    // c, g and c@early's views stay open (mounted, `.snapshots/early` looked up).
    let early = d.mount("c@early");
    let out = d.ok(&["flatten", "c"]);
    assert!(out.starts_with("flattened c: "), "{out}");
    assert!(tree(&early) == before[1], "the mounted c@early changed");
    d.unmount(&early);

    assert!([tree(&c), tree(&c.join(".snapshots/early")), tree(&g)] == before, "flatten changed what c, c@early or g show");
    assert_eq!(figures(&d), figures_before);
    assert_eq!(d.ok(&["list", "-H", "-o", "name,origin", "c", "g"]), "c\t-\nc@early\t-\ng\tc@early\n");
    d.fsck_clean();

    // The origin goes: what the clone rewrote goes with it, exactly its UNIQUE.
    d.unmount(&o);
    let list = d.json(&["list", "--json"]);
    let unique = list.as_array().unwrap().iter().find(|r| r["name"] == "o").unwrap()["unique"].as_u64().unwrap();
    assert!(unique >= (2 << 20) - (64 << 10), "the origin's rewritten file stays pinned: UNIQUE {unique}");
    destroy_frees_its_unique(&d, "o");
    d.fsck_clean();
    assert!([tree(&c), tree(&c.join(".snapshots/early")), tree(&g)] == before);
    // The clone goes on: writes, snapshots, removal of what it had inherited.
    fs::remove_file(c.join("big-link")).unwrap();
    fs::write(c.join("after"), pattern(11, 300_000)).unwrap();
    d.ok(&["snapshot", "c@late"]);
    fs::remove_file(c.join("big")).unwrap();
    d.fsck_clean();
    destroy_frees_its_unique(&d, "c@early");
    d.fsck_clean();
}

/// `flatten` of a clone that is mounted and being written: a writer overwrites inherited
/// blocks, appends, makes and removes files (inherited ones too) before, during and after
/// it. Afterwards every file reads as the writer left it, the clone's mounted snapshot is
/// unchanged, fsck finds nothing unseen or leaked, and once the origin is destroyed (all of
/// its UNIQUE freed) the clone still reads the same.
#[test]
fn flatten_of_a_mounted_clone_being_written() {
    use std::collections::HashMap;
    let mut d = Daemon::start();
    d.ok(&["create", "o", "--block-size", "4K"]);
    let o = d.mount("o");
    for i in 0..32u64 {
        fs::write(o.join(format!("f{i}")), pattern(i, 1 << 20)).unwrap();
    }
    fs::create_dir(o.join("d")).unwrap();
    for i in 0..400u64 {
        fs::write(o.join(format!("d/s{i}")), pattern(100 + i, 3000)).unwrap();
    }
    d.ok(&["snapshot", "o@s"]);
    d.ok(&["clone", "o@s", "c"]);
    let c = d.mount("c");
    fs::write(c.join("f0"), pattern(50, 1 << 20)).unwrap();
    d.ok(&["snapshot", "c@early"]);
    let early_before = tree(&c.join(".snapshots/early"));

    // The writer keeps its own record of what each file must hold.
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicU64::new(0));
    let writer = {
        let (c, stop, rounds) = (c.clone(), stop.clone(), rounds.clone());
        std::thread::spawn(move || {
            let mut model: HashMap<String, Option<Vec<u8>>> = HashMap::new();
            for i in 0..32u64 {
                model.insert(format!("f{i}"), Some(if i == 0 { pattern(50, 1 << 20) } else { pattern(i, 1 << 20) }));
            }
            for i in 0..400u64 {
                model.insert(format!("d/s{i}"), Some(pattern(100 + i, 3000)));
            }
            let mut r = 0u64;
            while !stop.load(Ordering::SeqCst) || r < 40 {
                let name = format!("f{}", r % 32);
                let off = (r.wrapping_mul(7919) % 250) as usize * 4096;
                let piece = pattern(1000 + r, 4096);
                let f = OpenOptions::new().write(true).open(c.join(&name)).unwrap();
                f.write_all_at(&piece, off as u64).unwrap();
                if r % 4 == 0 {
                    f.sync_all().unwrap();
                }
                model.get_mut(&name).unwrap().as_mut().unwrap()[off..off + 4096].copy_from_slice(&piece);
                let n = format!("n{r}");
                fs::write(c.join(&n), pattern(5000 + r, 9000)).unwrap();
                model.insert(n, Some(pattern(5000 + r, 9000)));
                if r >= 3 && r % 2 == 0 {
                    let gone = format!("n{}", r - 3);
                    fs::remove_file(c.join(&gone)).unwrap();
                    model.insert(gone, None);
                }
                let s = format!("d/s{}", (r * 13) % 400);
                if model[&s].is_some() {
                    fs::remove_file(c.join(&s)).unwrap();
                    model.insert(s, None);
                }
                r += 1;
                rounds.store(r, Ordering::SeqCst);
            }
            model
        })
    };
    while rounds.load(Ordering::SeqCst) < 20 {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let at_start = rounds.load(Ordering::SeqCst);
    let out = d.ok(&["flatten", "c"]);
    let during = rounds.load(Ordering::SeqCst) - at_start;
    stop.store(true, Ordering::SeqCst);
    let model = writer.join().expect("the writer failed");
    assert!(out.starts_with("flattened c: "), "{out}");
    assert!(during > 0, "the writer made no change while flatten ran");
    let check = |why: &str| {
        for (name, want) in &model {
            match want {
                Some(bytes) => assert!(fs::read(c.join(name)).unwrap() == *bytes, "{why}: c/{name} is not what was written"),
                None => assert!(!c.join(name).exists(), "{why}: c/{name} was removed"),
            }
        }
        assert!(tree(&c.join(".snapshots/early")) == early_before, "{why}: c@early changed");
    };
    check("after flatten");
    assert_eq!(d.ok(&["list", "-H", "-o", "name,origin", "c"]), "c\t-\nc@early\t-\n");
    d.fsck_clean();
    d.unmount(&o);
    destroy_frees_its_unique(&d, "o");
    d.fsck_clean();
    check("after the origin went");
}

/// A mounted clone of a clone reads through the clone's lineage only for the kinds of
/// records that lineage held when the view was opened (invariant 23). When the clone is
/// flattened, its copies may be the first of a kind there (here xattrs): the mounted
/// grandchild must read them once the clone parts from its origin, and still after the
/// origin is destroyed.
#[test]
fn a_mounted_clone_of_a_clone_reads_the_copies_of_a_flatten() {
    let mut d = Daemon::start();
    let o = d.volume("o");
    fs::write(o.join("f"), pattern(1, 100_000)).unwrap();
    xattr_set(&o.join("f"), "user.k", b"origin");
    d.ok(&["snapshot", "o@s"]);
    d.ok(&["clone", "o@s", "c"]);
    d.ok(&["snapshot", "c@s"]);
    d.ok(&["clone", "c@s", "g"]);
    let g = d.mount("g");
    // Opens g's xattr lookups while c's lineage holds no xattr.
    assert_eq!(xattr_get(&g.join("f"), "user.k").as_deref(), Some(&b"origin"[..]));
    let before = tree(&g);
    d.ok(&["flatten", "c"]);
    d.unmount(&o);
    destroy_frees_its_unique(&d, "o");
    d.fsck_clean();
    assert_eq!(xattr_get(&g.join("f"), "user.k").as_deref(), Some(&b"origin"[..]), "g lost the xattr it read through c");
    assert!(tree(&g) == before, "g changed");
    fs::write(g.join("f2"), b"after").unwrap();
    d.fsck_clean();
}

/// A file emptied under a snapshot keeps tombstones over the blocks the snapshot sees; after
/// a later snapshot goes, those tombstones are the newest versions the head sees. Writing the
/// file again must replace them: written as if the file had never held a block, they stayed
/// under the new blocks where no pin or head sees them (fsck: leaked versions, never GC'd).
#[test]
fn rewriting_a_file_emptied_under_a_snapshot_leaves_no_unseen_version() {
    let mut d = Daemon::start();
    let v = d.volume("v");
    fs::write(v.join("f"), pattern(1, 300_000)).unwrap();
    d.ok(&["snapshot", "v@a"]);
    File::create(v.join("f")).unwrap();
    d.ok(&["snapshot", "v@b"]);
    d.ok(&["destroy", "v@b"]);
    d.ok(&["gc"]);
    fs::write(v.join("f"), pattern(2, 300_000)).unwrap();
    d.fsck_clean();
    assert!(fs::read(v.join("f")).unwrap() == pattern(2, 300_000));
    assert!(fs::read(v.join(".snapshots/a/f")).unwrap() == pattern(1, 300_000));
    destroy_frees_its_unique(&d, "v@a");
    d.fsck_clean();
}

/// kill -9 while `flatten` writes the clone's index: after a restart the store is clean, the
/// clone still reads through its origin and shows the same tree, and a flatten then finishes.
/// The kill lands at a different point in each round; in one the clone is mounted.
#[test]
fn kill_9_during_flatten_leaves_a_clean_store_and_flatten_finishes() {
    let mut d = Daemon::start();
    d.ok(&["create", "o", "--block-size", "4K"]);
    let o = d.mount("o");
    for i in 0..48u64 {
        fs::write(o.join(format!("f{i}")), pattern(i, 2 << 20)).unwrap();
    }
    d.ok(&["snapshot", "o@s"]);
    let mut cut = 0;
    for (round, delay_ms) in [20u64, 60, 150].into_iter().enumerate() {
        let name = format!("c{round}");
        d.ok(&["clone", "o@s", &name]);
        if round == 1 {
            d.mount(&name);
        }
        if d.kill9_during(&["flatten", &name], delay_ms) {
            cut += 1;
        }
        // Again, unless the first one had finished.
        let out = d.cli(&["flatten", &name]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() || err.contains("nothing to flatten"), "{err}");
        d.fsck_clean();
        let c = d.mount(&name);
        for i in 0..48u64 {
            assert!(fs::read(c.join(format!("f{i}"))).unwrap() == pattern(i, 2 << 20), "round {round}: {name}/f{i} changed");
        }
    }
    assert!(cut > 0, "no kill landed inside a flatten");
    // Nothing reads through the origin any more: it goes whole, and the clones keep their data.
    if crate::util::is_mounted(&o) {
        d.ok(&["unmount", o.to_str().unwrap()]);
    }
    destroy_frees_its_unique(&d, "o");
    d.fsck_clean();
    let c = d.tmp.path().join("mnt-c0");
    if !crate::util::is_mounted(&c) {
        d.mount("c0");
    }
    assert!(fs::read(c.join("f7")).unwrap() == pattern(7, 2 << 20));
}
