//! `clonefs diff`: added, removed, renamed and modified paths between snapshots (and the live
//! volume), telling data changes from metadata-only ones, also across a rollback.

use crate::util::{pattern, Daemon};
use std::collections::BTreeSet;
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
    d.ok(&["snapshot", "v@s2"]);

    let want = set(&["M /a/f1 data", "M /a/f2 meta", "- /b", "- /hl", "R /c -> /d/c2", "+ /e"]);
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
