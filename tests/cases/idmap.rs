//! Owner remapping of clones (`clone --owner`, `--uid-map`): a template's files show as the
//! workspace user's in the clone without being rewritten, the user works there as owner, and
//! what the map cannot store is refused.

use crate::util::{run_timeout, Daemon};
use std::fs;
use std::os::unix::fs::{chown, MetadataExt};
use std::path::Path;
use std::process::Command;

fn owner(p: &Path) -> (u32, u32) {
    let m = fs::symlink_metadata(p).unwrap();
    (m.uid(), m.gid())
}

/// Runs `sh -c cmd` as uid:gid; returns (success, stderr).
fn as_user(uid: u32, cmd: &str) -> (bool, String) {
    let out = run_timeout(
        Command::new("setpriv").args([format!("--reuid={uid}"), format!("--regid={uid}"), "--clear-groups".into(), "sh".into(), "-c".into(), cmd.into()]),
        60,
    );
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn a_clone_shows_the_template_as_its_users_and_stores_through_the_inverse() {
    let mut d = Daemon::start();
    let t = d.volume("tmpl");
    fs::create_dir(t.join("src")).unwrap();
    fs::write(t.join("src/main.c"), b"int main(){}").unwrap();
    fs::write(t.join("rootfile"), b"r").unwrap();
    fs::write(t.join("theirs"), b"x").unwrap();
    for p in [t.clone(), t.join("src"), t.join("src/main.c")] {
        chown(&p, Some(1000), Some(1000)).unwrap();
    }
    chown(t.join("theirs"), Some(2000), Some(2000)).unwrap();
    // A named-user ACL entry: the clone shows (and stores) its id through the map too.
    let acl = |args: &[&str]| run_timeout(Command::new(args[0]).args(&args[1..]), 60);
    let out = acl(&["setfacl", "-m", "u:1000:rw", t.join("src/main.c").to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    d.ok(&["snapshot", "tmpl@built"]);

    // Bad maps are refused and create nothing.
    for args in [
        vec!["--owner", "no-such-user-here"],
        vec!["--uid-map", "1000"],
        vec!["--uid-map", "0:10:5", "--uid-map", "3:20:5"],
    ] {
        let mut a = vec!["clone", "tmpl@built", "bad"];
        a.extend(args.iter().copied());
        d.fails(&a);
    }
    assert!(!d.ok(&["list"]).contains("bad"));

    d.ok(&["clone", "tmpl@built", "ws", "--owner", "2000:2000"]);
    assert!(d.ok(&["get", "idmap", "ws"]).contains("uid 1000:2000:1 gid 1000:2000:1"));
    let w = d.mount("ws");
    assert_eq!(owner(&w), (2000, 2000));
    assert_eq!(owner(&w.join("src/main.c")), (2000, 2000));
    assert_eq!(owner(&w.join("rootfile")), (0, 0));
    assert_eq!(owner(&w.join("theirs")), (65534, 65534), "a stored 2000 would show as the owner's twin");
    // The origin is untouched.
    assert_eq!(owner(&t.join("src/main.c")), (1000, 1000));
    let getfacl = |p: &Path| String::from_utf8_lossy(&acl(&["getfacl", "-n", "-p", p.to_str().unwrap()]).stdout).into_owned();
    assert!(getfacl(&w.join("src/main.c")).contains("user:2000:rw-"), "{}", getfacl(&w.join("src/main.c")));
    assert!(getfacl(&t.join("src/main.c")).contains("user:1000:rw-"));
    let out = acl(&["setfacl", "-m", "u:2000:r", w.join("src/main.c").to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(getfacl(&w.join("src/main.c")).contains("user:2000:r--"));
    // 1000 has no stored id in this clone (it shows as 2000): refused, as chown is.
    assert!(!acl(&["setfacl", "-m", "u:1000:r", w.join("src/main.c").to_str().unwrap()]).status.success());

    // The user works in the clone as its owner; new files are theirs.
    let (ok, err) = as_user(2000, &format!("echo hi > {0}/src/new.c && mkdir {0}/build && chmod 600 {0}/src/main.c", w.display()));
    assert!(ok, "{err}");
    assert_eq!(owner(&w.join("src/new.c")), (2000, 2000));
    assert_eq!(owner(&w.join("build")), (2000, 2000));
    // A user the map stores elsewhere cannot be written: 1000 shows as 2000 here.
    let e = chown(w.join("rootfile"), Some(1000), None).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EOVERFLOW), "{e}");
    chown(w.join("rootfile"), Some(2000), None).unwrap();
    assert_eq!(owner(&w.join("rootfile")).0, 2000);

    // A clone of the clone composes the maps.
    d.ok(&["snapshot", "ws@s"]);
    d.ok(&["clone", "ws@s", "ws2", "--owner", "3000:3000"]);
    let w2 = d.mount("ws2");
    assert_eq!(owner(&w2.join("src/new.c")), (3000, 3000));
    assert_eq!(owner(&w2.join("src/main.c")), (3000, 3000));
    assert_eq!(owner(&w2.join("rootfile")), (3000, 0));
    // Its own snapshots show the same.
    d.ok(&["snapshot", "ws2@a"]);
    assert_eq!(owner(&w2.join(".snapshots/a/src/new.c")), (3000, 3000));
    d.fsck_clean();
}
