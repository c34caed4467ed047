//! The CLI side of `send` and `receive`: relays a stream between the daemon and a file, a
//! pipe or (two-way) a receiving command, reading its frames as they pass to draw progress
//! and to tell a whole stream from a cut or aborted one.

use crate::control::{client, Request, Response};
use crate::error::{Error, Result};
use crate::transfer::{kind, Header, MAGIC, MAX_FRAME};
use std::io::{BufRead, BufReader, BufWriter, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// One frame as it travels: kind, payload, and all of its bytes.
type RawFrame = (u8, Vec<u8>, Vec<u8>);

fn read_frame(r: &mut impl Read) -> Result<Option<RawFrame>> {
    let mut raw = vec![0u8; 5];
    match r.read_exact(&mut raw) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_le_bytes([raw[1], raw[2], raw[3], raw[4]]) as usize;
    if len > MAX_FRAME {
        return Err(Error::Invalid("stream rejected: a record longer than any clonefs writes".into()));
    }
    raw.resize(5 + len + 8, 0);
    r.read_exact(&mut raw[5..]).map_err(|_| Error::Invalid("stream rejected: cut short inside a record".into()))?;
    let payload = raw[5..5 + len].to_vec();
    Ok(Some((raw[0], payload, raw)))
}

fn bar(show: bool) -> Result<indicatif::ProgressBar> {
    let b = if show { indicatif::ProgressBar::with_draw_target(Some(0), indicatif::ProgressDrawTarget::stderr()) } else { indicatif::ProgressBar::hidden() };
    b.set_style(
        indicatif::ProgressStyle::with_template("{bytes}/{total_bytes} {bytes_per_sec} eta {eta} {wide_bar}")
            .map_err(|e| Error::Invalid(e.to_string()))?,
    );
    Ok(b)
}

/// Copies a stream from `input` to `out` frame by frame. Returns true once `END` passed,
/// false if the input ended first; an `ABORT` is passed on, then returned as the error.
fn relay(input: &mut impl Read, out: &mut impl Write, bar: &indicatif::ProgressBar) -> Result<bool> {
    let mut m = [0u8; 8];
    input.read_exact(&mut m).map_err(|_| Error::Invalid("stream rejected: empty or cut before its header".into()))?;
    if &m != MAGIC {
        return Err(Error::Invalid("stream rejected: not a clonefs send stream".into()));
    }
    out.write_all(&m)?;
    while let Some((k, payload, raw)) = read_frame(input)? {
        out.write_all(&raw)?;
        bar.inc(raw.len() as u64);
        match k {
            kind::HEADER => {
                if let Ok(h) = serde_json::from_slice::<Header>(&payload) {
                    bar.set_length(h.bytes + bar.position());
                }
            }
            kind::TOTAL if payload.len() == 8 => {
                let t = u64::from_le_bytes(payload[..8].try_into().unwrap_or_default());
                bar.set_length(bar.position() + t);
            }
            // The sender waits for the receiver's answer to the list: it must get through.
            kind::NAMES_END => out.flush()?,
            kind::ABORT => {
                out.flush()?;
                return Err(Error::Invalid(format!("the sender failed: {}", String::from_utf8_lossy(&payload))));
            }
            kind::END => {
                out.flush()?;
                return Ok(true);
            }
            _ => {}
        }
    }
    out.flush()?;
    Ok(false)
}

fn result(payload: &[u8]) -> Result<serde_json::Value> {
    let r: Response = serde_json::from_slice(payload).map_err(|e| Error::Corrupt(format!("bad reply from the receiver: {e}")))?;
    if r.ok {
        Ok(r.data)
    } else {
        Err(client::error_of(r))
    }
}

pub struct SendArgs {
    pub snapshot: String,
    pub from: Option<String>,
    pub output: Option<PathBuf>,
    pub to: Option<String>,
    pub resume: Option<String>,
    pub progress: bool,
}

/// `clonefs send`. Returns the receiver's report in two-way mode.
pub fn send(store: &Path, a: SendArgs) -> Result<Option<serde_json::Value>> {
    if a.to.is_none() && a.output.is_none() && std::io::stdout().is_terminal() {
        return Err(Error::Invalid("refusing to write a binary stream to a terminal: pipe it, or use -o FILE".into()));
    }
    let two_way = a.to.is_some();
    let req = Request::Send { snapshot: a.snapshot.clone(), from: a.from.clone(), two_way, resume: a.resume.clone() };
    let conn = client::open_stream(store, &req)?;
    let mut rd = BufReader::with_capacity(1 << 20, conn.try_clone()?);
    let mut line = String::new();
    rd.read_line(&mut line)?;
    let r: Response = serde_json::from_str(&line).map_err(|_| Error::NoDaemon("the daemon closed the connection without answering".into()))?;
    if !r.ok {
        return Err(client::error_of(r));
    }
    let progress = bar(a.progress)?;
    let Some(cmd) = a.to else {
        let ended = match &a.output {
            Some(p) => {
                let f = std::fs::File::create(p).map_err(|e| Error::Invalid(format!("cannot write {}: {e}", p.display())))?;
                relay(&mut rd, &mut BufWriter::with_capacity(1 << 20, f), &progress)
            }
            None => relay(&mut rd, &mut BufWriter::with_capacity(1 << 20, std::io::stdout().lock()), &progress),
        };
        progress.finish_and_clear();
        return match ended? {
            true => Ok(None),
            false => Err(Error::Io(std::io::Error::other("the daemon stopped the stream before its end"))),
        };
    };
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(&cmd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Invalid(format!("cannot run {cmd:?}: {e}")))?;
    let mut to_child = child.stdin.take().ok_or_else(|| Error::Invalid("no stdin for the receiver".into()))?;
    let mut from_child = child.stdout.take().ok_or_else(|| Error::Invalid("no stdout for the receiver".into()))?;
    // The receiver's replies: WANTS go back to the daemon, RESULT ends the exchange.
    let mut back = conn.try_clone()?;
    let replies = std::thread::spawn(move || -> Result<Option<Vec<u8>>> {
        let mut outcome = Ok(None);
        loop {
            match read_frame(&mut from_child) {
                Ok(Some((kind::RESULT, payload, _))) => {
                    outcome = Ok(Some(payload));
                    break;
                }
                Ok(Some((_, _, raw))) => {
                    if let Err(e) = back.write_all(&raw) {
                        outcome = Err(e.into());
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
            }
        }
        // The receiver is done (or gone): a daemon still waiting for its answer stops, and
        // so does the relay waiting on the daemon.
        let _ = back.shutdown(std::net::Shutdown::Both);
        outcome
    });
    let sent = relay(&mut rd, &mut BufWriter::with_capacity(1 << 20, &mut to_child), &progress);
    drop(to_child);
    progress.finish_and_clear();
    let reply = replies.join().map_err(|_| Error::Corrupt("the reply thread panicked".into()))?;
    let status = child.wait()?;
    match reply {
        Ok(Some(p)) => {
            let report = result(&p).map_err(|e| Error::from_kind(e.kind(), format!("the receiver: {}", e.message())))?;
            sent?;
            Ok(Some(report))
        }
        Ok(None) | Err(_) => {
            sent?;
            Err(Error::Io(std::io::Error::other(format!("the receiving command {cmd:?} gave no outcome ({status})"))))
        }
    }
}

pub struct ReceiveArgs {
    pub name: String,
    pub input: Option<PathBuf>,
    pub resumable: bool,
    pub force: bool,
    pub serve: bool,
    pub progress: bool,
}

/// `clonefs receive`: the daemon's report. With `serve`, the daemon's replies also go to
/// stdout (for a two-way sender at the other end of it).
pub fn receive(store: &Path, a: ReceiveArgs) -> Result<serde_json::Value> {
    crate::volume::check_name(&a.name)?;
    let input: Box<dyn Read + Send> = match &a.input {
        Some(p) => Box::new(std::fs::File::open(p).map_err(|e| Error::Invalid(format!("cannot read {}: {e}", p.display())))?),
        None => {
            if std::io::stdin().is_terminal() {
                return Err(Error::Invalid("refusing to read a stream from a terminal: pipe one in, or use -i FILE".into()));
            }
            Box::new(std::io::stdin())
        }
    };
    let req = Request::Receive { name: a.name.clone(), resumable: a.resumable, force: a.force };
    let conn = client::open_stream(store, &req)?;
    let progress = bar(a.progress)?;
    let mut to_daemon = conn.try_clone()?;
    let p2 = progress.clone();
    std::thread::spawn(move || {
        let mut input = BufReader::with_capacity(1 << 20, input);
        let mut out = BufWriter::with_capacity(1 << 20, &mut to_daemon);
        // Whatever happens, the daemon sees the end of what came (and rejects a cut stream).
        let _ = relay(&mut input, &mut out, &p2);
        drop(out);
        let _ = to_daemon.shutdown(std::net::Shutdown::Write);
    });
    let mut from_daemon = BufReader::new(conn);
    let mut stdout = std::io::stdout().lock();
    loop {
        let Some((k, payload, raw)) = read_frame(&mut from_daemon)? else {
            progress.finish_and_clear();
            return Err(Error::NoDaemon("the daemon closed the connection without an outcome".into()));
        };
        if a.serve {
            stdout.write_all(&raw)?;
            stdout.flush()?;
        }
        if k == kind::RESULT {
            progress.finish_and_clear();
            return result(&payload);
        }
    }
}
