//! `clonefs restore`: files and trees come back from a snapshot into the live volume by
//! sharing blocks (no new physical bytes), with their attributes; existing targets are
//! refused unless `--force`, and a refused restore changes nothing.

use crate::util::{pattern, Daemon};
use std::fs;
use std::os::unix::fs::{chown, MetadataExt, PermissionsExt};

#[test]
fn restore_brings_files_and_trees_back_by_sharing_blocks() {
    let mut d = Daemon::start();
    let m = d.volume("v");
    fs::create_dir_all(m.join("db/base")).unwrap();
    let big = pattern(1, 24 << 20);
    fs::write(m.join("db/base/t1"), &big).unwrap();
    fs::write(m.join("db/base/t2"), pattern(2, 100_000)).unwrap();
    std::os::unix::fs::symlink("base/t1", m.join("db/link")).unwrap();
    fs::set_permissions(m.join("db/base/t2"), fs::Permissions::from_mode(0o640)).unwrap();
    chown(m.join("db/base/t2"), Some(1234), Some(4321)).unwrap();
    xattr_set(&m.join("db/base/t1"), "user.k", b"v1");
    d.ok(&["snapshot", "v@good"]);
    let mtime = fs::metadata(m.join("db/base/t2")).unwrap().mtime();

    // Damage after the snapshot.
    fs::write(m.join("db/base/t1"), b"oops").unwrap();
    fs::remove_file(m.join("db/base/t2")).unwrap();
    fs::remove_file(m.join("db/link")).unwrap();
    let physical = d.physical();

    // An existing target is refused without --force, and nothing changes.
    let err = d.fails(&["restore", "v@good", "db/base/t1", "db/base/t2"]);
    assert!(err.contains("exists") && err.contains("--force"), "{err}");
    assert!(!m.join("db/base/t2").exists(), "a refused restore restored t2");
    let err = d.fails(&["restore", "v@good", "no/such"]);
    assert!(err.contains("no/such"), "{err}");

    d.ok(&["restore", "v@good", "db/base/t1", "db/base/t2", "db/link", "--force"]);
    assert!(fs::read(m.join("db/base/t1")).unwrap() == big);
    assert_eq!(xattr_get(&m.join("db/base/t1"), "user.k"), b"v1");
    let md = fs::metadata(m.join("db/base/t2")).unwrap();
    assert_eq!((md.mode() & 0o7777, md.uid(), md.gid(), md.mtime()), (0o640, 1234, 4321, mtime));
    assert_eq!(fs::read_link(m.join("db/link")).unwrap().to_str(), Some("base/t1"));
    // Shared, not copied: the 24 MiB came back without new blocks.
    assert!(d.physical() < physical + (1 << 20), "physical {} -> {}", physical, d.physical());

    // A whole tree beside the live one.
    d.ok(&["restore", "v@good", "db", "--to", "db-yesterday"]);
    assert!(fs::read(m.join("db-yesterday/base/t1")).unwrap() == big);
    assert!(fs::read(m.join("db-yesterday/base/t2")).unwrap() == pattern(2, 100_000));
    // A hard-linked set: each name comes back with the bytes, sharing the blocks.
    fs::write(m.join("linked"), pattern(7, 3 << 20)).unwrap();
    fs::hard_link(m.join("linked"), m.join("linked2")).unwrap();
    d.ok(&["snapshot", "v@links"]);
    fs::remove_file(m.join("linked")).unwrap();
    fs::remove_file(m.join("linked2")).unwrap();
    let physical = d.physical();
    d.ok(&["restore", "v@links", "linked", "linked2"]);
    for n in ["linked", "linked2"] {
        assert!(fs::read(m.join(n)).unwrap() == pattern(7, 3 << 20), "{n}");
    }
    assert!(d.physical() < physical + (1 << 20), "physical {} -> {}", physical, d.physical());
    // Into an unmounted volume as well.
    d.unmount(&m);
    d.ok(&["restore", "v@good", "db/base/t2", "--to", "t2-again"]);
    let m = d.mount("v");
    assert!(fs::read(m.join("t2-again")).unwrap() == pattern(2, 100_000));
    d.fsck_clean();
}

fn xattr_set(p: &std::path::Path, name: &str, v: &[u8]) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    assert_eq!(unsafe { libc::setxattr(c.as_ptr(), n.as_ptr(), v.as_ptr().cast(), v.len(), 0) }, 0);
}

fn xattr_get(p: &std::path::Path, name: &str) -> Vec<u8> {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    let r = unsafe { libc::getxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(r >= 0, "getxattr {name}");
    buf.truncate(r as usize);
    buf
}

/// A restore cut short by a crash leaves its temporary name in the target directory; a
/// restore again takes that name over (it said "exists; --force replaces it", and --force
/// failed the same way), and the leftover is gone.
#[test]
fn a_restore_again_after_one_cut_short_replaces_its_leftover() {
    let mut d = Daemon::start();
    let m = d.volume("v");
    fs::write(m.join("t"), pattern(3, 200_000)).unwrap();
    let ino = fs::metadata(m.join("t")).unwrap().ino();
    d.ok(&["snapshot", "v@s"]);
    fs::remove_file(m.join("t")).unwrap();
    // What a kill -9 between making the file aside and renaming it over leaves.
    let leftover = m.join(format!(".clonefs-restore-{ino}-t"));
    fs::write(&leftover, b"half").unwrap();
    d.ok(&["restore", "v@s", "t"]);
    assert!(fs::read(m.join("t")).unwrap() == pattern(3, 200_000));
    let names: Vec<_> = fs::read_dir(&m).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["t"], "the restore's leftover is still listed");
    assert!(!leftover.exists(), "the kernel still knows the restore's leftover");
    d.fsck_clean();
}
