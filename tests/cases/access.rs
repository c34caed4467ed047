//! `clonefs daemon --group`: members of the group use the control socket for what stays
//! inside the store; what would act on the host as root is refused to them, and users
//! outside the group are not let in at all.

use crate::util::{run_timeout, Daemon, BIN};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::process::Command;

/// `clonefs ARGS` as uid 65534 with group `gid` only: (success, stdout, stderr).
fn as_user(d: &Daemon, gid: u32, args: &[&str]) -> (bool, String, String) {
    let out = run_timeout(
        Command::new("setpriv")
            .args(["--reuid=65534", &format!("--regid={gid}"), "--clear-groups", BIN, "--store"])
            .arg(&d.store)
            .args(args),
        120,
    );
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).trim().to_string())
}

/// A directory under /run (root's, 0755 up to /), removed with what is mounted in it.
struct RootOnly(PathBuf);
impl Drop for RootOnly {
    fn drop(&mut self) {
        for e in fs::read_dir(&self.0).into_iter().flatten().flatten() {
            crate::util::lazy_unmount(&e.path());
        }
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[test]
fn group_members_do_what_stays_in_the_store_and_nothing_as_root() {
    let mut d = Daemon::start_args(&["--group", "nogroup"]);
    let nogroup = 65534;
    let sock = fs::metadata(d.store.join("clonefs.sock")).unwrap();
    assert_eq!((sock.mode() & 0o777, sock.gid()), (0o660, nogroup), "the socket");
    let dir = fs::metadata(&d.store).unwrap();
    assert_eq!((dir.mode() & 0o777, dir.gid()), (0o710, nogroup), "the store's directory");
    for f in ["clonefs.log", "mounts", "db", "seg"].iter().map(|n| d.store.join(n)).filter(|p| p.exists()) {
        assert_eq!(fs::metadata(&f).unwrap().mode() & 0o077, 0, "{} is open to others", f.display());
    }
    let v = d.volume("v");
    let member = |args: &[&str]| as_user(&d, nogroup, args);
    let ok = |args: &[&str]| {
        let (ok, out, err) = member(args);
        assert!(ok, "member: {args:?}: {err}");
        out
    };
    let refused = |args: &[&str], why: &str| {
        let (ok, _, err) = member(args);
        assert!(!ok && err.contains(why), "member: {args:?} should be refused for {why:?}: {err}");
    };

    // Inside the store: create (owned by the member), snapshot, clone, list, destroy.
    ok(&["create", "mine"]);
    ok(&["snapshot", "mine@s"]);
    ok(&["clone", "mine@s", "mine2"]);
    ok(&["destroy", "mine2"]);
    assert!(ok(&["list"]).contains("mine@s"));
    refused(&["clone", "mine@s", "x", "--owner", "root"], "remapping owners");

    // What root made (the team's template) is read, snapshotted and cloned by members, and
    // changed by root only; what a member made is its own.
    d.ok(&["snapshot", "v@root"]);
    ok(&["snapshot", "v@theirs"]);
    ok(&["clone", "v@root", "fromroot"]);
    let made_by_root = "made by root";
    refused(&["destroy", "v"], made_by_root);
    refused(&["destroy", "v@root"], made_by_root);
    refused(&["rollback", "v@root"], made_by_root);
    refused(&["rollback", "v@theirs"], made_by_root);
    refused(&["restore", "v@theirs", "f"], made_by_root);
    refused(&["rename", "v", "w"], made_by_root);
    refused(&["set", "quota=1G", "v"], made_by_root);
    refused(&["hold", "v@root", "keep"], made_by_root);
    d.ok(&["hold", "v@root", "keep"]);
    refused(&["release", "v@root", "keep"], made_by_root);
    d.ok(&["release", "v@root", "keep"]);
    d.ok(&["clone", "v@root", "roots-clone"]);
    refused(&["flatten", "roots-clone"], made_by_root);
    // Into root's volume, a stream is refused before it is read; into a new name it makes
    // the member's volume.
    d.ok(&["snapshot", "v@root2"]);
    let stream = d.tmp.path().join("incr.stream");
    d.ok(&["send", "v@root2", "--from", "v@root", "-o", stream.to_str().unwrap()]);
    let names = || d.ok(&["list", "-t", "all", "-H", "-o", "name,origin"]);
    let before = names();
    let receive_as_member = |name: &str| {
        run_timeout(
            Command::new("sh").arg("-c").arg(format!(
                "setpriv --reuid=65534 --regid=65534 --clear-groups {BIN} --store {} receive {name} < {}",
                d.store.display(),
                stream.display()
            )),
            120,
        )
    };
    let out = receive_as_member("v");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains(made_by_root), "receive into root's volume: {err}");
    assert_eq!(names(), before, "the refused receive left something");
    let out = receive_as_member("received");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Its own: the snapshot it took of root's volume, its clones, what it received.
    assert_eq!(ok(&["get", "creator", "v@theirs"]).split_whitespace().last(), Some("65534"));
    assert_eq!(ok(&["get", "creator", "v"]).split_whitespace().last(), Some("-"));
    let creators = d.ok(&["list", "-H", "-o", "name,creator", "v", "fromroot"]);
    assert!(creators.contains("v\t-\n") && creators.contains("v@root\t-\n") && creators.contains("v@theirs\t65534\n") && creators.contains("fromroot\t65534"), "{creators}");
    for name in ["received", "received@root2"] {
        assert_eq!(ok(&["get", "creator", name]).split_whitespace().last(), Some("65534"), "{name}");
    }
    ok(&["set", "quota=1G", "fromroot"]);
    ok(&["rollback", "received@root2"]);
    ok(&["destroy", "received"]);
    ok(&["destroy", "fromroot"]);
    ok(&["destroy", "v@theirs"]);
    // Root changes anything, a member's volumes too.
    ok(&["snapshot", "mine@gone"]);
    d.ok(&["destroy", "mine@gone"]);
    d.ok(&["destroy", "roots-clone"]);
    refused(&["shutdown"], "stopping the daemon");
    let lite = d.tmp.path().join("lite.db");
    assert!(run_timeout(Command::new("sqlite3").arg(&lite).arg("CREATE TABLE t(x);"), 60).status.success());
    refused(&["db", "init", "x", "--engine", "sqlite", "--import", lite.to_str().unwrap()], "importing a host path");

    // Mounts: at a directory the member owns under root's directories, nosuid and nodev.
    let base = tempfile::Builder::new().prefix("clonefs-access").tempdir_in("/run").unwrap().keep();
    let _base = RootOnly(base.clone());
    fs::set_permissions(&base, fs::Permissions::from_mode(0o755)).unwrap();
    let own = base.join("own");
    fs::create_dir(&own).unwrap();
    std::os::unix::fs::chown(&own, Some(65534), Some(nogroup)).unwrap();
    let roots = base.join("roots");
    fs::create_dir(&roots).unwrap();
    let under_tmp = d.tmp.path().join("under-tmp");
    fs::create_dir(&under_tmp).unwrap();
    std::os::unix::fs::chown(&under_tmp, Some(65534), Some(nogroup)).unwrap();
    refused(&["mount", "mine", roots.to_str().unwrap()], "owned by uid 0");
    refused(&["mount", "mine", under_tmp.to_str().unwrap()], "can be changed by others than root");
    // Through a link of the member's (which it could point elsewhere meanwhile): the mount
    // lands on the directory that was checked.
    let link = d.tmp.path().join("link");
    std::os::unix::fs::symlink(&own, &link).unwrap();
    ok(&["mount", "mine", link.to_str().unwrap()]);
    let opts = fs::read_to_string("/proc/mounts").unwrap();
    let line = opts.lines().find(|l| l.split(' ').nth(1) == own.to_str()).expect("the member's mount");
    assert!(line.contains("nosuid") && line.contains("nodev"), "{line}");
    // The volume is the member's: it writes there, and root's files are not its to change.
    let out = run_timeout(
        Command::new("setpriv").args(["--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c"]).arg(format!("echo hi > {}/f", own.display())),
        60,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(fs::metadata(own.join("f")).unwrap().uid(), 65534);
    // Root's mount is not the member's to unmount; its own is.
    refused(&["unmount", v.to_str().unwrap()], "its own mounts only");
    assert!(crate::util::is_mounted(&v));
    ok(&["unmount", own.to_str().unwrap()]);
    assert!(!crate::util::is_mounted(&own));

    // The history names who did what, refusals included.
    let history = d.ok(&["history", "--json"]);
    assert!(history.contains("65534") && history.contains("remapping owners"), "{history}");

    // A user outside the group is not let in.
    let (ok, _, err) = as_user(&d, 12345, &["list"]);
    assert!(!ok && err.to_lowercase().contains("permission denied"), "{err}");
    d.fsck_clean();
}
