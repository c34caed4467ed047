//! `clonefs diff`: added, removed, renamed and modified paths between snapshots (and the live
//! volume), telling data changes from metadata-only ones, also across a rollback.

use crate::util::{pattern, Daemon};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;

/// The changes to non-directories as "K path[ -> to][ data][ meta]".
fn changes(d: &Daemon, from: &str, to: &str) -> BTreeSet<String> {
    let v = d.json(&["diff", from, to, "--json"]);
    v.as_array()
        .unwrap()
        .iter()
        .filter(|c| c["ftype"] != "dir")
        .map(|c| {
            let mut s = format!("{} {}", c["kind"].as_str().unwrap(), c["path"].as_str().unwrap());
            if let Some(t) = c["to"].as_str() {
                s += &format!(" -> {t}");
            }
            if c["kind"] == "M" {
                s += if c["data"] == true { " data" } else { "" };
                s += if c["meta"] == true { " meta" } else { "" };
            }
            s
        })
        .collect()
}

/// A name as `diff` prints it, back to its bytes (`\\ooo` is one byte).
fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            out.push(u8::from_str_radix(&s[i + 1..i + 4], 8).unwrap());
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn diff_tells_added_removed_renamed_and_data_from_metadata() {
    let mut d = Daemon::start();
    let m = d.volume("v");
    fs::create_dir_all(m.join("a")).unwrap();
    fs::create_dir_all(m.join("d")).unwrap();
    fs::write(m.join("a/f1"), pattern(1, 200_000)).unwrap();
    fs::write(m.join("a/f2"), b"two").unwrap();
    fs::write(m.join("b"), b"bee").unwrap();
    fs::write(m.join("c"), b"sea").unwrap();
    fs::hard_link(m.join("a/f1"), m.join("hl")).unwrap();
    d.ok(&["snapshot", "v@s1"]);

    let mut f1 = pattern(1, 200_000);
    f1[100_000] ^= 1;
    fs::write(m.join("a/f1"), &f1).unwrap();
    fs::set_permissions(m.join("a/f2"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::remove_file(m.join("b")).unwrap();
    // One name of a modified file goes: the file's other name still shows its change.
    fs::remove_file(m.join("hl")).unwrap();
    fs::rename(m.join("c"), m.join("d/c2")).unwrap();
    fs::write(m.join("e"), b"new").unwrap();
    // Names no line-based reader could split: shown escaped, one line each.
    use std::os::unix::ffi::OsStrExt;
    for odd in [&b"new\nline"[..], b"not-utf8-\xff", b"back\\slash", "ünï".as_bytes()] {
        fs::write(m.join(std::ffi::OsStr::from_bytes(odd)), b"odd").unwrap();
    }
    d.ok(&["snapshot", "v@s2"]);

    let odd = ["+ /new\\012line", "+ /not-utf8-\\377", "+ /back\\134slash", "+ /ünï"];
    let want = set(&["M /a/f1 data", "M /a/f2 meta", "- /b", "- /hl", "R /c -> /d/c2", "+ /e"]);
    assert_eq!(changes(&d, "v@s1", "v@s2"), want.iter().map(String::as_str).chain(odd).map(str::to_string).collect());
    let all = d.json(&["diff", "v@s1", "v@s2", "--json"]).as_array().unwrap().len();
    assert_eq!(d.ok(&["diff", "v@s1", "v@s2"]).lines().count(), all, "one line per change");
    for name in ["new\\012line", "not-utf8-\\377", "back\\134slash", "ünï"] {
        fs::remove_file(m.join(std::ffi::OsStr::from_bytes(&unescape(name)))).unwrap();
    }
    d.ok(&["destroy", "v@s2"]);
    d.ok(&["snapshot", "v@s2"]);
    assert_eq!(changes(&d, "v@s1", "v@s2"), want);
    // Against the live volume, including what is not flushed yet.
    fs::write(m.join("late"), b"l").unwrap();
    let mut live = want.clone();
    live.insert("+ /late".into());
    assert_eq!(changes(&d, "v@s1", "v"), live);
    // The text form names the kinds.
    let text = d.ok(&["diff", "v@s1", "v@s2"]);
    assert!(text.contains("R\tfile\t/c -> /d/c2") && text.contains("M\tfile\t/a/f2 (metadata)"), "{text}");

    // Across a rollback: the live volume is s1's content again.
    d.unmount(&m);
    d.ok(&["rollback", "v@s1"]);
    // f1 has two names again: its change is listed under one of them.
    let mut back = changes(&d, "v@s2", "v");
    if back.remove("M /hl data") {
        back.insert("M /a/f1 data".into());
    }
    assert_eq!(back, set(&["M /a/f1 data", "M /a/f2 meta", "+ /b", "+ /hl", "R /d/c2 -> /c", "- /e"]));
    assert!(changes(&d, "v@s1", "v").is_empty());

    for bad in [vec!["diff", "v@nope", "v"], vec!["diff", "v", "v@s1"], vec!["diff", "v@s1", "w"]] {
        d.fails(&bad);
    }
    d.fsck_clean();
}

/// A clone against the snapshot it came from: what its users changed, with `diff ORIGIN@SNAP
/// CLONE`. Views that do not descend from one another (two clones, a clone and its origin's
/// later snapshot) may give one inode number to different files: refused.
#[test]
fn diff_shows_what_a_clone_changed_since_its_origin_snapshot() {
    let mut d = Daemon::start();
    let m = d.volume("prod");
    fs::write(m.join("keep"), b"k").unwrap();
    fs::write(m.join("edit"), pattern(2, 50_000)).unwrap();
    fs::write(m.join("drop"), b"d").unwrap();
    d.ok(&["snapshot", "prod@s1"]);
    d.ok(&["clone", "prod@s1", "qa"]);
    d.ok(&["clone", "prod@s1", "dev"]);
    let qa = d.mount("qa");
    let mut e = pattern(2, 50_000);
    e[20_000] ^= 1;
    fs::write(qa.join("edit"), &e).unwrap();
    fs::remove_file(qa.join("drop")).unwrap();
    fs::write(qa.join("added"), b"a").unwrap();
    // The origin's own changes after the snapshot are not the clone's.
    fs::write(m.join("prod-only"), b"p").unwrap();

    let want = set(&["M /edit data", "- /drop", "+ /added"]);
    assert_eq!(changes(&d, "prod@s1", "qa"), want);
    d.ok(&["snapshot", "qa@t"]);
    assert_eq!(changes(&d, "prod@s1", "qa@t"), want);
    // The other way round, the clone's snapshot against the origin's.
    assert_eq!(changes(&d, "qa@t", "prod@s1"), set(&["M /edit data", "+ /drop", "- /added"]));
    // With one argument, against the snapshot's own live volume.
    let v = d.json(&["diff", "prod@s1", "--json"]);
    let paths: Vec<&str> = v.as_array().unwrap().iter().filter(|c| c["ftype"] == "file").map(|c| c["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["/prod-only"]);

    d.ok(&["snapshot", "prod@s2"]);
    for (from, to) in [("qa@t", "dev"), ("prod@s2", "qa"), ("qa@t", "prod")] {
        let err = d.fails(&["diff", from, to]);
        assert!(err.contains("neither is cloned from the other"), "{from} {to}: {err}");
    }
    d.fsck_clean();
}

/// What a user sees of one path: inode, kind, data, and metadata that `diff` reports.
#[derive(Clone, PartialEq, Debug)]
struct Seen {
    ino: u64,
    dir: bool,
    data: Vec<u8>,
    meta: (u32, u32, u32, Vec<(String, Vec<u8>)>),
    mtime: (i64, i64),
}

fn walk(root: &std::path::Path) -> BTreeMap<String, Seen> {
    use std::os::unix::fs::MetadataExt;
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let rel = format!("/{}", p.strip_prefix(root).unwrap().to_string_lossy());
            if rel == "/.snapshots" {
                continue;
            }
            let md = fs::symlink_metadata(&p).unwrap();
            let data = if md.file_type().is_symlink() {
                fs::read_link(&p).unwrap().into_os_string().into_encoded_bytes()
            } else if md.is_dir() {
                stack.push(p.clone());
                Vec::new()
            } else {
                fs::read(&p).unwrap()
            };
            let x = xattr::list(&p).map(|n| (n.clone(), xattr::get(&p, &n))).collect();
            out.insert(rel, Seen { ino: md.ino(), dir: md.is_dir(), data, meta: (md.mode(), md.uid(), md.gid(), x), mtime: (md.mtime(), md.mtime_nsec()) });
        }
    }
    out
}

mod xattr {
    use std::ffi::CString;
    pub fn list(p: &std::path::Path) -> impl Iterator<Item = String> {
        let c = CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        let mut buf = vec![0u8; 4096];
        let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        buf.truncate(n.max(0) as usize);
        let mut names: Vec<String> = buf.split(|b| *b == 0).filter(|n| !n.is_empty()).map(|n| String::from_utf8_lossy(n).into_owned()).collect();
        names.sort();
        names.into_iter()
    }
    pub fn get(p: &std::path::Path, n: &str) -> Vec<u8> {
        let c = CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        let cn = CString::new(n).unwrap();
        let mut v = vec![0u8; 4096];
        let r = unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
        v.truncate(r.max(0) as usize);
        v
    }
    pub fn set(p: &std::path::Path, n: &str, v: &[u8]) {
        let c = CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        let cn = CString::new(n).unwrap();
        unsafe { libc::lsetxattr(c.as_ptr(), cn.as_ptr(), v.as_ptr().cast(), v.len(), 0) };
    }
}

/// Random changes under `m`: files made, written, cut, renamed, linked, removed, symlinks,
/// modes, owners and xattrs (directories are never renamed: diff names a renamed directory
/// once, a walk would see all its paths move).
fn random_ops(m: &std::path::Path, rnd: &mut impl FnMut(u64) -> u64, n: usize) {
    use std::os::unix::fs::{chown, symlink};
    let dirs = ["", "d1", "d2", "d1/e"];
    for x in &dirs[1..] {
        fs::create_dir_all(m.join(x)).unwrap();
    }
    for _ in 0..n {
        let files: Vec<String> = walk(m).into_iter().filter(|(_, s)| !s.dir).map(|(p, _)| p[1..].to_string()).collect();
        let pick = |r: u64| files.get(r as usize % files.len().max(1)).cloned();
        let newname = format!("{}/f{}", dirs[rnd(4) as usize], rnd(1000));
        let newp = m.join(newname.trim_start_matches('/'));
        let f = pick(rnd(1 << 20)).map(|p| m.join(p));
        let is_file = f.as_ref().is_some_and(|p| fs::symlink_metadata(p).map(|x| x.is_file()).unwrap_or(false));
        match rnd(11) {
            0 | 1 if !newp.exists() => fs::write(&newp, pattern(rnd(1 << 30), rnd(200_000) as usize)).unwrap(),
            2 if is_file => {
                let f = f.unwrap();
                let h = fs::OpenOptions::new().write(true).open(&f).unwrap();
                std::os::unix::fs::FileExt::write_at(&h, &pattern(rnd(99), 5000), rnd(150_000)).unwrap();
            }
            3 if is_file => fs::OpenOptions::new().write(true).open(f.unwrap()).unwrap().set_len(rnd(100_000)).unwrap(),
            4 if f.is_some() => fs::set_permissions(f.unwrap(), fs::Permissions::from_mode(0o600 + rnd(0o177) as u32)).unwrap_or(()),
            5 if is_file => chown(f.unwrap(), Some(1000 + rnd(3) as u32), None).unwrap(),
            6 if f.is_some() && !newp.exists() => fs::rename(f.unwrap(), &newp).unwrap(),
            7 if f.is_some() => fs::remove_file(f.unwrap()).unwrap(),
            8 if is_file && !newp.exists() => fs::hard_link(f.unwrap(), &newp).unwrap(),
            9 if !newp.exists() => symlink(format!("t{}", rnd(9)), &newp).unwrap(),
            10 if is_file => xattr::set(&f.unwrap(), &format!("user.k{}", rnd(3)), &pattern(rnd(9), 10)),
            _ => {}
        }
    }
}

/// `diff FROM TO` against a brute-force comparison of the two views mounted read-only:
/// names gone and come by (path, inode), files changed by inode. Adds to `seen` what it
/// compared (names gone, come, files changed).
fn check_against_walks(d: &mut Daemon, from: &str, to: &str, seen: &mut (usize, usize, usize)) {
    let (a, b) = (d.mount(from), d.mount(to));
    let (wa, wb) = (walk(&a), walk(&b));
    let gone: BTreeSet<String> = wa.iter().filter(|(p, s)| wb.get(*p).map(|t| t.ino) != Some(s.ino)).map(|(p, _)| p.clone()).collect();
    let came: BTreeSet<String> = wb.iter().filter(|(p, s)| wa.get(*p).map(|t| t.ino) != Some(s.ino)).map(|(p, _)| p.clone()).collect();
    let v = d.json(&["diff", from, to, "--json"]);
    let list = v.as_array().unwrap();
    let by = |k: &'static str| list.iter().filter(move |c| c["kind"] == k);
    let dgone: BTreeSet<String> = by("-").chain(by("R")).map(|c| c["path"].as_str().unwrap().to_string()).collect();
    let dcame: BTreeSet<String> = by("+").map(|c| c["path"].as_str().unwrap().to_string()).chain(by("R").map(|c| c["to"].as_str().unwrap().to_string())).collect();
    assert_eq!(dgone, gone, "{from} -> {to}: removed names");
    assert_eq!(dcame, came, "{from} -> {to}: added names");
    // Changed files, by inode: data and metadata as a user sees them.
    let ino_a: BTreeMap<u64, &Seen> = wa.values().filter(|s| !s.dir).map(|s| (s.ino, s)).collect();
    let mut want: BTreeMap<u64, (bool, bool)> = BTreeMap::new();
    for s in wb.values().filter(|s| !s.dir) {
        if let Some(o) = ino_a.get(&s.ino) {
            let data = o.data != s.data;
            let meta = o.meta != s.meta || (!data && o.mtime != s.mtime);
            if data || meta {
                want.insert(s.ino, (data, meta));
            }
        }
    }
    let mut got: BTreeMap<u64, (bool, bool)> = BTreeMap::new();
    for c in list.iter().filter(|c| c["ftype"] != "dir" && (c["kind"] == "M" || c["kind"] == "R")) {
        let p = if c["kind"] == "R" { c["to"].as_str().unwrap() } else { c["path"].as_str().unwrap() };
        let ino = wb[p].ino;
        let (dd, mm) = (c["data"] == true, c["meta"] == true);
        if dd || mm {
            got.insert(ino, (dd, mm));
        }
    }
    assert_eq!(got, want, "{from} -> {to}: modified files (inode -> data, metadata)\n{v:#}");
    seen.0 += gone.len();
    seen.1 += came.len();
    seen.2 += want.len();
    d.unmount(&a);
    d.unmount(&b);
}

/// `diff` between snapshots of random histories, and between a clone's snapshot and its
/// origin's, against a brute-force comparison of the two views mounted read-only.
#[test]
fn diff_matches_a_brute_force_comparison_on_random_histories() {
    let mut d = Daemon::start();
    let m = d.volume("v");
    let mut seed = 0x2545F4914F6CDD1Du64;
    let mut rnd = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n.max(1)
    };
    let rounds = 4;
    for round in 0..rounds {
        random_ops(&m, &mut rnd, 60);
        d.ok(&["snapshot", &format!("v@s{round}")]);
    }
    let mut pairs: Vec<(String, String)> = (0..rounds - 1).map(|i| (format!("v@s{i}"), format!("v@s{}", i + 1))).collect();
    pairs.push(("v@s0".into(), format!("v@s{}", rounds - 1)));
    // A clone of an older snapshot, changed its own way: new files numbered past the
    // origin's, the origin's files changed, renamed and removed in the clone only.
    d.ok(&["clone", "v@s1", "c"]);
    let c = d.mount("c");
    random_ops(&c, &mut rnd, 60);
    d.ok(&["snapshot", "c@t"]);
    d.unmount(&c);
    pairs.extend([("v@s1".into(), "c@t".into()), ("c@t".into(), "v@s1".into()), ("v@s0".into(), "c@t".into())]);
    let mut seen = (0, 0, 0);
    for (from, to) in pairs {
        check_against_walks(&mut d, &from, &to, &mut seen);
    }
    assert!(seen.0 > 10 && seen.1 > 10 && seen.2 > 10, "the histories changed too little: {seen:?} (names gone, came, files changed)");
    d.fsck_clean();
}

/// `clonefs diff ... | head -1`: the reader goes away after one line, and the CLI ends
/// quietly with success (it panicked with "failed printing to stdout: Broken pipe").
#[test]
fn output_into_a_reader_that_goes_away_ends_quietly() {
    use std::io::{BufRead, Read};
    let mut d = Daemon::start();
    let m = d.volume("v");
    d.ok(&["snapshot", "v@a"]);
    for i in 0..3000 {
        fs::write(m.join(format!("file-with-a-long-name-{i:05}")), b"x").unwrap();
    }
    for args in [&["diff", "v@a"][..], &["diff", "v@a", "--json"]] {
        let mut child = std::process::Command::new(crate::util::BIN)
            .args(args)
            .env("CLONEFS_STORE", &d.store)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
        assert!(!first.is_empty(), "{args:?}: no output");
        // The reader is gone now; the CLI still has most of its output to write.
        let mut err = String::new();
        child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        let status = child.wait().unwrap();
        assert!(status.success() && err.is_empty(), "{args:?}: {status}, stderr {err:?}");
    }
}

/// A diff of a clone's live files holds the clone: `destroy` and `rollback` of it are refused
/// until the diff has ended (a destroy went through mid-diff, and the diff then succeeded
/// with 1,421 of 40,000 changes: GC had freed what it had yet to read).
#[test]
fn a_clone_being_diffed_is_not_destroyed_under_the_diff() {
    let mut d = Daemon::start();
    let m = d.volume("v");
    for dir in 0..20 {
        fs::create_dir(m.join(format!("d{dir}"))).unwrap();
        for i in 0..1000 {
            fs::write(m.join(format!("d{dir}/f{i}")), b"x").unwrap();
        }
    }
    d.ok(&["snapshot", "v@s"]);
    d.ok(&["clone", "v@s", "c"]);
    let c = d.mount("c");
    for dir in 0..20 {
        for i in 0..1000 {
            fs::write(c.join(format!("d{dir}/f{i}")), b"xy").unwrap();
        }
    }
    d.ok(&["snapshot", "c@t"]);
    d.unmount(&c);
    let diff = std::process::Command::new(crate::util::BIN)
        .args(["diff", "v@s", "c", "--json"])
        .env("CLONEFS_STORE", &d.store)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(50));
    let started = std::time::Instant::now();
    let mut refused = Vec::new();
    loop {
        let out = d.cli(&["rollback", "c@t"]);
        if !out.status.success() {
            refused.push(String::from_utf8_lossy(&out.stderr).to_string());
        }
        let out = d.cli(&["destroy", "c"]);
        if out.status.success() {
            break;
        }
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(err.contains("c is being read (a diff or defrag of its live files)"), "{err}");
        assert!(started.elapsed().as_secs() < 60, "destroy refused for a minute: {err}");
    }
    for err in &refused {
        assert!(err.contains("c is being read (a diff or defrag of its live files); roll it back when that has ended"), "{err}");
    }
    let out = diff.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let files = v.as_array().unwrap().iter().filter(|c| c["ftype"] == "file" && c["kind"] == "M" && c["data"] == true).count();
        assert_eq!(files, 20_000, "a diff that succeeded left changes out");
    } else {
        // The destroy came first.
        assert!(err.contains("no volume named \"c\""), "{err}");
    }
    d.ok(&["gc"]);
    d.fsck_clean();
}
