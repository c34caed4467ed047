//! `clonefs send` / `receive`: a snapshot (or the changes between two) as a byte stream.
//!
//! The stream names versioned identities (inodes, entries, extents, xattrs) with their
//! values in the snapshot, so a receiver rebuilds the volume with the same inode numbers
//! and extent maps, and an incremental stream is exactly the identities that differ
//! between the base and the snapshot (found through `births`, as `diff` does). Blocks
//! travel once per stream, named by BLAKE3 of their bytes: stores hash with different
//! secrets, so the stream's name must not depend on one, and a keyless name must resist
//! crafted collisions (a receiver that answers "I have it" trusts the name).
//!
//! Wire format: `MAGIC`, then frames `kind(1) len(4 LE) payload sum(8 LE)`, where `sum`
//! is xxh3-64 of kind, len and payload seeded with the stream's nonce plus the frame's
//! sequence number: a flipped byte, a frame moved or taken from another stream, and a
//! cut stream (no `END`) are all refused. The first frame is the header (JSON).

pub mod receive;
pub mod send;

use crate::error::{Error, Result};
use crate::store::Ident;
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};

pub const MAGIC: &[u8; 8] = b"CLFSSTRM";
pub const VERSION: u32 = 1;
/// The largest frame payload: a block (at most 1 MiB) with its name, or a list chunk.
pub const MAX_FRAME: usize = (1 << 20) + 64;

/// A block's name in streams: BLAKE3-256 of its bytes.
pub type Portable = [u8; 32];

pub fn portable(data: &[u8]) -> Portable {
    *blake3::hash(data).as_bytes()
}

pub mod kind {
    pub const HEADER: u8 = b'H';
    /// Two-way: a chunk of the names of every block the stream uses.
    pub const NAMES: u8 = b'L';
    pub const NAMES_END: u8 = b'l';
    /// Two-way, receiver to sender: one bit per listed name, set for those it lacks.
    pub const WANTS: u8 = b'W';
    /// The bytes the rest of the stream will carry (a progress total).
    pub const TOTAL: u8 = b'S';
    pub const BLOCK: u8 = b'B';
    pub const INODE: u8 = b'I';
    /// An inode gone (or unlinked while open) in the snapshot: everything of it goes.
    pub const PURGE: u8 = b'P';
    pub const DIRENT: u8 = b'D';
    pub const XATTR: u8 = b'X';
    pub const EXTENT: u8 = b'E';
    pub const END: u8 = b'Z';
    /// The sender failed half-way: the message says why.
    pub const ABORT: u8 = b'!';
    /// Receiver to its caller: the outcome (JSON `control::Response`).
    pub const RESULT: u8 = b'R';
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Header {
    pub version: u32,
    /// Seeds every frame's checksum.
    pub nonce: u64,
    /// The sender's names, for messages; the receiver chooses the volume's name.
    pub volume: String,
    pub snapshot: String,
    /// The snapshot's id (kept by the receiver's copy), and its creation time.
    pub guid: u64,
    pub created: i64,
    /// For an incremental stream: the id of the base snapshot the receiver must hold.
    pub base: Option<u64>,
    pub block_size: u32,
    /// Block names are listed first and only the blocks the receiver lacks travel.
    pub two_way: bool,
    /// A resumed stream: only identities after this position (`Position::text`).
    pub after: Option<String>,
    /// Bytes of blocks the stream may carry (a progress estimate).
    pub bytes: u64,
}

/// What the `END` frame says: the receiver checks it against what it applied.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Totals {
    pub records: u64,
    pub blocks: u64,
    pub block_bytes: u64,
}

/// Where in a stream's identity order a receive stopped: the identity (lineage 0) last
/// applied. Printed in resume tokens, so it is text.
pub fn position_text(id: &Ident) -> String {
    let hexs = |n: &[u8]| n.iter().map(|b| format!("{b:02x}")).collect::<String>();
    match id {
        Ident::Inode { ino, .. } => format!("i{ino}"),
        Ident::Dirent { dir, name, .. } => format!("d{dir}.{}", hexs(name)),
        Ident::Extent { ino, index, .. } => format!("e{ino}.{index}"),
        Ident::Xattr { ino, name, .. } => format!("x{ino}.{}", hexs(name)),
        Ident::Count { .. } => "c".into(),
    }
}

pub fn parse_position(s: &str) -> Result<Ident> {
    let bad = || Error::Invalid(format!("bad stream position {s:?}"));
    let (k, rest) = s.split_at_checked(1).ok_or_else(bad)?;
    let (a, b) = rest.split_once('.').unwrap_or((rest, ""));
    let n = |t: &str| t.parse::<u64>().map_err(|_| bad());
    let unhex = |t: &str| -> Result<Vec<u8>> {
        if !t.len().is_multiple_of(2) {
            return Err(bad());
        }
        (0..t.len()).step_by(2).map(|i| u8::from_str_radix(&t[i..i + 2], 16).map_err(|_| bad())).collect()
    };
    Ok(match k {
        "i" => Ident::Inode { lineage: 0, ino: n(rest)? },
        "d" => Ident::Dirent { lineage: 0, dir: n(a)?, name: unhex(b)? },
        "e" => Ident::Extent { lineage: 0, ino: n(a)?, index: n(b)? },
        "x" => Ident::Xattr { lineage: 0, ino: n(a)?, name: unhex(b)? },
        _ => return Err(bad()),
    })
}

/// What `receive --resumable` leaves after an interruption, and `send --resume` takes:
/// which snapshot, from which base, and the last identity applied.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ResumeToken {
    pub guid: u64,
    pub base: Option<u64>,
    pub after: Option<String>,
}

impl ResumeToken {
    pub fn text(&self) -> String {
        let j = serde_json::to_vec(self).unwrap_or_default();
        format!("1-{}", j.iter().map(|b| format!("{b:02x}")).collect::<String>())
    }

    pub fn parse(s: &str) -> Result<ResumeToken> {
        let bad = || Error::Invalid(format!("not a clonefs resume token: {s:?}"));
        let hex = s.trim().strip_prefix("1-").ok_or_else(bad)?;
        if hex.len() % 2 != 0 {
            return Err(bad());
        }
        let bytes: Vec<u8> = (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|_| bad())).collect::<Result<_>>()?;
        serde_json::from_slice(&bytes).map_err(|_| bad())
    }
}

/// The message of a `RESULT` frame (a `control::Response`).
pub fn result_message(payload: &[u8]) -> String {
    match serde_json::from_slice::<crate::control::Response>(payload) {
        Ok(r) if r.ok => "ok".into(),
        Ok(r) => r.error.unwrap_or_else(|| "failed".into()),
        Err(_) => String::from_utf8_lossy(payload).into_owned(),
    }
}

fn sum(kind: u8, payload: &[u8], nonce: u64, seq: u64) -> u64 {
    sum_parts(kind, &[payload], nonce, seq)
}

/// `sum` of a payload given in parts (written without joining them).
fn sum_parts(kind: u8, parts: &[&[u8]], nonce: u64, seq: u64) -> u64 {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut h = xxhash_rust::xxh3::Xxh3::with_seed(nonce.wrapping_add(seq));
    h.update(&[kind]);
    h.update(&(len as u32).to_le_bytes());
    for p in parts {
        h.update(p);
    }
    h.digest()
}

/// Writes frames of one direction of a stream.
pub struct FrameWriter<W: Write> {
    out: W,
    nonce: u64,
    seq: u64,
    pub bytes: u64,
}

impl<W: Write> FrameWriter<W> {
    /// A stream's first direction: the magic, then frames.
    pub fn start(mut out: W, nonce: u64) -> Result<Self> {
        out.write_all(MAGIC)?;
        Ok(FrameWriter { out, nonce, seq: 0, bytes: MAGIC.len() as u64 })
    }

    /// The reply direction (no magic), seeded like the stream it answers.
    pub fn reply(out: W, nonce: u64) -> Self {
        FrameWriter { out, nonce, seq: 0, bytes: 0 }
    }

    pub fn frame(&mut self, kind: u8, payload: &[u8]) -> Result<()> {
        self.frame_parts(kind, &[payload])
    }

    /// A frame whose payload is `parts` one after the other (a block's name and bytes).
    pub fn frame_parts(&mut self, kind: u8, parts: &[&[u8]]) -> Result<()> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        debug_assert!(len <= MAX_FRAME);
        let mut head = [0u8; 5];
        head[0] = kind;
        head[1..].copy_from_slice(&(len as u32).to_le_bytes());
        self.out.write_all(&head)?;
        for p in parts {
            self.out.write_all(p)?;
        }
        self.out.write_all(&sum_parts(kind, parts, self.nonce, self.seq).to_le_bytes())?;
        self.seq += 1;
        self.bytes += 13 + len as u64;
        Ok(())
    }

    pub fn flush(&mut self) -> Result<()> {
        Ok(self.out.flush()?)
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

/// Reads and checks frames of one direction of a stream.
pub struct FrameReader<R: Read> {
    input: R,
    nonce: u64,
    seq: u64,
    pub bytes: u64,
}

fn rejected(why: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("stream rejected: {why}"))
}

impl<R: Read> FrameReader<R> {
    /// Reads the magic and the header frame of a stream.
    pub fn start(mut input: R) -> Result<(Self, Header)> {
        let mut m = [0u8; 8];
        read_full(&mut input, &mut m).map_err(|_| rejected("empty or cut before its header"))?;
        if &m != MAGIC {
            return Err(rejected("not a clonefs send stream"));
        }
        let mut r = FrameReader { input, nonce: 0, seq: 0, bytes: 8 };
        let (kind, payload, s) = r.raw()?;
        if kind != kind::HEADER {
            return Err(rejected("no header"));
        }
        let h: Header = serde_json::from_slice(&payload).map_err(|e| rejected(format!("bad header: {e}")))?;
        if h.version != VERSION {
            return Err(rejected(format!("stream version {} (this clonefs reads version {VERSION})", h.version)));
        }
        if s != sum(kind, &payload, h.nonce, 0) {
            return Err(rejected("header checksum mismatch"));
        }
        r.nonce = h.nonce;
        r.seq = 1;
        Ok((r, h))
    }

    pub fn reply(input: R, nonce: u64) -> Self {
        FrameReader { input, nonce, seq: 0, bytes: 0 }
    }

    fn raw(&mut self) -> Result<(u8, Vec<u8>, u64)> {
        let mut head = [0u8; 5];
        read_full(&mut self.input, &mut head).map_err(|_| rejected("cut short (no end record)"))?;
        let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if len > MAX_FRAME {
            return Err(rejected(format!("record of {len} bytes")));
        }
        let mut payload = vec![0u8; len];
        read_full(&mut self.input, &mut payload).map_err(|_| rejected("cut short inside a record"))?;
        let mut s = [0u8; 8];
        read_full(&mut self.input, &mut s).map_err(|_| rejected("cut short inside a record"))?;
        self.bytes += 13 + len as u64;
        Ok((head[0], payload, u64::from_le_bytes(s)))
    }

    /// The next frame, checked: (kind, payload). An `ABORT` frame is the sender's error.
    pub fn read(&mut self) -> Result<(u8, Vec<u8>)> {
        let (kind, payload, s) = self.raw()?;
        if s != sum(kind, &payload, self.nonce, self.seq) {
            return Err(rejected(format!("record {} is damaged, out of order or from another stream", self.seq)));
        }
        self.seq += 1;
        if kind == kind::ABORT {
            return Err(Error::Invalid(format!("the sender failed: {}", String::from_utf8_lossy(&payload))));
        }
        Ok((kind, payload))
    }
}

/// `read_exact` that also fails on a clean end of input.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<()> {
    r.read_exact(buf)
}

/// Payload helpers: little pieces in a fixed order.
pub(crate) struct Cur<'a> {
    b: &'a [u8],
}

impl<'a> Cur<'a> {
    pub fn new(b: &'a [u8]) -> Self {
        Cur { b }
    }
    pub fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.b.len() < n {
            return Err(rejected("record too short"));
        }
        let (x, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(x)
    }
    pub fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().map_err(|_| rejected("record too short"))?))
    }
    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    pub fn name(&mut self) -> Result<&'a [u8]> {
        let n = u16::from_le_bytes(self.take(2)?.try_into().map_err(|_| rejected("record too short"))?) as usize;
        self.take(n)
    }
    pub fn portable(&mut self) -> Result<Portable> {
        self.take(32)?.try_into().map_err(|_| rejected("record too short"))
    }
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.b)
    }
    pub fn done(&self) -> Result<()> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(rejected("record longer than its fields"))
        }
    }
}

pub(crate) fn put_name(out: &mut Vec<u8>, name: &[u8]) {
    out.extend_from_slice(&(name.len() as u16).to_le_bytes());
    out.extend_from_slice(name);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip() {
        for id in [
            Ident::Inode { lineage: 0, ino: 7 },
            Ident::Dirent { lineage: 0, dir: 1, name: b"a.b".to_vec() },
            Ident::Extent { lineage: 0, ino: 9, index: 123 },
            Ident::Xattr { lineage: 0, ino: 3, name: b"user.x".to_vec() },
        ] {
            assert_eq!(parse_position(&position_text(&id)).unwrap(), id);
        }
        assert!(parse_position("q1").is_err());
        let t = ResumeToken { guid: 5, base: Some(3), after: Some("e9.1".into()) };
        assert_eq!(ResumeToken::parse(&t.text()).unwrap(), t);
        assert!(ResumeToken::parse("zz").is_err());
    }

    #[test]
    fn frames_detect_damage_order_and_cuts() {
        let h = Header { version: VERSION, nonce: 42, volume: "v".into(), snapshot: "s".into(), guid: 1, created: 0, base: None, block_size: 4096, two_way: false, after: None, bytes: 0 };
        let mut w = FrameWriter::start(Vec::new(), 42).unwrap();
        w.frame(kind::HEADER, &serde_json::to_vec(&h).unwrap()).unwrap();
        w.frame(kind::INODE, b"one").unwrap();
        w.frame(kind::INODE, b"two").unwrap();
        let good = w.into_inner();
        let read_all = |b: &[u8]| -> Result<Vec<Vec<u8>>> {
            let (mut r, _) = FrameReader::start(b)?;
            Ok(vec![r.read()?.1, r.read()?.1])
        };
        assert_eq!(read_all(&good).unwrap(), vec![b"one".to_vec(), b"two".to_vec()]);
        let mut flipped = good.clone();
        let n = flipped.len();
        flipped[n - 12] ^= 1;
        assert!(read_all(&flipped).is_err());
        assert!(read_all(&good[..n - 3]).is_err());
        // The two records swapped: each is whole but out of order.
        let one_at = good.len() - 2 * 16;
        let mut swapped = good[..one_at].to_vec();
        swapped.extend_from_slice(&good[one_at + 16..]);
        swapped.extend_from_slice(&good[one_at..one_at + 16]);
        assert!(read_all(&swapped).is_err());
        assert!(read_all(b"not a stream at all").is_err());
    }
}
