//! Human-readable tables.

use crate::control::{StatusInfo, VolumeInfo};
use crate::volume::fsck::FsckReport;
use crate::volume::scrub::ScrubReport;

/// `println!` for the CLI's standard output: a reader that went away (`clonefs diff | head`)
/// ends the process quietly, as SIGPIPE ends a C tool (Rust ignores SIGPIPE, so `println!`
/// would panic); any other write error is one line and exit status 1.
macro_rules! outln {
    () => { $crate::cli::output::out(format_args!("\n")) };
    ($($t:tt)*) => { $crate::cli::output::out(format_args!("{}\n", format_args!($($t)*))) };
}
pub(super) use outln;

pub fn out(args: std::fmt::Arguments) {
    use std::io::Write;
    if let Err(e) = std::io::stdout().lock().write_fmt(args) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("clonefs: cannot write the output: {e}");
        std::process::exit(1);
    }
}

pub fn size(b: u64) -> String {
    const U: [&str; 6] = ["B", "K", "M", "G", "T", "P"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b}B")
    } else if v.fract() == 0.0 {
        // Block sizes and quotas are mostly whole units: 8K, not 8.0K.
        format!("{v:.0}{}", U[i])
    } else if v < 10.0 {
        format!("{v:.1}{}", U[i])
    } else {
        format!("{v:.0}{}", U[i])
    }
}

fn created(secs: i64) -> String {
    // UTC date and time from seconds since the epoch (civil-from-days, H. Hinnant).
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}", rem / 3600, rem % 3600 / 60)
}

/// `clonefs get`'s table: sizes and the creation time made readable (`--json` keeps the
/// raw values: bytes, seconds since the epoch).
pub fn properties(rows: &[(&str, &str)]) {
    let w = rows.iter().map(|r| r.0.len()).chain(std::iter::once("PROPERTY".len())).max().unwrap_or(0);
    outln!("{:<w$}  VALUE", "PROPERTY");
    for (p, v) in rows {
        let shown = match (*p, v.parse::<u64>()) {
            ("created", Ok(secs)) => format!("{} UTC", created(secs as i64)),
            ("block_size" | "refquota" | "quota", Ok(b)) => size(b),
            _ => v.to_string(),
        };
        outln!("{p:<w$}  {shown}");
    }
}

/// Columns `list -o` knows, with their header and alignment (true: right).
pub const LIST_COLUMNS: [(&str, &str, bool); 12] = [
    ("name", "NAME", false),
    ("type", "TYPE", false),
    ("origin", "ORIGIN", false),
    ("created", "CREATED", false),
    ("logical", "LOGICAL", true),
    ("referenced", "REFERENCED", true),
    ("unique", "UNIQUE", true),
    ("block", "BLOCK", true),
    ("mountpoint", "MOUNTPOINT", false),
    ("policy", "SNAPSHOT POLICY", false),
    ("holds", "HOLDS", false),
    ("creator", "CREATOR", false),
];

/// Default columns of `list`.
pub const LIST_DEFAULT: &str = "name,origin,created,logical,referenced,unique,block,mountpoint";

/// `list` as a table of `cols` (names from `LIST_COLUMNS`, checked by the caller). With
/// `scripted` (-H): no header, one tab between fields; with `exact` (-p): bytes and
/// seconds since the epoch instead of rounded sizes and dates.
pub fn volumes(v: &[VolumeInfo], cols: &[&str], scripted: bool, exact: bool) {
    let num = |b: u64| if exact { b.to_string() } else { size(b) };
    let rows: Vec<Vec<String>> = v
        .iter()
        .map(|x| {
            cols.iter()
                .map(|c| match *c {
                    "name" => x.name.clone(),
                    "type" => x.kind.clone(),
                    "origin" => x.origin.clone().unwrap_or_else(|| "-".into()),
                    "created" if exact => x.created.to_string(),
                    "created" => created(x.created),
                    "logical" => num(x.logical),
                    "referenced" => num(x.referenced),
                    "unique" => num(x.unique),
                    "block" => num(x.block_size as u64),
                    "policy" => x.snapshot_policy.clone().unwrap_or_else(|| "-".into()),
                    "holds" if x.holds.is_empty() => "-".into(),
                    "holds" => x.holds.join(","),
                    "creator" => x.creator.map_or_else(|| "-".into(), |u| u.to_string()),
                    _ => match &x.mountpoint {
                        Some(p) => format!("{}{}", p.display(), if x.read_only { " (ro)" } else { "" }),
                        None => "-".into(),
                    },
                })
                .collect()
        })
        .collect();
    if scripted {
        for r in rows {
            outln!("{}", r.join("\t"));
        }
        return;
    }
    let spec = |c: &str| LIST_COLUMNS.iter().find(|k| k.0 == c).copied().unwrap_or(("", "", false));
    let widths: Vec<usize> = cols
        .iter()
        .enumerate()
        .map(|(i, c)| rows.iter().map(|r| r[i].chars().count()).chain([spec(c).1.len()]).max().unwrap_or(0))
        .collect();
    let line = |fields: Vec<String>| {
        let cells: Vec<String> = fields
            .iter()
            .enumerate()
            .map(|(i, f)| match (spec(cols[i]).2, i + 1 == cols.len()) {
                (true, _) => format!("{f:>w$}", w = widths[i]),
                (false, true) => f.clone(),
                (false, false) => format!("{f:<w$}", w = widths[i]),
            })
            .collect();
        outln!("{}", cells.join("  ").trim_end());
    };
    line(cols.iter().map(|c| spec(c).1.to_string()).collect());
    for r in rows {
        line(r);
    }
}

/// `history`: one line per command, oldest first.
pub fn history(h: &[crate::history::Entry]) {
    outln!("{:<19}  {:>6}  {:<6}  COMMAND", "TIME", "UID", "RESULT");
    for e in h {
        let mut cmd = e.request["op"].as_str().unwrap_or("?").replace('_', "-");
        if let Some(fields) = e.request.as_object() {
            for (k, v) in fields.iter().filter(|(k, _)| *k != "op") {
                match v {
                    serde_json::Value::String(s) => cmd.push_str(&format!(" {k}={s}")),
                    serde_json::Value::Bool(false) | serde_json::Value::Null => {}
                    other => cmd.push_str(&format!(" {k}={other}")),
                }
            }
        }
        outln!("{:<19}  {:>6}  {:<6}  {}", created(e.time), e.uid, if e.ok { "ok" } else { "failed" }, cmd);
        if let (false, Some(m)) = (e.ok, &e.error) {
            outln!("{:<19}  {:>6}  {:<6}    ({m})", "", "", "");
        }
    }
}

/// `diff`: one line per change, `zfs diff` style, with what an `M` changed.
pub fn diff(changes: &[crate::volume::diff::Change]) {
    for c in changes {
        match (c.kind.as_str(), &c.to) {
            ("R", Some(to)) => outln!("R\t{}\t{} -> {}", c.ftype, c.path, to),
            ("M", _) => {
                let what = match (c.data, c.meta) {
                    (true, true) => "data+metadata",
                    (true, false) => "data",
                    _ => "metadata",
                };
                outln!("M\t{}\t{} ({what})", c.ftype, c.path)
            }
            (k, _) => outln!("{k}\t{}\t{}", c.ftype, c.path),
        }
    }
}

pub fn status(s: &StatusInfo) {
    outln!("store:          {}", s.store.display());
    outln!("format version: {}", s.format_version);
    outln!("daemon pid:     {}", s.pid);
    outln!("volumes:        {}", s.volumes);
    outln!("logical:        {} ({} bytes)", size(s.logical), s.logical);
    outln!("physical:       {} ({} bytes in {} blocks)", size(s.physical), s.physical, s.blocks);
    outln!("dedup ratio:    {:.2}x", s.dedup_ratio);
    outln!("on disk:        {} (segments and index files)", size(s.disk_bytes));
    outln!(
        "segment log:    {} segments, {} on disk, {} of live blocks (`clonefs compact` gives the rest back)",
        s.segments,
        size(s.segment_bytes),
        size(s.segment_live_bytes)
    );
    outln!("unflushed:      {}", size(s.dirty_bytes));
    outln!("available:      {} (the disk's free space less a reserve of {} kept for deletes)", size(s.available), size(s.reserve));
    outln!("memory:         {} resident, budget {} (`daemon --memory`)", size(s.resident), size(s.memory_budget));
    if s.read_errors > 0 {
        outln!("read errors:    {} (damaged blocks: run `clonefs scrub`)", s.read_errors);
    }
    outln!("pending gc:     {}", s.pending_gc);
    if s.mounts.is_empty() {
        outln!("mounts:         none");
    }
    for m in &s.mounts {
        let opts: Vec<&str> = [(m.read_only, "ro"), (m.writeback, "writeback"), (m.fast_open, "fast-open")].iter().filter(|o| o.0).map(|o| o.1).collect();
        let opts = if opts.is_empty() { String::new() } else { format!(" ({})", opts.join(", ")) };
        outln!("mount:          {} at {}{opts}", m.volume, m.mountpoint.display());
    }
}

pub fn scrub(r: &ScrubReport) {
    outln!("checked {} blocks ({})", r.blocks, size(r.bytes));
    if r.damaged.is_empty() {
        outln!("no damaged blocks");
        return;
    }
    for d in &r.damaged {
        outln!("damaged: block {} at locator {} {}", d.hash, d.locator, d.reason);
        if d.used_by.is_empty() {
            outln!("    used by no file (a snapshot or clone destroyed since, or unflushed)");
        }
        for u in &d.used_by {
            outln!("    {}:{} at offset {}", u.view, u.path, u.offset);
        }
    }
    outln!("{} damaged blocks", r.damaged.len());
}

pub fn fsck(r: &FsckReport) {
    outln!(
        "checked {} volumes, {} inodes, {} entries, {} extents, {} blocks ({})",
        r.volumes,
        r.inodes,
        r.dirents,
        r.extents,
        r.blocks,
        size(r.physical)
    );
    if r.errors.is_empty() {
        outln!("clean");
    } else {
        for e in &r.errors {
            outln!("error: {e}");
        }
        outln!("{} errors", r.errors.len());
    }
}

/// `db list`: one row per database volume.
pub fn db_list(rows: &[serde_json::Value]) {
    let t = |v: &serde_json::Value| v.as_i64().map(created).unwrap_or_else(|| "-".into());
    let s = |v: &serde_json::Value| v.as_str().map(str::to_string).unwrap_or_else(|| "-".into());
    let mut lines = vec![["NAME", "ENGINE", "ORIGIN", "PORT", "STATUS", "CREATED", "LAST ACTIVE", "EXPIRES", "UNIQUE"].map(String::from).to_vec()];
    for r in rows {
        lines.push(vec![
            s(&r["name"]),
            s(&r["engine"]),
            s(&r["origin"]),
            r["port"].as_u64().map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            {
                // A failure's log lines are in `db list --json`; the table keeps its start.
                let st = s(&r["status"]);
                if st.chars().count() > 60 { format!("{}...", st.chars().take(57).collect::<String>()) } else { st }
            },
            t(&r["created"]),
            t(&r["last_active"]),
            if r["protect"] == true { "protected".into() } else { t(&r["expires"]) },
            size(r["unique"].as_u64().unwrap_or(0)),
        ]);
    }
    let widths: Vec<usize> = (0..lines[0].len()).map(|i| lines.iter().map(|l| l[i].chars().count()).max().unwrap_or(0)).collect();
    for l in &lines {
        let cells: Vec<String> = l.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        outln!("{}", cells.join("  ").trim_end());
    }
}
