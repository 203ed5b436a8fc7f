//! Clone processes. Every clone runs in its own process, forked from the process
//! that holds the template *before* it creates the clone's KVM VM (a VM fd belongs
//! to the address space that created it, so KVM state does not survive a fork).
//! A forked worker prepares its VM at once (`PreparedClone::new`: KVM VM, private
//! mapping of the template memory, vCPUs with CPUID) and then waits on a socket
//! for its clone order; the order's critical path is only the state restore and
//! the vCPU threads.
//!
//! Owns the fork, the fd hygiene of the child, and the line protocol:
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
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};

use super::restore::{CloneOptions, PreparedClone, StartTimes};
use super::Template;
use crate::builder::{CallerVcpu, ExtraDevice, VmHandle};
use crate::config::Console;
use crate::devices::report::{ReportPort, REPORT_PORT};
use crate::vcpu::monotonic_ns;

type SharedReport = Arc<Mutex<ReportPort>>;

/// How long a started clone may take to enter the guest.
const RUNNING_TIMEOUT: Duration = Duration::from_secs(10);

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
                child_main(template, options, child)
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

/// Closes every fd of this (child) process but stdio, `keep` and the template
/// memory: the parent's other sockets (other workers', listeners) must not stay
/// open in every clone, or closing them in the parent would not be seen.
fn close_inherited_fds(keep: &[RawFd]) {
    let fds: Vec<RawFd> = match std::fs::read_dir("/proc/self/fd") {
        Ok(dir) => dir
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect(),
        Err(_) => return,
    };
    for fd in fds {
        if fd > 2 && !keep.contains(&fd) {
            // SAFETY: closing an fd this process inherited; nothing in the child
            // uses it (the fd that read the directory is already closed).
            unsafe { libc::close(fd) };
        }
    }
}

/// The child: prepare, wait for the order, restore, then run vCPU 0 on this very
/// thread while a control thread (started before the order) answers the host.
fn child_main(template: &Template, options: &WorkerOptions, sock: UnixStream) -> i32 {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes a signal number and touches no memory.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    close_inherited_fds(&[sock.as_raw_fd(), template.memory().as_raw_fd()]);
    let Ok(mut writer) = sock.try_clone() else {
        return 1;
    };
    let mut reader = BufReader::new(sock);
    // 1. Everything that does not depend on the order.
    let t0 = Instant::now();
    let prepared = match PreparedClone::new(template) {
        Ok(p) => p,
        Err(e) => {
            let _ = writeln!(writer, "ERR preparing the clone VM: {}", chain(&e));
            return 1;
        }
    };
    let [kvm_vm, memory, vcpus] = prepared.prep_us;
    let vsock = match prebind_vsock(options) {
        Ok(v) => v,
        Err(e) => {
            let _ = writeln!(writer, "ERR binding the clone's vsock socket: {e}");
            return 1;
        }
    };
    let bound_path = vsock
        .as_ref()
        .map_or("-".to_string(), |(_, p)| p.display().to_string());
    let (tx, rx) = std::sync::mpsc::channel::<Running>();
    let control = std::thread::Builder::new()
        .name("spore-control".into())
        .spawn(move || control_loop(rx));
    if control.is_err() {
        return 1;
    }
    let total = t0.elapsed().as_micros();
    if writeln!(
        writer,
        "READY {kvm_vm} {memory} {vcpus} {total} {bound_path}"
    )
    .is_err()
    {
        return 1;
    }
    // 2. The order, waited for at real-time priority: on a busy host a plain
    //    thread woken by the order can wait milliseconds for a core.
    set_realtime(0, true);
    let mut line = String::new();
    if !matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
        return 0;
    }
    let received = monotonic_ns();
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.first() != Some(&"CLONE") {
        let _ = writeln!(writer, "ERR expected CLONE, got {:?}", line.trim());
        return 1;
    }
    // 3. Restore, hand the VM to the control thread, run vCPU 0 here.
    match start_clone(prepared, template, options, &f, received, vsock) {
        Ok((handle, first, report, times)) => {
            let running = Running {
                // SAFETY: gettid has no preconditions.
                vcpu_tid: unsafe { libc::gettid() },
                handle,
                report,
                times,
                reader,
                writer,
            };
            if tx.send(running).is_err() {
                return 1;
            }
            // The control thread lowers this thread's priority as soon as the
            // guest runs (lowering it here could let any busy task delay the
            // first KVM_RUN by a whole time slice).
            first.run();
            0
        }
        Err(e) => {
            let _ = writeln!(writer, "ERR {e}");
            1
        }
    }
}

/// Puts thread `tid` (0: the caller) under SCHED_FIFO (lowest real-time
/// priority) or back under SCHED_OTHER; returns whether it worked (it needs
/// CAP_SYS_NICE; without it clones start at normal priority).
fn set_realtime(tid: libc::pid_t, on: bool) -> bool {
    let (policy, priority) = match on {
        true => (libc::SCHED_FIFO, 1),
        false => (libc::SCHED_OTHER, 0),
    };
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: sched_setscheduler on a thread of this process reads one
    // sched_param from our stack.
    unsafe { libc::sched_setscheduler(tid, policy, &param) == 0 }
}

/// Binds `<vsock_dir>/clone-<pid>.vsock` if the options ask for it.
fn prebind_vsock(
    options: &WorkerOptions,
) -> std::io::Result<Option<(std::os::unix::net::UnixListener, PathBuf)>> {
    let Some(dir) = &options.vsock_dir else {
        return Ok(None);
    };
    let path = dir.join(format!("clone-{}.vsock", std::process::id()));
    let listener = std::os::unix::net::UnixListener::bind(&path)?;
    listener.set_nonblocking(true)?;
    Ok(Some((listener, path)))
}

/// A started clone, handed from the vCPU thread to the control thread.
struct Running {
    /// The thread running vCPU 0.
    vcpu_tid: libc::pid_t,
    handle: VmHandle,
    report: Option<SharedReport>,
    times: StartTimes,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

/// Acknowledges the start once the vCPU entered the guest, then answers
/// commands; the process ends when the host closes the socket.
fn control_loop(rx: std::sync::mpsc::Receiver<Running>) {
    // Real-time until the guest runs, so that this thread gets a core at once
    // to put the vCPU thread back to normal priority.
    set_realtime(0, true);
    let Ok(mut r) = rx.recv() else {
        return;
    };
    let running = r.handle.wait_running(RUNNING_TIMEOUT).unwrap_or(0);
    set_realtime(r.vcpu_tid, false);
    set_realtime(0, false);
    if let Err(e) = r.handle.start_event_loop() {
        let _ = writeln!(
            r.writer,
            "ERR starting the device event loop: {}",
            chain(&e)
        );
        // SAFETY: _exit ends the process without running the parent's destructors.
        unsafe { libc::_exit(1) };
    }
    let t = r.times;
    let ack = format!(
        "RUNNING {} {} {} {} {} {} {running}",
        t.begin, t.vm_state, t.devices_created, t.devices, t.vcpus, t.threads
    );
    if writeln!(r.writer, "{ack}").is_ok() {
        loop {
            let mut line = String::new();
            match r.reader.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let f: Vec<&str> = line.split_whitespace().collect();
            let cmd = f.first().copied().unwrap_or("");
            let reply = command(cmd, &f, &r.handle, r.report.as_ref());
            if writeln!(r.writer, "{reply}").is_err() {
                break;
            }
        }
    }
    // The host is gone or done with this clone: end the process at once (the
    // vCPU runs on the main thread, and nothing here needs an orderly teardown).
    // SAFETY: _exit ends the process without running the parent's destructors.
    unsafe { libc::_exit(0) };
}

type StartedClone = (VmHandle, CallerVcpu, Option<SharedReport>, StartTimes);

fn start_clone(
    prepared: PreparedClone,
    template: &Template,
    options: &WorkerOptions,
    f: &[&str],
    received: u64,
    bound: Option<(std::os::unix::net::UnixListener, PathBuf)>,
) -> Result<StartedClone, String> {
    let cid: u64 = f.get(2).and_then(|c| c.parse().ok()).unwrap_or(0);
    let vsock = match f.get(3) {
        Some(path) if *path != "-" && cid != 0 => Some((cid, PathBuf::from(path))),
        _ => None,
    };
    // The pre-bound socket serves an order that names it; otherwise it goes.
    let vsock_listener = match (&vsock, bound) {
        (Some((_, want)), Some((listener, path))) if *want == path => Some(listener),
        (_, Some((_, path))) => {
            let _ = std::fs::remove_file(path);
            None
        }
        _ => None,
    };
    let report = options.report_port.then(ReportPort::shared);
    let io_devices = report
        .iter()
        .map(|r| ExtraDevice {
            base: REPORT_PORT as u64,
            len: ReportPort::len(),
            device: r.clone(),
        })
        .collect();
    let console = match &options.console {
        Some(path) => Console::File(path.clone()),
        None => Console::Null,
    };
    let clone_options = CloneOptions {
        console,
        vsock,
        vsock_listener,
        io_devices,
    };
    let mut times = StartTimes::default();
    let (handle, first) = prepared
        .start_here(&template.state, clone_options, &mut times)
        .map_err(|e| chain(&e))?;
    times.begin = received;
    Ok((handle, first, report, times))
}

/// Answers one command to a running clone.
fn command(cmd: &str, f: &[&str], handle: &VmHandle, report: Option<&SharedReport>) -> String {
    let arg = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok());
    match (cmd, arg(1), arg(2)) {
        ("PARK", _, _) => {
            handle.pause();
            "OK".into()
        }
        ("RESUME", _, _) => {
            handle.resume();
            "OK".into()
        }
        ("REPORT", Some(n), _) => {
            let slot = report.map(|r| r.lock().expect("report port").slot(n as usize));
            let slot = slot.unwrap_or_default();
            let show = |v: Option<u32>| v.map_or("-".to_string(), |v| v.to_string());
            format!(
                "SLOT {} {} {}",
                show(slot.first),
                show(slot.last),
                slot.count
            )
        }
        ("POKE", Some(addr), Some(value)) => {
            match handle.memory().write_obj(value, GuestAddress(addr)) {
                Ok(()) => "OK".into(),
                Err(e) => format!("ERR poke: {e}"),
            }
        }
        ("PEEK", Some(addr), _) => match handle.memory().read_obj::<u64>(GuestAddress(addr)) {
            Ok(v) => format!("VALUE {v}"),
            Err(e) => format!("ERR peek: {e}"),
        },
        _ => format!("ERR unknown command {cmd:?}"),
    }
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
