//! Hand-made guests that tests and benchmarks share (`builder::start_raw` runs
//! them). Not used by real VMs.
//!
//! The counter: increments a u64 at `COUNTER`; every 1024 increments reports the
//! counter's low 32 bits on report slot 0 and the u64 at `MARK` on slot 1; once
//! the counter reaches a non-zero `LIMIT` it reports slot 2 and halts with
//! interrupts off (an idle vCPU that KVM keeps asleep).

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::builder::{ExtraDevice, RawGuest};
use crate::config::Console;
use crate::devices::report::{ReportPort, REPORT_PORT};

/// Where the code is loaded and starts.
pub const CODE: u64 = 0x1000;
pub const COUNTER: u64 = 0x5000;
pub const MARK: u64 = 0x5008;
pub const LIMIT: u64 = 0x5010;
/// What `MARK` holds when the counter boots.
pub const MARK_VALUE: u64 = 0x11;

/// The counting loop, with each instruction next to its bytes.
pub fn counter_code() -> Vec<u8> {
    vec![
        0x48, 0xff, 0x04, 0x25, 0x00, 0x50, 0x00, 0x00, // 0: inc qword [0x5000]
        0x8b, 0x04, 0x25, 0x00, 0x50, 0x00, 0x00, // 8: mov eax, [0x5000]
        0xa9, 0xff, 0x03, 0x00, 0x00, // 15: test eax, 0x3ff
        0x75, 0xea, // 20: jnz 0
        0xe7, 0xe0, // 22: out 0xe0, eax        (slot 0: counter)
        0x8b, 0x04, 0x25, 0x08, 0x50, 0x00, 0x00, // 24: mov eax, [0x5008]
        0xe7, 0xe4, // 31: out 0xe4, eax        (slot 1: mark)
        0x48, 0x8b, 0x0c, 0x25, 0x10, 0x50, 0x00, 0x00, // 33: mov rcx, [0x5010]
        0x48, 0x85, 0xc9, // 41: test rcx, rcx
        0x74, 0xd2, // 44: jz 0
        0x48, 0x39, 0x0c, 0x25, 0x00, 0x50, 0x00, 0x00, // 46: cmp [0x5000], rcx
        0x72, 0xc8, // 54: jb 0
        0xe7, 0xe8, // 56: out 0xe8, eax        (slot 2: done)
        0xf4, // 58: hlt
        0xeb, 0xfd, // 59: jmp 58
    ]
}

/// The counter guest in `mem_mib` of RAM, halting at `limit` (0: never), with
/// `report` as its report port.
pub fn counter(
    mem_mib: u32,
    limit: u64,
    report: &std::sync::Arc<std::sync::Mutex<ReportPort>>,
) -> RawGuest {
    let mut data = vec![0u8; 24];
    data[8..16].copy_from_slice(&MARK_VALUE.to_le_bytes());
    data[16..24].copy_from_slice(&limit.to_le_bytes());
    RawGuest {
        mem_mib,
        load: vec![(CODE, counter_code()), (COUNTER, data)],
        entry: CODE,
        console: Console::Null,
        io_devices: vec![ExtraDevice {
            base: REPORT_PORT as u64,
            len: ReportPort::len(),
            device: report.clone(),
        }],
        mmio_devices: Vec::new(),
    }
}

/// Sets the counter's limit in a running guest's memory.
pub fn set_limit(mem: &GuestMemoryMmap, limit: u64) -> Result<(), vm_memory::GuestMemoryError> {
    mem.write_obj(limit, GuestAddress(LIMIT))
}

/// Serial output kept in memory, for waiting on a line of the guest's log.
#[derive(Clone, Default)]
pub struct SerialLog(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl SerialLog {
    pub fn contains(&self, needle: &str) -> bool {
        let log = self.0.lock().expect("serial log poisoned");
        String::from_utf8_lossy(&log).contains(needle)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("serial log poisoned")).into_owned()
    }
}

impl std::io::Write for SerialLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .expect("serial log poisoned")
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Errors from booting the spinning Linux guest.
#[derive(Debug, thiserror::Error)]
pub enum TestGuestError {
    #[error("booting the guest")]
    Boot(#[from] crate::builder::BuildError),
    #[error("the guest ended before running /init ({0}); serial log tail:\n{1}")]
    Ended(crate::vcpu::VmExit, String),
    #[error("the guest did not run /init within {0:?}; serial log tail:\n{1}")]
    Timeout(std::time::Duration, String),
}

/// Where the spinning guest's log and vsock socket go.
pub struct SpinningLinux<'a> {
    pub kernel: &'a std::path::Path,
    /// `resources/build-spin-init.sh`'s initramfs.
    pub initrd: &'a std::path::Path,
    pub mem_mib: u32,
    /// The template's vsock host socket (clones get their own).
    pub vsock_uds: &'a std::path::Path,
    pub log: SerialLog,
}

/// Boots the real guest kernel with spore's devices (vsock, rng) on the spinning
/// `/init`, and returns once `/init` has run for `settle` (its user-mode loop,
/// with the kernel's timer ticks underneath).
pub fn spinning_linux(
    g: SpinningLinux,
    timeout: std::time::Duration,
    settle: std::time::Duration,
) -> Result<crate::builder::VmHandle, TestGuestError> {
    let mut config = crate::config::VmConfig::new(g.kernel.to_owned());
    config.initrd = Some(g.initrd.to_owned());
    config.mem_mib = g.mem_mib;
    config.console = Console::Writer(Box::new(g.log.clone()));
    config.rng = true;
    config.vsock = Some(crate::config::VsockConfig {
        cid: 3,
        uds_path: g.vsock_uds.to_owned(),
    });
    let vm = crate::builder::start(config)?;
    let deadline = std::time::Instant::now() + timeout;
    let tail = |log: &SerialLog| {
        let text = log.text();
        text[text.len().saturating_sub(2000)..].to_string()
    };
    while !g.log.contains("Run /init") {
        if let Some(exit) = vm.wait_timeout(std::time::Duration::from_millis(200)) {
            return Err(TestGuestError::Ended(exit, tail(&g.log)));
        }
        if std::time::Instant::now() > deadline {
            return Err(TestGuestError::Timeout(timeout, tail(&g.log)));
        }
    }
    if let Some(exit) = vm.wait_timeout(settle) {
        return Err(TestGuestError::Ended(exit, tail(&g.log)));
    }
    Ok(vm)
}
