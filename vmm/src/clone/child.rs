//! The clone process's side of `worker`: what a forked child runs. It prepares
//! its VM, waits for the order at real-time priority, restores the clone and runs
//! vCPU 0 on that same thread, while a control thread acknowledges the start,
//! lowers the priorities, starts the device event loop and answers the host's
//! commands (protocol in `worker`).
//!
//! Owns the child's fd hygiene and threads. Leaves only through `_exit`.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};

use super::restore::{CloneOptions, PreparedClone, StartTimes};
use super::worker::{chain, WorkerOptions};
use super::Template;
use crate::builder::{CallerVcpu, ExtraDevice, VmHandle};
use crate::config::Console;
use crate::devices::report::{ReportPort, REPORT_PORT};
use crate::vcpu::monotonic_ns;

type SharedReport = Arc<Mutex<ReportPort>>;

/// How long a started clone may take to enter the guest.
const RUNNING_TIMEOUT: Duration = Duration::from_secs(10);

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
pub(super) fn child_main(template: &Template, options: &WorkerOptions, sock: UnixStream) -> i32 {
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
fn prebind_vsock(options: &WorkerOptions) -> std::io::Result<Option<(UnixListener, PathBuf)>> {
    let Some(dir) = &options.vsock_dir else {
        return Ok(None);
    };
    let path = dir.join(format!("clone-{}.vsock", std::process::id()));
    let listener = UnixListener::bind(&path)?;
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
    bound: Option<(UnixListener, PathBuf)>,
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
