//! The real agent with the real container engine, driven over the protocol in
//! host mode: needs root and the busybox rootfs from `resources/build-rootfs.sh`
//! (target/guest/rootfs); skips with a message otherwise.

mod server_common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use server_common::Agent;
use spore_agent::protocol::client::ClientError;
use spore_agent::protocol::messages::ErrorCode;
use spore_agent::protocol::spec::{
    ContainerSpec, ContainerStatus, ExecSpec, ExitReason, RootfsSpec,
};

fn rootfs() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/guest/rootfs")
}

/// An engine agent, or `None` (with the reason printed) where it cannot run.
fn engine_agent() -> Option<Agent> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: the container engine needs root");
        return None;
    }
    if !rootfs().join("bin/busybox").exists() {
        eprintln!(
            "skipped: no busybox rootfs at {} (run resources/build-rootfs.sh)",
            rootfs().display()
        );
        return None;
    }
    let run = std::env::temp_dir().join(format!("spore-engine-run-{}", std::process::id()));
    Some(Agent::start(&["--run-dir", run.to_str().unwrap()]))
}

fn sh(script: &str) -> ContainerSpec {
    ContainerSpec {
        argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
        rootfs: RootfsSpec { lower: rootfs() },
        ..Default::default()
    }
}

fn code_of<T: std::fmt::Debug>(r: Result<T, ClientError>) -> ErrorCode {
    match r {
        Err(ClientError::Agent(e)) => e.code,
        other => panic!("expected an agent error, got {other:?}"),
    }
}

#[test]
fn container_stdio_exit_code_and_states() {
    let Some(agent) = engine_agent() else { return };
    let mut c = agent.client();
    let out = c.run("e1", &sh("echo out; echo err >&2; exit 3")).unwrap();
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");
    assert_eq!((out.exit.code, out.exit.reason), (3, ExitReason::Exited));
    assert_eq!(c.state("e1").unwrap().status, ContainerStatus::Exited);
    assert_eq!(code_of(c.start("e1")), ErrorCode::InvalidState);
    let ls = ExecSpec {
        argv: vec!["/bin/true".into()],
        ..Default::default()
    };
    assert_eq!(code_of(c.exec("e1", &ls)), ErrorCode::InvalidState);
    c.delete("e1").unwrap();
    assert_eq!(code_of(c.state("e1")), ErrorCode::NotFound);
}

#[test]
fn container_large_output_complete_and_in_order() {
    let Some(agent) = engine_agent() else { return };
    let mut c = agent.client();
    let both =
        "head -c 1500000 /dev/zero | tr '\\0' o & head -c 1300000 /dev/zero | tr '\\0' e >&2; wait";
    let out = c.run("e2", &sh(both)).unwrap();
    assert_eq!((out.stdout.len(), out.stderr.len()), (1_500_000, 1_300_000));
    assert!(out.stdout.iter().all(|&b| b == b'o') && out.stderr.iter().all(|&b| b == b'e'));
    c.delete("e2").unwrap();

    let n = 1_500_000;
    let out = c.run("e3", &sh(&format!("seq 1 {n}"))).unwrap();
    let expect: String = (1..=n).map(|i| format!("{i}\n")).collect();
    assert!(expect.len() > 10 << 20);
    assert!(
        out.stdout == expect.as_bytes(),
        "10 MiB burst incomplete or out of order"
    );
    c.delete("e3").unwrap();
}

#[test]
fn container_signal_exec_and_delete() {
    let Some(agent) = engine_agent() else { return };
    let mut c = agent.client();
    c.create("e4", &sh("sleep 1000 & exec sleep 1000")).unwrap();
    let mut attach = c.attach("e4", None).unwrap();
    c.start("e4").unwrap();
    assert_eq!(code_of(c.start("e4")), ErrorCode::InvalidState);

    let spec = ExecSpec {
        argv: vec![
            "/bin/sh".into(),
            "-c".into(),
            "echo in-container; exit 5".into(),
        ],
        ..Default::default()
    };
    let pid = c.exec("e4", &spec).unwrap();
    let (out, _) = c.attach("e4", Some(pid)).unwrap().collect().unwrap();
    assert_eq!(out, b"in-container\n");
    assert_eq!(c.wait("e4", Some(pid)).unwrap().code, 5);

    // The container's init is PID 1 of its namespace: like docker's, it ignores
    // signals it has no handler for, except SIGKILL.
    c.signal("e4", libc::SIGKILL).unwrap();
    let exit = c.wait("e4", None).unwrap();
    assert_eq!(
        (exit.code, exit.signal),
        (128 + libc::SIGKILL, Some(libc::SIGKILL))
    );
    let _ = attach.collect();

    c.create("e5", &sh("sleep 1000 & exec sleep 1000")).unwrap();
    c.start("e5").unwrap();
    let init = c.state("e5").unwrap().pid;
    c.delete("e5").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::path::Path::new(&format!("/proc/{init}")).exists() && !server_common::is_zombie(init)
    {
        assert!(Instant::now() < deadline, "container init survived delete");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(c.list().unwrap().iter().all(|s| s.id != "e5"));
}

#[test]
fn container_tty_resize_and_stdin() {
    let Some(agent) = engine_agent() else { return };
    let mut c = agent.client();
    // Frames on the attach stream apply in order: once the line has arrived,
    // so has the resize sent before it.
    let mut spec = sh("read line; stty size; echo got:$line");
    spec.tty = true;
    spec.stdin = true;
    c.create("e6", &spec).unwrap();
    let mut attach = c.attach("e6", None).unwrap();
    assert!(attach.tty());
    attach.resize(30, 100).unwrap();
    c.start("e6").unwrap();
    attach.write_stdin(b"hi\n").unwrap();
    let (out, err) = attach.collect().unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(err.is_empty());
    assert!(text.contains("30 100"), "{text:?}");
    assert!(text.contains("got:hi"), "{text:?}");
    assert_eq!(c.wait("e6", None).unwrap().code, 0);
    c.delete("e6").unwrap();
}
