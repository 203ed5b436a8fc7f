//! Drives the real `spore-agent` binary in host mode over a unix socket, with the
//! plain test runtime (host processes, no root needed): the protocol, error
//! replies, stdio streaming and flow control, exit codes, signals, exec, delete.

mod server_common;

use std::io::Write;
use std::time::{Duration, Instant};

use server_common::{plain_agent, sh};
use spore_agent::protocol::client::ClientError;
use spore_agent::protocol::frame::MAX_FRAME;
use spore_agent::protocol::messages::{
    CloneFixup, ErrorCode, Outcome, RequestBody, PROTOCOL_VERSION,
};
use spore_agent::protocol::spec::{ContainerStatus, ExecSpec, ExitReason};

fn code_of<T: std::fmt::Debug>(r: Result<T, ClientError>) -> ErrorCode {
    match r {
        Err(ClientError::Agent(e)) => e.code,
        other => panic!("expected an agent error, got {other:?}"),
    }
}

#[test]
fn hello_reports_versions() {
    let agent = plain_agent();
    let mut c = agent.client();
    let info = c.hello().unwrap();
    assert_eq!(info.protocol_version, PROTOCOL_VERSION);
    assert_eq!(info.agent_version, env!("CARGO_PKG_VERSION"));
    assert!(!info.kernel_release.is_empty());
    assert!(info.uptime_ms > 0);
    assert!(!info.pid1);
    let wrong = c.call(RequestBody::Hello {
        protocol_version: 999,
    });
    assert_eq!(code_of(wrong), ErrorCode::VersionMismatch);
}

#[test]
fn bad_frames_get_error_replies_and_the_connection_goes_on() {
    let agent = plain_agent();
    let mut c = agent.client();
    let reply = c.call_raw(b"\xff\x00 not json").unwrap();
    assert!(matches!(reply.outcome, Outcome::Error(ref e) if e.code == ErrorCode::BadFrame));

    let reply = c.call_raw(br#"{"id":5,"type":"teleport"}"#).unwrap();
    assert_eq!(reply.id, 5);
    assert!(matches!(reply.outcome, Outcome::Error(ref e) if e.code == ErrorCode::UnknownType));

    let reply = c
        .call_raw(br#"{"id":6,"type":"create","container":"x"}"#)
        .unwrap();
    assert!(matches!(reply.outcome, Outcome::Error(ref e) if e.code == ErrorCode::BadRequest));

    // Oversized: a length above 1 MiB, and its payload, which the agent skips.
    let len = MAX_FRAME + 1000;
    let stream = c.stream();
    stream.write_all(&len.to_be_bytes()).unwrap();
    stream.write_all(&vec![b'x'; len as usize]).unwrap();
    let reply = c.read_response().unwrap();
    assert!(matches!(reply.outcome, Outcome::Error(ref e) if e.code == ErrorCode::BadFrame));

    // Same connection still serves.
    assert_eq!(c.hello().unwrap().protocol_version, PROTOCOL_VERSION);
    // And so does the agent.
    assert!(agent.client().list().unwrap().is_empty());
}

#[test]
fn unknown_containers_are_not_found() {
    let agent = plain_agent();
    let mut c = agent.client();
    assert_eq!(code_of(c.start("nope")), ErrorCode::NotFound);
    assert_eq!(code_of(c.state("nope")), ErrorCode::NotFound);
    assert_eq!(code_of(c.wait("nope", None)), ErrorCode::NotFound);
    assert_eq!(code_of(c.signal("nope", 15)), ErrorCode::NotFound);
    assert_eq!(code_of(c.delete("nope")), ErrorCode::NotFound);
    assert_eq!(code_of(c.attach("nope", None)), ErrorCode::NotFound);
    assert_eq!(
        code_of(c.exec("nope", &ExecSpec::default())),
        ErrorCode::NotFound
    );
    assert_eq!(
        code_of(c.create("../x", &sh("true"))),
        ErrorCode::BadRequest
    );
    assert!(c.hello().is_ok());
}

#[test]
fn stdout_stderr_and_exit_code_are_separate() {
    let agent = plain_agent();
    let mut c = agent.client();
    let out = c.run("c1", &sh("echo out; echo err >&2; exit 3")).unwrap();
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");
    assert_eq!(out.exit.code, 3);
    assert_eq!(out.exit.reason, ExitReason::Exited);
    let st = c.state("c1").unwrap();
    assert_eq!(st.status, ContainerStatus::Exited);
    assert_eq!(st.exit.unwrap().code, 3);
    // A second wait answers at once with the same status.
    assert_eq!(c.wait("c1", None).unwrap().code, 3);
    assert_eq!(code_of(c.start("c1")), ErrorCode::InvalidState);
    assert_eq!(
        code_of(c.exec(
            "c1",
            &ExecSpec {
                argv: vec!["true".into()],
                ..Default::default()
            }
        )),
        ErrorCode::InvalidState
    );
    assert_eq!(
        code_of(c.create("c1", &sh("true"))),
        ErrorCode::AlreadyExists
    );
    assert_eq!(code_of(c.attach("c1", None)), ErrorCode::AlreadyAttached);
    c.delete("c1").unwrap();
    assert_eq!(code_of(c.state("c1")), ErrorCode::NotFound);
}

#[test]
fn megabytes_on_both_streams_arrive_complete() {
    let agent = plain_agent();
    let mut c = agent.client();
    let script =
        "head -c 1500000 /dev/zero | tr '\\0' o & head -c 1300000 /dev/zero | tr '\\0' e >&2; wait";
    let out = c.run("big", &sh(script)).unwrap();
    assert_eq!(out.stdout.len(), 1_500_000);
    assert_eq!(out.stderr.len(), 1_300_000);
    assert!(out.stdout.iter().all(|&b| b == b'o'));
    assert!(out.stderr.iter().all(|&b| b == b'e'));
    assert_eq!(out.exit.code, 0);
}

#[test]
fn ten_mebibyte_burst_arrives_in_order() {
    let agent = plain_agent();
    let mut c = agent.client();
    let n = 1_500_000;
    let out = c.run("burst", &sh(&format!("seq 1 {n}"))).unwrap();
    let expect: String = (1..=n).map(|i| format!("{i}\n")).collect();
    assert!(expect.len() > 10 << 20);
    assert_eq!(out.stdout.len(), expect.len());
    assert!(out.stdout == expect.as_bytes(), "output out of order");
}

#[test]
fn slow_reader_loses_nothing() {
    let agent = plain_agent();
    let mut c = agent.client();
    c.create("slow", &sh("head -c 3000000 /dev/zero | tr '\\0' s"))
        .unwrap();
    let mut attach = c.attach("slow", None).unwrap();
    c.start("slow").unwrap();
    // Let the pipe and the socket fill up before reading anything.
    std::thread::sleep(Duration::from_millis(500));
    let (out, err) = attach.collect().unwrap();
    assert_eq!(out.len(), 3_000_000);
    assert!(err.is_empty());
    assert_eq!(c.wait("slow", None).unwrap().code, 0);
}

#[test]
fn stdin_is_forwarded_and_closed() {
    let agent = plain_agent();
    let mut c = agent.client();
    let mut spec = sh("tr a-z A-Z; echo done");
    spec.stdin = true;
    c.create("in", &spec).unwrap();
    let mut attach = c.attach("in", None).unwrap();
    c.start("in").unwrap();
    attach.write_stdin(b"hello stdin\n").unwrap();
    attach.close_stdin().unwrap();
    let (out, _) = attach.collect().unwrap();
    assert_eq!(out, b"HELLO STDIN\ndone\n");
    assert_eq!(c.wait("in", None).unwrap().code, 0);
}

#[test]
fn signal_ends_with_128_plus_signal() {
    let agent = plain_agent();
    let mut c = agent.client();
    c.create("sig", &sh("exec sleep 100")).unwrap();
    c.start("sig").unwrap();
    assert_eq!(c.state("sig").unwrap().status, ContainerStatus::Running);
    c.signal("sig", libc::SIGTERM).unwrap();
    let exit = c.wait("sig", None).unwrap();
    assert_eq!(exit.code, 128 + libc::SIGTERM);
    assert_eq!(exit.reason, ExitReason::Signaled);
    assert_eq!(exit.signal, Some(libc::SIGTERM));
    assert_eq!(
        code_of(c.signal("sig", libc::SIGTERM)),
        ErrorCode::InvalidState
    );
}

#[test]
fn exec_into_a_running_container() {
    let agent = plain_agent();
    let mut c = agent.client();
    c.create("ex", &sh("exec sleep 100")).unwrap();
    c.start("ex").unwrap();
    let spec = ExecSpec {
        argv: vec![
            "sh".into(),
            "-c".into(),
            "echo from-exec; echo e >&2; exit 7".into(),
        ],
        ..Default::default()
    };
    let pid = c.exec("ex", &spec).unwrap();
    let mut attach = c.attach("ex", Some(pid)).unwrap();
    let (out, err) = attach.collect().unwrap();
    assert_eq!(
        (out.as_slice(), err.as_slice()),
        (&b"from-exec\n"[..], &b"e\n"[..])
    );
    assert_eq!(c.wait("ex", Some(pid)).unwrap().code, 7);
    assert_eq!(
        code_of(c.wait("ex", Some(pid + 100_000))),
        ErrorCode::NotFound
    );
    // The container itself is still running.
    assert_eq!(c.state("ex").unwrap().status, ContainerStatus::Running);
    c.delete("ex").unwrap();
}

#[test]
fn wait_on_one_connection_does_not_block_others() {
    let agent = plain_agent();
    let mut c = agent.client();
    c.create("w", &sh("exec sleep 100")).unwrap();
    c.start("w").unwrap();
    let mut waiter = agent.client();
    let t = std::thread::spawn(move || waiter.wait("w", None));
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    assert_eq!(c.list().unwrap().len(), 1);
    assert!(started.elapsed() < Duration::from_secs(1));
    c.signal("w", libc::SIGKILL).unwrap();
    assert_eq!(t.join().unwrap().unwrap().code, 137);
}

#[test]
fn delete_leaves_no_process() {
    let agent = plain_agent();
    let mut c = agent.client();
    c.create("d", &sh("sleep 1000 & exec sleep 1000")).unwrap();
    c.start("d").unwrap();
    let pid = c.state("d").unwrap().pid;
    assert!(pid > 0);
    // The background sleep is a child of the container's sh in its process group.
    std::thread::sleep(Duration::from_millis(200));
    let group = server_common::processes_in_group(pid);
    assert!(group.len() >= 2, "expected sh and its child, got {group:?}");
    c.delete("d").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !server_common::processes_in_group(pid).is_empty() {
        assert!(Instant::now() < deadline, "processes survived delete");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(c.list().unwrap().is_empty());
}

#[test]
fn fixup_is_refused_outside_a_guest() {
    let agent = plain_agent();
    let mut c = agent.client();
    let f = CloneFixup {
        hostname: Some("clone-1".into()),
        sandbox_id: Some("sb-1".into()),
        ..Default::default()
    };
    assert_eq!(code_of(c.fixup(&f)), ErrorCode::Unsupported);
    assert_eq!(c.hello().unwrap().sandbox_id, None);
}

#[test]
fn shutdown_ends_a_host_mode_agent() {
    let mut agent = plain_agent();
    let mut c = agent.client();
    c.create("s", &sh("exec sleep 100")).unwrap();
    c.start("s").unwrap();
    let pid = c.state("s").unwrap().pid;
    c.shutdown().unwrap();
    let status = agent
        .wait_exit(Duration::from_secs(5))
        .expect("agent still running");
    assert!(status.success());
    // Its container went with it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() && !server_common::is_zombie(pid) {
        assert!(Instant::now() < deadline, "container outlived the agent");
        std::thread::sleep(Duration::from_millis(50));
    }
}
