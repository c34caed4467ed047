//! A bit flipped in a stored block: reads of it fail with EIO (never wrong data), `scrub`
//! names the block and every volume, snapshot and file that uses it, and nothing else is
//! affected.

use crate::util::{pattern, Daemon};
use std::fs::{self, File};
use std::path::Path;

/// Flips one byte inside every copy of `needle`'s block in the segments (a dead copy may
/// lie before the live one); returns how many it changed.
fn flip_in_segments(store: &Path, needle: &[u8]) -> usize {
    let mut n = 0;
    for e in fs::read_dir(store.join("seg")).unwrap() {
        let p = e.unwrap().path();
        let mut b = fs::read(&p).unwrap();
        let mut from = 0;
        while let Some(at) = b[from..].windows(needle.len()).position(|w| w == needle) {
            b[from + at + 1000] ^= 0x10;
            from += at + needle.len();
            n += 1;
        }
        fs::write(&p, &b).unwrap();
    }
    assert!(n > 0, "block not found in any segment");
    n
}

#[test]
fn a_flipped_bit_gives_eio_and_scrub_names_the_files() {
    let mut d = Daemon::start();
    let m = d.volume("v"); // 64 KiB blocks
    fs::create_dir(m.join("a")).unwrap();
    let victim = pattern(1, 1 << 20);
    let keep = pattern(2, 1 << 20);
    fs::write(m.join("a/victim"), &victim).unwrap();
    fs::write(m.join("keep"), &keep).unwrap();
    File::open(m.join("a/victim")).unwrap().sync_all().unwrap();
    d.ok(&["snapshot", "v@s"]);
    d.ok(&["clone", "v@s", "c"]);
    assert!(d.ok(&["scrub"]).contains("no damaged blocks"));
    d.unmount(&m);
    d.stop();
    // Block 3 of the victim: bytes [192 KiB, 256 KiB).
    flip_in_segments(&d.store, &victim[192 << 10..(192 << 10) + 64]);
    d.restart();
    let m = d.mount("v");
    let e = fs::read(m.join("a/victim")).expect_err("a damaged block was read");
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    assert!(fs::read(m.join("keep")).unwrap() == keep, "an undamaged file changed");
    let mut f = File::open(m.join("a/victim")).unwrap();
    let mut first = vec![0u8; 192 << 10];
    std::io::Read::read_exact(&mut f, &mut first).unwrap();
    assert!(first == victim[..192 << 10], "the blocks before the damaged one read wrong");
    drop(f);
    assert!(d.json(&["status", "--json"])["read_errors"].as_u64().unwrap() >= 1);

    let out = d.cli(&["scrub", "--json"]);
    assert_eq!(out.status.code(), Some(1), "scrub found damage but exited {:?}", out.status);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let damaged = r["damaged"].as_array().unwrap();
    assert_eq!(damaged.len(), 1, "{r}");
    let users: Vec<String> = damaged[0]["used_by"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| format!("{}:{}@{}", u["view"].as_str().unwrap(), u["path"].as_str().unwrap(), u["offset"]))
        .collect();
    let off = 192 << 10;
    assert_eq!(users, vec![format!("c:/a/victim@{off}"), format!("v:/a/victim@{off}"), format!("v@s:/a/victim@{off}")]);
    let text = String::from_utf8_lossy(&d.cli(&["scrub"]).stdout).into_owned();
    assert!(text.contains("v@s:/a/victim at offset 196608") && text.contains("1 damaged blocks"), "{text}");

    // Once no one uses the block, the store is clean again.
    fs::remove_file(m.join("a/victim")).unwrap();
    let mc = d.mount("c");
    fs::remove_file(mc.join("a/victim")).unwrap();
    d.unmount(&mc);
    d.ok(&["destroy", "c"]);
    d.ok(&["destroy", "v@s"]);
    d.ok(&["gc"]);
    let out = d.cli(&["scrub"]);
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), d.log());
    d.fsck_clean();
}
