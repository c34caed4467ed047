//! Who may do what over the control socket. Root and the daemon's user may do anything.
//! With `daemon --group`, members of the group reach the socket too, and may do everything
//! that stays inside the store, but nothing that would act on the host as the daemon's user:
//! they mount only at directories they own whose parent directories only root can change,
//! always nosuid and nodev; they unmount and remount only their own mounts; and they cannot
//! stop the daemon, import host paths into database volumes, remap owners or create volumes
//! owned by another user.

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
