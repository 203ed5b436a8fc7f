//! The template process: one `spore template-host` per template. It boots the
//! guest image with an empty disk slot, waits for the agent's hello, captures the
//! VM as a `spore_vmm::clone::Template`, and from then on forks prepared clone
//! workers ahead of their orders and orders them for the daemon.
//!
//! The disk slot is a symlink, `<dir>/slot`: `/dev/null` (capacity 0) while the
//! template boots. A clone's block device reopens its backing file *by path*
//! when it is restored on the order, and announces the new capacity to the guest
//! with a config-change interrupt when it differs from the captured one (0). So
//! the host points the slot at the sandbox's image just before each order, and
//! orders one clone at a time (this process is single-threaded: it forks).
//!
//! Line protocol on the process's stdin/stdout (its stderr is the log):
//!
//! ```text
//! host → daemon  PROGRESS <text>                (any number, while booting)
//!                READY <guest memory bytes>      | ERR <message> (then it exits)
//! daemon → host  CLONE <cid> <disk image path>   → CLONED <pid> <latency ns> <vsock path>
//!                RELEASE <pid>                   → OK   (kills and reaps the clone)
//!                end of input                    → the host exits; its clones die with it
//! ```
//!
//! The daemon's side is [`TemplateHost`]. Not here: what a sandbox does with its
//! clone (`clone`), the template table (`supervisor::templates`).

use std::collections::{HashMap, VecDeque};
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use clap::Args;
use spore_vmm::clone::{CloneOrder, Template, Worker, WorkerOptions};

use super::clone::{CloneSource, ClonedVm};
use super::VmError;
use crate::boot::{BootOptions, Guest};

/// How long the template's guest may take to answer the agent's hello.
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
/// The slot's target while no clone is being ordered: capacity 0.
const EMPTY_SLOT: &str = "/dev/null";
/// Guest CIDs handed to clones (0–2 are reserved by vsock).
static NEXT_CID: AtomicU64 = AtomicU64::new(1000);

/// What a template is booted from.
#[derive(Clone, Debug)]
pub struct TemplateSpec {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub memory_mib: u32,
    pub vcpus: u8,
    /// Prepared clone workers kept ahead of orders.
    pub pool: usize,
}

/// `spore template-host`'s arguments (started by the daemon, not by users).
#[derive(Args, Clone, Debug)]
pub struct HostArgs {
    /// The template's directory: disk slot, clones' vsock sockets.
    #[arg(long)]
    pub dir: PathBuf,
    #[arg(long)]
    pub kernel: PathBuf,
    #[arg(long)]
    pub initrd: PathBuf,
    #[arg(long)]
    pub memory_mib: u32,
    #[arg(long)]
    pub vcpus: u8,
    #[arg(long, default_value_t = 2)]
    pub pool: usize,
}

/// The template process's main: boot, capture, then serve orders until the
/// daemon closes its end. Returns the exit code.
pub fn serve(args: HostArgs) -> i32 {
    let mut out = std::io::stdout();
    let template = match boot_and_capture(&args, &mut out) {
        Ok(t) => t,
        Err(message) => {
            let _ = say(&mut out, &format!("ERR {}", one_line(&message)));
            return 1;
        }
    };
    if say(&mut out, &format!("READY {}", template.mem_size())).is_err() {
        return 1;
    }
    let options = WorkerOptions {
        console: None,
        report_port: false,
        vsock_dir: Some(args.dir.clone()),
    };
    let mut pool = Pool {
        template: &template,
        options,
        slot: args.dir.join("slot"),
        target: args.pool,
        idle: VecDeque::new(),
        running: HashMap::new(),
    };
    pool.refill();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let reply = pool.command(&line);
        if say(&mut out, &one_line(&reply)).is_err() {
            break;
        }
        pool.refill();
    }
    // Dropping the workers kills and reaps every clone.
    0
}

/// Steps 1–4 of the template: slot, boot, hello, capture.
fn boot_and_capture(args: &HostArgs, out: &mut impl Write) -> Result<Template, String> {
    let err = |e: &dyn std::error::Error| spore_vmm::clone::worker::chain(e);
    // 1. The empty disk slot.
    fs::create_dir_all(&args.dir).map_err(|e| err(&e))?;
    let slot = args.dir.join("slot");
    point_slot(&slot, Path::new(EMPTY_SLOT)).map_err(|e| err(&e))?;
    // 2. Boot the guest image with the slot as its disk.
    let _ = say(out, "PROGRESS booting the guest kernel and agent");
    let opts = BootOptions {
        kernel: args.kernel.clone(),
        initrd: args.initrd.clone(),
        mem_mib: args.memory_mib,
        vcpus: args.vcpus,
        echo_console: false,
        disk: Some(slot),
    };
    let guest = Guest::boot(&opts).map_err(|e| err(&e))?;
    // 3. The agent's hello: the template is captured with its agent listening.
    let mut agent = guest.wait_for_agent(BOOT_TIMEOUT).map_err(|e| err(&e))?;
    let hello = agent.hello().map_err(|e| err(&e))?;
    drop(agent);
    let ms = guest.ms(Instant::now());
    let _ = say(
        out,
        &format!(
            "PROGRESS agent ready after {ms} ms (kernel {}); capturing",
            hello.kernel_release
        ),
    );
    // 4. Capture: the VM's threads end, its memory is sealed.
    Template::capture(guest.vm).map_err(|e| err(&e))
}

/// Prepared workers and the clones they became.
struct Pool<'t> {
    template: &'t Template,
    options: WorkerOptions,
    slot: PathBuf,
    target: usize,
    idle: VecDeque<Worker>,
    running: HashMap<u32, Worker>,
}

impl Pool<'_> {
    /// Forks workers until `target` are prepared or preparing (a fork is ~0.1 ms;
    /// each worker prepares its VM in its own process, in parallel).
    fn refill(&mut self) {
        while self.idle.len() < self.target {
            match Worker::spawn(self.template, &self.options) {
                Ok(w) => self.idle.push_back(w),
                Err(e) => {
                    eprintln!("template-host: cannot fork a clone worker: {e}");
                    return;
                }
            }
        }
    }

    fn command(&mut self, line: &str) -> String {
        let mut f = line.splitn(3, ' ');
        match (f.next(), f.next(), f.next()) {
            (Some("CLONE"), Some(cid), Some(image)) => match cid.parse() {
                Ok(cid) => self.clone_one(cid, Path::new(image)),
                Err(_) => format!("ERR bad cid {cid:?}"),
            },
            (Some("RELEASE"), Some(pid), None) => {
                let pid = pid.parse().unwrap_or(0);
                if let Some(w) = self.running.remove(&pid) {
                    let vsock = w.vsock_path().map(Path::to_owned);
                    drop(w);
                    if let Some(path) = vsock {
                        let _ = fs::remove_file(path);
                    }
                }
                "OK".into()
            }
            _ => format!("ERR unknown command {line:?}"),
        }
    }

    /// A prepared worker → image in the slot → order → running clone.
    fn clone_one(&mut self, cid: u64, image: &Path) -> String {
        // 1. A prepared worker (one that failed to prepare is dropped).
        let mut worker = match self.take() {
            Ok(w) => w,
            Err(e) => return format!("ERR no clone worker: {e}"),
        };
        // 2. The sandbox's image in the slot, reopened by the clone's restore.
        if let Err(e) = point_slot(&self.slot, image) {
            return format!("ERR cannot put {} in the disk slot: {e}", image.display());
        }
        // 3. The order: fresh CID on the socket the worker bound ahead of it.
        let order = CloneOrder {
            vsock: worker.vsock_path().map(|p| (cid, p.to_owned())),
        };
        let started = worker.start(&order);
        let _ = point_slot(&self.slot, Path::new(EMPTY_SLOT));
        let started = match started {
            Ok(s) => s,
            Err(e) => return format!("ERR clone order: {e}"),
        };
        let pid = worker.pid() as u32;
        let vsock = worker
            .vsock_path()
            .map_or("-".into(), |p| p.display().to_string());
        self.running.insert(pid, worker);
        format!("CLONED {pid} {} {vsock}", started.latency_ns())
    }

    fn take(&mut self) -> Result<Worker, String> {
        let mut last = "none prepared".to_string();
        for _ in 0..3 {
            let mut w = match self.idle.pop_front() {
                Some(w) => w,
                None => Worker::spawn(self.template, &self.options).map_err(|e| e.to_string())?,
            };
            match w.wait_ready() {
                Ok(()) => return Ok(w),
                Err(e) => last = e.to_string(),
            }
        }
        Err(last)
    }
}

/// Points the slot symlink at `target`, atomically.
fn point_slot(slot: &Path, target: &Path) -> std::io::Result<()> {
    let tmp = slot.with_extension("new");
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)?;
    fs::rename(&tmp, slot)
}

fn say(out: &mut impl Write, line: &str) -> std::io::Result<()> {
    writeln!(out, "{line}")?;
    out.flush()
}

fn one_line(s: &str) -> String {
    s.replace('\n', " | ")
}

/// The daemon's handle on one template process. Dropping it ends the process
/// and with it every clone of the template.
#[derive(Debug)]
pub struct TemplateHost {
    pid: u32,
    child: Mutex<Child>,
    io: Mutex<(ChildStdin, BufReader<ChildStdout>)>,
    log: PathBuf,
    /// The template's guest memory in bytes.
    pub memory_bytes: u64,
}

impl TemplateHost {
    /// Starts the template process in `dir` and waits until it captured the
    /// template, passing its progress lines to `progress`.
    pub fn start(
        spec: &TemplateSpec,
        dir: &Path,
        progress: impl FnMut(&str),
    ) -> Result<TemplateHost, VmError> {
        let exe = std::env::current_exe().map_err(|source| VmError::Io {
            what: "find",
            path: PathBuf::from("spore"),
            source,
        })?;
        TemplateHost::start_program(&exe, spec, dir, progress)
    }

    /// [`TemplateHost::start`] with `program` as the `spore` binary.
    fn start_program(
        exe: &Path,
        spec: &TemplateSpec,
        dir: &Path,
        mut progress: impl FnMut(&str),
    ) -> Result<TemplateHost, VmError> {
        // 1. Its directory and log.
        let io = |what, path: &Path| {
            let path = path.to_owned();
            move |source| VmError::Io { what, path, source }
        };
        // A previous daemon's files (its clones' sockets) must not block binds.
        let _ = fs::remove_dir_all(dir);
        fs::create_dir_all(dir).map_err(io("create", dir))?;
        let log = dir.join("template.log");
        let log_file = File::create(&log).map_err(io("create", &log))?;
        // 2. The process: this binary, `template-host`.
        let mut child = Command::new(exe)
            .arg("template-host")
            .arg("--dir")
            .arg(dir)
            .arg("--kernel")
            .arg(&spec.kernel)
            .arg("--initrd")
            .arg(&spec.initrd)
            .arg("--memory-mib")
            .arg(spec.memory_mib.to_string())
            .arg("--vcpus")
            .arg(spec.vcpus.to_string())
            .arg("--pool")
            .arg(spec.pool.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .map_err(|e| VmError::HostSpawn(exe.display().to_string(), e))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            return Err(VmError::HostProtocol("no pipes".into()));
        };
        let host = TemplateHost {
            pid: child.id(),
            child: Mutex::new(child),
            io: Mutex::new((stdin, BufReader::new(stdout))),
            log,
            memory_bytes: 0,
        };
        // 3. Progress until READY (or the reason it failed).
        host.wait_ready(&mut progress)
    }

    fn wait_ready(mut self, progress: &mut impl FnMut(&str)) -> Result<TemplateHost, VmError> {
        loop {
            let line = self.read_line()?;
            if let Some(text) = line.strip_prefix("PROGRESS ") {
                progress(text);
                continue;
            }
            match line.strip_prefix("READY ").map(str::parse::<u64>) {
                Some(Ok(bytes)) => {
                    self.memory_bytes = bytes;
                    return Ok(self);
                }
                _ => return Err(VmError::HostProtocol(line)),
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// False once the template process has ended (then it can clone no more).
    pub fn alive(&self) -> bool {
        let mut child = self.child.lock().unwrap_or_else(|p| p.into_inner());
        matches!(child.try_wait(), Ok(None))
    }

    /// One line from the process; `ERR` lines and its end become errors.
    fn read_line(&self) -> Result<String, VmError> {
        let mut io = self.io.lock().unwrap_or_else(|p| p.into_inner());
        read_reply(&mut io.1, || self.ended())
    }

    /// One request, one reply.
    fn call(&self, request: &str) -> Result<String, VmError> {
        let mut io = self.io.lock().unwrap_or_else(|p| p.into_inner());
        writeln!(io.0, "{request}").map_err(VmError::HostIo)?;
        read_reply(&mut io.1, || self.ended())
    }

    /// The process's end, for errors: its status and log.
    fn ended(&self) -> VmError {
        let mut child = self.child.lock().unwrap_or_else(|p| p.into_inner());
        let status = match child.wait() {
            Ok(s) => s.to_string(),
            Err(e) => e.to_string(),
        };
        VmError::HostGone(status, self.log.display().to_string())
    }
}

/// Reads one reply line: `ERR` becomes [`VmError::HostFailed`], end of output
/// the process's end (`gone`).
fn read_reply(r: &mut impl BufRead, gone: impl FnOnce() -> VmError) -> Result<String, VmError> {
    let mut line = String::new();
    let n = r.read_line(&mut line).map_err(VmError::HostIo)?;
    if n == 0 {
        return Err(gone());
    }
    let line = line.trim_end().to_owned();
    match line.strip_prefix("ERR ") {
        Some(message) => Err(VmError::HostFailed(message.to_owned())),
        None => Ok(line),
    }
}

/// `CLONED <pid> <latency ns> <vsock path>`.
fn parse_cloned(line: &str) -> Option<(u32, u64, PathBuf)> {
    let mut f = line.splitn(4, ' ');
    match (f.next(), f.next(), f.next(), f.next()) {
        (Some("CLONED"), Some(pid), Some(ns), Some(path)) if path != "-" => {
            Some((pid.parse().ok()?, ns.parse().ok()?, PathBuf::from(path)))
        }
        _ => None,
    }
}

impl CloneSource for TemplateHost {
    fn order(&self, image: &Path) -> Result<ClonedVm, VmError> {
        let cid = NEXT_CID.fetch_add(1, Ordering::Relaxed);
        let line = self.call(&format!("CLONE {cid} {}", image.display()))?;
        let (pid, ns, vsock) = parse_cloned(&line).ok_or(VmError::HostProtocol(line))?;
        Ok(ClonedVm::hybrid_vsock(pid, vsock, Duration::from_nanos(ns)))
    }

    fn release(&self, pid: u32) {
        let _ = self.call(&format!("RELEASE {pid}"));
    }
}

impl Drop for TemplateHost {
    fn drop(&mut self) {
        // Closing its input would end it too; kill: a template may be booting.
        let mut child = self.child.lock().unwrap_or_else(|p| p.into_inner());
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[cfg(test)]
#[path = "host_tests.rs"]
mod tests;
