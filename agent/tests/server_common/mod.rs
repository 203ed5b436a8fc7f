//! Test harness for the agent binary: starts `spore-agent` in host mode on a
//! fresh unix socket, waits for its "ready" line, and kills it on drop.

#![allow(dead_code)] // each test crate uses a different part

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use spore_agent::protocol::client::{Client, Endpoint};
use spore_agent::protocol::spec::ContainerSpec;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A running agent; killed (and its socket directory removed) on drop.
pub struct Agent {
    child: Child,
    dir: PathBuf,
    sock: PathBuf,
}

/// An agent with the plain runtime (host processes, no isolation).
pub fn plain_agent() -> Agent {
    Agent::start(&["--runtime", "plain"])
}

impl Agent {
    pub fn start(extra: &[&str]) -> Agent {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("spore-agent-test-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("agent.sock");
        let mut child = Command::new(env!("CARGO_BIN_EXE_spore-agent"))
            .arg("--listen")
            .arg(format!("unix:{}", sock.display()))
            .args(extra)
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start spore-agent");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        // Watch for the ready line, then keep echoing the agent's log.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[agent] {line}");
                if line.starts_with("spore-agent: ready on unix:") {
                    let _ = tx.send(());
                }
            }
        });
        let agent = Agent { child, dir, sock };
        rx.recv_timeout(Duration::from_secs(10))
            .expect("agent did not print its ready line");
        agent
    }

    pub fn endpoint(&self) -> Endpoint {
        Endpoint::Unix(self.sock.clone())
    }

    /// A new control connection with a 60 s read timeout.
    pub fn client(&self) -> Client {
        let c = Client::connect(self.endpoint()).unwrap();
        c.set_timeout(Some(Duration::from_secs(60))).unwrap();
        c
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `sh -c script` as a container spec.
pub fn sh(script: &str) -> ContainerSpec {
    ContainerSpec {
        argv: vec!["sh".into(), "-c".into(), script.into()],
        ..Default::default()
    }
}

/// (state, process group) from /proc/PID/stat; the comm field may hold spaces.
fn stat(pid: u32) -> Option<(char, u32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let mut f = rest.split(' ');
    let state = f.next()?.chars().next()?;
    let pgrp = f.nth(1)?.parse().ok()?;
    Some((state, pgrp))
}

pub fn is_zombie(pid: u32) -> bool {
    matches!(stat(pid), Some(('Z', _)))
}

/// Live (non-zombie) processes whose process group is `pgid`.
pub fn processes_in_group(pgid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| matches!(stat(pid), Some((st, g)) if g == pgid && st != 'Z' && st != 'X'))
        .collect()
}

/// Whether a path exists (for rootfs checks).
pub fn exists(p: &Path) -> bool {
    p.exists()
}
