//! The container engine on the host, as root: a container's life from the
//! outside — exit codes, signals, exec, setup errors, limits, delete and
//! what it leaves behind. Skips, with a message, when not root.
//! Harness: `engine_harness`.

mod engine_harness;

use std::path::Path;

use spore_agent::engine::EngineError;
use spore_agent::protocol::spec::{ContainerStatus, ExecSpec, ExitReason, Limits};
use spore_agent::sys;

use engine_harness::*;

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

    let missing = ExecSpec {
        argv: vec!["no-such-tool".into()],
        ..Default::default()
    };
    let err = h.engine.exec("target", &missing).unwrap_err();
    let msg = spore_agent::error_chain(&err);
    assert!(msg.contains("executable not found: no-such-tool"), "{msg}");
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
