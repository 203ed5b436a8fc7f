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
