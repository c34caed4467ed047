//! tools/p4-flexclone with the stand-in `p4` (tests/p4/p4; no Perforce server can be
//! installed here): a template synced from a depot of real C sources and built with make,
//! workspaces cloned per user with their owner remapped and their have-list from the
//! template's, a no-op make in a workspace, an edit and rebuild, a template update, a refresh
//! that keeps the opened files, and deletes in any order.

use crate::util::{run_timeout, Daemon, BIN};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

struct Farm {
    d: Daemon,
    root: PathBuf,
    p4root: PathBuf,
    path: String,
}

impl Farm {
    fn cmd(&self, prog: &str, args: &[&str], cwd: Option<&Path>) -> std::process::Output {
        let mut c = Command::new(prog);
        c.args(args).env("PATH", &self.path).env("CLONEFS_STORE", &self.d.store).env("P4STANDIN_ROOT", &self.p4root).env("FLEXCLONE_ROOT", &self.root);
        if let Some(d) = cwd {
            c.current_dir(d);
        }
        run_timeout(&mut c, 600)
    }

    fn ok(&self, prog: &str, args: &[&str], cwd: Option<&Path>) -> String {
        let out = self.cmd(prog, args, cwd);
        assert!(out.status.success(), "{prog} {args:?}: {}{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn tool(&self, args: &[&str]) -> String {
        let tool = format!("{}/tools/p4-flexclone", checkout());
        self.ok(&tool, args, None)
    }

    fn have(&self, client: &str) -> Vec<String> {
        // Depot path and revision only: local paths differ by client.
        self.ok("p4", &["-c", client, "have"], None).lines().map(|l| l.split(" - ").next().unwrap().to_string()).collect()
    }
}

/// The checkout under test: cargo says where when it runs the test. The path compiled in
/// may be another clone's, when several share one target directory and cargo reuses the build.
fn checkout() -> String {
    std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string())
}

fn write_sources(dir: &Path, n: usize, tweak: usize) {
    fs::create_dir_all(dir.join("src")).unwrap();
    let mut objs = Vec::new();
    for i in 0..n {
        let extra = if i == tweak { " + 1" } else { "" };
        fs::write(dir.join(format!("src/f{i}.c")), format!("int f{i}(int x) {{ return x * {i}{extra}; }}\n")).unwrap();
        objs.push(format!("src/f{i}.o"));
    }
    let calls: String = (0..n).map(|i| format!("s += f{i}(1); ")).collect();
    let decls: String = (0..n).map(|i| format!("int f{i}(int);\n")).collect();
    fs::write(dir.join("src/main.c"), format!("#include <stdio.h>\n{decls}int main(void) {{ int s = 0; {calls}printf(\"%d\\n\", s); return 0; }}\n")).unwrap();
    fs::write(
        dir.join("Makefile"),
        format!("OBJS = {} src/main.o\napp: $(OBJS)\n\tcc -o app $(OBJS)\nsrc/%.o: src/%.c\n\tcc -O0 -c -o $@ $<\n", objs.join(" ")),
    )
    .unwrap();
}

#[test]
fn flexclone_flow_with_the_stand_in_p4() {
    let d = Daemon::start();
    let tmp = d.tmp.path().to_path_buf();
    let bin_dir = Path::new(BIN).parent().unwrap().display().to_string();
    let path = format!("{}/tests/p4:{bin_dir}:{}", checkout(), std::env::var("PATH").unwrap_or_default());
    let farm = Farm { root: tmp.join("farm"), p4root: tmp.join("p4"), path, d };
    let n = 40;
    let staging = tmp.join("staging");
    write_sources(&staging, n, usize::MAX);
    farm.ok("p4", &["x-submit", staging.to_str().unwrap()], None);

    // Populate: sync and build the template, snapshot v1.
    farm.tool(&["template", "create", "app", "--build", "make -j2"]);
    let tpl = farm.root.join("templates/app");
    assert!(tpl.join("app").exists(), "the template was not built");
    assert_eq!(farm.ok(&tpl.join("app").display().to_string(), &[], None).trim(), (0..n).sum::<usize>().to_string());

    // Workspaces, owned by their users without a chown.
    for (i, ws) in ["alice_ws", "bob_ws", "carol_ws"].iter().enumerate() {
        let owner = format!("{}:{}", 3001 + i, 3001 + i);
        farm.tool(&["workspace", "create", ws, "--template", "app", "--owner", &owner]);
        let dir = farm.root.join("workspaces").join(ws);
        assert_eq!(fs::metadata(dir.join("src/f1.o")).unwrap().uid(), 3001 + i as u32);
        assert_eq!(farm.have(ws), farm.have("flexclone_app"), "{ws}'s have-list");
        // Nothing to rebuild: sources, objects and their mtimes came with the clone.
        let q = farm.cmd("make", &["-q"], Some(&dir));
        assert_eq!(q.status.code(), Some(0), "make has work to do in {ws}");
    }
    // The template itself stays as it was: its owners never change, it is read-only.
    assert_eq!(fs::metadata(tpl.join("src/f1.o")).unwrap().uid(), 0);
    assert!(fs::write(tpl.join("x"), b"x").is_err(), "the template is writable");

    // Edit and rebuild in one workspace: only that file and the link.
    let alice = farm.root.join("workspaces/alice_ws");
    farm.ok("p4", &["-c", "alice_ws", "edit", alice.join("src/f1.c").to_str().unwrap()], None);
    fs::write(alice.join("src/f1.c"), "int f1(int x) { return x * 100; }\n").unwrap();
    // As alice (uid 3001): in her remapped clone, files root would create cannot be stored.
    let as_alice = ["--reuid=3001", "--regid=3001", "--clear-groups", "make"];
    let out = farm.ok("setpriv", &as_alice, Some(&alice));
    let compiled: Vec<&str> = out.lines().filter(|l| l.contains(" -c ")).collect();
    assert_eq!(compiled, vec!["cc -O0 -c -o src/f1.o src/f1.c"], "{out}");
    assert_eq!(farm.ok(&alice.join("app").display().to_string(), &[], None).trim(), ((0..n).sum::<usize>() + 99).to_string());
    let bob = farm.root.join("workspaces/bob_ws");
    assert_eq!(farm.cmd("make", &["-q"], Some(&bob)).status.code(), Some(0), "alice's edit reached bob");

    // Update the template (a new change to f2), then refresh alice keeping her opened f1.c.
    write_sources(&staging, n, 2);
    farm.ok("p4", &["x-submit", staging.to_str().unwrap()], None);
    farm.tool(&["template", "update", "app"]);
    let refreshed = farm.tool(&["workspace", "refresh", "alice_ws"]);
    assert!(refreshed.contains("v2"), "{refreshed}");
    assert_eq!(fs::read_to_string(alice.join("src/f1.c")).unwrap(), "int f1(int x) { return x * 100; }\n", "the opened file was lost");
    assert!(fs::read_to_string(alice.join("src/f2.c")).unwrap().contains("+ 1"), "f2.c is not the template's new one");
    assert!(farm.have("alice_ws").contains(&"//depot/src/f2.c#2".to_string()));
    assert!(farm.ok("p4", &["-c", "alice_ws", "opened"], None).contains("//depot/src/f1.c#1"));
    // Running a step again is safe.
    farm.tool(&["workspace", "create", "bob_ws", "--template", "app", "--owner", "3002:3002"]);

    // Deletes in any order: the template first, its workspaces keep working.
    farm.tool(&["template", "delete", "app"]);
    assert_eq!(farm.cmd("make", &["-q"], Some(&bob)).status.code(), Some(0));
    assert!(fs::read(bob.join("src/f5.c")).is_ok());
    // Users run p4 in their workspaces as themselves (the stand-in's server files are
    // theirs to write too, as a real server would take their requests).
    farm.ok("chmod", &["-R", "a+rwX", farm.p4root.to_str().unwrap()], None);
    for (ws, uid) in [("carol_ws", "3003"), ("alice_ws", "3001"), ("bob_ws", "3002")] {
        let (u, g) = (format!("--reuid={uid}"), format!("--regid={uid}"));
        let synced = farm.ok("setpriv", &[&u, &g, "--clear-groups", "p4", "-c", ws, "sync"], None);
        if ws != "alice_ws" {
            assert!(synced.contains("//depot/src/f2.c#2"), "{ws}: {synced}");
        }
        farm.tool(&["workspace", "delete", ws]);
    }
    assert!(!farm.ok(BIN, &["list", "-H", "-o", "name"], None).contains("ws-"));
    farm.d.fsck_clean();
}
