//! The daemon side of the control socket: one thread accepts, one short-lived thread per
//! connection answers (requests are rare and some, like fsck, are long).

use super::{Caller, Handler, Request, Response, MAX_REQUEST, SOCKET_NAME};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub fn socket_path(store: &Path) -> PathBuf {
    store.join(SOCKET_NAME)
}

/// Binds the socket with mode 0600, or 0660 owned by `group` (a stale socket from a crash
/// is replaced).
pub fn bind(store: &Path, group: Option<u32>) -> std::io::Result<UnixListener> {
    let path = socket_path(store);
    let addr = super::socket_addr(store)?;
    if path.exists() {
        if UnixStream::connect(&addr.path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("a daemon already answers on {}", path.display()),
            ));
        }
        std::fs::remove_file(&path)?;
    }
    let l = UnixListener::bind(&addr.path)?;
    if let Some(g) = group {
        crate::sys::chown_group(&path, g)?;
    }
    crate::sys::chmod_socket(&path, if group.is_some() { 0o660 } else { 0o600 })?;
    Ok(l)
}

pub fn serve(listener: UnixListener, daemon: Arc<dyn Handler>) {
    for conn in listener.incoming() {
        if daemon.stopping() {
            break;
        }
        let Ok(conn) = conn else { continue };
        let d = daemon.clone();
        let spawned = std::thread::Builder::new().name("clonefs-ctl".into()).spawn(move || answer(conn, &*d));
        if let Err(e) = spawned {
            log::error!("control: cannot start a thread: {e}");
        }
    }
}

pub fn fail(error: String, kind: &str) -> Response {
    Response { ok: false, error: Some(error), kind: Some(kind.into()), data: serde_json::Value::Null }
}

fn answer(conn: UnixStream, daemon: &dyn Handler) {
    let mut line = String::new();
    let mut reader = BufReader::new((&conn).take(MAX_REQUEST));
    if reader.read_line(&mut line).is_err() {
        return;
    }
    if !line.ends_with('\n') && line.len() as u64 >= MAX_REQUEST {
        respond(&conn, &fail(format!("request longer than {MAX_REQUEST} bytes"), "invalid"));
        return;
    }
    let resp = match serde_json::from_str::<Request>(&line) {
        Ok(req) => {
            log::debug!("control: {req:?}");
            let shutdown = matches!(req, Request::Shutdown);
            // The socket is 0600 (0660 with `daemon --group`): the peer is the daemon's user,
            // root or a member of the group; the handler decides what each may do.
            let caller = crate::sys::peer_cred(&conn).map(|(uid, gid)| Caller { uid, gid }).unwrap_or(Caller { uid: u32::MAX, gid: u32::MAX });
            if req.streams() {
                // What the peer sent past the request line is the start of its stream.
                let early = std::io::Cursor::new(reader.buffer().to_vec());
                match conn.try_clone() {
                    Ok(rest) => daemon.stream(req, caller, Box::new(early.chain(rest)), conn),
                    Err(e) => respond(&conn, &fail(e.to_string(), "io")),
                }
                return;
            }
            let r = match daemon.handle(req, caller) {
                Ok(data) => Response { ok: true, error: None, kind: None, data },
                Err(e) => fail(e.message(), e.kind()),
            };
            if shutdown && r.ok {
                respond(&conn, &r);
                daemon.shutdown();
                return;
            }
            r
        }
        Err(e) => fail(format!("bad request: {e}"), "invalid"),
    };
    respond(&conn, &resp);
}

/// Writes one reply line.
pub fn respond(mut conn: &UnixStream, r: &Response) {
    if let Ok(mut v) = serde_json::to_vec(r) {
        v.push(b'\n');
        let _ = conn.write_all(&v);
    }
}
