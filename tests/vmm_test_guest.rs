//! spore's no_std test guest (`resources/test-guest`) driving virtio rng, blk and
//! vsock end to end, the way a driver does (tier 2 of the test plan).
//!
//! The guest reads 64 random bytes; reads sector 0 of a disk this test prepares,
//! writes a pattern to sector 1, flushes and reads it back; connects from guest
//! port 2000 to host port 5000 (an echo server here, at `<uds>_5000`) and checks
//! the echo; then accepts the host's connection to port 1234 (`CONNECT 1234` on
//! `<uds>`) and answers one line in upper case. It reports each step on the serial
//! port as a `SPORE-TEST` line and ends through the exit port (0xf4).
//!
//! Two runs of the same checks: under spore's VMM, and under QEMU's microvm with
//! QEMU's own virtio devices (the guest's `qemu` build). The QEMU run shows the
//! guest's drivers are right, so a failure only under spore points at spore.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use spore_tests::paths;
use spore_tests::process::ChildGuard;
use spore_tests::skip::Missing;
use spore_tests::skip_unless;
use spore_tests::tempdir::TempDir;
use spore_tests::vsock;
use spore_vmm::config::{Console, DiskConfig, VsockConfig};
use spore_vmm::{HostKvm, VmConfig, VmExit};

/// The guest's listening port and the host port it connects to.
const GUEST_PORT: u32 = 1234;
const ECHO_PORT: u32 = 5000;
const GUEST_CID: u64 = 3;
const SECTOR: usize = 512;
const DISK_SIZE: usize = 1024 * 1024;
/// What sector 0 of the disk starts with; the guest prints these 16 bytes.
const SECTOR0_HEAD: &[u8; 16] = b"spore-disk-0000\n";
/// What the guest writes to sector 1: this text, then byte i = i as u8
/// (resources/test-guest/src/blk.rs).
const PATTERN_HEAD: &[u8] = b"spore-test-guest wrote sector 1\n";
/// The guest's outbound message, which the echo server must see.
const GUEST_PING: &[u8] = b"ping from guest\n";
/// The line this test sends to the guest's port 1234.
const HOST_LINE: &str = "hello from the host\n";
/// Every line a passing run prints, in order (each a prefix of its line).
const EXPECTED_LINES: &[&str] = &[
    "SPORE-TEST rng ok ",
    "SPORE-TEST blk read spore-disk-0000.",
    "SPORE-TEST blk ok",
    "SPORE-TEST vsock-out ok",
    "SPORE-TEST vsock-in ok",
    "SPORE-TEST done",
];
/// Upper bounds for a run: the guest's own timeouts are shorter per step.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(120);
const RUN_TIMEOUT: Duration = Duration::from_secs(300);

/// Builds the guest with `resources/build-test-guest.sh` and returns the ELF.
/// One build at a time: the tests in this file run in parallel.
fn build_guest(qemu: bool) -> PathBuf {
    static BUILD: Mutex<()> = Mutex::new(());
    let _one_at_a_time = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let script = paths::repo_root().join("resources/build-test-guest.sh");
    let mut cmd = Command::new(&script);
    if qemu {
        cmd.arg("--qemu");
    }
    let out = cmd.output().expect("run resources/build-test-guest.sh");
    assert!(
        out.status.success(),
        "building the test guest failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let elf = String::from_utf8_lossy(&out.stdout).trim().to_string();
    PathBuf::from(elf)
}

/// Byte `i` of the pattern the guest writes to sector 1.
fn pattern(i: usize) -> u8 {
    PATTERN_HEAD.get(i).copied().unwrap_or(i as u8)
}

/// The host side of one run: a scratch directory with the disk image, the vsock
/// unix socket path and the echo server behind `<uds>_5000`. Removed on drop.
struct HostSide {
    dir: TempDir,
    disk: PathBuf,
    uds: PathBuf,
    echo: EchoServer,
}

impl HostSide {
    fn new(prefix: &str) -> HostSide {
        let dir = TempDir::new(prefix).expect("temp dir");
        let disk = dir.path().join("disk.img");
        let mut image = vec![0u8; DISK_SIZE];
        image[..SECTOR0_HEAD.len()].copy_from_slice(SECTOR0_HEAD);
        std::fs::write(&disk, &image).expect("write disk image");
        let uds = dir.path().join("vm.vsock");
        let echo = EchoServer::start(&PathBuf::from(format!("{}_{ECHO_PORT}", uds.display())));
        HostSide {
            dir,
            disk,
            uds,
            echo,
        }
    }

    /// Connects to the guest's port 1234, sends one line and returns the answer.
    fn talk_to_guest(&self, alive: impl FnMut() -> io::Result<()>) -> io::Result<String> {
        let mut stream = vsock::connect(&self.uds, GUEST_PORT, CONNECT_TIMEOUT, alive)?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        stream.write_all(HOST_LINE.as_bytes())?;
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line)?;
        Ok(line)
    }

    /// Asserts everything a passing run leaves behind.
    fn check(mut self, serial: &str, answer: &str) {
        let mut rest = serial;
        for expected in EXPECTED_LINES {
            let at = rest
                .find(expected)
                .unwrap_or_else(|| panic!("serial log lacks {expected:?} (in order):\n{serial}"));
            rest = &rest[at..];
        }
        assert!(
            !serial.contains("FAIL"),
            "the guest reported a failure:\n{serial}"
        );
        assert_eq!(
            answer,
            HOST_LINE.to_uppercase(),
            "guest's answer on port {GUEST_PORT}"
        );

        let echoed = self.echo.finish();
        assert_eq!(
            echoed, GUEST_PING,
            "what the guest sent to host port {ECHO_PORT}"
        );

        let image = std::fs::read(&self.disk).expect("read disk image");
        assert_eq!(
            &image[..SECTOR0_HEAD.len()],
            SECTOR0_HEAD,
            "sector 0 changed"
        );
        let sector1 = &image[SECTOR..2 * SECTOR];
        let bad = (0..SECTOR).find(|&i| sector1[i] != pattern(i));
        assert_eq!(bad, None, "sector 1 of the disk lacks the guest's pattern");
    }
}

/// A one-connection echo server on a unix socket, as the VMM's vsock device
/// reaches it for guest-initiated connections. Its thread ends on its own
/// (bounded waits), and is told to stop when dropped.
struct EchoServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<io::Result<Vec<u8>>>>,
}

impl EchoServer {
    fn start(path: &Path) -> EchoServer {
        let listener = UnixListener::bind(path).expect("bind echo socket");
        listener
            .set_nonblocking(true)
            .expect("nonblocking echo socket");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || echo_one(listener, &flag));
        EchoServer {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops waiting and returns what the one connection sent (and got back).
    fn finish(&mut self) -> Vec<u8> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(Ok(bytes))) => bytes,
            Some(Ok(Err(e))) => panic!("echo server: {e}"),
            Some(Err(_)) => panic!("echo server thread panicked"),
            None => Vec::new(),
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Accepts one connection (until `stop`) and echoes it until EOF or `stop`.
fn echo_one(listener: UnixListener, stop: &AtomicBool) -> io::Result<Vec<u8>> {
    let deadline = Instant::now() + RUN_TIMEOUT;
    let mut stream: UnixStream = loop {
        match listener.accept() {
            Ok((stream, _)) => break stream,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        if stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
            return Ok(Vec::new());
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_millis(100)))?;
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                stream.write_all(&buf[..n])?;
                seen.extend_from_slice(&buf[..n]);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
            Err(e) => return Err(e),
        }
    }
    Ok(seen)
}

/// The serial console's bytes, shared between the VMM's serial device and the test.
#[derive(Clone, Default)]
struct SerialLog(Arc<Mutex<Vec<u8>>>);

impl Write for SerialLog {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl SerialLog {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// The guest under spore's VMM with vsock, a read-write disk and rng: the devices
/// a container VM uses, driven by a driver that is not Linux.
#[test]
fn test_guest_passes_under_spore() {
    let kvm = HostKvm::detect();
    if !kvm.usable {
        let problem = kvm.problem.unwrap_or_default();
        skip_unless!(Err::<(), _>(Missing::environment(problem)));
    }
    let guest = build_guest(false);
    let host = HostSide::new("spore-tg");
    let serial = SerialLog::default();

    let mut config = VmConfig::new(&guest);
    config.mem_mib = 64;
    config.console = Console::Writer(Box::new(serial.clone()));
    config.vsock = Some(VsockConfig {
        cid: GUEST_CID as u32,
        uds_path: host.uds.clone(),
    });
    config.disks.push(DiskConfig {
        path: host.disk.clone(),
        read_only: false,
    });
    config.rng = true;
    let vm = spore_vmm::start(config).expect("start the VM");

    // Retry until the guest listens; stop early if the VM has already ended.
    let answer = host.talk_to_guest(|| match vm.wait_timeout(Duration::ZERO) {
        Some(exit) => Err(io::Error::other(format!("the VM ended: {exit}"))),
        None => Ok(()),
    });
    let exit = vm.wait_timeout(RUN_TIMEOUT);
    let elapsed = vm.started_at().elapsed();
    // Dropping the handle stops the VM if it still runs and releases everything.
    drop(vm);
    let log = serial.text();
    eprintln!("vmm_test_guest: spore VM ran {elapsed:.2?}, exit {exit:?}");
    let answer = answer.unwrap_or_else(|e| panic!("talking to the guest: {e}\nserial:\n{log}"));
    assert_eq!(exit, Some(VmExit::PowerOff), "VM exit\nserial:\n{log}");
    host.check(&log, &answer);
}

/// The failure path: with a read-only disk and no vsock device the guest reports
/// both failures, still passes rng, and ends the VM with exit code 1 (Panic); the
/// disk is untouched.
#[test]
fn test_guest_reports_failures_under_spore() {
    let kvm = HostKvm::detect();
    if !kvm.usable {
        let problem = kvm.problem.unwrap_or_default();
        skip_unless!(Err::<(), _>(Missing::environment(problem)));
    }
    let guest = build_guest(false);
    let host = HostSide::new("spore-tg-fail");
    let serial = SerialLog::default();
    let mut config = VmConfig::new(&guest);
    config.mem_mib = 64;
    config.console = Console::Writer(Box::new(serial.clone()));
    config.disks.push(DiskConfig {
        path: host.disk.clone(),
        read_only: true,
    });
    config.rng = true;
    let vm = spore_vmm::start(config).expect("start the VM");
    let exit = vm.wait_timeout(RUN_TIMEOUT);
    drop(vm);
    let log = serial.text();
    assert_eq!(exit, Some(VmExit::Panic), "VM exit\nserial:\n{log}");
    for line in [
        "SPORE-TEST rng ok ",
        "SPORE-TEST FAIL blk: device is read-only",
        "SPORE-TEST FAIL vsock: no device",
    ] {
        assert!(log.contains(line), "serial log lacks {line:?}:\n{log}");
    }
    assert!(!log.contains("SPORE-TEST done"), "{log}");
    let image = std::fs::read(&host.disk).expect("read disk image");
    assert!(
        image[SECTOR..].iter().all(|&b| b == 0),
        "read-only disk written"
    );
}

/// QEMU and vhost-device-vsock, from `resources/install-deps.sh`.
fn qemu_tools() -> Result<(PathBuf, PathBuf), Missing> {
    let install = "run resources/install-deps.sh";
    let qemu = paths::qemu_system()
        .ok_or_else(|| Missing::provided(format!("qemu-system-x86_64 not found — {install}")))?;
    let vhost = paths::vhost_device_vsock()
        .ok_or_else(|| Missing::provided(format!("vhost-device-vsock not found — {install}")))?;
    Ok((qemu, vhost))
}

/// Waits until `path` exists (a socket a child creates), or panics after `timeout`.
fn wait_for_path(path: &Path, child: &mut ChildGuard, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !path.exists() {
        if let Ok(Some(status)) = child.try_status() {
            panic!("{} exited early: {status}", child.name());
        }
        assert!(
            Instant::now() < deadline,
            "{} did not create {}",
            child.name(),
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The guest's `qemu` build under QEMU microvm (TCG) with QEMU's virtio-rng and
/// virtio-blk and a vhost-user vsock device served by vhost-device-vsock, which
/// bridges vsock to unix sockets with the same conventions as spore's device.
#[test]
fn test_guest_passes_under_qemu() {
    let tools = skip_unless!(qemu_tools());
    run_under_qemu(tools, "tcg");
}

/// The same under QEMU with the host's KVM: on a kvm_pvm host the guest's code
/// then runs in KVM's instruction emulator, as it does under spore's VMM.
#[test]
fn test_guest_passes_under_qemu_with_kvm() {
    let tools = skip_unless!(qemu_tools());
    if !Path::new("/dev/kvm").exists() {
        eprintln!("SKIPPED: no /dev/kvm");
        return;
    }
    run_under_qemu(tools, "kvm");
}

fn run_under_qemu((qemu, vhost): (PathBuf, PathBuf), accel: &str) {
    let guest = build_guest(true);
    let host = HostSide::new(&format!("spore-tg-qemu-{accel}"));
    let dir = host.dir.path();
    let vhost_sock = dir.join("vhost.sock");
    let serial = dir.join("serial.log");

    let mut backend = Command::new(vhost);
    backend.arg("--vm").arg(format!(
        "guest-cid={GUEST_CID},socket={},uds-path={}",
        vhost_sock.display(),
        host.uds.display()
    ));
    let mut backend = ChildGuard::spawn("vhost-device-vsock", backend).expect("start backend");
    wait_for_path(&vhost_sock, &mut backend, Duration::from_secs(10));

    let mut cmd = Command::new(qemu);
    cmd.args([
        "-M",
        "microvm,x-option-roms=off,pit=off,pic=off,rtc=off,isa-serial=on,memory-backend=mem",
    ])
    .args(["-accel", "tcg", "-cpu", "max", "-m", "64"])
    .args(["-object", "memory-backend-memfd,id=mem,size=64M,share=on"])
    .args([
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-monitor",
        "none",
    ])
    .arg("-serial")
    .arg(format!("file:{}", serial.display()))
    .arg("-kernel")
    .arg(&guest)
    .args(["-global", "virtio-mmio.force-legacy=false"])
    .args(["-device", "virtio-rng-device"])
    .arg("-drive")
    .arg(format!(
        "id=d0,file={},format=raw,if=none",
        host.disk.display()
    ))
    .args(["-device", "virtio-blk-device,drive=d0"])
    .arg("-chardev")
    .arg(format!("socket,id=c0,path={}", vhost_sock.display()))
    .args(["-device", "vhost-user-vsock-device,chardev=c0"])
    .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=4"]);
    let mut vm = ChildGuard::spawn("qemu", cmd).expect("start qemu");

    let answer = host.talk_to_guest(|| match vm.try_status()? {
        Some(status) => Err(io::Error::other(format!("qemu exited: {status}"))),
        None => Ok(()),
    });
    let status = vm.wait_timeout(RUN_TIMEOUT).expect("wait for qemu");
    let log = std::fs::read_to_string(&serial).unwrap_or_default();
    let answer = answer.unwrap_or_else(|e| panic!("talking to the guest: {e}\nserial:\n{log}"));
    // isa-debug-exit exits with (value << 1) | 1: 1 = the guest wrote 0.
    let status = status.unwrap_or_else(|| panic!("qemu still running\nserial:\n{log}"));
    assert_eq!(
        status.code(),
        Some(1),
        "guest exit via port 0xf4\nserial:\n{log}"
    );
    host.check(&log, &answer);
}
