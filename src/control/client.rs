//! The CLI side of the control socket.

use super::{Request, Response, SOCKET_NAME};
use crate::error::{Error, Result};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Sends one request to the daemon of `store` and returns its data, or its error.
pub fn call(store: &Path, req: &Request) -> Result<serde_json::Value> {
    let path = store.join(SOCKET_NAME);
    let mut s = UnixStream::connect(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::PermissionDenied => Error::Denied(format!(
            "permission denied on {} (the store and its socket belong to the daemon's user)",
            path.display()
        )),
        _ => Error::NoDaemon(format!(
            "no clonefs daemon is running for store {} (start one with `clonefs daemon --store {}`)",
            store.display(),
            store.display()
        )),
    })?;
    // Long operations (fsck, destroy of a big volume) may take a while; a hung daemon may not.
    s.set_read_timeout(Some(Duration::from_secs(3600)))?;
    let mut line = serde_json::to_vec(req).map_err(|e| Error::Invalid(e.to_string()))?;
    line.push(b'\n');
    s.write_all(&line)?;
    let mut resp = String::new();
    BufReader::new(s).read_line(&mut resp)?;
    if resp.is_empty() {
        return Err(Error::NoDaemon("the daemon closed the connection without answering".into()));
    }
    let r: Response = serde_json::from_str(&resp).map_err(|e| Error::Corrupt(format!("bad daemon reply: {e}")))?;
    if r.ok {
        Ok(r.data)
    } else {
        let msg = r.error.unwrap_or_else(|| "the daemon reported an error".into());
        Err(Error::from_kind(r.kind.as_deref().unwrap_or("io"), msg))
    }
}

/// True if a daemon answers on the store's socket.
pub fn ping(store: &Path) -> bool {
    call(store, &Request::Ping).is_ok()
}
