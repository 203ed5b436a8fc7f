//! The API end to end over the daemon's unix socket, process isolation, as root:
//! run with output and exit code, concurrent runs, bad input, delete while
//! running, logs follow, exec, an agent that dies, a daemon that restarts.

mod common;

use std::time::{Duration, Instant};

use common::{processes_mentioning, skip_unless_root, spec, split_stream, Daemon};
use serde_json::{json, Value};

#[test]
fn run_returns_output_and_exit_code() {
    if skip_unless_root() {
        return;
    }
    let d = Daemon::start("run");
    let (status, r) = d.json(
        "POST",
        "/v1/run",
        Some(&spec(&["sh", "-c", "echo hello; echo oops >&2; exit 3"])),
    );
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["stdout"], "hello\n");
    assert_eq!(r["stderr"], "oops\n");
    assert_eq!(r["exit_code"], 3);
    assert_eq!(r["isolation"], "process");
    // The sandbox is gone at once; its directory and agent right after.
    assert!(d.sandbox_ids().is_empty());
    let id = r["id"].as_str().unwrap();
    let sandbox_dir = d.dir.join("sandboxes").join(id);
    let t0 = Instant::now();
    while sandbox_dir.exists() && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!sandbox_dir.exists());
    // Its agent went too: what is left, once the pool has refilled, are the
    // daemon's 4 idle agents.
    let agents = d.dir.join("agents");
    let settled = || {
        let dirs = std::fs::read_dir(&agents).map(|d| d.count()).unwrap_or(0);
        dirs == 4 && processes_mentioning(&agents.to_string_lossy()).len() == 4
    };
    let mut stable = 0;
    while stable < 3 && t0.elapsed() < Duration::from_secs(10) {
        stable = if settled() { stable + 1 } else { 0 };
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        stable, 3,
        "the used agent was not removed, or the pool not refilled"
    );
    // Streamed: frames then an exit frame.
    let (status, body) = d.request("POST", "/v1/run?stream=1", Some(&spec(&["echo", "hi"])));
    assert_eq!(status, 200);
    let (out, _, exit) = split_stream(&body);
    assert_eq!(out, "hi\n");
    assert_eq!(exit.unwrap()["exit_code"], 0);
}

#[test]
fn concurrent_runs_all_complete_correctly() {
    if skip_unless_root() {
        return;
    }
    let d = Daemon::start("conc");
    const N: usize = 100;
    let start = Instant::now();
    let results: Vec<(u16, Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..N)
            .map(|i| {
                let d = &d;
                s.spawn(move || {
                    let cmd = format!("echo run-{i}; exit {}", i % 7);
                    d.json("POST", "/v1/run", Some(&spec(&["sh", "-c", &cmd])))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    eprintln!("{N} concurrent runs in {:?}", start.elapsed());
    for (i, (status, r)) in results.iter().enumerate() {
        assert_eq!(*status, 200, "run {i}: {r}");
        assert_eq!(r["stdout"], format!("run-{i}\n"), "run {i}: {r}");
        assert_eq!(r["exit_code"], (i % 7) as i64, "run {i}");
    }
    assert!(d.sandbox_ids().is_empty());
}

#[test]
fn bad_input_gets_4xx_with_code_and_message() {
    let d = Daemon::start("bad");
    let cases: &[(&str, &str, String, u16, &str)] = &[
        ("POST", "/v1/sandboxes", "{not json".into(), 400, "bad_json"),
        ("POST", "/v1/run", "[1,2]".into(), 400, "bad_json"),
        (
            "POST",
            "/v1/sandboxes",
            json!({"image":"busybox","template":"nope","isolation":"process"}).to_string(),
            404,
            "unknown_template",
        ),
        (
            "POST",
            "/v1/run",
            json!({"image":"busybox","limits":{"memory":-1},"isolation":"process"}).to_string(),
            400,
            "invalid_spec",
        ),
        (
            "POST",
            "/v1/run",
            json!({"image":"busybox","limits":{"memory":"-256m"},"isolation":"process"})
                .to_string(),
            400,
            "invalid_spec",
        ),
        (
            "POST",
            "/v1/run",
            json!({"image":"nosuchimage","isolation":"process"}).to_string(),
            404,
            "unknown_image",
        ),
        (
            "GET",
            "/v1/sandboxes/nosuch",
            String::new(),
            404,
            "not_found",
        ),
        ("GET", "/v1/nowhere", String::new(), 404, "no_route"),
        ("PUT", "/v1/run", String::new(), 405, "method_not_allowed"),
    ];
    for (method, path, body, want, code) in cases {
        let (status, v) = d.json(method, path, Some(body));
        assert_eq!(status, *want, "{method} {path} {body}: {v}");
        assert_eq!(v["code"], *code, "{v}");
        assert!(!v["message"].as_str().unwrap_or("").is_empty(), "{v}");
    }
    // A huge body: 413, and the daemon keeps serving.
    let huge = vec![b'x'; 4 << 20];
    let (status, body) = common::request(&d.socket, "POST", "/v1/run", &[], Some(&huge));
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&body));
    let big_header = "h".repeat(20_000);
    let (status, _) = common::request(
        &d.socket,
        "GET",
        "/v1/health",
        &[("X-Big", &big_header)],
        None,
    );
    assert_eq!(status, 431);
    assert_eq!(d.json("GET", "/v1/health", None).0, 200);
}

#[test]
fn limits_and_vm_are_refused_here_not_dropped() {
    if skip_unless_root() {
        return;
    }
    let d = Daemon::start("refuse");
    let with_limits =
        json!({"image":"busybox","argv":["true"],"limits":{"memory":"64m"},"isolation":"process"});
    let (status, v) = d.json("POST", "/v1/run", Some(&with_limits.to_string()));
    let hybrid = !std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    if hybrid {
        assert_eq!(status, 422, "{v}");
        assert_eq!(v["code"], "limits_unsupported");
        assert!(v["message"].as_str().unwrap().contains("memory"), "{v}");
    } else {
        assert_eq!(status, 200, "{v}");
    }
    let vm = json!({"image":"busybox","argv":["true"],"isolation":"vm"});
    let (status, v) = d.json("POST", "/v1/sandboxes", Some(&vm.to_string()));
    assert!(status == 422 || status == 501, "{status} {v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("--isolation process"),
        "{v}"
    );
    assert!(d.sandbox_ids().is_empty());
}

/// Creates a running sandbox; returns its id.
fn create(d: &Daemon, argv: &[&str]) -> String {
    let (status, v) = d.json("POST", "/v1/sandboxes", Some(&spec(argv)));
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["state"], "running");
    assert_eq!(v["isolation"], "process");
    v["id"].as_str().unwrap().to_owned()
}

#[test]
fn delete_while_running_leaves_nothing() {
    if skip_unless_root() {
        return;
    }
    let d = Daemon::start("del");
    let id = create(&d, &["sleep", "300"]);
    let (_, v) = d.json("GET", &format!("/v1/sandboxes/{id}"), None);
    let agent_pid = v["agent_pid"].as_i64().unwrap();
    let agent_dir = std::path::PathBuf::from(v["agent_dir"].as_str().unwrap());
    assert!(std::path::Path::new(&format!("/proc/{agent_pid}")).exists());
    // Without force: refused.
    let (status, v) = d.json("DELETE", &format!("/v1/sandboxes/{id}"), None);
    assert_eq!(status, 409, "{v}");
    let t0 = Instant::now();
    let (status, _) = d.request("DELETE", &format!("/v1/sandboxes/{id}?force=1"), None);
    assert_eq!(status, 204);
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert_eq!(d.json("GET", &format!("/v1/sandboxes/{id}"), None).0, 404);
    assert!(!d.dir.join("sandboxes").join(&id).exists());
    assert!(processes_mentioning(&agent_dir.to_string_lossy()).is_empty());
    assert!(!agent_dir.exists());
    assert!(!std::path::Path::new(&format!("/proc/{agent_pid}/cmdline")).exists());
}

#[test]
fn logs_follow_streams_until_exit() {
    if skip_unless_root() {
        return;
    }
    let d = Daemon::start("logs");
    let id = create(
        &d,
        &[
            "sh",
            "-c",
            "for i in 1 2 3; do echo line $i; sleep 0.2; done; echo bye >&2",
        ],
    );
    let t0 = Instant::now();
    let (status, body) = d.request("GET", &format!("/v1/sandboxes/{id}/logs?follow=1"), None);
    assert_eq!(status, 200);
    // Follow ended only when the process did (≈ 0.6 s of sleeps).
    assert!(
        t0.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t0.elapsed()
    );
    let (out, err, _) = split_stream(&body);
    assert_eq!(out, "line 1\nline 2\nline 3\n");
    assert_eq!(err, "bye\n");
    let (_, v) = d.json("POST", &format!("/v1/sandboxes/{id}/wait"), None);
    assert_eq!(v["state"], "exited");
    assert_eq!(v["exit_code"], 0);
    // Without follow: what is there, at once.
    let (_, body) = d.request("GET", &format!("/v1/sandboxes/{id}/logs"), None);
    assert_eq!(split_stream(&body).0, out);
}

#[test]
fn exec_into_a_running_sandbox() {
    if skip_unless_root() {
        return;
    }
    let d = Daemon::start("exec");
    let id = create(&d, &["sleep", "300"]);
    let body = json!({"argv": ["sh", "-c", "echo $((6*7)); hostname; exit 4"]}).to_string();
    let (status, v) = d.json("POST", &format!("/v1/sandboxes/{id}/exec"), Some(&body));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["stdout"], format!("42\n{id}\n"));
    assert_eq!(v["exit_code"], 4);
    let (status, stream) = d.request(
        "POST",
        &format!("/v1/sandboxes/{id}/exec?stream=1"),
        Some(&body),
    );
    assert_eq!(status, 200);
    let (out, _, exit) = split_stream(&stream);
    assert!(out.starts_with("42\n"));
    assert_eq!(exit.unwrap()["exit_code"], 4);
    let (status, v) = d.json(
        "POST",
        &format!("/v1/sandboxes/{id}/exec"),
        Some(r#"{"argv":[]}"#),
    );
    assert_eq!(status, 400, "{v}");
    // Exec into an exited sandbox: 409.
    let done = create(&d, &["true"]);
    d.json("POST", &format!("/v1/sandboxes/{done}/wait"), None);
    let (status, v) = d.json("POST", &format!("/v1/sandboxes/{done}/exec"), Some(&body));
    assert_eq!(status, 409, "{v}");
}

#[test]
fn a_dead_agent_means_a_failed_sandbox() {
    if skip_unless_root() {
        return;
    }
    let d = Daemon::start("dead");
    let id = create(&d, &["sleep", "300"]);
    let (_, v) = d.json("GET", &format!("/v1/sandboxes/{id}"), None);
    let pid = v["agent_pid"].as_i64().unwrap() as i32;
    // SAFETY: kill takes plain integers; the pid is the agent we just started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let (_, v) = d.json("POST", &format!("/v1/sandboxes/{id}/wait"), None);
    assert_eq!(v["state"], "failed", "{v}");
    assert!(v["error"].as_str().unwrap().contains("agent"), "{v}");
    let agent_dir = v["agent_dir"].as_str().unwrap();
    assert!(!std::path::Path::new(agent_dir).join("agent.sock").exists());
    let (status, _) = d.request("DELETE", &format!("/v1/sandboxes/{id}"), None);
    assert_eq!(status, 204);
}

#[test]
fn a_restarted_daemon_readopts_its_sandboxes() {
    if skip_unless_root() {
        return;
    }
    let mut d = Daemon::start("restart");
    let running = create(&d, &["sh", "-c", "echo before; sleep 300"]);
    let finished = create(&d, &["sh", "-c", "exit 5"]);
    d.json("POST", &format!("/v1/sandboxes/{finished}/wait"), None);
    let doomed = create(&d, &["sleep", "300"]);
    let (_, v) = d.json("GET", &format!("/v1/sandboxes/{doomed}"), None);
    let doomed_agent = v["agent_pid"].as_i64().unwrap() as i32;
    std::thread::sleep(Duration::from_millis(100));
    d.kill();
    // While no daemon runs, one agent dies.
    // SAFETY: kill takes plain integers; the pid is an agent this test started.
    unsafe { libc::kill(doomed_agent, libc::SIGKILL) };
    std::thread::sleep(Duration::from_millis(100));
    let dir = d.dir.clone();
    let d2 = Daemon::start_in(dir, &["--isolation", "process"]);
    let (_, v) = d2.json("GET", &format!("/v1/sandboxes/{running}"), None);
    assert_eq!(v["state"], "running", "{v}");
    let (_, v) = d2.json("GET", &format!("/v1/sandboxes/{finished}"), None);
    assert_eq!(v["state"], "exited");
    assert_eq!(v["exit_code"], 5);
    let (_, v) = d2.json("GET", &format!("/v1/sandboxes/{doomed}"), None);
    assert_eq!(v["state"], "failed", "{v}");
    // The re-adopted sandbox still works: exec, its log, delete.
    let (status, v) = d2.json(
        "POST",
        &format!("/v1/sandboxes/{running}/exec"),
        Some(r#"{"argv":["echo","still here"]}"#),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["stdout"], "still here\n");
    let (_, body) = d2.request("GET", &format!("/v1/sandboxes/{running}/logs"), None);
    assert_eq!(split_stream(&body).0, "before\n");
    let (status, _) = d2.request("DELETE", &format!("/v1/sandboxes/{running}?force=1"), None);
    assert_eq!(status, 204);
    // `d` only removes the directory now; d2 deletes the rest.
    drop(d2);
    drop(d);
}

#[test]
fn timeout_kills_the_process() {
    if skip_unless_root() {
        return;
    }
    let d = Daemon::start("timeout");
    let body = json!({"image":"busybox","argv":["sleep","30"],"timeout":0.3,"isolation":"process"});
    let t0 = Instant::now();
    let (status, r) = d.json("POST", "/v1/run", Some(&body.to_string()));
    assert_eq!(status, 200, "{r}");
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    assert_eq!(r["exit_reason"], "timeout", "{r}");
    assert_eq!(r["exit_code"], 128 + 9, "{r}");
}

#[test]
fn tty_mode_gives_one_stream() {
    if skip_unless_root() {
        return;
    }
    let d = Daemon::start("tty");
    let body = json!({"image":"busybox","argv":["sh","-c","tty; echo err >&2"],"tty":true,
        "isolation":"process"});
    let (status, r) = d.json("POST", "/v1/run", Some(&body.to_string()));
    assert_eq!(status, 200, "{r}");
    let out = r["stdout"].as_str().unwrap();
    assert!(out.contains("/dev/pts/"), "{r}");
    assert!(out.contains("err"), "stderr goes to the terminal too: {r}");
    assert_eq!(r["stderr"], "");
}

#[test]
fn attach_joins_stdin_and_output_of_an_interactive_sandbox() {
    if skip_unless_root() {
        return;
    }
    use std::io::{BufRead, BufReader, Read, Write};
    let d = Daemon::start("attach");
    let body = json!({"image":"busybox","argv":["sh","-c","read line; echo got:$line; exit 6"],
        "interactive":true,"isolation":"process"});
    let (status, v) = d.json("POST", "/v1/sandboxes", Some(&body.to_string()));
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["state"], "created");
    let id = v["id"].as_str().unwrap();
    let mut s = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
    write!(
        s,
        "POST /v1/sandboxes/{id}/attach HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\n\
         Upgrade: spore-stream\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let frame = |kind: u8, data: &[u8]| {
        let mut f = vec![kind, 0, 0, 0];
        f.extend_from_slice(&(data.len() as u32).to_be_bytes());
        f.extend_from_slice(data);
        f
    };
    s.write_all(&frame(0, b"ping\n")).unwrap();
    s.write_all(&frame(5, b"")).unwrap();
    let mut r = BufReader::new(s);
    let mut status_line = String::new();
    r.read_line(&mut status_line).unwrap();
    assert!(status_line.starts_with("HTTP/1.1 101"), "{status_line}");
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            break;
        }
    }
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).unwrap();
    let (out, _, exit) = split_stream(&rest);
    assert_eq!(out, "got:ping\n");
    assert_eq!(exit.unwrap()["exit_code"], 6);
    // Logged like any other output.
    let (_, logs) = d.request("GET", &format!("/v1/sandboxes/{id}/logs"), None);
    assert_eq!(split_stream(&logs).0, "got:ping\n");
}
