//! Test harness for the control plane: a real `spore serve` (process isolation by
//! default) in a private state directory, a tiny HTTP client for its unix
//! socket, and cleanup that always removes the daemon, its agents, sandboxes,
//! sockets and directories — also when a test panics (cleanup runs in `Drop`).
#![allow(dead_code)] // Each test binary uses a different part of the harness.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The `spore` binary under test.
pub fn spore_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_spore"))
}

/// The agent binary next to it, built on first use if missing.
pub fn agent_bin() -> PathBuf {
    static AGENT: OnceLock<PathBuf> = OnceLock::new();
    AGENT
        .get_or_init(|| {
            if let Some(p) = std::env::var_os("SPORE_AGENT") {
                return PathBuf::from(p);
            }
            let path = spore_bin().with_file_name("spore-agent");
            if !path.exists() {
                let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
                let mut cmd = Command::new(cargo);
                cmd.args(["build", "-p", "spore-agent"]);
                if path.parent().is_some_and(|d| d.ends_with("release")) {
                    cmd.arg("--release");
                }
                let status = cmd.status().expect("running cargo build -p spore-agent");
                assert!(status.success(), "cargo build -p spore-agent failed");
            }
            assert!(path.exists(), "no agent binary at {}", path.display());
            path
        })
        .clone()
}

/// True when running as root (the process backend needs namespaces and mounts).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

/// A fresh private directory under /tmp.
pub fn temp_dir(tag: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("spore-t-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A running daemon and everything it owns.
pub struct Daemon {
    pub dir: PathBuf,
    pub socket: PathBuf,
    child: Option<Child>,
}

impl Daemon {
    /// Starts `spore serve --isolation process` in a fresh state directory.
    pub fn start(tag: &str) -> Daemon {
        Daemon::start_in(temp_dir(tag), &["--isolation", "process"])
    }

    /// Starts a daemon on an existing state directory (restart tests).
    pub fn start_in(dir: PathBuf, extra: &[&str]) -> Daemon {
        let socket = dir.join("spore.sock");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("daemon.log"))
            .unwrap();
        let child = Command::new(spore_bin())
            .arg("serve")
            .arg("--socket")
            .arg(&socket)
            .args(extra)
            .env("SPORE_RUN_DIR", &dir)
            .env("SPORE_AGENT", agent_bin())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting spore serve");
        let d = Daemon {
            dir,
            socket,
            child: Some(child),
        };
        d.wait_listening();
        d
    }

    /// Takes charge of a daemon something else started on `dir` (the CLI's
    /// on-demand start), so it is cleaned up like ours.
    pub fn adopt_running(dir: PathBuf) -> Daemon {
        let d = Daemon {
            socket: dir.join("spore.sock"),
            dir,
            child: None,
        };
        d.wait_listening();
        d
    }

    fn wait_listening(&self) {
        let start = Instant::now();
        while UnixStream::connect(&self.socket).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "daemon did not listen; log:\n{}",
                std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// One request; returns (status, body).
    pub fn request(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Vec<u8>) {
        request(&self.socket, method, path, &[], body.map(str::as_bytes))
    }

    /// One JSON request; returns (status, JSON body or Null).
    pub fn json(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let (status, bytes) = self.request(method, path, body);
        let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, v)
    }

    /// Kills the daemon (not its sandboxes), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the daemon as an operator would (SIGTERM: idle agents go, sandboxes
    /// stay), falling back to SIGKILL.
    pub fn stop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        // SAFETY: kill takes plain integers; the pid is our child's.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = c.kill();
        let _ = c.wait();
    }

    /// Ids of the sandboxes the daemon lists.
    pub fn sandbox_ids(&self) -> Vec<String> {
        let (_, list) = self.json("GET", "/v1/sandboxes", None);
        list.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s["id"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if UnixStream::connect(&self.socket).is_ok() {
            for id in self.sandbox_ids() {
                let _ = self.request("DELETE", &format!("/v1/sandboxes/{id}?force=1"), None);
            }
            // Let background teardowns (after `run`) finish before the daemon goes.
            let sandboxes = self.dir.join("sandboxes");
            let start = Instant::now();
            while std::fs::read_dir(&sandboxes).is_ok_and(|mut d| d.next().is_some())
                && start.elapsed() < Duration::from_secs(10)
            {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        self.stop();
        kill_processes_mentioning(&self.dir);
        remove_agent_cgroups(&self.dir.join("agents"));
        if std::thread::panicking() {
            eprintln!(
                "daemon log:\n{}",
                std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Kills every process whose command line mentions `dir` (daemons and agents a
/// test started), so nothing outlives a failed test.
pub fn kill_processes_mentioning(dir: &Path) {
    let needle = dir.to_string_lossy().into_owned();
    for _ in 0..50 {
        let pids = processes_mentioning(&needle);
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            // SAFETY: kill takes plain integers.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Removes the cgroups of agents whose directories are in `agents` (a daemon
/// that was killed cannot): `<cgroup2>/spore/<agent dir name>`.
pub fn remove_agent_cgroups(agents: &Path) {
    let parents = ["/sys/fs/cgroup/unified/spore", "/sys/fs/cgroup/spore"];
    for entry in std::fs::read_dir(agents).into_iter().flatten().flatten() {
        for parent in parents {
            let _ = std::fs::remove_dir(Path::new(parent).join(entry.file_name()));
        }
    }
}

/// Pids whose command line contains `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(needle))
                .unwrap_or(false)
        })
        .collect()
}

/// A raw HTTP/1.1 request over a unix socket (`Connection: close`).
pub fn request(
    socket: &Path,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> (u16, Vec<u8>) {
    let mut s = UnixStream::connect(socket).expect("connect to the daemon");
    let body = body.unwrap_or(b"");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    // The server may answer and close before reading a refused body: ignore
    // write errors and read what it said.
    let _ = s
        .write_all(head.as_bytes())
        .and_then(|()| s.write_all(body));
    read_response(BufReader::new(s))
}

/// Reads a response to the end of the connection; decodes chunked bodies.
pub fn read_response<R: Read>(mut r: BufReader<R>) -> (u16, Vec<u8>) {
    let mut status_line = String::new();
    r.read_line(&mut status_line).unwrap();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let mut chunked = false;
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
            chunked = true;
        }
    }
    let mut body = Vec::new();
    if !chunked {
        r.read_to_end(&mut body).unwrap();
        return (status, body);
    }
    loop {
        let mut size = String::new();
        r.read_line(&mut size).unwrap();
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        let mut chunk = vec![0; n + 2];
        r.read_exact(&mut chunk).unwrap();
        body.extend_from_slice(&chunk[..n]);
    }
    (status, body)
}

/// Splits a frame stream into (stdout, stderr, last exit/error frame JSON).
pub fn split_stream(mut bytes: &[u8]) -> (String, String, Option<Value>) {
    let (mut out, mut err, mut last) = (Vec::new(), Vec::new(), None);
    while bytes.len() >= 8 {
        let len = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as usize;
        let payload = &bytes[8..8 + len];
        match bytes[0] {
            1 => out.extend_from_slice(payload),
            2 => err.extend_from_slice(payload),
            _ => last = serde_json::from_slice(payload).ok(),
        }
        bytes = &bytes[8 + len..];
    }
    (
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
        last,
    )
}

/// The OCI test images (resources/build-test-images.sh), built once per test
/// binary under target/tmp.
pub fn test_images() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("spore-test-images");
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../resources/build-test-images.sh");
        let status = Command::new("sh")
            .arg(&script)
            .arg(&out)
            .stdout(Stdio::null())
            .status()
            .expect("run build-test-images.sh");
        assert!(status.success(), "{} failed", script.display());
        out
    })
}

/// A run spec for busybox under process isolation.
pub fn spec(argv: &[&str]) -> String {
    serde_json::json!({"image": "busybox", "argv": argv, "isolation": "process"}).to_string()
}

/// Skips (returns true, with the reason) when not root.
pub fn skip_unless_root() -> bool {
    if !is_root() {
        eprintln!("skipped: the process backend needs root (namespaces, mounts)");
        return true;
    }
    false
}
