//! `send` and `receive` on the control socket: the daemon's side of `transfer`.
//!
//! Send: one reply line (ok, or the error that stopped it before the first byte), then the
//! stream; a failure later is an `ABORT` frame in the stream. In two-way mode the sender
//! reads the receiver's `WANTS` frame back from the same connection.
//! Receive: the stream comes after the request line; the daemon answers with frames: a
//! `WANTS` for a two-way sender, and a `RESULT` (a `control::Response`) at the end.

use super::Daemon;
use crate::control::{server, Request, Response};
use crate::error::{Error, Result};
use crate::fs::Volume;
use crate::transfer::{self, kind, receive, send, FrameReader, FrameWriter, Header, ResumeToken};
use crate::volume::{parse_target, view::View, Catalog};
use serde_json::{json, Value};
use std::io::{BufWriter, Read};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

/// What sends, diffs, restores and defrags are reading, each with how many readers: `destroy`
/// refuses it, as the temporary hold of `zfs send` does, since GC would free what a reader
/// has yet to read; `rollback` refuses a claimed head, and `flatten` a lineage a claim
/// reads through.
#[derive(Default)]
pub(super) struct Sending(std::sync::Mutex<std::collections::HashMap<Claimed, u32>>);

/// A snapshot (by id), or a volume's live head (by volume id: a diff against it, a defrag).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Claimed {
    Snapshot(u64),
    Head(u64),
}

impl Claimed {
    /// What a reader of volume `v`'s snapshot `snap` (its head if None) claims.
    pub(super) fn of(store: &crate::store::Store, v: &crate::volume::VolumeRec, snap: Option<&str>) -> Result<Claimed> {
        Ok(match snap {
            Some(s) => Claimed::Snapshot(Catalog::snapshot(store, v, s)?.id()),
            None => Claimed::Head(v.id),
        })
    }
}

impl Sending {
    /// The table, locked: `destroy` checks it and acts under this lock, and a send looks its
    /// snapshots up and registers them under it, so neither slips between the other's steps.
    pub(super) fn lock(&self) -> Result<std::sync::MutexGuard<'_, std::collections::HashMap<Claimed, u32>>> {
        self.0.lock().map_err(|_| Error::Corrupt("send table poisoned by a panic".into()))
    }
}

/// A reader's claims (`Sending`), dropped when it ends.
pub(super) struct ReadClaim<'a> {
    table: &'a Sending,
    ids: Vec<Claimed>,
}

impl Drop for ReadClaim<'_> {
    fn drop(&mut self) {
        if let Ok(mut t) = self.table.lock() {
            for id in &self.ids {
                if let Some(n) = t.get_mut(id) {
                    *n -= 1;
                    if *n == 0 {
                        t.remove(id);
                    }
                }
            }
        }
    }
}

impl Daemon {
    /// Claims `ids` for a reader whose views have `chains` (lineage first, then its
    /// ancestors), refusing one that reads through a lineage being flattened. Call with the
    /// table locked, where the snapshots and heads were looked up.
    pub(super) fn claim_reads<'a>(
        &'a self,
        table: &mut std::collections::HashMap<Claimed, u32>,
        what: &str,
        chains: &[&[(u64, u64)]],
        ids: Vec<Claimed>,
    ) -> Result<ReadClaim<'a>> {
        for chain in chains {
            if let Some((l, _)) = chain.first() {
                self.through_flattening(what, *l, &chain[1..])?;
            }
        }
        for id in &ids {
            *table.entry(*id).or_default() += 1;
        }
        Ok(ReadClaim { table: &self.sending, ids })
    }

    pub(super) fn stream(&self, req: Request, uid: u32, input: Box<dyn Read + Send>, conn: UnixStream) {
        match req {
            Request::Send { snapshot, from, two_way, resume } => {
                if let Err(e) = self.send_stream(&snapshot, from.as_deref(), two_way, resume.as_deref(), input, &conn) {
                    log::warn!("send {snapshot}: {e}");
                }
            }
            Request::Receive { name, resumable, force } => {
                let request = json!({"op": "receive", "name": name, "resumable": resumable, "force": force});
                let mut nonce = 0;
                let r = self.may_receive(&name, uid).and_then(|_| self.receive_stream(&name, resumable, force, super::access::creator(uid), input, &conn, &mut nonce));
                self.record(uid, request, &r);
                if let Err(e) = &r {
                    log::warn!("receive {name}: {e}");
                }
                let resp = match r {
                    Ok(data) => Response { ok: true, error: None, kind: None, data },
                    Err(e) => server::fail(e.message(), e.kind()),
                };
                let mut w = FrameWriter::reply(&conn, nonce);
                let _ = w.frame(kind::RESULT, &serde_json::to_vec(&resp).unwrap_or_default());
                let _ = w.flush();
            }
            other => server::respond(&conn, &server::fail(format!("{other:?} does not stream"), "invalid")),
        }
    }

    /// Resolves what to send: (header, snapshot chain, base chain).
    fn send_source(&self, snapshot: &str, from: Option<&str>, two_way: bool, resume: Option<&str>) -> Result<send::Source> {
        let store = &self.store;
        let (v, s, base, after) = match resume {
            Some(tok) => {
                let t = ResumeToken::parse(tok)?;
                let (v, s) = Catalog::snapshot_by_id(store, t.guid)?;
                let base = t.base.map(|b| Catalog::snapshot_by_id(store, b)).transpose()?;
                if let Some(a) = &t.after {
                    transfer::parse_position(a)?;
                }
                (v, s, base, t.after)
            }
            None => {
                let (vol, snap) = parse_target(snapshot)?;
                let snap = snap.ok_or_else(|| Error::Invalid(format!("{snapshot:?}: send takes a snapshot, VOL@SNAP")))?;
                let v = Catalog::get(store, &vol)?;
                let s = Catalog::snapshot(store, &v, &snap)?;
                let base = match from {
                    Some(f) => {
                        let (bv, bs) = parse_target(f)?;
                        let bs = bs.ok_or_else(|| Error::Invalid(format!("{f:?}: --from takes a snapshot, VOL@SNAP")))?;
                        let bv = Catalog::get(store, &bv)?;
                        Some((bv.clone(), Catalog::snapshot(store, &bv, &bs)?))
                    }
                    None => None,
                };
                (v, s, base, None)
            }
        };
        if let Some((bv, bs)) = &base {
            if bs.id() == s.id() {
                return Err(Error::Invalid(format!("--from names the snapshot being sent ({}@{})", v.name, s.name)));
            }
            if bv.block_size != v.block_size {
                return Err(Error::Invalid(format!("{}@{} has {}-byte blocks, {}@{} {}", bv.name, bs.name, bv.block_size, v.name, s.name, v.block_size)));
            }
        }
        let chain = |v: &crate::volume::VolumeRec, name: &str| -> Result<Vec<(u64, u64)>> {
            Ok(View::new(store.clone(), self.catalog.view_of(store, v, Some(name), true)?).chain())
        };
        let nonce = u64::from_le_bytes(crate::store::random_bytes(8)?.try_into().map_err(|_| Error::Corrupt("short random read".into()))?);
        Ok(send::Source {
            header: Header {
                version: transfer::VERSION,
                nonce,
                volume: v.name.clone(),
                snapshot: s.name.clone(),
                guid: s.id(),
                created: s.created,
                base: base.as_ref().map(|(_, b)| b.id()),
                block_size: v.block_size,
                two_way,
                after,
                bytes: 0,
            },
            snap: chain(&v, &s.name)?,
            base: base.as_ref().map(|(bv, bs)| chain(bv, &bs.name)).transpose()?,
        })
    }

    fn send_stream(&self, snapshot: &str, from: Option<&str>, two_way: bool, resume: Option<&str>, input: Box<dyn Read + Send>, conn: &UnixStream) -> Result<()> {
        let claimed = self.sending.lock().and_then(|mut table| {
            let src = self.send_source(snapshot, from, two_way, resume)?;
            let chains: Vec<&[(u64, u64)]> = std::iter::once(&src.snap).chain(&src.base).map(|c| c.as_slice()).collect();
            let ids: Vec<Claimed> = std::iter::once(src.header.guid).chain(src.header.base).map(Claimed::Snapshot).collect();
            let claim = self.claim_reads(&mut table, &format!("send {snapshot}"), &chains, ids)?;
            Ok((src, claim))
        });
        let (src, _claim) = match claimed {
            Ok(x) => x,
            Err(e) => {
                server::respond(conn, &server::fail(e.message(), e.kind()));
                return Err(e);
            }
        };
        server::respond(conn, &Response { ok: true, error: None, kind: None, data: Value::Null });
        let out = BufWriter::with_capacity(1 << 20, conn);
        send::send(&self.store, &src, out, two_way.then_some(input))?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn receive_stream(
        &self,
        name: &str,
        resumable: bool,
        force: bool,
        creator: Option<u32>,
        input: Box<dyn Read + Send>,
        conn: &UnixStream,
        nonce: &mut u64,
    ) -> Result<Value> {
        if self.stopping() {
            return Err(Error::NoDaemon("the daemon is shutting down".into()));
        }
        let (frames, header) = FrameReader::start(std::io::BufReader::with_capacity(1 << 20, input))?;
        *nonce = header.nonce;
        let (hidden, base) = {
            // Under the flatten table's lock: a flatten claims a lineage after it has looked
            // for receives through it, and this one's hidden volume is made before the lock goes.
            let flattening = super::lock(&self.flattening)?;
            let begun = self.catalog.receive_begin(&self.store, name, &header, resumable, creator)?;
            let parents = Catalog::parents(&self.store, begun.0.lineage)?;
            if let Some(l) = parents.iter().find_map(|(l, _)| flattening.get(l)) {
                let e = Error::Conflict(format!("receive {name} reads through {l}, which is being flattened; try again when flatten has ended"));
                drop(flattening);
                // A receive that had not begun before leaves nothing.
                if begun.0.receiving.as_ref().is_some_and(|r| r.after.is_none()) {
                    let _ = self.catalog.receive_abort(&self.store, name);
                    self.wake_gc();
                }
                return Err(e);
            }
            begun
        };
        let applied = (|| -> Result<(transfer::Totals, u64)> {
            if let (Some(b), false) = (&base, force) {
                self.check_unchanged(name, &b.name)?;
            }
            let view = View::new(self.store.clone(), self.catalog.view_of(&self.store, &hidden, None, false)?);
            let mut reply = FrameWriter::reply(BufWriter::new(conn), header.nonce);
            let totals = receive::apply(&view, &header, frames, Some(&mut reply), |id| {
                match resumable {
                    true => self.catalog.receive_progress(&self.store, hidden.id, &transfer::position_text(id)),
                    false => Ok(()),
                }
            })?;
            view.sync()?;
            Ok(totals)
        })();
        let (totals, stream_bytes) = match applied {
            Ok(t) => t,
            Err(e) if resumable => {
                let _ = self.store.sync();
                let token = Catalog::pending_receive(&self.store, name)?.and_then(|p| p.receiving).map(|r| r.token().text());
                return Err(match token {
                    Some(t) => Error::from_kind(
                        e.kind(),
                        format!("{}; the receive into {name} can be resumed: clonefs send --resume {t} | clonefs receive {name}", e.message()),
                    ),
                    None => e,
                });
            }
            Err(e) => {
                if let Err(a) = self.catalog.receive_abort(&self.store, name) {
                    log::error!("cannot drop the failed receive into {name}: {a}");
                }
                self.wake_gc();
                return Err(e);
            }
        };
        let unchanged_since = base.as_ref().filter(|_| !force).map(|b| b.name.as_str());
        let finish = || self.finish_receive(name, hidden.id, unchanged_since);
        if let Err(e) = finish() {
            if !resumable {
                let _ = self.catalog.receive_abort(&self.store, name);
                self.wake_gc();
            }
            return Err(e);
        }
        self.wake_gc();
        Ok(json!({
            "volume": name,
            "snapshot": format!("{name}@{}", header.snapshot),
            "incremental": header.base.is_some(),
            "records": totals.records,
            "blocks": totals.blocks,
            "block_bytes": totals.block_bytes,
            "stream_bytes": stream_bytes,
        }))
    }

    /// Refuses an incremental receive into `vol` if it changed since snapshot `base`.
    fn check_unchanged(&self, vol: &str, base: &str) -> Result<()> {
        let v = Catalog::get(&self.store, vol)?;
        if let Some(live) = self.head_of(v.id)? {
            live.get().flush_older_than(std::time::Duration::ZERO)?;
        }
        self.unchanged(vol, base)
    }

    /// `check_unchanged` for a volume whose writes are flushed (and held back).
    fn unchanged(&self, vol: &str, base: &str) -> Result<()> {
        let a = self.catalog.open_view(&self.store, vol, Some(base), true)?.chain();
        let b = self.catalog.open_view(&self.store, vol, None, true)?.chain();
        if crate::volume::diff::differs(&self.store, &a, &b)? {
            return Err(Error::Conflict(format!(
                "{vol} changed since its snapshot {vol}@{base} (see `clonefs diff {vol}@{base} {vol}`); receive --force discards those changes"
            )));
        }
        Ok(())
    }

    /// Makes the received volume visible; a mounted target switches to it as after a rollback.
    /// `unchanged_since`: refuse if the target changed since that snapshot, checked with its
    /// writers held back, so no write lands between the check and the switch.
    fn finish_receive(&self, name: &str, hidden: u64, unchanged_since: Option<&str>) -> Result<()> {
        let target = Catalog::get(&self.store, name).ok();
        let live = match &target {
            Some(v) => self.head_of(v.id)?,
            None => None,
        };
        match live {
            Some(live) => {
                let (names, inos) = live.replace(|vol_ref| {
                    if let Some(base) = unchanged_since {
                        vol_ref.flush_older_than(std::time::Duration::ZERO)?;
                        self.unchanged(name, base)?;
                    }
                    let names = vol_ref.cached_names();
                    let inos = vol_ref.cached_inos();
                    self.catalog.receive_finish(&self.store, hidden)?;
                    vol_ref.discard_dirty();
                    let view = self.catalog.open_view(&self.store, name, None, vol_ref.read_only)?;
                    *vol_ref = Arc::new(Volume::open(view, self.budget.clone())?.with_kernel_opens(vol_ref.kernel_opens));
                    Ok((names, inos))
                })?;
                live.invalidate(&names, &inos);
            }
            None => {
                if let Some(base) = unchanged_since {
                    self.unchanged(name, base)?;
                }
                self.catalog.receive_finish(&self.store, hidden)?;
            }
        }
        Ok(())
    }

    /// Drops receives a crash or stop interrupted, but the resumable ones.
    pub(super) fn drop_interrupted_receives(&self) -> Result<()> {
        for v in Catalog::list(&self.store)? {
            if let Some(r) = v.receiving.filter(|r| !r.resumable) {
                log::info!("dropping the receive into {} that was interrupted", r.target);
                self.catalog.receive_abort(&self.store, &r.target)?;
            }
        }
        Ok(())
    }

    /// The receive in progress into `name` and its resume token, as properties.
    pub(super) fn receive_properties(&self, name: &str) -> Result<Vec<(String, String)>> {
        Ok(match Catalog::pending_receive(&self.store, name)?.and_then(|p| p.receiving) {
            Some(r) if r.resumable => vec![("receive_resume_token".into(), r.token().text())],
            _ => Vec::new(),
        })
    }
}
