//! The only `unsafe` in clonefs: thin wrappers over libc calls std does not offer.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

pub struct StatVfs {
    pub frsize: u64,
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
}

pub fn statvfs(path: &Path) -> io::Result<StatVfs> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `c` is a valid NUL-terminated path and `s` a properly sized out-parameter.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::statvfs(c.as_ptr(), &mut s) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(StatVfs {
        frsize: s.f_frsize as u64,
        blocks: s.f_blocks as u64,
        bfree: s.f_bfree as u64,
        bavail: s.f_bavail as u64,
        files: s.f_files as u64,
        ffree: s.f_ffree as u64,
    })
}

/// Two malloc arenas instead of one per thread, and allocations of 16 MiB or more mapped
/// on their own. Each FUSE worker thread (four per mount) reads requests into a zeroed
/// buffer of 16 MiB + 4 KiB (fuser's) that a request fills only up to max_write (1 MiB).
/// Mapped, its untouched pages cost nothing; taken from the heap, where glibc's rising
/// mmap threshold put it once a large buffer had been freed, `calloc` zeroes all of it:
/// 24-64 MiB of RSS per idle mount (20 mounts: 0.5-1.3 GiB). The daemon's per-commit
/// buffers (at most 8 MiB of blocks) stay below the threshold: mapped per use, they cost a
/// fifth of sequential write speed in page faults (the log's one reused `O_DIRECT` buffer,
/// up to 16 MiB, is mapped once). Setting the threshold fixes glibc's trim threshold too
/// (128 KiB); 32 MiB keeps what the dynamic one gave, and `trim_malloc` gives the rest
/// back. Call before threads start.
pub fn tune_malloc() {
    // SAFETY: mallopt only sets allocator parameters; no other thread exists yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 16 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 32 << 20);
    }
}

/// Gives the pages of freed allocations back to the kernel, in every arena, once more than
/// `min` bytes lie free in them. glibc keeps them otherwise (every buffer under the 16 MiB
/// mmap threshold), and RSS would only grow. The threshold spares a streaming load its
/// few freed buffers: trimmed every time, they cost it page faults (4% of a cold read).
/// Allocations in an arena wait while it is trimmed.
pub fn trim_malloc(min: usize) {
    // SAFETY: both only walk the allocator's own lists, under its locks.
    unsafe {
        if libc::mallinfo2().fordblks > min {
            libc::malloc_trim(0);
        }
    }
}

/// Raises the soft limit of open files to the hard limit: the daemon keeps every segment
/// of the store open (one per 64 MiB of data).
pub fn raise_nofile() {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `r` is a valid rlimit for both calls.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

/// (uid, primary gid) of the user named `name` in the host's user database.
pub fn user_by_name(name: &str) -> Option<(u32, u32)> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: `c` is NUL-terminated; the returned record is read at once, before any other
    // call could reuse its static storage (the CLI is single-threaded here).
    unsafe {
        let p = libc::getpwnam(c.as_ptr());
        if p.is_null() {
            return None;
        }
        Some(((*p).pw_uid, (*p).pw_gid))
    }
}

/// The gid of the group named `name`.
pub fn group_by_name(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: as in `user_by_name`.
    unsafe {
        let p = libc::getgrnam(c.as_ptr());
        if p.is_null() {
            return None;
        }
        Some((*p).gr_gid)
    }
}

/// Whether process `pid` is alive (a zombie counts as gone).
pub fn process_running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses.
        Ok(s) => s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X')).unwrap_or(false),
        Err(_) => false,
    }
}

pub fn geteuid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

pub fn getegid() -> u32 {
    // SAFETY: getegid has no preconditions and cannot fail.
    unsafe { libc::getegid() }
}

/// Starts a new session so the daemon outlives the terminal that started it.
pub fn setsid() {
    // SAFETY: setsid has no memory-safety preconditions; failure (already a leader) is harmless.
    unsafe {
        libc::setsid();
    }
}

/// Sets the process umask: every file the process creates from then on (RocksDB's, the log,
/// the socket) gets at most the permissions `!mask` allows.
pub fn set_umask(mask: u32) {
    // SAFETY: umask has no preconditions and cannot fail.
    unsafe {
        libc::umask(mask as libc::mode_t);
    }
}

pub fn chmod_socket(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// Blocks the shutdown signals in this thread and every thread it starts afterwards, so that
/// `wait_for_signal` alone receives them.
pub fn block_shutdown_signals() -> io::Result<()> {
    // SAFETY: sigset_t is initialised by sigemptyset before use; pthread_sigmask only reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        let r = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r));
        }
    }
    Ok(())
}

/// Waits for SIGTERM, SIGINT or SIGHUP (blocked beforehand) and returns its number.
pub fn wait_for_signal() -> i32 {
    // SAFETY: as above; sigwait writes the signal number into `sig`.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        let mut sig = 0;
        libc::sigwait(&set, &mut sig);
        sig
    }
}

/// Sends a signal to ourselves (used to wake the signal thread for a requested shutdown).
pub fn raise_term() {
    // SAFETY: kill on our own pid with a valid signal number.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGTERM);
    }
}

/// Writes back every dirty page the kernel holds for the filesystem mounted at `dir`.
pub fn syncfs(dir: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(dir)?;
    let r = unsafe { libc::syncfs(f.as_raw_fd()) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The filesystem type (`ext4`, `fuse.clonefs`) of the topmost mount at exactly `dir` (an
/// absolute path without symlinks), from /proc/self/mountinfo; None if nothing is mounted
/// there.
pub fn mount_fstype(dir: &Path) -> io::Result<Option<String>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(mountinfo_fstype(&info, dir.as_os_str().as_bytes()))
}

fn mountinfo_fstype(info: &str, dir: &[u8]) -> Option<String> {
    // `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER`; the
    // mount point escapes space, tab, newline and backslash as octal. Later lines are
    // mounted over earlier ones.
    let unescape = |f: &str| -> Vec<u8> {
        let b = f.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            let octal = b.get(i + 1..i + 4).filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
            match octal {
                Some(d) => {
                    out.push(d.iter().fold(0u8, |a, c| a.wrapping_mul(8) + (c - b'0')));
                    i += 4;
                }
                None => {
                    out.push(b[i]);
                    i += 1;
                }
            }
        }
        out
    };
    info.lines().rev().find_map(|l| {
        let mut f = l.split(' ');
        (unescape(f.nth(4)?) == dir).then_some(())?;
        f.skip_while(|x| *x != "-").nth(1).map(str::to_string)
    })
}

/// Unmounts `dir`; with `lazy`, detaches it even while busy. A daemon that is not root
/// mounted through the setuid `fusermount3`, and only it may unmount for that user.
pub fn umount(dir: &Path, lazy: bool) -> io::Result<()> {
    if geteuid() != 0 {
        return fusermount_u(dir, lazy);
    }
    let c = CString::new(dir.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let flags = if lazy { libc::MNT_DETACH } else { 0 };
    // SAFETY: `c` is a valid NUL-terminated path.
    let r = unsafe { libc::umount2(c.as_ptr(), flags) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `fusermount3 -u [-z] DIR`; its "busy" becomes EBUSY, as umount2's would be.
fn fusermount_u(dir: &Path, lazy: bool) -> io::Result<()> {
    let mut cmd = std::process::Command::new("fusermount3");
    cmd.arg("-u");
    if lazy {
        cmd.arg("-z");
    }
    let out = cmd.arg("--").arg(dir).stdin(std::process::Stdio::null()).output()?;
    if out.status.success() {
        return Ok(());
    }
    let msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if msg.contains("busy") {
        return Err(io::Error::from_raw_os_error(libc::EBUSY));
    }
    Err(io::Error::other(format!("fusermount3 -u failed ({}): {msg}", out.status)))
}

/// The uid of the process at the other end of a Unix socket (SO_PEERCRED).
pub fn peer_cred(sock: &std::os::unix::net::UnixStream) -> io::Result<(u32, u32)> {
    use std::os::fd::AsRawFd;
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writing and `len` is the size of `cred`.
    let r = unsafe {
        libc::getsockopt(sock.as_raw_fd(), libc::SOL_SOCKET, libc::SO_PEERCRED, (&mut cred as *mut libc::ucred).cast(), &mut len)
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((cred.uid, cred.gid))
}

/// Gives `path` to group `gid` (its owner stays).
pub fn chown_group(path: &Path, gid: u32) -> io::Result<()> {
    std::os::unix::fs::chown(path, None, Some(gid))
}

/// The gid of group `name` (a number is taken as it is); None if there is no such group.
pub fn group_id(name: &str) -> io::Result<Option<u32>> {
    if let Ok(n) = name.parse::<u32>() {
        return Ok(Some(n));
    }
    let c = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let mut buf = vec![0u8; 16 << 10];
    // SAFETY: group is plain data filled by getgrnam_r; buf outlives the call, and the
    // pointers getgrnam_r stores into group point into buf, which is not read afterwards.
    let mut group: libc::group = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::group = std::ptr::null_mut();
    let r = unsafe { libc::getgrnam_r(c.as_ptr(), &mut group, buf.as_mut_ptr().cast(), buf.len(), &mut found) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    Ok((!found.is_null()).then_some(group.gr_gid))
}

/// Makes the filesystem mounted at `dir` read-only or writable again (MS_REMOUNT; the
/// kernel then refuses writes with EROFS before they reach the daemon).
/// `flags`: the mount's own (nosuid, nodev, noexec, noatime), which a remount replaces.
pub fn remount(dir: &Path, read_only: bool, flags: libc::c_ulong) -> io::Result<()> {
    let c = CString::new(dir.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let flags = flags | libc::MS_REMOUNT | if read_only { libc::MS_RDONLY } else { 0 };
    // SAFETY: `c` is a valid NUL-terminated path; the other pointers may be null for a remount.
    let r = unsafe { libc::mount(std::ptr::null(), c.as_ptr(), std::ptr::null(), flags, std::ptr::null()) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The bytes a read or write syscall moved, from its return value: None if a signal
/// interrupted it (call it again).
fn transferred(n: isize) -> io::Result<Option<usize>> {
    if n >= 0 {
        return Ok(Some(n as usize));
    }
    let e = io::Error::last_os_error();
    match e.kind() {
        io::ErrorKind::Interrupted => Ok(None),
        _ => Err(e),
    }
}

/// Writes `parts` one after another at `off` of `f`, all of them (`pwritev`, at most
/// `IOV_MAX` parts per call, again after a short write).
pub fn pwritev_all(f: &std::fs::File, parts: &[&[u8]], mut off: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    const IOV_MAX: usize = 1024;
    let (mut i, mut skip) = (0usize, 0usize);
    while i < parts.len() {
        if parts[i].len() == skip {
            (i, skip) = (i + 1, 0);
            continue;
        }
        let iov: Vec<io::IoSlice<'_>> = std::iter::once(&parts[i][skip..])
            .chain(parts[i + 1..].iter().copied())
            .take(IOV_MAX)
            .map(io::IoSlice::new)
            .collect();
        // SAFETY: IoSlice has the layout of iovec; the slices outlive the call.
        let n = unsafe { libc::pwritev(f.as_raw_fd(), iov.as_ptr().cast(), iov.len() as libc::c_int, off as libc::off_t) };
        let Some(mut n) = transferred(n)? else { continue };
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "pwritev wrote nothing"));
        }
        off += n as u64;
        while n > 0 {
            let left = parts[i].len() - skip;
            if n < left {
                skip += n;
                n = 0;
            } else {
                n -= left;
                (i, skip) = (i + 1, 0);
            }
        }
    }
    Ok(())
}

/// `len` bytes at `off` of `f`, read into fresh memory without zeroing it first (a cold
/// sequential read spent 3% of the daemon in that memset). UnexpectedEof if the file ends.
pub fn pread_exact(f: &std::fs::File, len: usize, off: u64) -> io::Result<Vec<u8>> {
    use std::os::fd::AsRawFd;
    let mut buf: Vec<u8> = Vec::with_capacity(len);
    let mut done = 0usize;
    while done < len {
        // SAFETY: the pointer and length stay inside `buf`'s allocation; pread only writes.
        let n = unsafe { libc::pread(f.as_raw_fd(), buf.as_mut_ptr().add(done).cast(), len - done, (off + done as u64) as libc::off_t) };
        let Some(n) = transferred(n)? else { continue };
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the file ends before the bytes asked for"));
        }
        done += n;
    }
    // SAFETY: pread wrote all `len` bytes.
    unsafe { buf.set_len(len) };
    Ok(buf)
}

/// The first `len` bytes of a file, mapped read-only and shared: reads of it are the page
/// cache's own pages, no copy. Unmapped on drop.
///
/// Touching a page not in memory reads it, and a failed read there raises SIGBUS, as does a
/// page past the file's end. So only ranges `populate` returned Ok for are read, and only
/// while the caller holds them (`release` after): segments are never truncated, so the one
/// way left to a SIGBUS is a page evicted in that window whose re-read then fails
/// (`Log::read`).
pub struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping is read-only and owned by this value alone; sharing its bytes
// between threads is sharing an immutable slice.
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

const PAGE: usize = 4096;

impl Mapping {
    /// Maps the first `len` (> 0) bytes of `f` (which may be longer than the file is now).
    pub fn new(f: &std::fs::File, len: usize) -> io::Result<Mapping> {
        use std::os::fd::AsRawFd;
        // SAFETY: a new mapping at an address the kernel picks; the fd is open for the call.
        let ptr = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, f.as_raw_fd(), 0) };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping { ptr, len })
    }

    /// The whole pages around [off, off + len), inside the mapping.
    fn pages(&self, off: usize, len: usize) -> Option<(*mut libc::c_void, usize)> {
        let start = off / PAGE * PAGE;
        let end = off.checked_add(len)?.min(self.len);
        // SAFETY (for the pointer arithmetic): start < end <= self.len.
        (start < end).then(|| (unsafe { self.ptr.cast::<u8>().add(start) }.cast(), end - start))
    }

    /// Reads every page of [off, off + len) into memory and maps it (MADV_POPULATE_READ): a
    /// page that cannot be read fails here with its error (EIO; EFAULT past the file's end)
    /// instead of a SIGBUS later. Unsupported before Linux 5.14 (EINVAL).
    pub fn populate(&self, off: usize, len: usize) -> io::Result<()> {
        let Some((p, n)) = self.pages(off, len).filter(|_| off + len <= self.len) else {
            return Err(io::Error::from_raw_os_error(libc::EFAULT));
        };
        // SAFETY: the range lies inside the mapping.
        if unsafe { libc::madvise(p, n, libc::MADV_POPULATE_READ) } != 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::EINVAL) => io::Error::new(io::ErrorKind::Unsupported, "MADV_POPULATE_READ is not supported"),
                _ => e,
            });
        }
        Ok(())
    }

    /// Bytes [off, off + len), which `populate` returned Ok for and no `release` since.
    pub fn slice(&self, off: usize, len: usize) -> &[u8] {
        assert!(off.checked_add(len).is_some_and(|end| end <= self.len), "a slice past the mapping");
        // SAFETY: inside the mapping, which lives as long as `self`; populated (see above).
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>().add(off), len) }
    }

    /// Unmaps the pages of [off, off + len) from this process (MADV_DONTNEED; the page
    /// cache keeps them): a long read would otherwise count every page it mapped as the
    /// daemon's resident memory. Whole `FAULT_AROUND` blocks, since a fault maps the cached
    /// pages of the block around it too (a 2 GiB read left 48 MiB mapped otherwise). A
    /// page shared with a range still in use is mapped again by its next touch.
    pub fn release(&self, off: usize, len: usize) {
        const FAULT_AROUND: usize = 64 << 10;
        let start = off / FAULT_AROUND * FAULT_AROUND;
        let end = off.saturating_add(len).div_ceil(FAULT_AROUND) * FAULT_AROUND;
        if let Some((p, n)) = self.pages(start, end - start) {
            // SAFETY: the range lies inside the mapping; DONTNEED on a shared file mapping
            // drops page table entries only.
            unsafe { libc::madvise(p, n, libc::MADV_DONTNEED) };
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`, `len` are what mmap returned; nothing borrows it past `self`.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// Allocates `len` bytes of disk for `f` (so later writes inside cannot fail with ENOSPC).
pub fn fallocate(f: &std::fs::File, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: the fd is open for writing for the duration of the call.
    let r = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, len as libc::off_t) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Asks the kernel to start reading `len` bytes at `off` of `f` into the page cache (no wait).
pub fn will_need(f: &std::fs::File, off: u64, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: the fd is open for the duration of the call; the call only takes integers.
    let r = unsafe { libc::posix_fadvise(f.as_raw_fd(), off as libc::off_t, len as libc::off_t, libc::POSIX_FADV_WILLNEED) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    Ok(())
}

/// Tells the service manager our state (`READY=1`, `STOPPING=1`) over `$NOTIFY_SOCKET`, as
/// sd_notify(3) does; nothing when the variable is unset (not started by systemd).
pub fn notify_service(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let sent = (|| -> io::Result<()> {
        let sock = std::os::unix::net::UnixDatagram::unbound()?;
        let bytes = path.as_encoded_bytes();
        match bytes.strip_prefix(b"@") {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                sock.send_to_addr(state.as_bytes(), &addr)?;
            }
            None => {
                sock.send_to(state.as_bytes(), &path)?;
            }
        }
        Ok(())
    })();
    if let Err(e) = sent {
        log::warn!("cannot notify the service manager ({state}): {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn mountinfo_names_the_topmost_mount_at_a_path() {
        let info = "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
                    40 22 0:50 / /mnt/a\\040b rw,nosuid - fuse.clonefs v rw,user_id=0\n\
                    41 40 0:51 / /mnt/a\\040b rw - tmpfs none rw\n\
                    42 22 0:52 / /mnt/c rw shared:7 master:3 - fuse.clonefs w rw\n";
        assert_eq!(mountinfo_fstype(info, b"/mnt/a b").as_deref(), Some("tmpfs"));
        assert_eq!(mountinfo_fstype(info, b"/mnt/c").as_deref(), Some("fuse.clonefs"));
        assert_eq!(mountinfo_fstype(info, b"/").as_deref(), Some("ext4"));
        assert_eq!(mountinfo_fstype(info, b"/mnt"), None);
    }

    #[test]
    fn pwritev_all_writes_every_part_in_order() {
        let f = tempfile::tempfile().unwrap();
        // More parts than one pwritev takes, empty ones among them.
        let parts: Vec<Vec<u8>> = (0..3000u32).map(|i| vec![(i % 251) as u8; (i % 7) as usize * 100]).collect();
        let refs: Vec<&[u8]> = parts.iter().map(|p| p.as_slice()).collect();
        pwritev_all(&f, &refs, 4096).unwrap();
        let want: Vec<u8> = parts.concat();
        let mut got = vec![0u8; want.len()];
        f.read_exact_at(&mut got, 4096).unwrap();
        assert!(got == want, "bytes differ");
        assert_eq!(f.metadata().unwrap().len(), 4096 + want.len() as u64);
    }
}
