//! The `spore` CLI against a real daemon, process isolation, as root: run (output,
//! exit codes, --rm, a daemon started on demand), ps, exec, logs, rm.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{skip_unless_root, spore_bin, Daemon};

/// Runs `spore ARGS` against the daemon in `dir`.
fn spore(dir: &Path, args: &[&str]) -> Output {
    Command::new(spore_bin())
        .args(args)
        .env("SPORE_RUN_DIR", dir)
        .env("SPORE_AGENT", common::agent_bin())
        .env_remove("SPORE_SOCKET")
        .output()
        .expect("running spore")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn run_starts_a_daemon_prints_hello_and_exits_0() {
    if skip_unless_root() {
        return;
    }
    let dir = common::temp_dir("cli-auto");
    // No daemon yet: the CLI starts one in the background.
    let o = spore(
        &dir,
        &[
            "run",
            "--rm",
            "--isolation",
            "process",
            "busybox",
            "echo",
            "hello",
        ],
    );
    let started = Daemon::adopt_running(dir.clone());
    assert_eq!(
        stdout(&o),
        "hello\n",
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(o.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&o.stderr).contains("starting one"));
    // The default isolation is vm, which this host may refuse: exit 125 and why.
    let o = spore(&dir, &["run", "--rm", "busybox", "true"]);
    if o.status.code() != Some(0) {
        assert_eq!(o.status.code(), Some(125));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("--isolation process"), "{err}");
    }
    drop(started);
}

#[test]
fn run_streams_and_propagates_exit_codes() {
    if skip_unless_root() {
        return;
    }
    let d = Daemon::start("cli-run");
    let o = spore(
        &d.dir,
        &[
            "run",
            "--rm",
            "--isolation",
            "process",
            "-e",
            "GREETING=hi there",
            "busybox",
            "sh",
            "-c",
            "echo $GREETING; echo to-stderr >&2; exit 7",
        ],
    );
    assert_eq!(stdout(&o), "hi there\n");
    assert_eq!(String::from_utf8_lossy(&o.stderr), "to-stderr\n");
    assert_eq!(o.status.code(), Some(7));
    // Without --rm the sandbox stays, exited, for ps -a and logs.
    let o = spore(
        &d.dir,
        &[
            "run",
            "--isolation",
            "process",
            "busybox",
            "sh",
            "-c",
            "echo kept; exit 2",
        ],
    );
    assert_eq!(stdout(&o), "kept\n");
    assert_eq!(o.status.code(), Some(2));
    let ps = stdout(&spore(&d.dir, &["ps", "-a"]));
    assert!(ps.contains("Exited (2)"), "{ps}");
    assert!(ps.contains("process"), "{ps}");
    // Piped stdin with -i.
    let mut child = Command::new(spore_bin())
        .args([
            "run",
            "--rm",
            "-i",
            "--isolation",
            "process",
            "busybox",
            "tr",
            "a-z",
            "A-Z",
        ])
        .env("SPORE_RUN_DIR", &d.dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"shout\n").unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(stdout(&o), "SHOUT\n");
    // Invalid input is spore's failure: 125.
    let o = spore(
        &d.dir,
        &[
            "run",
            "--rm",
            "--isolation",
            "process",
            "--memory=-1",
            "busybox",
            "true",
        ],
    );
    assert_eq!(o.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&o.stderr).contains("memory"));
}

#[test]
fn ps_exec_logs_rm() {
    if skip_unless_root() {
        return;
    }
    let d = Daemon::start("cli-ps");
    let o = spore(
        &d.dir,
        &[
            "run",
            "-d",
            "--isolation",
            "process",
            "busybox",
            "sh",
            "-c",
            "echo started; sleep 300",
        ],
    );
    assert_eq!(o.status.code(), Some(0));
    let id = stdout(&o).trim().to_owned();
    assert_eq!(id.len(), 12, "{id:?}");
    let ps = stdout(&spore(&d.dir, &["ps"]));
    let row = ps
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{ps}"));
    assert!(
        row.contains("Up") && row.contains("process") && row.contains("busybox"),
        "{row}"
    );
    assert_eq!(stdout(&spore(&d.dir, &["ps", "-q"])).trim(), id);
    // exec, by id prefix.
    let o = spore(
        &d.dir,
        &["exec", &id[..6], "sh", "-c", "echo inside; exit 3"],
    );
    assert_eq!(stdout(&o), "inside\n");
    assert_eq!(o.status.code(), Some(3));
    // logs (the log has the first line by now: exec ran after it).
    let o = spore(&d.dir, &["logs", &id]);
    assert_eq!(stdout(&o), "started\n");
    // rm without -f refuses a running sandbox; with -f it goes.
    let o = spore(&d.dir, &["rm", &id]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("running"));
    let o = spore(&d.dir, &["rm", "-f", &id]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(stdout(&o).trim(), id);
    assert!(stdout(&spore(&d.dir, &["ps", "-a", "-q"]))
        .trim()
        .is_empty());
    let o = spore(&d.dir, &["rm", &id]);
    assert_eq!(o.status.code(), Some(1));
    // template ls names the default template.
    let t = stdout(&spore(&d.dir, &["template", "ls"]));
    assert!(t.contains("default"), "{t}");
}
