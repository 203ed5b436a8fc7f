//! spore's real guest image under QEMU software emulation (TCG), for tests of the
//! agent in its real home (test tier 4; see notes/kvm-pvm.md, "QEMU/TCG").
//!
//! [`Qemu::boot`] starts `vhost-device-vsock` (the guest's vsock exposed as a unix
//! socket), waits for its socket, then boots `target/guest/vmlinux` +
//! `target/guest/initramfs.cpio` on QEMU's `microvm` machine with the serial console
//! captured to a file. Everything lives in a temp dir; both processes are killed and
//! the dir removed when the [`Qemu`] is dropped, also when a test panics (the serial
//! log's tail is printed then).
//!
//! The guest kernel has no ACPI and no PCI: microvm runs with `acpi=off`, and QEMU
//! then puts `virtio_mmio.device=` entries on the kernel command line itself. PIT,
//! PIC and RTC are on so the TSC calibrates; `tsc_early_khz` avoids the occasional
//! calibration stall under load. vhost-user needs guest RAM in a shared memfd.
//! Without ACPI a guest power-off only halts; spore's kernel reports power-off and
//! panic on [`EXIT_PORT`] instead, where QEMU's `isa-debug-exit` ends QEMU with a
//! status that [`GuestExit`] reads back.
//! This is test infrastructure only, never a spore backend.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub use crate::guest_exit::{guest_stopped, GuestExit};
use crate::paths;
use crate::process::ChildGuard;
use crate::skip::{require_file, Missing};
use crate::tempdir::TempDir;

/// Default time allowed for a boot-dependent wait (TCG on 2 busy cores).
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
/// The guest's vsock context id.
pub const GUEST_CID: u32 = 3;
/// vhost-device-vsock's per-connection buffer for guest → host data. With the
/// default (64 KiB), guest writes of 16 KiB and more stall or lose data (measured:
/// a 50 000-byte write never arrived; cf. rust-vmm/vhost-device issue 494); at
/// 32 KiB 10 MiB arrive intact, in 64 KiB writes, in ~0.2 s.
pub const VSOCK_TX_BUFFER: u32 = 32 * 1024;
/// The I/O port spore's guest kernel reports power-off (0) and panic (1) on when
/// given `spore.exit_port=` (guest-kernel/patches/0002-spore-exit-port.patch) — the
/// same port spore's VMM uses. QEMU's `isa-debug-exit` there ends QEMU with
/// status `value << 1 | 1`.
pub const EXIT_PORT: u16 = 0xf4;

/// The programs and images a TCG guest needs.
#[derive(Clone, Debug)]
pub struct TcgTools {
    pub qemu: PathBuf,
    pub vhost_vsock: PathBuf,
    pub vmlinux: PathBuf,
    pub initramfs: PathBuf,
}

impl TcgTools {
    /// Finds everything, or says what is missing and which script provides it.
    pub fn find() -> Result<TcgTools, Missing> {
        let install = "run resources/install-deps.sh";
        let qemu = paths::qemu_system().ok_or_else(|| {
            Missing::provided(format!("qemu-system-x86_64 not found — {install}"))
        })?;
        let vhost_vsock = paths::vhost_device_vsock().ok_or_else(|| {
            Missing::provided(format!("vhost-device-vsock not found — {install}"))
        })?;
        let vmlinux = paths::vmlinux();
        require_file(&vmlinux, "run guest-kernel/build.sh")?;
        let initramfs = paths::initramfs();
        require_file(
            &initramfs,
            "run resources/build-agent.sh && resources/build-initramfs.sh",
        )?;
        Ok(TcgTools {
            qemu,
            vhost_vsock,
            vmlinux,
            initramfs,
        })
    }
}

/// How to boot the guest.
#[derive(Clone, Debug)]
pub struct QemuConfig {
    pub tools: TcgTools,
    /// Guest RAM in MiB.
    pub mem_mib: u32,
    /// A raw image attached read-only as the virtio-blk disk (`/dev/vda`).
    pub disk: Option<PathBuf>,
    /// Pass `quiet` to the kernel (faster; hides "Run /init").
    pub quiet: bool,
    /// Extra kernel command-line entries.
    pub cmdline_extra: Vec<String>,
    /// The host CPU frequency for `tsc_early_khz`.
    pub tsc_khz: u64,
}

impl QemuConfig {
    /// 256 MiB, no disk, quiet kernel.
    pub fn new(tools: TcgTools) -> QemuConfig {
        QemuConfig {
            tools,
            mem_mib: 256,
            disk: None,
            quiet: true,
            cmdline_extra: Vec::new(),
            tsc_khz: crate::host::host_cpu_khz(),
        }
    }

    /// Attaches `image` read-only as the guest's virtio-blk disk.
    pub fn disk(mut self, image: impl Into<PathBuf>) -> QemuConfig {
        self.disk = Some(image.into());
        self
    }

    /// Lets the kernel log at its default level (shows "Run /init as init process").
    pub fn verbose(mut self) -> QemuConfig {
        self.quiet = false;
        self
    }

    /// The guest kernel command line (QEMU appends the virtio-mmio devices).
    pub fn kernel_cmdline(&self) -> String {
        let mut parts = vec!["console=ttyS0".to_string()];
        if self.quiet {
            parts.push("quiet".into());
        }
        parts.push("tsc=reliable".into());
        parts.push(format!("tsc_early_khz={}", self.tsc_khz));
        parts.push("lpj=2000000".into());
        parts.push("panic=-1".into());
        parts.push(format!("spore.exit_port={EXIT_PORT:#x}"));
        parts.extend(self.cmdline_extra.iter().cloned());
        parts.join(" ")
    }

    /// QEMU's arguments for a run whose sockets and logs live in `dir`.
    pub fn qemu_args(&self, dir: &Path) -> Vec<OsString> {
        let mem = self.mem_mib;
        let mut args: Vec<OsString> = Vec::new();
        let mut push = |items: &[&str]| args.extend(items.iter().map(OsString::from));
        push(&[
            "-M",
            "microvm,acpi=off,pic=on,pit=on,rtc=on,memory-backend=mem",
        ]);
        push(&["-accel", "tcg", "-cpu", "max", "-m", &format!("{mem}M")]);
        push(&[
            "-object",
            &format!("memory-backend-memfd,id=mem,size={mem}M,share=on"),
        ]);
        push(&["-nographic", "-no-reboot", "-monitor", "none"]);
        push(&[
            "-device",
            &format!("isa-debug-exit,iobase={EXIT_PORT:#x},iosize=0x01"),
        ]);
        push(&[
            "-serial",
            &format!("file:{}", dir.join("serial.log").display()),
        ]);
        push(&[
            "-chardev",
            &format!("socket,id=c0,path={}", dir.join("vhost.sock").display()),
            "-device",
            "vhost-user-vsock-device,chardev=c0",
        ]);
        if let Some(disk) = &self.disk {
            push(&[
                "-drive",
                &format!(
                    "file={},if=none,id=d0,format=raw,readonly=on",
                    disk.display()
                ),
                "-device",
                "virtio-blk-device,drive=d0",
            ]);
        }
        push(&["-kernel", &self.tools.vmlinux.to_string_lossy()]);
        push(&["-initrd", &self.tools.initramfs.to_string_lossy()]);
        push(&["-append", &self.kernel_cmdline()]);
        args
    }
}

/// A booted guest. Dropping it kills QEMU and the vsock backend and removes the
/// temp dir (fields drop in declaration order: QEMU first).
#[derive(Debug)]
pub struct Qemu {
    qemu: ChildGuard,
    vhost: ChildGuard,
    dir: TempDir,
    started: Instant,
}

impl Qemu {
    /// Starts the vsock backend, waits for its socket, then starts QEMU.
    pub fn boot(config: &QemuConfig) -> io::Result<Qemu> {
        let dir = TempDir::new("spore-tcg")?;
        let vhost_sock = dir.path().join("vhost.sock");

        // 1. The vhost-user backend; QEMU fails to start without its socket.
        let mut cmd = Command::new(&config.tools.vhost_vsock);
        cmd.arg("--vm").arg(format!(
            "guest-cid={GUEST_CID},socket={},uds-path={},tx-buffer-size={VSOCK_TX_BUFFER}",
            vhost_sock.display(),
            dir.path().join("vm.vsock").display()
        ));
        redirect(&mut cmd, &dir.path().join("vhost.log"))?;
        let mut vhost = ChildGuard::spawn("vhost-device-vsock", cmd)?;
        wait_for_path(&vhost_sock, Duration::from_secs(10), &mut vhost, dir.path())?;

        // 2. QEMU.
        let mut cmd = Command::new(&config.tools.qemu);
        cmd.args(config.qemu_args(dir.path()));
        redirect(&mut cmd, &dir.path().join("qemu.log"))?;
        let started = Instant::now();
        let qemu = ChildGuard::spawn("qemu-system-x86_64", cmd)?;
        Ok(Qemu {
            qemu,
            vhost,
            dir,
            started,
        })
    }

    /// When QEMU was started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The run's temp dir (sockets and logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The unix socket that reaches the guest's vsock (`CONNECT <port>`).
    pub fn vsock_path(&self) -> PathBuf {
        self.dir.path().join("vm.vsock")
    }

    /// Everything the guest wrote to its serial console so far.
    pub fn serial_log(&self) -> String {
        read_lossy(&self.dir.path().join("serial.log"))
    }

    /// Waits until the serial log contains `needle`; returns the time since QEMU
    /// started. Fails early if QEMU exits.
    pub fn wait_for_serial(&mut self, needle: &str, timeout: Duration) -> io::Result<Duration> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.serial_log().contains(needle) {
                return Ok(self.started.elapsed());
            }
            self.check_alive()?;
            if Instant::now() >= deadline {
                return Err(
                    self.failure(&format!("{needle:?} not in serial log after {timeout:?}"))
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Connects to guest vsock `port`, retrying until the guest listens
    /// ([`BOOT_TIMEOUT`]).
    pub fn connect(&mut self, port: u32) -> io::Result<UnixStream> {
        self.connect_timeout(port, BOOT_TIMEOUT)
    }

    /// [`Qemu::connect`] with an explicit timeout.
    pub fn connect_timeout(&mut self, port: u32, timeout: Duration) -> io::Result<UnixStream> {
        let uds = self.vsock_path();
        let result = crate::vsock::connect(&uds, port, timeout, || self.check_alive());
        result.map_err(|e| self.failure(&e.to_string()))
    }

    /// Waits up to `timeout` for QEMU to exit by itself (the guest powered off or
    /// panicked); `None` if it is still running then.
    pub fn wait_exit(&mut self, timeout: Duration) -> io::Result<Option<GuestExit>> {
        Ok(self.qemu.wait_timeout(timeout)?.map(GuestExit::from_status))
    }

    /// An error if QEMU or the vsock backend has exited, or the guest has stopped
    /// (halted or panicked) while QEMU still runs.
    pub fn check_alive(&mut self) -> io::Result<()> {
        for child in [&mut self.qemu, &mut self.vhost] {
            if let Some(status) = child.try_status()? {
                return Err(io::Error::other(format!(
                    "{} exited ({status})",
                    child.name()
                )));
            }
        }
        if let Some(why) = guest_stopped(&self.serial_log()) {
            return Err(io::Error::other(format!("the guest stopped: {why}")));
        }
        Ok(())
    }

    /// An error carrying `what` plus the tails of the logs, for test output.
    pub fn failure(&self, what: &str) -> io::Error {
        io::Error::other(format!("{what}\n{}", self.log_tails()))
    }

    fn log_tails(&self) -> String {
        ["serial.log", "qemu.log", "vhost.log"]
            .iter()
            .map(|name| {
                let text = read_lossy(&self.dir.path().join(name));
                format!("--- {name} (tail) ---\n{}", tail(&text, 30))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.log_tails());
        }
    }
}

fn redirect(cmd: &mut Command, log: &Path) -> io::Result<()> {
    let out = File::create(log)?;
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    Ok(())
}

fn wait_for_path(
    path: &Path,
    timeout: Duration,
    child: &mut ChildGuard,
    dir: &Path,
) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    while !path.exists() {
        if let Some(status) = child.try_status()? {
            return Err(io::Error::other(format!(
                "{} exited ({status}) before creating {}:\n{}",
                child.name(),
                path.display(),
                read_lossy(&dir.join("vhost.log"))
            )));
        }
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "{} did not create {} in {timeout:?}",
                    child.name(),
                    path.display()
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> QemuConfig {
        let tools = TcgTools {
            qemu: "qemu".into(),
            vhost_vsock: "vhost".into(),
            vmlinux: "/k/vmlinux".into(),
            initramfs: "/k/initramfs.cpio".into(),
        };
        QemuConfig {
            tsc_khz: 2_596_148,
            ..QemuConfig::new(tools)
        }
    }

    fn joined(args: &[OsString]) -> String {
        args.iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn args_match_the_notes() {
        let args = joined(&config().qemu_args(Path::new("/d")));
        assert!(args.contains("-M microvm,acpi=off,pic=on,pit=on,rtc=on,memory-backend=mem"));
        assert!(args.contains("-accel tcg -cpu max -m 256M"));
        assert!(args.contains("memory-backend-memfd,id=mem,size=256M,share=on"));
        assert!(args.contains("socket,id=c0,path=/d/vhost.sock"));
        assert!(args.contains("-device vhost-user-vsock-device,chardev=c0"));
        assert!(args.contains("-serial file:/d/serial.log"));
        assert!(args.contains("-no-reboot"));
        assert!(args.contains("-device isa-debug-exit,iobase=0xf4,iosize=0x01"));
        assert!(args.contains("-kernel /k/vmlinux -initrd /k/initramfs.cpio"));
        assert!(!args.contains("virtio-blk-device"));
    }

    #[test]
    fn disk_is_attached_read_only() {
        let args = joined(
            &config()
                .disk("/img/rootfs.erofs")
                .qemu_args(Path::new("/d")),
        );
        assert!(args.contains("-drive file=/img/rootfs.erofs,if=none,id=d0,format=raw,readonly=on"));
        assert!(args.contains("-device virtio-blk-device,drive=d0"));
    }

    #[test]
    fn kernel_cmdline() {
        let c = config();
        assert_eq!(
            c.kernel_cmdline(),
            "console=ttyS0 quiet tsc=reliable tsc_early_khz=2596148 lpj=2000000 panic=-1 \
             spore.exit_port=0xf4"
        );
        assert!(!c.verbose().kernel_cmdline().contains("quiet"));
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
