//! Clone processes. Every clone runs in its own process, forked from the process
//! that holds the template *before* it creates the clone's KVM VM (a VM fd belongs
//! to the address space that created it, so KVM state does not survive a fork).
//! A forked worker prepares its VM at once (`PreparedClone::new`: KVM VM, private
//! mapping of the template memory, vCPUs with CPUID) and then waits on a socket
//! for its clone order; the order's critical path is only the state restore and
//! vCPU 0's first KVM_RUN, on the thread that read the order.
//!
//! Owns the fork, the host's `Worker` handle and the line protocol (the child's
//! side is `child`):
//!
//! ```text
//! worker → host  READY <prep µs: kvm vm memory vcpus total> <pre-bound vsock path | ->
//! host → worker  CLONE <order ns> <cid> <uds path | ->
//! worker → host  RUNNING <received ns> <vm state ns> <devices created ns> <devices wired ns> <vcpus ns> <threads ns> <first KVM_RUN ns>
//! host → worker  PARK | RESUME                    → OK
//!                REPORT <slot>                    → SLOT <first|-> <last|-> <count>
//!                POKE <guest addr> <u64>          → OK
//!                PEEK <guest addr>                → VALUE <u64>
//! either         ERR <message>
//! ```
//! The worker exits when its socket closes or its parent dies.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use super::restore::StartTimes;
use super::Template;
use crate::vcpu::monotonic_ns;

/// Errors from talking to a clone process.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("creating the worker's socket failed")]
    Socket(#[source] std::io::Error),
    #[error("fork failed")]
    Fork(#[source] std::io::Error),
    #[error("talking to clone process {0} failed")]
    Io(i32, #[source] std::io::Error),
    #[error("clone process {0} closed its socket (it died?)")]
    Gone(i32),
    #[error("clone process {pid}: {message}")]
    Failed { pid: i32, message: String },
    #[error("clone process {pid} answered {line:?}")]
    Protocol { pid: i32, line: String },
}

/// What every worker of a pool gets.
#[derive(Clone, Debug, Default)]
pub struct WorkerOptions {
    /// Where the clone's serial output goes (discarded when `None`).
    pub console: Option<PathBuf>,
    /// Attach a `ReportPort` (test guests).
    pub report_port: bool,
    /// Where each worker binds its clone's vsock host socket ahead of the order
    /// (`clone-<pid>.vsock`; `Worker::vsock_path`).
    pub vsock_dir: Option<PathBuf>,
}

/// A clone's identity, sent with the order.
#[derive(Clone, Debug, Default)]
pub struct CloneOrder {
    /// vsock CID and host socket (for a template with a vsock device).
    pub vsock: Option<(u64, PathBuf)>,
}

/// Microseconds the worker spent preparing, before any order.
#[derive(Clone, Copy, Debug, Default)]
pub struct PrepTimes {
    pub kvm_vm_us: u64,
    pub memory_us: u64,
    pub vcpus_us: u64,
    pub total_us: u64,
}

/// When each step of a clone happened (CLOCK_MONOTONIC ns, one clock for all
/// processes on the host).
#[derive(Clone, Copy, Debug, Default)]
pub struct Started {
    pub order: u64,
    pub received: u64,
    pub times: StartTimes,
    pub running: u64,
}

impl Started {
    /// Order → clone vCPU entering the guest.
    pub fn latency_ns(&self) -> u64 {
        self.running.saturating_sub(self.order)
    }
}

/// One clone process, prepared or running. Dropping it kills the process.
pub struct Worker {
    pid: i32,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    /// Preparation times, once `wait_ready` returned.
    pub prep: PrepTimes,
    vsock_path: Option<PathBuf>,
}

impl Worker {
    /// Forks a worker that prepares a clone VM of `template` and waits for an
    /// order. Call from a process with no other threads that hold locks (the
    /// child only has the forking thread).
    pub fn spawn(template: &Template, options: &WorkerOptions) -> Result<Worker, WorkerError> {
        let (host, child) = UnixStream::pair().map_err(WorkerError::Socket)?;
        // SAFETY: fork has no memory-safety preconditions; the child only runs
        // `child_main` and leaves with `_exit`, never returning into the caller.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(WorkerError::Fork(std::io::Error::last_os_error()));
        }
        if pid == 0 {
            drop(host);
            let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                super::child::child_main(template, options, child)
            }))
            .unwrap_or(101);
            // SAFETY: _exit ends the child without running the parent's atexit
            // handlers or destructors, which belong to the parent.
            unsafe { libc::_exit(code) };
        }
        // The child's end lives on in the child only.
        drop(child);
        let writer = host.try_clone().map_err(|e| WorkerError::Io(pid, e))?;
        Ok(Worker {
            pid,
            reader: BufReader::new(host),
            writer,
            prep: PrepTimes::default(),
            vsock_path: None,
        })
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The vsock host socket this worker bound ahead of its order, if any: an
    /// order naming it skips the bind.
    pub fn vsock_path(&self) -> Option<&std::path::Path> {
        self.vsock_path.as_deref()
    }

    /// Waits until the worker's VM is prepared.
    pub fn wait_ready(&mut self) -> Result<(), WorkerError> {
        let mut line = self.read_line()?;
        if let Some((head, path)) = line.rsplit_once(' ') {
            self.vsock_path = (path != "-").then(|| PathBuf::from(path));
            line = head.to_string();
        }
        let v = numbers(self.pid, &line, "READY", 4)?;
        self.prep = PrepTimes {
            kvm_vm_us: v[0],
            memory_us: v[1],
            vcpus_us: v[2],
            total_us: v[3],
        };
        Ok(())
    }

    /// Orders the clone and waits until its vCPU entered the guest.
    pub fn start(&mut self, order: &CloneOrder) -> Result<Started, WorkerError> {
        let (cid, uds) = match &order.vsock {
            Some((cid, path)) => (*cid, path.display().to_string()),
            None => (0, "-".into()),
        };
        let now = monotonic_ns();
        self.send(&format!("CLONE {now} {cid} {uds}"))?;
        let line = self.read_line()?;
        let v = numbers(self.pid, &line, "RUNNING", 7)?;
        Ok(Started {
            order: now,
            received: v[0],
            times: StartTimes {
                begin: v[0],
                vm_state: v[1],
                devices_created: v[2],
                devices: v[3],
                vcpus: v[4],
                threads: v[5],
            },
            running: v[6],
        })
    }

    /// Parks the clone's vCPUs (it stays alive, idle).
    pub fn park(&mut self) -> Result<(), WorkerError> {
        self.call("PARK", "OK").map(drop)
    }

    pub fn resume(&mut self) -> Result<(), WorkerError> {
        self.call("RESUME", "OK").map(drop)
    }

    /// Slot `n` of the clone's report port: (first, last, count).
    pub fn report(&mut self, n: usize) -> Result<(Option<u32>, Option<u32>, u64), WorkerError> {
        let line = self.call(&format!("REPORT {n}"), "SLOT")?;
        let f: Vec<&str> = line.split_whitespace().collect();
        let opt = |s: &str| s.parse::<u32>().ok();
        let count = f.get(3).and_then(|c| c.parse().ok());
        match (f.len(), count) {
            (4, Some(count)) => Ok((opt(f[1]), opt(f[2]), count)),
            _ => Err(self.protocol(line)),
        }
    }

    /// Writes a u64 into the clone's guest memory.
    pub fn poke(&mut self, addr: u64, value: u64) -> Result<(), WorkerError> {
        self.call(&format!("POKE {addr} {value}"), "OK").map(drop)
    }

    /// Reads a u64 from the clone's guest memory.
    pub fn peek(&mut self, addr: u64) -> Result<u64, WorkerError> {
        let line = self.call(&format!("PEEK {addr}"), "VALUE")?;
        Ok(numbers(self.pid, &line, "VALUE", 1)?[0])
    }

    /// Kills the process now and reaps it.
    pub fn kill(&mut self) {
        if self.pid > 0 {
            // SAFETY: kill and waitpid on our own child's pid touch no memory of ours.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
                libc::waitpid(self.pid, std::ptr::null_mut(), 0);
            }
            self.pid = -1;
        }
    }

    fn call(&mut self, command: &str, expect: &str) -> Result<String, WorkerError> {
        self.send(command)?;
        let line = self.read_line()?;
        match line.split_whitespace().next() {
            Some(word) if word == expect => Ok(line),
            _ => Err(self.protocol(line)),
        }
    }

    fn send(&mut self, line: &str) -> Result<(), WorkerError> {
        writeln!(self.writer, "{line}").map_err(|e| WorkerError::Io(self.pid, e))
    }

    fn read_line(&mut self) -> Result<String, WorkerError> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(|e| WorkerError::Io(self.pid, e))?;
        if n == 0 {
            return Err(WorkerError::Gone(self.pid));
        }
        if let Some(message) = line.strip_prefix("ERR ") {
            return Err(WorkerError::Failed {
                pid: self.pid,
                message: message.trim().to_string(),
            });
        }
        Ok(line.trim_end().to_string())
    }

    fn protocol(&self, line: String) -> WorkerError {
        WorkerError::Protocol {
            pid: self.pid,
            line,
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `line` as `WORD n1 n2 ...` with exactly `count` numbers.
fn numbers(pid: i32, line: &str, word: &str, count: usize) -> Result<Vec<u64>, WorkerError> {
    let protocol = || WorkerError::Protocol {
        pid,
        line: line.to_string(),
    };
    let mut fields = line.split_whitespace();
    if fields.next() != Some(word) {
        return Err(protocol());
    }
    let v = fields
        .map(|f| f.parse::<u64>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| protocol())?;
    if v.len() != count {
        return Err(protocol());
    }
    Ok(v)
}

/// Private memory of process `pid` in KiB (Private_Clean + Private_Dirty of
/// /proc/PID/smaps_rollup).
pub fn private_kib(pid: i32) -> std::io::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("Private_Clean:") || l.starts_with("Private_Dirty:"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum())
}

/// Private memory of process `pid` in KiB, split: (everything, the part inside
/// mappings of exactly `ram_kib` — the guest RAM, i.e. the pages the guest
/// wrote). From /proc/PID/smaps.
pub fn private_split_kib(pid: i32, ram_kib: u64) -> std::io::Result<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    let (mut total, mut guest, mut in_ram) = (0, 0, false);
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let (key, value) = (
            f.next().unwrap_or(""),
            f.next().and_then(|v| v.parse::<u64>().ok()),
        );
        match (key, value) {
            ("Size:", Some(size)) => in_ram = size == ram_kib,
            ("Private_Clean:" | "Private_Dirty:", Some(kib)) => {
                total += kib;
                if in_ram {
                    guest += kib;
                }
            }
            _ => {}
        }
    }
    Ok((total, guest))
}

/// An error and its sources on one line.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
