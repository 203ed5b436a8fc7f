//! The container engine on the host, as root, against the busybox rootfs
//! from resources/build-rootfs.sh (built on first use).
//!
//! Drives `Engine` directly, with the smallest possible reaper: `waitpid` on
//! the pid the engine reports, handed to `on_child_exit`. Tests run one at a
//! time (descriptor counts and the cgroup root are process-wide). Skips, with
//! a message, when not root.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use spore_agent::engine::{
    default_capability_mask, stage2_main, ChildExit, ContainerIo, Engine, EngineConfig,
    EngineError, STAGE2_ARG,
};
use spore_agent::protocol::spec::{
    ContainerSpec, ContainerStatus, ExecSpec, ExitReason, Limits, Rlimit, RootfsSpec,
};
use spore_agent::sys;

/// The engine re-executes /proc/self/exe — this test binary — as stage 2.
/// libtest would read STAGE2_ARG as a test filter, so divert before `main`.
#[used]
#[link_section = ".init_array"]
static STAGE2_HOOK: extern "C" fn() = stage2_hook;

extern "C" fn stage2_hook() {
    let cmdline = std::fs::read("/proc/self/cmdline").unwrap_or_default();
    if cmdline.split(|b| *b == 0).nth(1) == Some(STAGE2_ARG.as_bytes()) {
        stage2_main();
    }
}

static SERIAL: Mutex<()> = Mutex::new(());

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn rootfs() -> &'static Path {
    static ROOTFS: OnceLock<PathBuf> = OnceLock::new();
    ROOTFS.get_or_init(|| {
        let ws = workspace();
        let status = std::process::Command::new(ws.join("resources/build-rootfs.sh"))
            .status()
            .unwrap();
        assert!(status.success(), "resources/build-rootfs.sh failed");
        ws.join("target/guest/rootfs")
    })
}

fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}

/// A cgroup v2 directory to put containers under: the unified hierarchy of a
/// hybrid host, or the root of a pure cgroup v2 one.
fn cgroup_parent() -> PathBuf {
    let v2 = Path::new("/sys/fs/cgroup");
    if v2.join("cgroup.controllers").exists() {
        v2.to_owned()
    } else {
        v2.join("unified")
    }
}

/// One engine with its own run dir and cgroup root, deleted afterwards.
struct Harness {
    engine: Engine,
    cfg: EngineConfig,
    _serial: MutexGuard<'static, ()>,
}

impl Harness {
    fn new(name: &str) -> Option<Harness> {
        Harness::with_cgroup_parent(name, Some(&cgroup_parent()))
    }

    /// `parent: None` gives the engine a cgroup root that is no cgroup at all.
    fn with_cgroup_parent(name: &str, parent: Option<&Path>) -> Option<Harness> {
        if !is_root() {
            eprintln!("skipping: the engine tests need root");
            return None;
        }
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let tag = format!("spore-engine-test-{}-{name}", std::process::id());
        let run_dir = std::env::temp_dir().join(&tag);
        let cgroup_root = match parent {
            Some(parent) => parent.join(&tag),
            None => run_dir.join("not-a-cgroup"),
        };
        let _ = std::fs::create_dir(&cgroup_root);
        let cfg = EngineConfig {
            run_dir,
            cgroup_root,
        };
        let engine = Engine::new(cfg.clone()).unwrap();
        Some(Harness {
            engine,
            cfg,
            _serial: serial,
        })
    }

    fn spec(&self, argv: &[&str]) -> ContainerSpec {
        ContainerSpec {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            rootfs: RootfsSpec {
                lower: rootfs().to_owned(),
            },
            ..Default::default()
        }
    }

    /// The test's reaper: wait for `pid`, hand its status to the engine.
    fn reap(&mut self, pid: u32) -> ChildExit {
        let status = sys::waitpid(pid).unwrap();
        self.engine
            .on_child_exit(pid, status)
            .expect("the engine knows this pid")
    }

    /// create + start + read all output + reap; the container is deleted.
    fn run(&mut self, id: &str, spec: &ContainerSpec) -> (ChildExit, String, String) {
        let io = self
            .engine
            .create(id, spec)
            .unwrap_or_else(|e| panic!("create {id}: {}", spore_agent::error_chain(&e)));
        self.engine.start(id).unwrap();
        let pid = self.engine.state(id).unwrap().pid;
        let (out, err) = drain(io);
        let exit = self.reap(pid);
        self.engine.delete(id).unwrap();
        (exit, out, err)
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        for state in self.engine.list() {
            let _ = self.engine.delete(&state.id);
        }
        let _ = std::fs::remove_dir(&self.cfg.cgroup_root);
        let _ = std::fs::remove_dir_all(&self.cfg.run_dir);
    }
}

fn read_all(fd: OwnedFd) -> String {
    let mut buf = Vec::new();
    // A pty master reads EIO once the last slave closes: that is its end.
    let _ = File::from(fd).read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// Read stdout and stderr to the end, concurrently (either may fill its pipe).
fn drain(io: ContainerIo) -> (String, String) {
    drop(io.stdin);
    let err = io.stderr.map(|fd| std::thread::spawn(move || read_all(fd)));
    let out = read_all(io.stdout);
    (out, err.map(|t| t.join().unwrap()).unwrap_or_default())
}

fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn container_sees_its_own_pid_hostname_mounts_and_network() {
    let Some(mut h) = Harness::new("isolation") else {
        return;
    };
    let mut spec = h.spec(&[
        "sh",
        "-c",
        "echo $$; hostname; grep ^0:: /proc/self/cgroup; cat /proc/self/mountinfo; echo NET; cat /proc/net/dev",
    ]);
    spec.hostname = Some("box".into());
    let (exit, out, err) = h.run("iso", &spec);
    assert_eq!(exit.exit.code, 0, "stderr: {err}");
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("1"), "{out}");
    assert_eq!(lines.next(), Some("box"));
    assert_eq!(lines.next(), Some("0::/"), "cgroup namespace");
    let (mounts, net) = out.split_once("NET\n").unwrap();
    let allowed = [
        "/",
        "/proc",
        "/dev",
        "/dev/pts",
        "/dev/shm",
        "/dev/mqueue",
        "/sys",
    ];
    for line in mounts.lines().skip(3) {
        let target = line.split_whitespace().nth(4).unwrap();
        let masked = target.starts_with("/proc/") || target.starts_with("/sys/");
        assert!(
            allowed.contains(&target) || masked,
            "host mount {target} visible: {line}"
        );
    }
    let ifaces: Vec<&str> = net
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    assert_eq!(ifaces, vec!["lo"]);
}

/// The no-pivot_root path (MS_MOVE + chroot, for an agent running from an
/// initramfs) isolates as well: the isolation test again, in a fresh test
/// process with the engine's knob set.
#[test]
fn without_pivot_root_the_container_is_isolated_too() {
    if !is_root() {
        return;
    }
    let name = "container_sees_its_own_pid_hostname_mounts_and_network";
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--test-threads=1"])
        .env(spore_agent::engine::NO_PIVOT_ENV, "1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("1 passed"), "{text}");
}

#[test]
fn exit_codes_and_signals_are_reported_docker_style() {
    let Some(mut h) = Harness::new("exit") else {
        return;
    };
    let (exit, _, _) = h.run("three", &h.spec(&["sh", "-c", "exit 3"]));
    assert_eq!(
        (exit.exit.code, exit.exit.reason, exit.exec_pid),
        (3, ExitReason::Exited, None)
    );
    assert!(exit.exit.finished_at_ms >= exit.exit.started_at_ms);

    let io = h
        .engine
        .create("sleeper", &h.spec(&["sleep", "100"]))
        .unwrap();
    h.engine.start("sleeper").unwrap();
    let pid = h.engine.state("sleeper").unwrap().pid;
    h.engine.signal("sleeper", libc::SIGKILL).unwrap();
    let exit = h.reap(pid);
    assert_eq!(
        (exit.exit.code, exit.exit.reason, exit.exit.signal),
        (137, ExitReason::Signaled, Some(9))
    );
    let state = h.engine.state("sleeper").unwrap();
    assert_eq!(state.status, ContainerStatus::Exited);
    assert!(matches!(
        h.engine.signal("sleeper", 9),
        Err(EngineError::NotRunning(_))
    ));
    drop(io);
}

#[test]
fn user_cwd_and_env_are_honoured() {
    let Some(mut h) = Harness::new("process") else {
        return;
    };
    let mut spec = h.spec(&["sh", "-c", "id -u; id -g; pwd; echo $GREETING; echo $HOME"]);
    spec.user = Some("nobody".into());
    spec.cwd = Some("/tmp".into());
    spec.env = vec!["GREETING=hello".into()];
    let (exit, out, err) = h.run("nobody", &spec);
    assert_eq!(exit.exit.code, 0, "{err}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        vec!["65534", "65534", "/tmp", "hello", "/nonexistent"]
    );

    let mut spec = h.spec(&["id", "-G"]);
    spec.user = Some("spore".into());
    let (_, out, _) = h.run("spore", &spec);
    assert_eq!(out.trim(), "1000 10");

    let mut spec = h.spec(&[
        "sh",
        "-c",
        "ulimit -n; ulimit -Hn; stat -c %a /; touch /made-here && echo writable",
    ]);
    spec.rlimits.insert(
        "nofile".into(),
        Rlimit {
            soft: 123,
            hard: 456,
        },
    );
    let (exit, out, err) = h.run("limits", &spec);
    assert_eq!(exit.exit.code, 0, "{err}");
    let root_mode = format!(
        "{:o}",
        std::fs::metadata(rootfs()).unwrap().permissions().mode() & 0o7777
    );
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        vec!["123", "456", root_mode.as_str(), "writable"]
    );
    assert!(
        !rootfs().join("made-here").exists(),
        "a write reached the image"
    );
}

#[test]
fn privileges_are_reduced() {
    let Some(mut h) = Harness::new("caps") else {
        return;
    };
    let (exit, out, _) = h.run("caps", &h.spec(&["cat", "/proc/self/status"]));
    assert_eq!(exit.exit.code, 0);
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
            .unwrap_or_default()
    };
    assert_eq!(
        field("CapEff:"),
        format!("{:016x}", default_capability_mask())
    );
    assert_eq!(field("CapEff:"), "00000000a80425fb");
    assert_eq!(field("CapBnd:"), "00000000a80425fb");
    assert_eq!(field("CapAmb:"), "0000000000000000");
    assert_eq!(field("NoNewPrivs:"), "1");
}

#[test]
fn large_output_arrives_complete_and_stdin_reaches_the_program() {
    let Some(mut h) = Harness::new("stdio") else {
        return;
    };
    let (exit, out, _) = h.run("big", &h.spec(&["head", "-c", "3145728", "/dev/zero"]));
    assert_eq!(exit.exit.code, 0);
    assert_eq!(out.len(), 3 << 20);

    let mut spec = h.spec(&["sh", "-c", "cat; echo done >&2"]);
    spec.stdin = true;
    let io = h.engine.create("cat", &spec).unwrap();
    h.engine.start("cat").unwrap();
    let pid = h.engine.state("cat").unwrap().pid;
    File::from(io.stdin.unwrap())
        .write_all(b"through the pipe")
        .unwrap();
    let (out, err) = drain(ContainerIo { stdin: None, ..io });
    assert_eq!((out.as_str(), err.as_str()), ("through the pipe", "done\n"));
    assert_eq!(h.reap(pid).exit.code, 0);
}

#[test]
fn tty_mode_gives_a_controlling_terminal() {
    let Some(mut h) = Harness::new("tty") else {
        return;
    };
    let mut spec = h.spec(&["sh", "-c", "tty; test -t 0 && echo interactive"]);
    spec.tty = true;
    let io = h.engine.create("tty", &spec).unwrap();
    assert!(io.stderr.is_none());
    h.engine.start("tty").unwrap();
    let pid = h.engine.state("tty").unwrap().pid;
    let (out, _) = drain(io);
    assert_eq!(h.reap(pid).exit.code, 0);
    assert_eq!(out.replace('\r', ""), "/dev/pts/0\ninteractive\n");
}

#[test]
fn exec_joins_the_running_container() {
    let Some(mut h) = Harness::new("exec") else {
        return;
    };
    let mut spec = h.spec(&["sleep", "100"]);
    spec.hostname = Some("shared".into());
    let _io = h.engine.create("target", &spec).unwrap();
    let exec = ExecSpec {
        argv: vec![
            "sh".into(),
            "-c".into(),
            "hostname; cat /proc/1/cmdline".into(),
        ],
        ..Default::default()
    };
    assert!(matches!(
        h.engine.exec("target", &exec),
        Err(EngineError::NotRunning(_))
    ));
    h.engine.start("target").unwrap();
    let (pid, io) = h.engine.exec("target", &exec).unwrap();
    let (out, err) = drain(io);
    let exit = h.reap(pid);
    assert_eq!(
        (exit.container.as_str(), exit.exec_pid, exit.exit.code),
        ("target", Some(pid), 0),
        "{err}"
    );
    assert_eq!(out, "shared\nsleep\x00100\x00");

    let tty = ExecSpec {
        argv: vec!["tty".into()],
        tty: true,
        ..Default::default()
    };
    let (pid, io) = h.engine.exec("target", &tty).unwrap();
    assert!(io.stderr.is_none());
    let (out, _) = drain(io);
    assert_eq!(h.reap(pid).exit.code, 0);
    assert!(out.starts_with("/dev/pts/"), "{out:?}");
    assert_eq!(
        h.engine.state("target").unwrap().status,
        ContainerStatus::Running
    );
}

#[test]
fn setup_errors_reach_the_caller_and_leave_nothing() {
    let Some(mut h) = Harness::new("errors") else {
        return;
    };
    let fds_before = fd_count();
    let err = h
        .engine
        .create("missing", &h.spec(&["no-such-program"]))
        .unwrap_err();
    let msg = spore_agent::error_chain(&err);
    assert!(
        msg.contains("executable not found: no-such-program"),
        "{msg}"
    );
    let mut spec = h.spec(&["true"]);
    spec.user = Some("alice".into());
    let msg = spore_agent::error_chain(&h.engine.create("alice", &spec).unwrap_err());
    assert!(msg.contains("user \"alice\" not found"), "{msg}");
    assert!(h.engine.list().is_empty());
    assert!(!h.cfg.cgroup_root.join("missing").exists());
    assert!(!h.cfg.run_dir.join("missing").exists());
    assert_eq!(fd_count(), fds_before);
}

#[test]
fn limits_are_enforced_or_refused_never_dropped() {
    let Some(mut h) = Harness::new("limits") else {
        return;
    };
    let mut spec = h.spec(&["true"]);
    spec.limits = Limits {
        memory_bytes: Some(64 << 20),
        cpus: Some(0.5),
        pids: Some(64),
    };
    let available =
        std::fs::read_to_string(h.cfg.cgroup_root.join("cgroup.controllers")).unwrap_or_default();
    let has = |c: &str| available.split_whitespace().any(|a| a == c);
    match h.engine.create("limited", &spec) {
        Err(e) => {
            assert!(
                !(has("memory") && has("cpu") && has("pids")),
                "refused although supported: {e}"
            );
            let msg = e.to_string();
            assert!(
                msg.contains("cgroup v2 controller") && msg.contains("memory"),
                "{msg}"
            );
            assert!(!h.cfg.cgroup_root.join("limited").exists());
        }
        Ok(_io) => {
            let read = |f: &str| {
                std::fs::read_to_string(h.cfg.cgroup_root.join("limited").join(f)).unwrap()
            };
            assert_eq!(read("memory.max").trim(), (64u64 << 20).to_string());
            assert_eq!(read("cpu.max").trim(), "50000 100000");
            assert_eq!(read("pids.max").trim(), "64");
        }
    }
}

#[test]
fn delete_leaves_no_process_mount_cgroup_or_fd() {
    let Some(mut h) = Harness::new("delete") else {
        return;
    };
    let spec = h.spec(&["sh", "-c", "sleep 100 & sleep 100"]);
    let fds_before = fd_count();
    let io = h.engine.create("doomed", &spec).unwrap();
    h.engine.start("doomed").unwrap();
    let pid = h.engine.state("doomed").unwrap().pid;
    let cgroup = h.cfg.cgroup_root.join("doomed");
    if h.cfg.cgroup_root.join("cgroup.controllers").exists() {
        let procs = std::fs::read_to_string(cgroup.join("cgroup.procs")).unwrap();
        assert!(
            procs.lines().any(|l| l == pid.to_string()),
            "init not in its cgroup: {procs}"
        );
    }
    h.engine.delete("doomed").unwrap();
    // The reaper still collects the killed init; the engine has forgotten it.
    let status = sys::waitpid(pid).unwrap();
    assert!(
        libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL,
        "{status:#x}"
    );
    assert_eq!(h.engine.on_child_exit(pid, status), None);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "pid {pid} still there"
    );
    assert!(!cgroup.exists());
    let run_dir = h.cfg.run_dir.join("doomed");
    assert!(!run_dir.exists());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(h.cfg.run_dir.to_str().unwrap()),
        "{mounts}"
    );
    drop(io);
    assert_eq!(fd_count(), fds_before);
    assert!(matches!(
        h.engine.delete("doomed"),
        Err(EngineError::UnknownId(_))
    ));

    // A container deleted before it started: its waiting init just goes.
    let io = h.engine.create("never", &h.spec(&["true"])).unwrap();
    let pid = h.engine.state("never").unwrap().pid;
    // Until it execs, the init runs the sealed copy, not the binary on disk.
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert!(
        exe.to_string_lossy().starts_with("/memfd:spore-stage2"),
        "{exe:?}"
    );
    h.engine.delete("never").unwrap();
    sys::waitpid(pid).unwrap();
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    drop(io);
    assert_eq!(fd_count(), fds_before);
}

#[test]
fn without_cgroup_v2_delete_kills_through_the_pid_namespace() {
    let Some(mut h) = Harness::with_cgroup_parent("nocgroup", None) else {
        return;
    };
    let io = h
        .engine
        .create("orphan", &h.spec(&["sh", "-c", "sleep 100 & sleep 100"]))
        .unwrap();
    h.engine.start("orphan").unwrap();
    let pid = h.engine.state("orphan").unwrap().pid;
    assert!(!h.cfg.cgroup_root.join("orphan").exists());
    let (exec_pid, exec_io) = h
        .engine
        .exec(
            "orphan",
            &ExecSpec {
                argv: vec!["sleep".into(), "100".into()],
                ..Default::default()
            },
        )
        .unwrap();
    h.engine.delete("orphan").unwrap();
    // The init finishes exiting only once the exec'd process, our child, is reaped.
    for p in [exec_pid, pid] {
        let status = sys::waitpid(p).unwrap();
        assert!(libc::WIFSIGNALED(status), "{p}: {status:#x}");
    }
    drop((io, exec_io));
}

#[test]
fn image_files_serve_as_the_lower_layer() {
    let Some(mut h) = Harness::new("images") else {
        return;
    };
    let dir = h.cfg.run_dir.join("images");
    std::fs::create_dir_all(&dir).unwrap();
    let builders: [(&str, &[&str]); 2] = [
        ("mkfs.erofs", &["IMG", "ROOT"]),
        ("mkfs.ext4", &["-q", "-F", "-d", "ROOT", "IMG", "32M"]),
    ];
    for (tool, args) in builders {
        let image = dir.join(format!("{tool}.img"));
        let args: Vec<String> = args
            .iter()
            .map(|a| match *a {
                "IMG" => image.display().to_string(),
                "ROOT" => rootfs().display().to_string(),
                other => other.to_owned(),
            })
            .collect();
        let built = std::process::Command::new(tool).args(&args).output();
        if !built.is_ok_and(|o| o.status.success()) {
            eprintln!("skipping {tool}: not available");
            continue;
        }
        let mut spec = h.spec(&[
            "sh",
            "-c",
            "cat /etc/hostname; grep ' / ' /proc/self/mountinfo",
        ]);
        spec.rootfs.lower = image;
        let (exit, out, err) = h.run(tool.trim_start_matches("mkfs."), &spec);
        assert_eq!(exit.exit.code, 0, "{tool}: {err}");
        assert!(
            out.starts_with("spore\n") && out.contains("overlay"),
            "{tool}: {out}"
        );
    }
}

/// `cargo test -p spore-agent --test engine -- --ignored --nocapture` prints
/// the median time of create + start + exit of `true`.
#[test]
#[ignore]
fn time_of_a_container_start() {
    let Some(mut h) = Harness::new("timing") else {
        return;
    };
    let spec = h.spec(&["true"]);
    let mut times: Vec<f64> = (0..20)
        .map(|i| {
            let id = format!("t{i}");
            let t = Instant::now();
            let io = h.engine.create(&id, &spec).unwrap();
            h.engine.start(&id).unwrap();
            let pid = h.engine.state(&id).unwrap().pid;
            drop(io);
            h.reap(pid);
            let elapsed = t.elapsed().as_secs_f64() * 1000.0;
            h.engine.delete(&id).unwrap();
            elapsed
        })
        .collect();
    times.sort_by(f64::total_cmp);
    eprintln!(
        "create+start+exit of `true`: median {:.2} ms (min {:.2}, max {:.2})",
        times[10], times[0], times[19]
    );
    assert!(times[10] > 0.0);
}
