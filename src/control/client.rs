//! The CLI side of the control socket.

use super::{Request, Response, SOCKET_NAME};
use crate::error::{Error, Result};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Connects to the daemon of `store`.
pub fn connect(store: &Path) -> Result<UnixStream> {
    let refused = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::PermissionDenied => Error::Denied(format!(
            "permission denied on {} (the store and its socket belong to the daemon's user, and to its group if it was started with --group)",
            store.join(SOCKET_NAME).display()
        )),
        _ => Error::NoDaemon(format!(
            "no clonefs daemon is running for store {} (start one with `clonefs daemon --store {}`)",
            store.display(),
            store.display()
        )),
    };
    let addr = super::socket_addr(store).map_err(refused)?;
    UnixStream::connect(&addr.path).map_err(refused)
}

/// The error a failed reply carries.
pub fn error_of(r: Response) -> Error {
    let msg = r.error.unwrap_or_else(|| "the daemon reported an error".into());
    Error::from_kind(r.kind.as_deref().unwrap_or("io"), msg)
}

/// Opens a streaming request (`Request::streams`): the connection, request line sent.
pub fn open_stream(store: &Path, req: &Request) -> Result<UnixStream> {
    let mut s = connect(store)?;
    let mut line = serde_json::to_vec(req).map_err(|e| Error::Invalid(e.to_string()))?;
    line.push(b'\n');
    s.write_all(&line)?;
    Ok(s)
}

/// Sends one request to the daemon of `store` and returns its data, or its error.
pub fn call(store: &Path, req: &Request) -> Result<serde_json::Value> {
    let mut s = connect(store)?;
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
        Err(error_of(r))
    }
}

/// True if a daemon answers on the store's socket.
pub fn ping(store: &Path) -> bool {
    call(store, &Request::Ping).is_ok()
}
