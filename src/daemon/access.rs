//! Who may do what over the control socket. Root and the daemon's user may do anything.
//! With `daemon --group`, members of the group reach the socket too, and may do everything
//! that stays inside the store, but nothing that would act on the host as the daemon's user:
//! they mount only at directories they own whose parent directories only root can change,
//! always nosuid and nodev; they unmount and remount only their own mounts; and they cannot
//! stop the daemon, import host paths into database volumes, remap owners or create volumes
//! owned by another user.
//!
//! What a member makes (volumes, clones, snapshots, received volumes) records it as its
//! creator. A member may read, snapshot and clone any volume, but changes or destroys only
//! what it made: its volumes with their snapshots, and snapshots it took of other volumes.
//! The check reads the catalog before the request acts: a name that changes hands in
//! between (root renaming volumes meanwhile) is the one window, and only root opens it.

use super::*;
use std::os::unix::fs::MetadataExt;

impl Daemon {
    /// `req` as `caller` may make it (a member's mount made nosuid and nodev, its volumes
    /// its own), or why not.
    pub(super) fn admit(&self, req: Request, caller: Caller) -> Result<Request> {
        if caller.uid == 0 || caller.uid == crate::sys::geteuid() {
            return Ok(req);
        }
        let denied = |what: &str| Error::Denied(format!("{what} is for root and the daemon's user, not for uid {} (a member of its group)", caller.uid));
        match req {
            Request::Shutdown => Err(denied("stopping the daemon")),
            Request::DbInit { import: Some(_), .. } => Err(denied("importing a host path")),
            Request::Clone { ref uid_map, ref gid_map, owner, .. } if !uid_map.is_empty() || !gid_map.is_empty() || owner.is_some() => {
                Err(denied("remapping owners"))
            }
            Request::Create { name, block_size, .. } => Ok(Request::Create { name, block_size, uid: caller.uid, gid: caller.gid }),
            Request::Destroy { ref name }
            | Request::Flatten { ref name }
            | Request::Rename { old: ref name, .. }
            | Request::SetProperty { ref name, .. }
            | Request::Hold { ref name, .. }
            | Request::DbStart { ref name, .. }
            | Request::DbStop { ref name }
            | Request::DbReset { ref name, .. }
            | Request::DbDestroy { ref name } => {
                self.may_change(name, caller.uid)?;
                Ok(req)
            }
            // Both change the volume itself, whichever snapshot they name.
            Request::Rollback { name: ref target } | Request::Restore { snapshot: ref target, .. } => {
                self.may_change(&parse_target(target)?.0, caller.uid)?;
                Ok(req)
            }
            // It writes a marker into each database it checks.
            Request::DbVerify { ref names } => {
                for name in names {
                    self.may_change(name, caller.uid)?;
                }
                Ok(req)
            }
            Request::ReceiveAbort { ref name } => {
                self.may_receive(name, caller.uid)?;
                Ok(req)
            }
            Request::Mount { name, dir, read_only, writeback, fast_open, restrict } => {
                // The path as checked: a link on the way (the member's to change) is gone.
                let dir = member_mountpoint(&dir, caller.uid)?;
                let restrict = Restrict { nosuid: true, nodev: true, ..restrict };
                Ok(Request::Mount { name, dir, read_only, writeback, fast_open, restrict })
            }
            Request::Unmount { ref dir } | Request::Remount { ref dir, .. } => {
                let canonical = dir.canonicalize().unwrap_or_else(|_| dir.clone());
                if !lock(&self.mounts)?.iter().any(|m| m.dir == canonical && m.by == caller.uid) {
                    return Err(Error::Denied(format!(
                        "{} is not a mount of uid {}: a member of the daemon's group unmounts and remounts its own mounts only",
                        dir.display(),
                        caller.uid
                    )));
                }
                // The path as checked, as for a mount.
                Ok(match req {
                    Request::Remount { read_only, .. } => Request::Remount { dir: canonical, read_only },
                    _ => Request::Unmount { dir: canonical },
                })
            }
            req => Ok(req),
        }
    }
}

/// `uid` as the creator of what it makes: None for root and the daemon's user, who may
/// change everything anyway.
pub(super) fn creator(uid: u32) -> Option<u32> {
    (uid != 0 && uid != crate::sys::geteuid()).then_some(uid)
}

impl Daemon {
    /// Refuses member `uid` a change to `name` (VOL or VOL@SNAP) it did not make: a volume
    /// is its when it made it, a snapshot when it took it or made its volume. A name that
    /// does not exist passes, for the request to report.
    fn may_change(&self, name: &str, uid: u32) -> Result<()> {
        let (vol, snap) = parse_target(name)?;
        let v = match Catalog::get(&self.store, &vol) {
            Ok(v) => v,
            Err(Error::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let made_by = match snap {
            _ if v.creator == Some(uid) => return Ok(()),
            None => v.creator,
            Some(s) => match Catalog::snapshot(&self.store, &v, &s) {
                Ok(s) if s.creator == Some(uid) => return Ok(()),
                Ok(s) => s.creator,
                Err(Error::NotFound(_)) => return Ok(()),
                Err(e) => return Err(e),
            },
        };
        Err(Error::Denied(format!(
            "{name} was made by {}, not by uid {uid}: a member of the daemon's group changes and destroys only the volumes and snapshots it made",
            made_by.map_or_else(|| "root".to_string(), |u| format!("uid {u}"))
        )))
    }

    /// Refuses member `uid` a receive into (or an abort of a receive into) `name` unless
    /// the volume, or the receive in progress, is its own.
    pub(super) fn may_receive(&self, name: &str, uid: u32) -> Result<()> {
        if creator(uid).is_none() {
            return Ok(());
        }
        if let Some(p) = Catalog::pending_receive(&self.store, name)? {
            if p.creator != Some(uid) {
                return Err(Error::Denied(format!("the receive into {name} in progress is not uid {uid}'s: a member of the daemon's group receives only into volumes it made")));
            }
        }
        self.may_change(name, uid)
    }
}

/// A member's mountpoint, resolved: a directory it owns, under directories only root can
/// change, so that no rename can put another directory at the path between this check and
/// mount(2), which walks the path again.
fn member_mountpoint(dir: &Path, uid: u32) -> Result<PathBuf> {
    let refuse = |why: String| {
        Error::Denied(format!(
            "cannot mount at {}: {why} (a member of the daemon's group mounts at a directory it owns whose parent directories only root can change, such as /srv/clonefs/USER)",
            dir.display()
        ))
    };
    let canonical = dir.canonicalize().map_err(|e| refuse(e.to_string()))?;
    let meta = std::fs::metadata(&canonical).map_err(|e| refuse(e.to_string()))?;
    if meta.uid() != uid {
        return Err(refuse(format!("it is owned by uid {}, not by uid {uid}", meta.uid())));
    }
    for a in canonical.ancestors().skip(1) {
        let m = std::fs::metadata(a).map_err(|e| refuse(e.to_string()))?;
        if m.uid() != 0 || m.mode() & 0o022 != 0 {
            return Err(refuse(format!("{} can be changed by others than root", a.display())));
        }
    }
    Ok(canonical)
}
