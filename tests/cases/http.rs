//! The control API over HTTP: the socket's JSON requests behind a bearer token; requests
//! without it, malformed, oversized or with unknown fields get a clear 4xx and change
//! nothing.

use crate::util::{run_timeout, Daemon, BIN};
use std::io::{Read, Write};
use std::process::Command;

const TOKEN: &str = "s3cret-token-0123456789";

/// Sends one request; returns (status, parsed JSON body).
fn call(send: &mut dyn FnMut() -> Box<dyn ReadWrite>, method: &str, path: &str, auth: Option<&str>, body: &str) -> (u16, serde_json::Value) {
    let mut c = send();
    let auth = auth.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(c, "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    let mut s = String::new();
    c.read_to_string(&mut s).unwrap();
    let (head, body) = s.split_once("\r\n\r\n").unwrap_or_else(|| panic!("bad response {s:?}"));
    let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).unwrap_or(serde_json::Value::Null))
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

fn names(d: &Daemon) -> Vec<String> {
    let mut v: Vec<String> = d.json(&["list", "--json"]).as_array().unwrap().iter().map(|x| x["name"].as_str().unwrap().to_string()).collect();
    v.sort();
    v
}

#[test]
fn the_http_api_needs_its_token_and_refuses_bad_requests_without_changes() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let d = Daemon::start_args(&["--http", &addr, "--http-token-file", token_file.to_str().unwrap()]);
    let mut tcp = || -> Box<dyn ReadWrite> { Box::new(std::net::TcpStream::connect(&addr).unwrap()) };
    let create = r#"{"op":"create","name":"api","block_size":16384,"uid":0,"gid":0}"#;

    for auth in [None, Some("wrong-token-0123456789")] {
        let (st, r) = call(&mut tcp, "POST", "/v1/request", auth, create);
        assert_eq!((st, r["kind"].as_str()), (401, Some("denied")), "{r}");
    }
    assert!(names(&d).is_empty(), "a request without the token changed the store");

    let (st, r) = call(&mut tcp, "POST", "/v1/request", Some(TOKEN), create);
    assert_eq!(st, 200, "{r}");
    let (st, r) = call(&mut tcp, "POST", "/v1/request", Some(TOKEN), r#"{"op":"snapshot","name":"api@s"}"#);
    assert_eq!(st, 200, "{r}");
    let (st, r) = call(&mut tcp, "GET", "/v1/volumes", Some(TOKEN), "");
    assert_eq!(st, 200);
    assert_eq!(r["data"].as_array().unwrap().len(), 2, "{r}");
    let (st, r) = call(&mut tcp, "GET", "/v1/status", Some(TOKEN), "");
    assert_eq!((st, r["ok"].as_bool()), (200, Some(true)));

    let bad: Vec<(&str, &str, String, u16)> = vec![
        ("POST", "/v1/request", "{not json".into(), 400),
        ("POST", "/v1/request", r#"{"op":"snapshot","name":"api@t","extra":1}"#.into(), 400),
        ("POST", "/v1/request", r#"{"op":"format_disk"}"#.into(), 400),
        ("POST", "/v1/request", format!(r#"{{"op":"snapshot","name":"api@{}"}}"#, "x".repeat(70_000)), 413),
        ("POST", "/v1/request", r#"{"op":"snapshot","name":"nope@s"}"#.into(), 404),
        ("POST", "/v1/request", r#"{"op":"snapshot","name":"api@s"}"#.into(), 409),
        ("POST", "/v1/request", r#"{"op":"snapshot","name":"api@bad/name"}"#.into(), 400),
        ("POST", "/v1/request", r#"{"op":"shutdown"}"#.into(), 403),
        ("DELETE", "/v1/request", String::new(), 405),
        ("GET", "/v2/anything", String::new(), 404),
    ];
    for (method, path, body, want) in bad {
        let (st, r) = call(&mut tcp, method, path, Some(TOKEN), &body);
        assert_eq!(st, want, "{method} {path} {}: {r}", &body[..body.len().min(80)]);
        assert_eq!(r["ok"].as_bool(), Some(false), "{r}");
        assert!(!r["error"].as_str().unwrap_or("").is_empty(), "no message: {r}");
    }
    assert_eq!(names(&d), vec!["api", "api@s"], "a refused request changed the store");
    assert!(d.cli(&["status"]).status.success(), "the daemon stopped");
    d.fsck_clean();
}

#[test]
fn a_tcp_api_needs_a_token_file_and_a_unix_socket_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s");
    assert!(run_timeout(Command::new(BIN).args(["init", "--store"]).arg(&store), 60).status.success());
    let out = run_timeout(Command::new(BIN).args(["daemon", "--foreground", "--http", "127.0.0.1:0", "--store"]).arg(&store), 60);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--http-token-file"), "{out:?}");

    let sock = std::env::temp_dir().join(format!("clonefs-api-{}.sock", std::process::id()));
    let d = Daemon::start_args(&["--http", &format!("unix:{}", sock.display())]);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777, 0o600);
    let mut unix = || -> Box<dyn ReadWrite> { Box::new(std::os::unix::net::UnixStream::connect(&sock).unwrap()) };
    let (st, r) = call(&mut unix, "POST", "/v1/request", None, r#"{"op":"create","name":"u","block_size":4096,"uid":0,"gid":0}"#);
    assert_eq!(st, 200, "{r}");
    assert_eq!(names(&d), vec!["u"]);
    drop(d);
    let _ = std::fs::remove_file(&sock);
}
