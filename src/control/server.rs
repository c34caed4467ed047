//! The daemon side of the control socket: one thread accepts, one short-lived thread per
//! connection answers (requests are rare and some, like fsck, are long).

use super::{Request, Response, SOCKET_NAME};
use crate::daemon::Daemon;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub fn socket_path(store: &Path) -> PathBuf {
    store.join(SOCKET_NAME)
}

/// Binds the socket with mode 0600 (a stale socket from a crash is replaced).
pub fn bind(store: &Path) -> std::io::Result<UnixListener> {
    let path = socket_path(store);
    if path.exists() {
        if UnixStream::connect(&path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("a daemon already answers on {}", path.display()),
            ));
        }
        std::fs::remove_file(&path)?;
    }
    let l = UnixListener::bind(&path)?;
    crate::sys::chmod_socket(&path, 0o600)?;
    Ok(l)
}

pub fn serve(listener: UnixListener, daemon: Arc<Daemon>) {
    for conn in listener.incoming() {
        if daemon.stopping() {
            break;
        }
        let Ok(conn) = conn else { continue };
        let d = daemon.clone();
        let spawned = std::thread::Builder::new().name("clonefs-ctl".into()).spawn(move || answer(conn, &d));
        if let Err(e) = spawned {
            log::error!("control: cannot start a thread: {e}");
        }
    }
}

fn answer(conn: UnixStream, daemon: &Daemon) {
    let mut line = String::new();
    let mut reader = BufReader::new(&conn);
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let resp = match serde_json::from_str::<Request>(&line) {
        Ok(req) => {
            log::debug!("control: {req:?}");
            let shutdown = matches!(req, Request::Shutdown);
            let r = match daemon.handle(req) {
                Ok(data) => Response { ok: true, error: None, data },
                Err(e) => Response { ok: false, error: Some(e.to_string()), data: serde_json::Value::Null },
            };
            if shutdown {
                send(&conn, &r);
                daemon.shutdown();
                return;
            }
            r
        }
        Err(e) => Response { ok: false, error: Some(format!("bad request: {e}")), data: serde_json::Value::Null },
    };
    send(&conn, &resp);
}

fn send(mut conn: &UnixStream, r: &Response) {
    if let Ok(mut v) = serde_json::to_vec(r) {
        v.push(b'\n');
        let _ = conn.write_all(&v);
    }
}
