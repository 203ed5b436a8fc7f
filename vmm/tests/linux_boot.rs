//! Boots the real guest kernel (target/guest/vmlinux) with spore's VMM and a tiny
//! initramfs, and follows the serial log to `Run /init`.
//!
//! Ignored by default: on a kvm_pvm host it takes about two minutes of emulated
//! boot. Run with `cargo test -p spore-vmm --test linux_boot -- --ignored --nocapture`.

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use spore_vmm::config::{Console, DiskConfig, VmConfig, VsockConfig};
use spore_vmm::{start, HostKvm, VmExit};

/// Serial-log lines worth timing, in boot order.
const MILESTONES: &[&str] = &[
    "Linux version",
    "smpboot: CPU0",
    "Registering device virtio-mmio",
    "Serial: 8250",
    "virtio_blk",
    "NET: Registered PF_VSOCK",
    "Freeing unused kernel",
    "Run /init",
];
const BOOT_TIMEOUT: Duration = Duration::from_secs(420);

/// The serial log so far and the wall time each milestone first appeared.
type LogState = (Vec<u8>, Vec<(&'static str, Duration)>);

/// A console writer that keeps the serial log and times the milestones.
#[derive(Clone)]
struct Log {
    start: Instant,
    inner: Arc<Mutex<LogState>>,
}

impl Write for Log {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut inner = self.inner.lock().unwrap();
        inner.0.extend_from_slice(buf);
        if buf.contains(&b'\n') {
            let text = String::from_utf8_lossy(&inner.0).into_owned();
            for m in MILESTONES {
                if !inner.1.iter().any(|(seen, _)| seen == m) && text.contains(m) {
                    inner.1.push((m, self.start.elapsed()));
                }
            }
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A newc cpio archive holding one regular file, `init`.
fn tiny_initramfs(contents: &[u8]) -> Vec<u8> {
    fn entry(out: &mut Vec<u8>, name: &str, mode: u32, data: &[u8]) {
        let header =
            format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            1, mode, 0, 0, 1, 0, data.len(), 0, 0, 0, 0, name.len() + 1, 0
        );
        out.extend(header.as_bytes());
        out.extend(name.as_bytes());
        out.push(0);
        while out.len() % 4 != 0 {
            out.push(0);
        }
        out.extend(data);
        while out.len() % 4 != 0 {
            out.push(0);
        }
    }
    let mut out = Vec::new();
    entry(&mut out, "init", 0o100755, contents);
    entry(&mut out, "TRAILER!!!", 0, &[]);
    out
}

fn kernel_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/guest/vmlinux")
}

#[test]
#[ignore = "boots the real kernel: ~1.5 minutes on kvm_pvm"]
fn linux_reaches_run_init_with_devices_probed() {
    if can_boot() {
        boot_to_init(1);
    }
}

fn can_boot() -> bool {
    let ok = HostKvm::detect().usable && kernel_path().exists();
    if !ok {
        eprintln!("skipped: needs /dev/kvm and target/guest/vmlinux (`make kernel`)");
    }
    ok
}

#[test]
#[ignore = "boots the real kernel on two vCPUs: ~2 minutes on kvm_pvm"]
fn linux_brings_up_a_second_vcpu_from_the_mp_table() {
    if !can_boot() {
        return;
    }
    let log = boot_to_init(2);
    assert!(
        log.contains("Brought up 1 node, 2 CPUs"),
        "SMP bring-up failed"
    );
}

/// Boots to the panic after `Run /init` and returns the serial log.
fn boot_to_init(vcpus: u8) -> String {
    let dir = std::env::temp_dir().join(format!("spore-linux-boot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // SPORE_TEST_INITRD boots another initramfs (e.g. the agent's) instead.
    let initrd = match std::env::var_os("SPORE_TEST_INITRD") {
        Some(path) => PathBuf::from(path),
        None => dir.join("initramfs.cpio"),
    };
    if !initrd.exists() {
        std::fs::write(&initrd, tiny_initramfs(b"#!/nonexistent\n")).unwrap();
    }
    let disk = dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();

    let log = Log {
        start: Instant::now(),
        inner: Arc::default(),
    };
    let mut config = VmConfig::new(kernel_path());
    config.initrd = Some(initrd);
    config.console = Console::Writer(Box::new(log.clone()));
    config.rng = true;
    config.vsock = Some(VsockConfig {
        cid: 3,
        uds_path: dir.join("vsock.sock"),
    });
    config.vcpus = vcpus;
    config.disks.push(DiskConfig {
        path: disk,
        read_only: true,
    });
    config.cmdline_extra = std::env::var("SPORE_TEST_CMDLINE").unwrap_or_default();
    let vm = start(config).unwrap();
    eprintln!("cmdline: {}", vm.cmdline());

    // The guest's /init is not executable, so the kernel panics after Run /init;
    // with spore.exit_port that ends the VM as Panic.
    let exit = vm.wait_timeout(BOOT_TIMEOUT);
    let probed: Vec<_> = vm
        .devices()
        .iter()
        .map(|d| (d.name, d.driver_ok_at().map(|t| t - log.start)))
        .collect();
    drop(vm);
    let _ = std::fs::remove_dir_all(&dir);

    let inner = log.inner.lock().unwrap();
    let text = String::from_utf8_lossy(&inner.0);
    let saved =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("linux_boot-{vcpus}cpu.log"));
    std::fs::write(&saved, &inner.0).unwrap();
    eprintln!("full serial log: {}", saved.display());
    eprintln!("--- serial log (last 3000 bytes) ---");
    eprintln!("{}", &text[text.len().saturating_sub(3000)..]);
    eprintln!("--- milestones (wall time since start) ---");
    for (m, t) in &inner.1 {
        eprintln!("{:>8.1} s  {m}", t.as_secs_f64());
    }
    eprintln!("exit: {exit:?}; devices: {probed:?}");
    assert!(
        text.contains("Run /init"),
        "kernel did not reach Run /init: {exit:?}"
    );
    assert_eq!(exit, Some(VmExit::Panic));
    assert!(probed.iter().all(|(_, ok)| ok.is_some()), "{probed:?}");
    text.into_owned()
}
