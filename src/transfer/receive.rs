//! The receiving side: frames applied to the head of the volume being received (a hidden
//! volume, `volume::receiving`), in batches. Every block is checked against its BLAKE3 name
//! and stored under this store's own hash; identities are written with the values the
//! stream names, so inode numbers, extent maps and link counts come out as they were.

use super::{kind, portable, Cur, FrameReader, FrameWriter, Header, Portable, Totals};
use crate::error::{Error, Result};
use crate::store::records::{DirentRec, Hash, InodeRec};
use crate::store::Ident;
use crate::volume::view::{Ext, View};
use std::collections::HashMap;
use std::io::{Read, Write};

/// A frame as the reader hands it over.
struct Frame {
    kind: u8,
    payload: Vec<u8>,
    /// A block's hash in this store.
    hash: Option<Hash>,
    /// The stream's bytes up to here.
    bytes: u64,
}

/// Frames read, checked and (blocks) hashed on a thread of their own, so hashing and
/// reading overlap with applying. It stops after `END`, at the first error, or when the
/// applier is gone.
fn reader<R: Read + Send + 'static>(
    mut frames: FrameReader<R>,
    hasher: impl Fn(&[u8]) -> Hash + Send + 'static,
    block_max: usize,
) -> crossbeam_channel::Receiver<Result<Frame>> {
    let (tx, rx) = crossbeam_channel::bounded(64);
    let run = move || loop {
        let f = frames.read().and_then(|(kind, payload)| {
            let hash = match kind {
                kind::BLOCK => {
                    let data = payload.get(32..).unwrap_or_default();
                    if data.is_empty() || data.len() > block_max {
                        return Err(rejected(format!("a block of {} bytes in a volume of {block_max}-byte blocks", data.len())));
                    }
                    if portable(data)[..] != payload[..32] {
                        return Err(rejected("a block does not match its name"));
                    }
                    Some(hasher(data))
                }
                _ => None,
            };
            Ok(Frame { kind, payload, hash, bytes: frames.bytes })
        });
        let last = !matches!(&f, Ok(fr) if fr.kind != kind::END);
        if tx.send(f).is_err() || last {
            return;
        }
    };
    if let Err(e) = std::thread::Builder::new().name("clonefs-recv".into()).spawn(run) {
        log::error!("cannot start the stream reader: {e}");
    }
    rx
}

/// A batch commits past this many records or bytes of new blocks.
const BATCH_RECORDS: usize = 4096;
const BATCH_BYTES: usize = 8 << 20;

fn rejected(why: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("stream rejected: {why}"))
}

/// Applies the frames after the header to `view`. `reply`: the way back to a two-way
/// sender. `committed` is called with the last identity of every batch made durable-in-order
/// (the resume position). Returns what the `END` frame said, checked against what came.
pub fn apply<R: Read + Send + 'static, W: Write>(
    view: &View,
    header: &Header,
    frames: FrameReader<R>,
    mut reply: Option<&mut FrameWriter<W>>,
    mut committed: impl FnMut(&Ident) -> Result<()>,
) -> Result<(Totals, u64)> {
    let frames = reader(frames, view.hasher(), header.block_size as usize);
    // Blocks by name: those this stream stored or the store already holds (hash, size).
    let mut known: HashMap<Portable, Hash> = HashMap::new();
    // Blocks that came but whose first extent has not been staged yet.
    let mut pending: HashMap<Portable, (Hash, Vec<u8>)> = HashMap::new();
    let mut listed: Vec<Portable> = Vec::new();
    let mut got = Totals::default();
    let mut t = view.txn()?;
    let (mut n, mut bytes) = (0usize, 0usize);
    let mut last: Option<Ident> = None;
    loop {
        let Frame { kind: k, payload, hash: local, bytes: stream_bytes } = match frames.recv().unwrap_or_else(|_| Err(rejected("cut short (the reader stopped)"))) {
            Ok(f) => f,
            Err(e) => {
                // Every record staged so far is whole and checked: keep them, so a
                // resumable receive goes on from the last one that came.
                if n > 0 {
                    t.commit(false)?;
                    if let Some(l) = &last {
                        committed(l)?;
                    }
                }
                return Err(e);
            }
        };
        let mut c = Cur::new(&payload);
        let id: Ident = match k {
            kind::NAMES => {
                if !header.two_way || payload.len() % 32 != 0 {
                    return Err(rejected("unexpected list of block names"));
                }
                listed.extend(payload.chunks(32).map(|x| <Portable>::try_from(x).unwrap_or_default()));
                continue;
            }
            kind::NAMES_END => {
                let r = reply.as_deref_mut().ok_or_else(|| {
                    Error::Invalid("a two-way stream needs a way back to its sender (`clonefs receive --serve`)".into())
                })?;
                let mut bits = vec![0u8; listed.len().div_ceil(8)];
                for (i, chunk) in listed.chunks(4096).enumerate() {
                    for (j, have) in view.locals(chunk)?.into_iter().enumerate() {
                        match have {
                            Some((h, _)) => {
                                known.insert(chunk[j], h);
                            }
                            None => {
                                let at = i * 4096 + j;
                                bits[at / 8] |= 1 << (at % 8);
                            }
                        }
                    }
                }
                r.frame(kind::WANTS, &bits)?;
                r.flush()?;
                listed = Vec::new();
                continue;
            }
            kind::TOTAL => continue,
            kind::BLOCK => {
                // Checked by the reader, which named it with this store's hash.
                let name = c.portable()?;
                let h = local.ok_or_else(|| rejected("a block without its hash"))?;
                let mut data = payload;
                data.drain(..32);
                got.blocks += 1;
                got.block_bytes += data.len() as u64;
                pending.insert(name, (h, data));
                continue;
            }
            kind::INODE => {
                let ino = c.u64()?;
                let rec = InodeRec::decode(c.rest())?.ok_or_else(|| rejected("an inode record without an inode"))?;
                t.put_inode(ino, &rec)?;
                Ident::Inode { lineage: 0, ino }
            }
            kind::PURGE => {
                let ino = c.u64()?;
                c.done()?;
                t.purge_inode(ino)?;
                Ident::Inode { lineage: 0, ino }
            }
            kind::DIRENT => {
                let dir = c.u64()?;
                let name = c.name()?.to_vec();
                let rest = c.rest();
                if rest.is_empty() {
                    if let Some((at, Some(_))) = view.dirent(dir, &name)? {
                        t.remove_dirent(dir, &name, at)?;
                    }
                } else {
                    let d = DirentRec::decode(rest)?.ok_or_else(|| rejected("an entry record without an entry"))?;
                    t.put_dirent(dir, &name, d)?;
                }
                Ident::Dirent { lineage: 0, dir, name }
            }
            kind::XATTR => {
                let ino = c.u64()?;
                let name = c.name()?.to_vec();
                let set = c.u8()? != 0;
                let value = c.rest();
                let old = view.xattr(ino, &name)?;
                match (set, old) {
                    (true, old) => t.set_xattr(ino, &name, old.map(|o| o.0), Some(value))?,
                    (false, Some((at, Some(_)))) => t.set_xattr(ino, &name, Some(at), None)?,
                    (false, _) => {}
                }
                Ident::Xattr { lineage: 0, ino, name }
            }
            kind::EXTENT => {
                let ino = c.u64()?;
                let index = c.u64()?;
                let data = c.u8()? != 0;
                let new = if data {
                    let name = c.portable()?;
                    if let Some((h, b)) = pending.remove(&name) {
                        known.insert(name, h);
                        bytes += b.len();
                        // So a two-way receive of this block later needs none of its bytes.
                        t.note_portable(&h, &name)?;
                        Ext::Data(h, b.into())
                    } else if let Some(h) = known.get(&name) {
                        Ext::Shared(*h)
                    } else if let Some(Some((h, _))) = view.locals(&[name])?.pop() {
                        known.insert(name, h);
                        Ext::Shared(h)
                    } else {
                        return Err(rejected("an extent names a block the stream did not carry"));
                    }
                } else {
                    Ext::Hole
                };
                c.done()?;
                let old = view.extent(ino, index)?;
                t.set_extent(ino, index, old, new)?;
                Ident::Extent { lineage: 0, ino, index }
            }
            kind::END => {
                let said: Totals = serde_json::from_slice(&payload).map_err(|e| rejected(format!("bad end record: {e}")))?;
                if (said.records, said.blocks, said.block_bytes) != (got.records, got.blocks, got.block_bytes) {
                    return Err(rejected(format!(
                        "its end record says {} records and {} blocks, {} and {} came",
                        said.records, said.blocks, got.records, got.blocks
                    )));
                }
                t.commit(false)?;
                if let Some(l) = &last {
                    committed(l)?;
                }
                return Ok((got, stream_bytes));
            }
            other => return Err(rejected(format!("unknown record kind {other:#04x}"))),
        };
        got.records += 1;
        n += 1;
        last = Some(id);
        if n >= BATCH_RECORDS || bytes >= BATCH_BYTES {
            t.commit(false)?;
            if let Some(l) = &last {
                committed(l)?;
            }
            t = view.txn()?;
            n = 0;
            bytes = 0;
        }
    }
}
