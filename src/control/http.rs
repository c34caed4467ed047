//! The control operations over HTTP (`daemon --http ADDR`), and the small HTTP/1.1 reader
//! and writer the metrics endpoint uses too.
//!
//! `POST /v1/request` takes the same JSON request the control socket takes (`Request`) and
//! answers the same `Response`; `GET /v1/volumes` and `GET /v1/status` are shorthands for
//! `list` and `status`. A TCP address needs a bearer token (`Authorization: Bearer ...`,
//! read from a file at start): without it, or with another, the answer is 401 and nothing
//! runs. A Unix socket (`unix:/path`) is made 0600 and needs none. One connection per
//! request (`Connection: close`), bodies up to `MAX_REQUEST`.

use super::{Handler, Request, Response, MAX_REQUEST};
use crate::error::{Error, Result};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Where the API listens.
#[derive(Clone, Debug)]
pub enum Addr {
    Tcp(std::net::SocketAddr),
    Unix(PathBuf),
}

impl std::str::FromStr for Addr {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Addr, String> {
        match s.strip_prefix("unix:") {
            Some(p) if p.starts_with('/') => Ok(Addr::Unix(PathBuf::from(p))),
            Some(_) => Err(format!("{s:?}: a Unix socket is unix:/absolute/path")),
            None => s.parse().map(Addr::Tcp).map_err(|e| format!("{s:?}: {e} (use HOST:PORT or unix:/path)")),
        }
    }
}

pub enum Listener {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener, PathBuf),
}

trait Stream: Read + Write + Send {
    fn timeouts(&self, d: Duration) -> std::io::Result<()>;
    fn shutdown_write(&self);

    /// Ends the exchange: closes our side, then reads what the client still sends (a body
    /// we refused unread), so the close does not reset the connection under the answer.
    fn finish(&mut self) {
        self.shutdown_write();
        let _ = self.timeouts(Duration::from_secs(1));
        let mut sink = [0u8; 8192];
        let mut left = 1usize << 20;
        while let Ok(n) = self.read(&mut sink) {
            if n == 0 || n >= left {
                break;
            }
            left -= n;
        }
    }
}
impl Stream for std::net::TcpStream {
    fn timeouts(&self, d: Duration) -> std::io::Result<()> {
        self.set_read_timeout(Some(d))?;
        self.set_write_timeout(Some(d))
    }
    fn shutdown_write(&self) {
        let _ = self.shutdown(std::net::Shutdown::Write);
    }
}
impl Stream for std::os::unix::net::UnixStream {
    fn timeouts(&self, d: Duration) -> std::io::Result<()> {
        self.set_read_timeout(Some(d))?;
        self.set_write_timeout(Some(d))
    }
    fn shutdown_write(&self) {
        let _ = self.shutdown(std::net::Shutdown::Write);
    }
}

impl Listener {
    /// Binds the API's address; a TCP one refuses to start without a token.
    pub fn bind(addr: &Addr, token: Option<&str>) -> Result<Listener> {
        match addr {
            Addr::Tcp(a) => {
                if token.is_none() {
                    return Err(Error::Invalid(format!(
                        "--http {a} needs --http-token-file (a file holding the bearer token); only a Unix socket (unix:/path) may go without"
                    )));
                }
                let l = std::net::TcpListener::bind(a).map_err(|e| Error::Invalid(format!("cannot serve the API at {a}: {e}")))?;
                Ok(Listener::Tcp(l))
            }
            Addr::Unix(p) => {
                if p.exists() {
                    std::fs::remove_file(p)?;
                }
                let l = std::os::unix::net::UnixListener::bind(p)
                    .map_err(|e| Error::Invalid(format!("cannot serve the API at {}: {e}", p.display())))?;
                crate::sys::chmod_socket(p, 0o600)?;
                Ok(Listener::Unix(l, p.clone()))
            }
        }
    }

    /// Connects to itself, so a blocked accept returns and sees that the daemon stops.
    pub fn wake(&self) {
        match self {
            Listener::Tcp(l) => {
                if let Ok(a) = l.local_addr() {
                    let _ = std::net::TcpStream::connect(a);
                }
            }
            Listener::Unix(_, p) => {
                let _ = std::os::unix::net::UnixStream::connect(p);
            }
        }
    }

    fn accept(&self) -> std::io::Result<Box<dyn Stream>> {
        Ok(match self {
            Listener::Tcp(l) => Box::new(l.accept()?.0),
            Listener::Unix(l, _) => Box::new(l.accept()?.0),
        })
    }
}

/// Reads a bearer token from `path` (the first line, trimmed); refuses an empty one.
pub fn read_token(path: &std::path::Path) -> Result<String> {
    let t = std::fs::read_to_string(path).map_err(|e| Error::Invalid(format!("cannot read the token file {}: {e}", path.display())))?;
    let t = t.lines().next().unwrap_or("").trim().to_string();
    if t.len() < 16 {
        return Err(Error::Invalid(format!("the token in {} is shorter than 16 characters", path.display())));
    }
    Ok(t)
}

pub struct HttpRequest {
    pub method: String,
    pub path: String,
    headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// A request the server answers with an error status instead of running it.
pub struct Refused(pub u16, pub String);

/// Reads one request: the head (at most 16 KiB) and a body of `Content-Length` bytes, at
/// most `MAX_REQUEST`.
pub fn read_request(s: &mut dyn Read) -> std::result::Result<HttpRequest, Refused> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > 16 << 10 {
            return Err(Refused(431, "request head too large".into()));
        }
        let n = s.read(&mut chunk).map_err(|e| Refused(408, format!("reading the request: {e}")))?;
        if n == 0 {
            return Err(Refused(400, "incomplete request".into()));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split_whitespace();
    let (method, path) = match (first.next(), first.next(), first.next()) {
        (Some(m), Some(p), Some(v)) if v.starts_with("HTTP/1.") => (m.to_string(), p.to_string()),
        _ => return Err(Refused(400, "not an HTTP/1.x request line".into())),
    };
    let mut headers = Vec::new();
    for l in lines {
        let (k, v) = l.split_once(':').ok_or_else(|| Refused(400, format!("bad header line {l:?}")))?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let mut req = HttpRequest { method, path, headers, body: Vec::new() };
    let len: u64 = match req.header("content-length") {
        Some(v) => v.parse().map_err(|_| Refused(400, format!("bad Content-Length {v:?}")))?,
        None => 0,
    };
    if len > MAX_REQUEST {
        return Err(Refused(413, format!("body of {len} bytes; at most {MAX_REQUEST}")));
    }
    let mut body = buf[head_end + 4..].to_vec();
    body.truncate(len as usize);
    while (body.len() as u64) < len {
        let n = s.read(&mut chunk).map_err(|e| Refused(408, format!("reading the body: {e}")))?;
        if n == 0 {
            return Err(Refused(400, "body shorter than Content-Length".into()));
        }
        let want = len as usize - body.len();
        body.extend_from_slice(&chunk[..n.min(want)]);
    }
    req.body = body;
    Ok(req)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        507 => "Insufficient Storage",
        _ => "Internal Server Error",
    }
}

/// Writes a whole response and closes the exchange.
pub fn respond(s: &mut dyn Write, status: u16, ctype: &str, extra: &str, body: &[u8]) {
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
        reason(status),
        body.len()
    );
    let _ = s.write_all(head.as_bytes()).and_then(|_| s.write_all(body)).and_then(|_| s.flush());
}

fn respond_json(s: &mut dyn Write, status: u16, r: &Response) {
    let body = serde_json::to_vec(r).unwrap_or_default();
    let extra = if status == 401 { "WWW-Authenticate: Bearer\r\n" } else { "" };
    respond(s, status, "application/json", extra, &body);
}

fn failure(status: u16, msg: String, kind: &str) -> (u16, Response) {
    (status, Response { ok: false, error: Some(msg), kind: Some(kind.into()), data: serde_json::Value::Null })
}

/// The HTTP status of an error the handler returned.
fn status_of(e: &Error) -> u16 {
    match e {
        Error::Invalid(_) => 400,
        Error::Denied(_) => 403,
        Error::NotFound(_) => 404,
        Error::Conflict(_) => 409,
        Error::NoDaemon(_) => 503,
        Error::NoSpace(_) | Error::Quota(_) => 507,
        _ => 500,
    }
}

/// Compares without returning early, so the time taken does not tell how much matched.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Serves the API until the handler stops: one short thread per connection.
pub fn serve(l: &Listener, token: Option<String>, h: Arc<dyn Handler>) {
    let token = Arc::new(token);
    loop {
        let conn = l.accept();
        if h.stopping() {
            return;
        }
        let Ok(mut conn) = conn else { continue };
        let (h, token) = (h.clone(), token.clone());
        let spawned = std::thread::Builder::new().name("clonefs-http".into()).spawn(move || {
            let _ = conn.timeouts(Duration::from_secs(30));
            let (status, r) = answer(&mut *conn, token.as_deref(), &*h);
            respond_json(&mut *conn, status, &r);
            conn.finish();
        });
        if let Err(e) = spawned {
            log::error!("http: cannot start a thread: {e}");
        }
    }
}

fn answer(conn: &mut dyn Stream, token: Option<&str>, h: &dyn Handler) -> (u16, Response) {
    let req = match read_request(conn) {
        Ok(r) => r,
        Err(Refused(status, msg)) => return failure(status, msg, "invalid"),
    };
    if let Some(t) = token {
        let given = req.header("authorization").and_then(|v| v.strip_prefix("Bearer ")).unwrap_or("");
        if !same(given.trim().as_bytes(), t.as_bytes()) {
            return failure(401, "a valid bearer token is required (Authorization: Bearer ...)".into(), "denied");
        }
    }
    let request = match (req.method.as_str(), req.path.as_str()) {
        ("POST", "/v1/request") => match serde_json::from_slice::<Request>(&req.body) {
            Ok(r) => r,
            Err(e) => return failure(400, format!("bad request: {e}"), "invalid"),
        },
        ("GET", "/v1/volumes") => Request::List { names: Vec::new() },
        ("GET", "/v1/status") => Request::Status,
        (_, "/v1/request") | (_, "/v1/volumes") | (_, "/v1/status") => {
            return failure(405, format!("{} is not allowed on {}", req.method, req.path), "invalid")
        }
        _ => return failure(404, format!("no endpoint {}; POST /v1/request, GET /v1/volumes, GET /v1/status", req.path), "not_found"),
    };
    if matches!(request, Request::Shutdown) {
        return failure(403, "shutdown is not offered over HTTP (use the control socket)".into(), "denied");
    }
    // History names HTTP callers by the daemon's own uid: the token, not a peer, vouched.
    match h.handle(request, super::Caller { uid: crate::sys::geteuid(), gid: crate::sys::getegid() }) {
        Ok(data) => (200, Response { ok: true, error: None, kind: None, data }),
        Err(e) => failure(status_of(&e), e.message(), e.kind()),
    }
}
