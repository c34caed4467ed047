//! The sending side: the identities that differ between the base (or nothing) and the
//! snapshot, in identity order (inodes, entries, extents in file order, xattrs), each block's
//! bytes before the first extent that names it, then `END`.

use super::{kind, portable, put_name, FrameReader, FrameWriter, Header, Portable, Totals};
use crate::error::{Error, Result};
use crate::store::records::{self, Hash, InodeRec};
use crate::volume::diff::value;
use crate::store::{Ident, Store};
use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};

type Chain = Vec<(u64, u64)>;

/// What to send: the snapshot's chain, the base's (incremental), and the header to send.
pub struct Source {
    pub header: Header,
    pub snap: Chain,
    pub base: Option<Chain>,
}

enum Op {
    Inode(u64, Vec<u8>),
    Purge(u64),
    Dirent(u64, Vec<u8>, Option<Vec<u8>>),
    Xattr(u64, Vec<u8>, Option<Vec<u8>>),
    Extent(u64, u64, Option<Hash>),
}

/// The changes in order, and the blocks a resumed receiver holds already.
type Plan = (Vec<(Ident, Op)>, Vec<Hash>);

/// Ops per round of block reads: a round's blocks are read in one coalesced batch.
const ROUND: usize = 512;

/// The changes to send, in order, with the identity each comes from; and, for a resumed
/// stream, the blocks the receiver already holds (named by extents up to its position:
/// everything up to there was committed with its blocks).
fn plan(store: &Store, src: &Source) -> Result<Plan> {
    let empty = Vec::new();
    let base = src.base.as_ref().unwrap_or(&empty);
    let ids = crate::volume::diff::candidates(store, base, &src.snap)?;
    let after = src.header.after.as_deref().map(super::parse_position).transpose()?;
    let mut alive: HashMap<u64, bool> = HashMap::new();
    let mut out = Vec::new();
    let mut held = Vec::new();
    if let Some(a) = &after {
        for id in ids.range(..=a.clone()) {
            if let Ident::Extent { ino, .. } = id {
                if let Some(v) = value(store, id, &src.snap)? {
                    if let Some(f) = store.visible(&Ident::Inode { lineage: 0, ino: *ino }, &src.snap)? {
                        if InodeRec::decode(&f.value)?.is_some_and(|r| r.nlink > 0) {
                            held.push(<Hash>::try_from(&v[..]).map_err(|_| Error::Corrupt("bad extent value".into()))?);
                        }
                    }
                }
            }
        }
    }
    let range = match &after {
        Some(a) => ids.range((std::ops::Bound::Excluded(a.clone()), std::ops::Bound::Unbounded)),
        None => ids.range(..),
    };
    for id in range {
        let vb = value(store, id, &src.snap)?;
        let va = match &src.base {
            Some(b) => value(store, id, b)?,
            None => None,
        };
        if va == vb {
            continue;
        }
        let mut live = |ino: u64| -> Result<bool> {
            if let Some(a) = alive.get(&ino) {
                return Ok(*a);
            }
            let a = match store.visible(&Ident::Inode { lineage: 0, ino }, &src.snap)? {
                Some(f) => InodeRec::decode(&f.value)?.is_some_and(|r| r.nlink > 0),
                None => false,
            };
            alive.insert(ino, a);
            Ok(a)
        };
        let op = match id {
            Ident::Inode { ino, .. } => match vb {
                // An inode unlinked while open at the snapshot is not part of it.
                Some(v) if live(*ino)? => Op::Inode(*ino, v),
                _ if va.is_some() => Op::Purge(*ino),
                _ => continue,
            },
            Ident::Dirent { dir, name, .. } => Op::Dirent(*dir, name.clone(), vb),
            Ident::Xattr { ino, name, .. } if live(*ino)? => Op::Xattr(*ino, name.clone(), vb),
            Ident::Extent { ino, index, .. } if live(*ino)? => {
                let h = match vb {
                    Some(v) => Some(<Hash>::try_from(&v[..]).map_err(|_| Error::Corrupt("bad extent value".into()))?),
                    None => None,
                };
                Op::Extent(*ino, *index, h)
            }
            _ => continue,
        };
        out.push((id.clone(), op));
    }
    Ok((out, held))
}

/// The BLAKE3 names of `hashes`: recorded ones from the store, the rest read and hashed
/// (and recorded, so the next send of them reads nothing).
fn names_of(store: &Store, hashes: &[Hash], names: &mut HashMap<Hash, Portable>) -> Result<()> {
    let want: Vec<Hash> = hashes.iter().filter(|h| !names.contains_key(*h)).copied().collect();
    for chunk in want.chunks(ROUND) {
        let known = store.portables(chunk)?;
        let missing: Vec<Hash> = chunk.iter().zip(&known).filter(|(_, k)| k.is_none()).map(|(h, _)| *h).collect();
        for (h, k) in chunk.iter().zip(known) {
            if let Some(k) = k {
                names.insert(*h, k);
            }
        }
        if missing.is_empty() {
            continue;
        }
        let bytes = store.get_blocks(&missing)?;
        let mut t = store.txn();
        for (h, b) in missing.iter().zip(bytes) {
            let b = b.ok_or_else(|| Error::Corrupt(format!("block {} is not stored", records::hex(h))))?;
            let p = portable(&b);
            t.note_portable(h, &p)?;
            names.insert(*h, p);
        }
        t.commit(false)?;
    }
    Ok(())
}

/// Writes the stream of `src` to `out`. In two-way mode `wants` is the receiver's reply
/// direction. On a failure after the header an `ABORT` frame tells the receiver why.
/// `progress` is told the bytes written so far.
pub fn send<W: Write, R: Read>(store: &Store, src: &Source, out: W, wants: Option<R>) -> Result<Totals> {
    let (ops, held) = plan(store, src)?;
    let mut hashes: Vec<Hash> = Vec::new();
    let mut seen: HashSet<Hash> = HashSet::new();
    let held: HashSet<Hash> = held.into_iter().collect();
    for (_, op) in &ops {
        if let Op::Extent(_, _, Some(h)) = op {
            if seen.insert(*h) {
                hashes.push(*h);
            }
        }
    }
    let mut header = src.header.clone();
    header.bytes = hashes.len() as u64 * header.block_size as u64;
    let mut names: HashMap<Hash, Portable> = HashMap::new();
    if header.two_way {
        names_of(store, &hashes, &mut names)?;
    } else {
        let resent: Vec<Hash> = hashes.iter().filter(|h| held.contains(*h)).copied().collect();
        names_of(store, &resent, &mut names)?;
    }
    let mut w = FrameWriter::start(out, header.nonce)?;
    w.frame(kind::HEADER, &serde_json::to_vec(&header)?)?;
    let r = body(store, &header, &ops, &hashes, (names, held), &mut w, wants);
    if let Err(e) = &r {
        let _ = w.frame(kind::ABORT, e.to_string().as_bytes());
    }
    let _ = w.flush();
    r
}

fn body<W: Write, R: Read>(
    store: &Store,
    header: &Header,
    ops: &[(Ident, Op)],
    hashes: &[Hash],
    (mut names, held): (HashMap<Hash, Portable>, HashSet<Hash>),
    w: &mut FrameWriter<W>,
    wants: Option<R>,
) -> Result<Totals> {
    // Blocks whose bytes must travel: all (one-way) or those the receiver lacks.
    let wanted: Option<HashSet<Hash>> = match (header.two_way, wants) {
        (false, _) => None,
        (true, None) => return Err(Error::Invalid("a two-way send needs the receiver's replies".into())),
        (true, Some(input)) => {
            for chunk in hashes.chunks(32 << 10) {
                let mut p = Vec::with_capacity(chunk.len() * 32);
                for h in chunk {
                    p.extend_from_slice(&names[h]);
                }
                w.frame(kind::NAMES, &p)?;
            }
            w.frame(kind::NAMES_END, &[])?;
            w.flush()?;
            let mut reply = FrameReader::reply(input, header.nonce);
            let (k, bits) = reply.read()?;
            if k == kind::RESULT {
                return Err(Error::Invalid(format!("the receiver refused the stream: {}", super::result_message(&bits))));
            }
            if k != kind::WANTS || bits.len() != hashes.len().div_ceil(8) {
                return Err(Error::Invalid("the receiver's reply is not a list of wanted blocks".into()));
            }
            let set: HashSet<Hash> = hashes.iter().enumerate().filter(|(i, _)| bits[i / 8] & (1 << (i % 8)) != 0).map(|(_, h)| *h).collect();
            let mut total = 0u64;
            for h in &set {
                total += store.block_size(h)?.unwrap_or(0);
            }
            w.frame(kind::TOTAL, &total.to_le_bytes())?;
            Some(set)
        }
    };
    // Blocks the receiver holds already: sent earlier in this stream, or before a resume.
    let mut sent: HashSet<Hash> = held;
    let mut totals = Totals::default();
    for round in ops.chunks(ROUND) {
        let mut need: Vec<Hash> = Vec::new();
        let mut in_round: HashSet<Hash> = HashSet::new();
        for (_, op) in round {
            if let Op::Extent(_, _, Some(h)) = op {
                if !sent.contains(h) && wanted.as_ref().is_none_or(|s| s.contains(h)) && in_round.insert(*h) {
                    need.push(*h);
                }
            }
        }
        let mut bytes: HashMap<Hash, Vec<u8>> = HashMap::with_capacity(need.len());
        for (h, b) in need.iter().zip(store.get_blocks(&need)?) {
            bytes.insert(*h, b.ok_or_else(|| Error::Corrupt(format!("block {} is not stored", records::hex(h))))?);
        }
        let mut noted = store.txn();
        let mut fresh = false;
        let mut p = Vec::with_capacity(64);
        for (_, op) in round {
            p.clear();
            let k = match op {
                Op::Inode(ino, v) => {
                    p.extend_from_slice(&ino.to_le_bytes());
                    p.extend_from_slice(v);
                    kind::INODE
                }
                Op::Purge(ino) => {
                    p.extend_from_slice(&ino.to_le_bytes());
                    kind::PURGE
                }
                Op::Dirent(dir, name, v) => {
                    p.extend_from_slice(&dir.to_le_bytes());
                    put_name(&mut p, name);
                    if let Some(v) = v {
                        p.extend_from_slice(v);
                    }
                    kind::DIRENT
                }
                Op::Xattr(ino, name, v) => {
                    p.extend_from_slice(&ino.to_le_bytes());
                    put_name(&mut p, name);
                    p.push(v.is_some() as u8);
                    if let Some(v) = v {
                        p.extend_from_slice(v);
                    }
                    kind::XATTR
                }
                Op::Extent(ino, index, h) => {
                    p.extend_from_slice(&ino.to_le_bytes());
                    p.extend_from_slice(&index.to_le_bytes());
                    p.push(h.is_some() as u8);
                    if let Some(h) = h {
                        if let Some(b) = bytes.remove(h) {
                            let name = match names.get(h) {
                                Some(n) => *n,
                                None => {
                                    let n = portable(&b);
                                    noted.note_portable(h, &n)?;
                                    fresh = true;
                                    names.insert(*h, n);
                                    n
                                }
                            };
                            w.frame_parts(kind::BLOCK, &[&name, &b])?;
                            sent.insert(*h);
                            totals.blocks += 1;
                            totals.block_bytes += b.len() as u64;
                        }
                        let name = names.get(h).ok_or_else(|| Error::Corrupt("a block without its name".into()))?;
                        p.extend_from_slice(name);
                    }
                    kind::EXTENT
                }
            };
            w.frame(k, &p)?;
            totals.records += 1;
        }
        if fresh {
            noted.commit(false)?;
        }
    }
    w.frame(kind::END, &serde_json::to_vec(&totals)?)?;
    w.flush()?;
    Ok(totals)
}
