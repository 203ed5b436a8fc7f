//! spore's own view of a vCPU exit, and the pure decision of what to do with it.
//!
//! `Exit` is an owned copy of what `kvm_ioctls::VcpuExit` carries (plus the RIP for
//! internal errors), so `handle_exit(&Exit, &Buses) -> Action` can be driven by
//! unit tests with synthetic exits. The vCPU loop applies the `Action`.

use kvm_bindings::KVM_INTERNAL_ERROR_EMULATION;

use crate::bus::Bus;
use crate::vcpu::stop::VmExit;

/// KVM_SYSTEM_EVENT types (include/uapi/linux/kvm.h).
const SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const SYSTEM_EVENT_RESET: u32 = 2;
const SYSTEM_EVENT_CRASH: u32 = 3;
/// kvm_run.emulation_failure.flags: the instruction bytes are valid.
const EMULATION_FLAG_INSTRUCTION_BYTES: u64 = 1;
/// The `int3` opcode.
const INT3: u8 = 0xcc;

/// The two buses a vCPU dispatches guest accesses on.
#[derive(Clone, Default)]
pub struct Buses {
    pub io: Bus,
    pub mmio: Bus,
}

/// Up to 8 bytes of port or MMIO data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Data {
    bytes: [u8; 8],
    len: u8,
}

impl Data {
    /// `bytes` truncated to 8.
    pub fn new(bytes: &[u8]) -> Data {
        let len = bytes.len().min(8);
        let mut data = Data {
            len: len as u8,
            ..Default::default()
        };
        data.bytes[..len].copy_from_slice(&bytes[..len]);
        data
    }

    /// `len` bytes of all-ones: what a read of nothing returns.
    pub fn ones(len: usize) -> Data {
        Data::new(&[0xff; 8][..len.min(8)])
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

/// A vCPU exit that needs the VMM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exit {
    IoIn {
        port: u16,
        len: usize,
    },
    IoOut {
        port: u16,
        data: Data,
    },
    MmioRead {
        addr: u64,
        len: usize,
    },
    MmioWrite {
        addr: u64,
        data: Data,
    },
    Hlt,
    /// Triple fault.
    Shutdown,
    SystemEvent {
        kind: u32,
    },
    FailEntry {
        reason: u64,
        cpu: u32,
    },
    /// KVM_EXIT_INTERNAL_ERROR with kvm_run.internal's words.
    InternalError {
        suberror: u32,
        data: Vec<u64>,
        rip: u64,
    },
    /// KVM_RUN returned EINTR/EAGAIN (a kick).
    Interrupted,
    /// Any other exit reason, named.
    Other(String),
}

/// What the vCPU loop does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Continue,
    /// Hand these bytes to the guest's pending read, then continue.
    CompleteRead(Data),
    /// Step over the `int3` at RIP and inject #BP so the guest's handler runs.
    InjectBreakpoint,
    /// End the VM.
    Stop(VmExit),
}

/// Decides what an exit means; device side effects happen through the buses.
pub fn handle_exit(exit: &Exit, buses: &Buses) -> Action {
    match exit {
        Exit::IoIn { port, len } => Action::CompleteRead(bus_read(&buses.io, *port as u64, *len)),
        Exit::IoOut { port, data } => {
            buses.io.write(*port as u64, data.as_slice());
            Action::Continue
        }
        Exit::MmioRead { addr, len } => Action::CompleteRead(bus_read(&buses.mmio, *addr, *len)),
        Exit::MmioWrite { addr, data } => {
            buses.mmio.write(*addr, data.as_slice());
            Action::Continue
        }
        // With the in-kernel irqchip HLT stays in KVM; if it exits, wait for the kick.
        Exit::Hlt | Exit::Interrupted => Action::Continue,
        Exit::Shutdown => Action::Stop(VmExit::TripleFault),
        Exit::SystemEvent { kind } => Action::Stop(system_event(*kind)),
        Exit::FailEntry { reason, cpu } => Action::Stop(VmExit::Error(format!(
            "KVM_EXIT_FAIL_ENTRY on cpu {cpu}: hardware reason {reason:#x}"
        ))),
        Exit::InternalError {
            suberror,
            data,
            rip,
        } => internal_error(*suberror, data, *rip),
        Exit::Other(what) => Action::Stop(VmExit::Error(format!("unexpected vCPU exit {what}"))),
    }
}

fn bus_read(bus: &Bus, addr: u64, len: usize) -> Data {
    let mut data = Data::ones(len);
    let len = data.len as usize;
    if !bus.read(addr, &mut data.bytes[..len]) {
        return Data::ones(len);
    }
    data
}

fn system_event(kind: u32) -> VmExit {
    match kind {
        SYSTEM_EVENT_SHUTDOWN => VmExit::PowerOff,
        SYSTEM_EVENT_RESET => VmExit::Reboot,
        SYSTEM_EVENT_CRASH => VmExit::Panic,
        other => VmExit::Error(format!("KVM system event {other}")),
    }
}

fn internal_error(suberror: u32, data: &[u64], rip: u64) -> Action {
    if suberror != KVM_INTERNAL_ERROR_EMULATION {
        return Action::Stop(VmExit::Error(format!(
            "KVM internal error, suberror {suberror}, data {data:x?}"
        )));
    }
    let bytes = instruction_bytes(data);
    if bytes.first() == Some(&INT3) {
        return Action::InjectBreakpoint;
    }
    Action::Stop(VmExit::EmulationFailure { rip, bytes })
}

/// The instruction bytes of an emulation failure. KVM puts the flags in word 0
/// and, when `EMULATION_FLAG_INSTRUCTION_BYTES` is set, the length in the first
/// byte of word 1 followed by up to 15 bytes (struct kvm_run.emulation_failure,
/// filled by prepare_emulation_failure_exit in arch/x86/kvm/x86.c).
pub fn instruction_bytes(data: &[u64]) -> Vec<u8> {
    let has_bytes = data
        .first()
        .is_some_and(|f| f & EMULATION_FLAG_INSTRUCTION_BYTES != 0);
    if !has_bytes || data.len() < 3 {
        return Vec::new();
    }
    let mut raw = [0u8; 16];
    raw[..8].copy_from_slice(&data[1].to_le_bytes());
    raw[8..].copy_from_slice(&data[2].to_le_bytes());
    let len = (raw[0] as usize).min(15);
    raw[1..1 + len].to_vec()
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::bus::BusDevice;

    #[derive(Default)]
    struct Recorder {
        writes: Vec<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = offset as u8 + i as u8;
            }
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    fn buses() -> (Buses, Arc<Mutex<Recorder>>, Arc<Mutex<Recorder>>) {
        let io = Arc::new(Mutex::new(Recorder::default()));
        let mmio = Arc::new(Mutex::new(Recorder::default()));
        let mut buses = Buses::default();
        buses.io.insert(io.clone(), 0x3f8, 8).unwrap();
        buses
            .mmio
            .insert(mmio.clone(), 0xd000_0000, 0x1000)
            .unwrap();
        (buses, io, mmio)
    }

    /// kvm_run.internal.data for an emulation failure with `bytes`.
    fn emulation_data(bytes: &[u8]) -> Vec<u64> {
        let mut raw = [0x90u8; 16];
        raw[0] = bytes.len() as u8;
        raw[1..1 + bytes.len()].copy_from_slice(bytes);
        vec![
            EMULATION_FLAG_INSTRUCTION_BYTES,
            u64::from_le_bytes(raw[..8].try_into().unwrap()),
            u64::from_le_bytes(raw[8..].try_into().unwrap()),
            0x1234, // exit info words follow
        ]
    }

    #[test]
    fn port_io_reaches_the_device() {
        let (buses, io, _) = buses();
        let out = Exit::IoOut {
            port: 0x3f9,
            data: Data::new(&[7]),
        };
        assert_eq!(handle_exit(&out, &buses), Action::Continue);
        assert_eq!(io.lock().unwrap().writes, vec![(1, vec![7])]);
        let read = handle_exit(
            &Exit::IoIn {
                port: 0x3fa,
                len: 2,
            },
            &buses,
        );
        assert_eq!(read, Action::CompleteRead(Data::new(&[2, 3])));
    }

    #[test]
    fn unmapped_reads_are_all_ones() {
        let (buses, _, _) = buses();
        let read = handle_exit(&Exit::IoIn { port: 0x80, len: 1 }, &buses);
        assert_eq!(read, Action::CompleteRead(Data::new(&[0xff])));
        let read = handle_exit(
            &Exit::MmioRead {
                addr: 0xe000_0000,
                len: 4,
            },
            &buses,
        );
        assert_eq!(read, Action::CompleteRead(Data::new(&[0xff; 4])));
    }

    #[test]
    fn mmio_dispatch_uses_offsets() {
        let (buses, _, mmio) = buses();
        let write = Exit::MmioWrite {
            addr: 0xd000_0050,
            data: Data::new(&[1, 0, 0, 0]),
        };
        assert_eq!(handle_exit(&write, &buses), Action::Continue);
        assert_eq!(mmio.lock().unwrap().writes, vec![(0x50, vec![1, 0, 0, 0])]);
        let read = handle_exit(
            &Exit::MmioRead {
                addr: 0xd000_0004,
                len: 4,
            },
            &buses,
        );
        assert_eq!(read, Action::CompleteRead(Data::new(&[4, 5, 6, 7])));
    }

    #[test]
    fn shutdown_and_system_events() {
        let (buses, _, _) = buses();
        assert_eq!(
            handle_exit(&Exit::Shutdown, &buses),
            Action::Stop(VmExit::TripleFault)
        );
        let reset = Exit::SystemEvent {
            kind: SYSTEM_EVENT_RESET,
        };
        assert_eq!(handle_exit(&reset, &buses), Action::Stop(VmExit::Reboot));
        let off = Exit::SystemEvent {
            kind: SYSTEM_EVENT_SHUTDOWN,
        };
        assert_eq!(handle_exit(&off, &buses), Action::Stop(VmExit::PowerOff));
        let fail = Exit::FailEntry {
            reason: 0x21,
            cpu: 0,
        };
        assert!(
            matches!(handle_exit(&fail, &buses), Action::Stop(VmExit::Error(m)) if m.contains("0x21"))
        );
    }

    #[test]
    fn int3_emulation_failure_injects_breakpoint() {
        let (buses, _, _) = buses();
        let exit = Exit::InternalError {
            suberror: KVM_INTERNAL_ERROR_EMULATION,
            data: emulation_data(&[0xcc]),
            rip: 0x1000,
        };
        assert_eq!(handle_exit(&exit, &buses), Action::InjectBreakpoint);
    }

    #[test]
    fn other_emulation_failure_names_the_bytes() {
        let (buses, _, _) = buses();
        let popcnt = [0xf3, 0x48, 0x0f, 0xb8, 0xc7];
        let exit = Exit::InternalError {
            suberror: KVM_INTERNAL_ERROR_EMULATION,
            data: emulation_data(&popcnt),
            rip: 0xffff_ffff_8100_0000,
        };
        let want = VmExit::EmulationFailure {
            rip: 0xffff_ffff_8100_0000,
            bytes: popcnt.to_vec(),
        };
        assert_eq!(handle_exit(&exit, &buses), Action::Stop(want.clone()));
        assert!(want.to_string().contains("f3 48 0f b8 c7"), "{want}");
    }

    #[test]
    fn emulation_failure_without_bytes_and_other_suberrors() {
        assert!(instruction_bytes(&[0, 0, 0]).is_empty());
        assert!(instruction_bytes(&[1]).is_empty());
        let (buses, _, _) = buses();
        let exit = Exit::InternalError {
            suberror: 3,
            data: vec![],
            rip: 0,
        };
        assert!(matches!(
            handle_exit(&exit, &buses),
            Action::Stop(VmExit::Error(_))
        ));
    }
}
