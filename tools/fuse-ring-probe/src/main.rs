//! How long a FUSE round trip takes over `/dev/fuse` (fuser's threads, as clonefs mounts)
//! and over io_uring (kernel 6.14+, `fuse.enable_uring=1`), with a filesystem that does no
//! work: one 1 GiB file of constant bytes, opened with `FOPEN_DIRECT_IO` so every read is a
//! request. Run by `run.sh`; results in docs/benchmarks.md.
//!   fuse-ring-probe MOUNTPOINT plain|ring
use fuser::*;
use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, UNIX_EPOCH};

const FSIZE: u64 = 1 << 30;
const MAX_WRITE: u32 = 1 << 20;
const TTL: Duration = Duration::from_secs(3600);
static INITED: AtomicBool = AtomicBool::new(false);
static RING: AtomicBool = AtomicBool::new(false);
static DATA: [u8; MAX_WRITE as usize] = [7u8; MAX_WRITE as usize];

fn attr(ino: u64) -> FileAttr {
    let (kind, perm, size, nlink) = if ino == 1 { (FileType::Directory, 0o755, 0, 2) } else { (FileType::RegularFile, 0o644, FSIZE, 1) };
    FileAttr { ino: INodeNo(ino), size, blocks: size / 512, atime: UNIX_EPOCH, mtime: UNIX_EPOCH, ctime: UNIX_EPOCH, crtime: UNIX_EPOCH,
        kind, perm, nlink, uid: 0, gid: 0, rdev: 0, blksize: 4096, flags: 0 }
}

struct Fs;
impl Filesystem for Fs {
    fn init(&mut self, _r: &Request, c: &mut KernelConfig) -> std::io::Result<()> {
        if RING.load(Ordering::SeqCst) {
            c.add_capabilities(InitFlags::FUSE_OVER_IO_URING).map_err(|e| std::io::Error::other(format!("kernel offers no io_uring: {e:?}")))?;
        }
        // A ring entry's payload buffer must hold max_write.
        let _ = c.set_max_write(MAX_WRITE);
        INITED.store(true, Ordering::SeqCst);
        Ok(())
    }
    fn lookup(&self, _r: &Request, p: INodeNo, n: &OsStr, reply: ReplyEntry) {
        if p.0 == 1 && n == "f" { reply.entry(&TTL, &attr(2), Generation(0)) } else { reply.error(Errno::ENOENT) }
    }
    fn getattr(&self, _r: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) { reply.attr(&TTL, &attr(ino.0)) }
    fn open(&self, _r: &Request, _ino: INodeNo, _f: OpenFlags, reply: ReplyOpen) { reply.opened(FileHandle(1), FopenFlags::FOPEN_DIRECT_IO) }
    fn read(&self, _r: &Request, _ino: INodeNo, _fh: FileHandle, off: u64, size: u32, _f: OpenFlags, _l: Option<LockOwner>, reply: ReplyData) {
        reply.data(&DATA[..read_len(off, size)])
    }
    fn release(&self, _r: &Request, _ino: INodeNo, _fh: FileHandle, _f: OpenFlags, _l: Option<LockOwner>, _fl: bool, reply: ReplyEmpty) { reply.ok() }
    fn flush(&self, _r: &Request, _ino: INodeNo, _fh: FileHandle, _l: LockOwner, reply: ReplyEmpty) { reply.ok() }
}

fn read_len(off: u64, size: u32) -> usize {
    ((off + size as u64).min(FSIZE).saturating_sub(off) as usize).min(DATA.len())
}

// FUSE over io_uring (include/uapi/linux/fuse.h): a request arrives in an entry's header
// (fuse_in_header in `in_out`, the opcode's struct in `op_in`, then fuse_uring_ent_in_out)
// and payload buffers; the reply goes back in the same buffers with COMMIT_AND_FETCH.
const HDR: usize = 128 + 128 + 32;
const OP_IN: usize = 128;
const ENT: usize = 256;
const REGISTER: u32 = 1;
const COMMIT_AND_FETCH: u32 = 2;

fn put<T: Copy>(buf: &mut [u8], off: usize, v: T) {
    assert!(off + std::mem::size_of::<T>() <= buf.len());
    unsafe { std::ptr::write_unaligned(buf.as_mut_ptr().add(off) as *mut T, v) }
}
fn get<T: Copy>(buf: &[u8], off: usize) -> T {
    assert!(off + std::mem::size_of::<T>() <= buf.len());
    unsafe { std::ptr::read_unaligned(buf.as_ptr().add(off) as *const T) }
}

/// struct fuse_attr at `o`.
fn fuse_attr(buf: &mut [u8], o: usize, ino: u64) {
    let a = attr(ino);
    put(buf, o, ino);
    put(buf, o + 8, a.size);
    put(buf, o + 16, a.blocks);
    let mode = if ino == 1 { libc::S_IFDIR | 0o755 } else { libc::S_IFREG | 0o644 };
    put(buf, o + 60, mode);
    put(buf, o + 64, a.nlink);
    put(buf, o + 80, 4096u32);
}

struct Ent { hdr: Vec<u8>, payload: Vec<u8>, iov: [libc::iovec; 2] }

/// Serves queue `qid` with `depth` entries until the connection goes.
fn ring_queue(fd: i32, qid: u16, depth: usize) -> std::io::Result<u64> {
    use io_uring::{cqueue, opcode, squeue, types, IoUring};
    let mut ring: IoUring<squeue::Entry128, cqueue::Entry> = IoUring::builder().build((depth * 2) as u32)?;
    let mut ents: Vec<Ent> = (0..depth)
        .map(|_| Ent { hdr: vec![0; HDR], payload: vec![0; MAX_WRITE as usize], iov: unsafe { std::mem::zeroed() } })
        .collect();
    let sqe = |cmd_op: u32, e: &mut Ent, idx: usize, commit: u64| -> squeue::Entry128 {
        e.iov[0] = libc::iovec { iov_base: e.hdr.as_mut_ptr() as _, iov_len: HDR };
        e.iov[1] = libc::iovec { iov_base: e.payload.as_mut_ptr() as _, iov_len: e.payload.len() };
        // struct fuse_uring_cmd_req: flags, commit_id, qid.
        let mut cmd = [0u8; 80];
        cmd[8..16].copy_from_slice(&commit.to_ne_bytes());
        cmd[16..18].copy_from_slice(&qid.to_ne_bytes());
        let s = opcode::UringCmd80::new(types::Fd(fd), cmd_op).cmd(cmd).addr(Some(e.iov.as_ptr() as u64)).build().user_data(idx as u64);
        // The kernel wants sqe->len = 2 (iovecs); the crate has no setter for a uring_cmd.
        let mut raw: [u8; 128] = unsafe { std::mem::transmute(s) };
        raw[24..28].copy_from_slice(&2u32.to_ne_bytes());
        unsafe { std::mem::transmute(raw) }
    };
    for (i, e) in ents.iter_mut().enumerate() {
        let s = sqe(REGISTER, e, i, 0);
        unsafe { ring.submission().push(&s).expect("ring has room") };
    }
    let mut served = 0u64;
    loop {
        ring.submit_and_wait(1)?;
        let done: Vec<(u64, i32)> = ring.completion().map(|c| (c.user_data(), c.result())).collect();
        for (idx, res) in done {
            if res < 0 {
                return Ok(served);
            }
            served += 1;
            let e = &mut ents[idx as usize];
            let opcode: u32 = get(&e.hdr, 4);
            let unique: u64 = get(&e.hdr, 8);
            let nodeid: u64 = get(&e.hdr, 16);
            let commit: u64 = get(&e.hdr, ENT + 8);
            let psz = get::<u32>(&e.hdr, ENT + 16) as usize;
            let (err, n): (i32, usize) = match opcode {
                1 if nodeid == 1 && e.payload[..psz].starts_with(b"f\0") => {
                    // fuse_entry_out
                    put(&mut e.payload, 0, 2u64);
                    put(&mut e.payload, 8, 0u64);
                    put(&mut e.payload, 16, TTL.as_secs());
                    put(&mut e.payload, 24, TTL.as_secs());
                    put(&mut e.payload, 32, 0u64);
                    e.payload[40..128].fill(0);
                    fuse_attr(&mut e.payload, 40, 2);
                    (0, 128)
                }
                1 => (-libc::ENOENT, 0),
                3 => {
                    // fuse_attr_out
                    put(&mut e.payload, 0, TTL.as_secs());
                    put(&mut e.payload, 8, 0u64);
                    e.payload[16..104].fill(0);
                    fuse_attr(&mut e.payload, 16, nodeid);
                    (0, 104)
                }
                14 => {
                    // fuse_open_out: fh, FOPEN_DIRECT_IO
                    put(&mut e.payload, 0, 1u64);
                    put(&mut e.payload, 8, 1u32);
                    put(&mut e.payload, 12, 0i32);
                    (0, 16)
                }
                15 => {
                    // fuse_read_in: fh, offset, size
                    let n = read_len(get(&e.hdr, OP_IN + 8), get(&e.hdr, OP_IN + 16));
                    e.payload[..n].copy_from_slice(&DATA[..n]);
                    (0, n)
                }
                18 | 25 | 29 => (0, 0),
                _ => (-libc::ENOSYS, 0),
            };
            // fuse_out_header, then the payload's size.
            put(&mut e.hdr, 0, (16 + n) as u32);
            put(&mut e.hdr, 4, err);
            put(&mut e.hdr, 8, unique);
            put(&mut e.hdr, ENT + 16, n as u32);
            let s = sqe(COMMIT_AND_FETCH, e, idx as usize, commit);
            unsafe { ring.submission().push(&s).expect("ring has room") };
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(dir), Some(mode)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: fuse-ring-probe MOUNTPOINT plain|ring");
        std::process::exit(2);
    };
    let ring = mode == "ring";
    RING.store(ring, Ordering::SeqCst);
    let mut config = Config::default();
    config.mount_options = vec![MountOption::FSName("fuse-ring-probe".into()), MountOption::RO];
    config.acl = SessionACL::All;
    // As clonefs mounts.
    config.n_threads = Some(4);
    config.clone_fd = true;
    let s = Session::new(Fs, dir, &config).expect("mount");
    let fd = unsafe { libc::dup(s.as_fd().as_raw_fd()) };
    let bg = s.spawn().expect("session");
    if ring {
        while !INITED.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(5));
        }
        // The INIT reply must reach the kernel before a queue registers.
        std::thread::sleep(Duration::from_millis(100));
        let queues = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as u16;
        let hs: Vec<_> = (0..queues).map(|q| std::thread::spawn(move || ring_queue(fd, q, 4))).collect();
        for (q, h) in hs.into_iter().enumerate() {
            match h.join() {
                Ok(Ok(n)) => eprintln!("queue {q}: {n} requests"),
                Ok(Err(e)) => eprintln!("queue {q}: {e}"),
                Err(_) => eprintln!("queue {q}: panicked"),
            }
        }
    }
    let _ = bg.join();
}
