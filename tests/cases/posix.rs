//! POSIX behaviours an outside suite checks: SEEK_DATA/SEEK_HOLE against a model,
//! fallocate on a full disk and with FALLOC_FL_KEEP_SIZE, `st_blocks` of unsaved writes.

use crate::util::*;
use std::fs::{self, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

const BS: u64 = 16 << 10;

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// What lseek must answer for a file whose bytes are `model`: at block granularity, a block
/// is data when any of its bytes is not zero (all-zero blocks are never stored).
fn expected(model: &[u8], off: u64, whence: i32, writeback: bool) -> Result<u64, i32> {
    let size = model.len() as u64;
    if off >= size {
        return Err(libc::ENXIO);
    }
    // A writeback mount answers from the kernel's size: the whole file is data.
    if writeback {
        return Ok(if whence == libc::SEEK_DATA { off } else { size });
    }
    let data = |b: u64| model[(b * BS) as usize..((b + 1) * BS).min(size) as usize].iter().any(|&x| x != 0);
    let blocks = size.div_ceil(BS);
    let first = (off / BS..blocks).find(|&b| data(b) == (whence == libc::SEEK_DATA));
    match (whence, first) {
        (libc::SEEK_DATA, Some(b)) => Ok((b * BS).max(off)),
        (libc::SEEK_DATA, None) => Err(libc::ENXIO),
        (_, Some(b)) => Ok((b * BS).max(off).min(size)),
        (_, None) => Ok(size),
    }
}

fn seek_model(m: &Path, seed: u64, writeback: bool) {
    let p = m.join(format!("seek{seed}"));
    let f = OpenOptions::new().create(true).read(true).write(true).truncate(true).open(&p).unwrap();
    let fd = f.as_raw_fd();
    let mut model: Vec<u8> = Vec::new();
    let mut x = seed | 1;
    let mut rnd = |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    for step in 0..150u64 {
        let off = rnd(1 << 20);
        let len = 1 + rnd(3 * BS);
        let what;
        match rnd(6) {
            0 | 1 => {
                // Data, or zeros written over whatever was there.
                let data = if rnd(4) == 0 { vec![0u8; len as usize] } else { pattern(seed ^ step, len as usize) };
                f.write_all_at(&data, off).unwrap();
                if model.len() < (off + len) as usize {
                    model.resize((off + len) as usize, 0);
                }
                model[off as usize..(off + len) as usize].copy_from_slice(&data);
                what = "write";
            }
            2 => {
                let r = unsafe { libc::fallocate(fd, libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, off as i64, len as i64) };
                assert_eq!(r, 0, "punch: errno {}", errno());
                let end = ((off + len) as usize).min(model.len());
                if (off as usize) < end {
                    model[off as usize..end].fill(0);
                }
                what = "punch";
            }
            3 => {
                let keep = rnd(2) == 0;
                let mode = libc::FALLOC_FL_ZERO_RANGE | if keep { libc::FALLOC_FL_KEEP_SIZE } else { 0 };
                let r = unsafe { libc::fallocate(fd, mode, off as i64, len as i64) };
                assert_eq!(r, 0, "zero range: errno {}", errno());
                if !keep && model.len() < (off + len) as usize {
                    model.resize((off + len) as usize, 0);
                }
                let end = ((off + len) as usize).min(model.len());
                if (off as usize) < end {
                    model[off as usize..end].fill(0);
                }
                what = "zero range";
            }
            4 => {
                let size = rnd(1 << 20);
                f.set_len(size).unwrap();
                model.resize(size as usize, 0);
                what = "truncate";
            }
            _ => {
                let keep = rnd(2) == 0;
                let r = unsafe { libc::fallocate(fd, if keep { libc::FALLOC_FL_KEEP_SIZE } else { 0 }, off as i64, len as i64) };
                assert_eq!(r, 0, "fallocate: errno {}", errno());
                if !keep && model.len() < (off + len) as usize {
                    model.resize((off + len) as usize, 0);
                }
                what = "fallocate";
            }
        }
        assert_eq!(f.metadata().unwrap().len(), model.len() as u64, "seed {seed} step {step}: size after {what}");
        let size = model.len() as u64;
        let mut offs: Vec<u64> = (0..=size.div_ceil(BS)).flat_map(|b| [b * BS, b * BS + 1 + rnd(BS - 1)]).collect();
        offs.extend([size.saturating_sub(1), size, size + 1]);
        for o in offs {
            for whence in [libc::SEEK_DATA, libc::SEEK_HOLE] {
                let r = unsafe { libc::lseek(fd, o as i64, whence) };
                let got = if r < 0 { Err(errno()) } else { Ok(r as u64) };
                let name = if whence == libc::SEEK_DATA { "SEEK_DATA" } else { "SEEK_HOLE" };
                assert_eq!(got, expected(&model, o, whence, writeback), "seed {seed} step {step} after {what}: {name} from {o} (size {size})");
            }
        }
    }
    let mut back = vec![0u8; model.len()];
    f.read_exact_at(&mut back, 0).unwrap();
    assert!(back == model, "seed {seed}: contents differ from the model");
}

#[test]
fn seek_data_and_seek_hole_match_a_model() {
    let mut d = Daemon::start();
    d.ok(&["create", "v", "--block-size", "16K"]);
    d.ok(&["create", "w", "--block-size", "16K"]);
    let v = d.mount("v");
    let w = d.mount_with("w", &["--writeback"]);
    for seed in [1u64, 0x9E37_79B9, 0xD1B5_4A32] {
        seek_model(&v, seed, false);
        seek_model(&w, seed, true);
    }
    d.fsck_clean();
}

/// `st_blocks` counts what a file holds before its blocks reach the store, as on ext4:
/// `tar --sparse` (and `cp`, `du`) trust it, and tar archives a file of 0 blocks as a
/// hole without reading it. The kernel keeps what a `stat` saw while the file was written.
#[test]
fn blocks_of_a_file_being_written_are_counted_before_its_flush() {
    use std::os::unix::fs::MetadataExt;
    let mut d = Daemon::start();
    d.ok(&["create", "v", "--block-size", "16K"]);
    let v = d.mount("v");
    let text = b"hello world\n".repeat(1000);
    let f = OpenOptions::new().create(true).write(true).open(v.join("log")).unwrap();
    f.write_all_at(&text, 0).unwrap();
    assert_eq!(fs::metadata(v.join("log")).unwrap().blocks(), 32, "12,000 bytes written: one 16 KiB block");
    drop(f);
    // Appended to a stored file (no holes): stored and new blocks, each once.
    let g = OpenOptions::new().append(true).open(v.join("log")).unwrap();
    g.sync_all().unwrap();
    g.write_all_at(&pattern(3, 100_000), 0).unwrap();
    assert_eq!(g.metadata().unwrap().blocks(), 112_000u64.div_ceil(BS) * BS / 512);
    drop(g);
    let out = tempfile::tempdir().unwrap();
    let tar = out.path().join("a.tar");
    let tar_ok = |args: &[&std::ffi::OsStr]| assert!(run_timeout(std::process::Command::new("tar").args(args), 60).status.success());
    tar_ok(&["--sparse".as_ref(), "-cf".as_ref(), tar.as_os_str(), "-C".as_ref(), v.as_os_str(), "log".as_ref()]);
    tar_ok(&["-xf".as_ref(), tar.as_os_str(), "-C".as_ref(), out.path().as_os_str()]);
    assert_eq!(fs::read(out.path().join("log")).unwrap(), fs::read(v.join("log")).unwrap(), "tar --sparse lost the bytes");
    assert_eq!(&fs::read(out.path().join("log")).unwrap()[..12], b"hello world\n");
    d.fsck_clean();
}

#[test]
fn fallocate_past_the_free_space_fails_and_allocates_nothing() {
    let disk = LoopDisk::new(400);
    let mut d = Daemon::start_at(disk.dir.join("store"));
    d.ok(&["create", "v", "--block-size", "64K"]);
    let v = d.mount("v");
    let free = {
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        let c = std::ffi::CString::new(v.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut s) }, 0);
        s.f_bavail * s.f_frsize
    };
    assert!(free > 0);
    let f = OpenOptions::new().create(true).read(true).write(true).open(v.join("db")).unwrap();
    f.write_all_at(b"head", 0).unwrap();
    for mode in [0, libc::FALLOC_FL_KEEP_SIZE] {
        let r = unsafe { libc::fallocate(f.as_raw_fd(), mode, 0, (free + (64 << 20)) as i64) };
        assert_eq!((r, errno()), (-1, libc::ENOSPC), "fallocate (mode {mode}) of more than the free space");
        assert_eq!(f.metadata().unwrap().len(), 4, "a refused fallocate changed the size");
    }
    // posix_fallocate reports the error itself.
    assert_eq!(unsafe { libc::posix_fallocate(f.as_raw_fd(), 0, (free * 2) as i64) }, libc::ENOSPC);
    // What fits is granted; a KEEP_SIZE range does not move the size, and a write inside it
    // moves it only to the write's end.
    assert_eq!(unsafe { libc::fallocate(f.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, 0, 8 << 20) }, 0);
    assert_eq!(f.metadata().unwrap().len(), 4);
    f.write_all_at(b"tail", 1 << 20).unwrap();
    assert_eq!(f.metadata().unwrap().len(), (1 << 20) + 4);
    assert_eq!(unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, 2 << 20) }, 0);
    assert_eq!(f.metadata().unwrap().len(), 2 << 20);
    drop(f);
    assert_eq!(&fs::read(v.join("db")).unwrap()[..4], b"head");
    d.fsck_clean();
}

fn sh(cmd: &str) -> String {
    let out = run_timeout(std::process::Command::new("sh").arg("-c").arg(cmd), 60);
    assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether `cmd` succeeds as user nobody (no groups).
fn as_nobody(cmd: &str) -> bool {
    let out = run_timeout(
        std::process::Command::new("setpriv").args(["--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c", cmd]),
        60,
    );
    out.status.success()
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn posix_acls_are_enforced_inherited_and_follow_chmod() {
    let mut d = Daemon::start();
    let m = d.volume("v");
    let dir = m.join("shared");
    let q = |p: &Path| p.display().to_string();
    sh(&format!("mkdir -m 0770 {}", q(&dir)));
    assert!(!as_nobody(&format!("touch {}/a", q(&dir))), "nobody wrote into a 0770 root directory");
    // A named user entry grants access, and the mask becomes the group bits of the mode.
    sh(&format!("setfacl -m u:nobody:rwx {}", q(&dir)));
    assert!(as_nobody(&format!("touch {}/a", q(&dir))), "the ACL entry for nobody is not enforced");
    assert_eq!(mode(&dir), 0o770);
    assert!(sh(&format!("getfacl -c {}", q(&dir))).contains("user:nobody:rwx"));
    // A default ACL is inherited by new files (masked by the mode asked for) and directories.
    sh(&format!("setfacl -d -m u:nobody:rwx {}", q(&dir)));
    sh(&format!("umask 077; touch {}/new; mkdir {}/sub", q(&dir), q(&dir)));
    let acl = sh(&format!("getfacl -c {}/new", q(&dir)));
    assert!(acl.contains("user:nobody:rwx") && acl.contains("mask::rw-"), "inherited ACL: {acl}");
    assert_eq!(mode(&dir.join("new")), 0o660, "a default ACL replaces the umask");
    assert!(as_nobody(&format!("echo x > {}/new", q(&dir))));
    assert!(sh(&format!("getfacl -cd {}/sub", q(&dir))).contains("user:nobody:rwx"), "a new directory inherits the default ACL");
    // chmod rewrites the mask: the named entry no longer grants writing.
    sh(&format!("chmod 0640 {}/new", q(&dir)));
    assert!(sh(&format!("getfacl -c {}/new", q(&dir))).contains("mask::r--"));
    assert!(!as_nobody(&format!("echo y > {}/new", q(&dir))), "chmod did not narrow the ACL");
    // Removing the ACLs takes the access away again.
    sh(&format!("setfacl -b {}", q(&dir)));
    assert!(!as_nobody(&format!("touch {}/b", q(&dir))));
    assert_eq!(mode(&dir), 0o770);
    // Without a default ACL the umask applies.
    sh(&format!("umask 027; touch {}/plain", q(&m)));
    assert_eq!(mode(&m.join("plain")), 0o640);
    // A clone keeps the ACLs.
    d.ok(&["clone", "v", "c"]);
    let c = d.mount("c");
    let acl = sh(&format!("getfacl -c {}/shared/new", q(&c)));
    assert!(acl.contains("user:nobody:rwx") && acl.contains("mask::r--"), "clone's ACL: {acl}");
    // A malformed ACL is refused and changes nothing.
    let cpath = std::ffi::CString::new(q(&dir.join("new"))).unwrap();
    let r = unsafe { libc::setxattr(cpath.as_ptr(), c"system.posix_acl_access".as_ptr(), b"\x02\0\0\0junk".as_ptr().cast(), 8, 0) };
    assert_eq!((r, errno()), (-1, libc::EINVAL));
    assert_eq!(mode(&dir.join("new")), 0o640);
    d.fsck_clean();
}

/// `mount -o remount,ro` and back, through mount(8) and the helper it runs; then an fstab
/// line's options (nosuid, nodev, noexec kept by the kernel and across a restart; unknown
/// ones refused), and a mount right after a plain `umount`.
#[test]
fn mount_helper_remounts_and_takes_fstab_options() {
    let helper = Path::new("/sbin/mount.fuse.clonefs");
    // Install the helper for this test unless the host has one (setup.sh links it).
    let _link = (!helper.exists()).then(|| {
        std::os::unix::fs::symlink(BIN, helper).unwrap();
        Unlink(helper)
    });
    let mut d = Daemon::start();
    let v = d.volume("v");
    fs::write(v.join("a"), b"one").unwrap();
    // The mount table names the volume and the type mount(8) runs our helper for.
    let mounts = fs::read_to_string("/proc/mounts").unwrap();
    let line: Vec<&str> = mounts.lines().find(|l| l.split(' ').nth(1) == v.to_str()).unwrap().split(' ').collect();
    assert_eq!((line[0], line[2]), ("v", "fuse.clonefs"), "{line:?}");
    let store = d.store.clone();
    let remount = |opts: &str, dir: &Path| {
        let out = run_timeout(
            std::process::Command::new("mount").args(["-o", opts]).arg(dir).env("CLONEFS_STORE", &store),
            60,
        );
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (ok, err) = remount("remount,ro", &v);
    assert!(ok, "remount,ro: {err}");
    let opts = |dir: &Path| {
        let mounts = fs::read_to_string("/proc/mounts").unwrap();
        mounts.lines().find(|l| l.split(' ').nth(1) == dir.to_str()).unwrap().split(' ').nth(3).unwrap().to_string()
    };
    assert!(opts(&v).split(',').any(|o| o == "ro"), "{}", opts(&v));
    assert_eq!(fs::write(v.join("a"), b"two").unwrap_err().raw_os_error(), Some(libc::EROFS));
    assert_eq!(fs::write(v.join("b"), b"x").unwrap_err().raw_os_error(), Some(libc::EROFS));
    assert_eq!(fs::read(v.join("a")).unwrap(), b"one");
    let status = d.json(&["status", "--json"]);
    assert_eq!(status["mounts"][0]["read_only"], true, "{status}");
    let list = d.json(&["list", "--json"]);
    assert_eq!(list[0]["read_only"], true, "{list}");
    // Snapshots still work on a read-only mount.
    d.ok(&["snapshot", "v@s"]);
    let (ok, err) = remount("remount,rw", &v);
    assert!(ok, "remount,rw: {err}");
    fs::write(v.join("a"), b"two").unwrap();
    assert_eq!(fs::read(v.join("a")).unwrap(), b"two");
    assert_eq!(d.json(&["status", "--json"])["mounts"][0]["read_only"], false);
    // A snapshot's mount stays read-only.
    let s = d.mount("v@s");
    let (ok, err) = remount("remount,rw", &s);
    assert!(!ok && err.contains("read-only view"), "remount,rw of a snapshot: {err}");
    assert_eq!(fs::write(s.join("a"), b"x").unwrap_err().raw_os_error(), Some(libc::EROFS));

    // An fstab line's options: the restrictions reach the kernel, the rest of mount(8)'s
    // are taken, an unknown one is refused and mounts nothing.
    fs::copy("/bin/true", v.join("true")).unwrap();
    sh(&format!("mknod {}/null c 1 3", v.display()));
    d.unmount(&v);
    let mount = |opts: &str| {
        let out = run_timeout(std::process::Command::new("mount").args(["-t", "fuse.clonefs", "v"]).arg(&v).args(["-o", opts]), 60);
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (ok, err) = mount(&format!("store={},nosuid,bogus", store.display()));
    assert!(!ok && err.contains("\"bogus\""), "an unknown option: {err}");
    assert!(!is_mounted(&v));
    let (ok, err) = mount(&format!("defaults,store={},nosuid,nodev,noexec,noatime,_netdev,nofail,x-systemd.requires=x.service", store.display()));
    assert!(ok, "fstab options: {err}");
    let restricted = |dir: &Path| {
        let o = opts(dir);
        for want in ["nosuid", "nodev", "noexec", "noatime"] {
            assert!(o.split(',').any(|x| x == want), "{want} missing from {o}");
        }
        let e = std::process::Command::new(dir.join("true")).status().unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EACCES), "executed on a noexec mount");
        assert_eq!(fs::File::open(dir.join("null")).unwrap_err().raw_os_error(), Some(libc::EACCES), "a device opened on nodev");
    };
    restricted(&v);
    d.kill9_leaving_mounts();
    d.restart();
    restricted(&v);
    // A remount keeps them (mount(2) clears a mount's flags that a remount leaves out).
    let (ok, err) = remount("remount,ro", &v);
    assert!(ok && opts(&v).split(',').any(|x| x == "ro"), "remount,ro: {err}");
    restricted(&v);
    let (ok, err) = remount("remount,rw", &v);
    assert!(ok && opts(&v).split(',').any(|x| x == "rw"), "remount,rw: {err}");
    restricted(&v);
    // A plain umount, then a mount there at once (the daemon's side of the old mount may
    // still be ending): it waits for it instead of calling the directory taken.
    assert!(run_timeout(std::process::Command::new("umount").arg(&v), 60).status.success());
    d.ok(&["mount", "v", v.to_str().unwrap(), "-o", "noexec"]);
    assert!(opts(&v).split(',').any(|x| x == "noexec") && !opts(&v).split(',').any(|x| x == "nosuid"), "{}", opts(&v));
    assert!(d.fails(&["mount", "v", v.to_str().unwrap(), "-o", "sync"]).contains("\"sync\""));
    d.fsck_clean();
}

struct Unlink<'a>(&'a Path);
impl Drop for Unlink<'_> {
    fn drop(&mut self) {
        let _ = fs::remove_file(self.0);
    }
}

/// A file handle as name_to_handle_at returns it: header then up to 128 bytes.
#[repr(C)]
struct Handle {
    bytes: u32,
    kind: i32,
    data: [u8; 128],
}

fn handle_of(p: &Path) -> Handle {
    let mut h = Handle { bytes: 128, kind: 0, data: [0; 128] };
    let mut mount_id = 0;
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    let r = unsafe { libc::name_to_handle_at(libc::AT_FDCWD, c.as_ptr(), (&mut h as *mut Handle).cast(), &mut mount_id, 0) };
    assert_eq!(r, 0, "name_to_handle_at {}: errno {}", p.display(), errno());
    h
}

/// Opens `h` on the filesystem mounted at `mnt`; the errno on failure.
fn open_handle(mnt: &Path, h: &mut Handle, flags: i32) -> Result<std::fs::File, i32> {
    use std::os::fd::FromRawFd;
    let m = fs::File::open(mnt).unwrap();
    let fd = unsafe { libc::open_by_handle_at(m.as_raw_fd(), (h as *mut Handle).cast(), flags) };
    if fd < 0 {
        return Err(errno());
    }
    Ok(unsafe { std::fs::File::from_raw_fd(fd) })
}

fn drop_caches() {
    sh("sync; echo 2 > /proc/sys/vm/drop_caches");
}

#[test]
fn file_handles_survive_cache_drops_hard_links_and_a_restart() {
    use std::io::Read;
    let mut d = Daemon::start();
    let v = d.volume("v");
    fs::create_dir(v.join("dir")).unwrap();
    fs::write(v.join("dir/f"), b"linked").unwrap();
    fs::hard_link(v.join("dir/f"), v.join("g")).unwrap();
    fs::write(v.join("dir/gone"), b"x").unwrap();
    let (mut f, mut g, mut dir, mut gone) =
        (handle_of(&v.join("dir/f")), handle_of(&v.join("g")), handle_of(&v.join("dir")), handle_of(&v.join("dir/gone")));
    let read = |file: Result<std::fs::File, i32>| {
        let mut s = String::new();
        file.expect("open_by_handle_at").read_to_string(&mut s).unwrap();
        s
    };
    fs::remove_file(v.join("dir/gone")).unwrap();
    drop_caches();
    assert_eq!(read(open_handle(&v, &mut f, libc::O_RDONLY)), "linked");
    assert_eq!(read(open_handle(&v, &mut g, libc::O_RDONLY)), "linked");
    let dfd = open_handle(&v, &mut dir, libc::O_RDONLY | libc::O_DIRECTORY).expect("directory handle");
    let name = std::ffi::CString::new("f").unwrap();
    let fd = unsafe { libc::openat(dfd.as_raw_fd(), name.as_ptr(), libc::O_RDONLY) };
    assert!(fd >= 0, "openat through a directory handle: errno {}", errno());
    unsafe { libc::close(fd) };
    drop(dfd);
    assert_eq!(open_handle(&v, &mut gone, libc::O_RDONLY).err(), Some(libc::ESTALE), "a removed file's handle");
    // The same handles after the daemon restarted and the volume was mounted again.
    d.stop();
    d.restart();
    let v = d.mount("v");
    assert_eq!(read(open_handle(&v, &mut f, libc::O_RDONLY)), "linked");
    assert_eq!(read(open_handle(&v, &mut g, libc::O_RDONLY)), "linked");
    d.fsck_clean();
}

/// Listings carry attributes (readdirplus) and the kernel keeps names and attributes long:
/// what `ls -l` and `stat` show must still follow every change, also the ones a rollback or
/// a restore makes behind the kernel's back.
#[test]
fn listings_and_cached_attributes_follow_every_change() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mut d = Daemon::start();
    let m = d.volume("v");
    let dir = m.join("d");
    fs::create_dir(&dir).unwrap();
    // More entries than one listing reply holds, of sizes and modes that tell them apart.
    let n = 3000u64;
    for i in 0..n {
        let p = dir.join(format!("f{i}"));
        fs::write(&p, vec![b'x'; (i % 97) as usize]).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600 | ((i % 2) as u32 * 0o044))).unwrap();
    }
    std::os::unix::fs::symlink("f1", dir.join("link")).unwrap();
    fs::create_dir(dir.join("sub")).unwrap();
    let check = |removed: &dyn Fn(u64) -> bool, size_of: &dyn Fn(u64) -> u64| {
        drop_caches();
        let mut seen = 0;
        for e in fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            let md = e.metadata().unwrap();
            assert_eq!(md.ino(), fs::symlink_metadata(e.path()).unwrap().ino());
            match name.as_str() {
                "link" => assert!(md.file_type().is_symlink()),
                "sub" => assert!(md.is_dir()),
                f => {
                    let i: u64 = f[1..].parse().unwrap();
                    assert!(!removed(i), "{f} is listed after its removal");
                    assert_eq!(md.len(), size_of(i), "size of {f}");
                    assert_eq!(md.permissions().mode() & 0o777, 0o600 | ((i % 2) as u32 * 0o044), "mode of {f}");
                    seen += 1;
                }
            }
        }
        assert_eq!(seen, (0..n).filter(|i| !removed(*i)).count());
    };
    check(&|_| false, &|i| i % 97);
    d.ok(&["snapshot", "v@before"]);
    // Changes through the mount: removals, a rewrite, new sizes.
    for i in (0..n).step_by(3) {
        fs::remove_file(dir.join(format!("f{i}"))).unwrap();
    }
    for i in (1..n).step_by(3) {
        fs::write(dir.join(format!("f{i}")), vec![b'y'; 200]).unwrap();
    }
    check(&|i| i % 3 == 0, &|i| if i % 3 == 1 { 200 } else { i % 97 });
    // The names and attributes the kernel holds now are stale after a rollback: it must
    // see the snapshot's, at once.
    fs::metadata(dir.join("f1")).unwrap();
    d.ok(&["rollback", "v@before"]);
    assert_eq!(fs::metadata(dir.join("f1")).unwrap().len(), 1, "stat after rollback shows the old size");
    assert_eq!(fs::read(dir.join("f1")).unwrap(), b"x", "read after rollback shows the old data");
    assert!(dir.join("f0").exists(), "a name removed before the rollback is back");
    check(&|_| false, &|i| i % 97);
    // A restore into the mounted volume: the changed names are looked up again.
    fs::remove_file(dir.join("f5")).unwrap();
    assert!(!dir.join("f5").exists());
    d.ok(&["restore", "v@before", "d/f5"]);
    assert_eq!(fs::metadata(dir.join("f5")).unwrap().len(), 5);
    // A directory restored over an existing one keeps its inode and gets the snapshot's mode.
    let sub = dir.join("sub");
    let old_mode = fs::metadata(&sub).unwrap().permissions().mode() & 0o7777;
    fs::set_permissions(&sub, fs::Permissions::from_mode(0o700)).unwrap();
    assert_eq!(fs::metadata(&sub).unwrap().permissions().mode() & 0o7777, 0o700);
    d.ok(&["restore", "v@before", "d/sub", "--force"]);
    assert_eq!(fs::metadata(&sub).unwrap().permissions().mode() & 0o7777, old_mode, "stat after restoring a directory in place");
    d.fsck_clean();
}

/// A volume is never mounted over another filesystem, and its unmount never takes another
/// away: mounted over a tmpfs, `clonefs unmount` unmounted the tmpfs too.
#[test]
fn mounts_never_stack_over_or_unmount_another_filesystem() {
    struct Tmpfs(std::path::PathBuf);
    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let tmpfs = |dir: &Path| {
        fs::create_dir_all(dir).unwrap();
        assert!(run_timeout(std::process::Command::new("mount").args(["-t", "tmpfs", "none"]).arg(dir), 60).status.success());
        Tmpfs(dir.to_path_buf())
    };
    let mut d = Daemon::start();
    d.ok(&["create", "v"]);
    let below = d.tmp.path().join("below");
    let _t = tmpfs(&below);
    fs::write(below.join("theirs"), b"x").unwrap();
    let err = d.fails(&["mount", "v", below.to_str().unwrap()]);
    assert!(err.contains("already a mountpoint (tmpfs)"), "{err}");
    assert_eq!(fs::read(below.join("theirs")).unwrap(), b"x");

    let v = d.mount("v");
    fs::write(v.join("ours"), b"y").unwrap();
    let over = tmpfs(&v);
    let err = d.fails(&["unmount", v.to_str().unwrap()]);
    assert!(err.contains("tmpfs filesystem mounted over"), "{err}");
    drop(over);
    d.unmount(&v);
    assert!(!is_mounted(&v));
    assert_eq!(fs::read(below.join("theirs")).unwrap(), b"x", "the other filesystem went");
    let v = d.mount("v");
    assert_eq!(fs::read(v.join("ours")).unwrap(), b"y");
}
