//! One clone of a template, in this process, in two halves: `PreparedClone::new`
//! does everything that is the same for every clone (KVM VM with irqchip and PIT,
//! the template's memory mapped `MAP_PRIVATE` and registered, vCPUs created with
//! the template's CPUID), so it can run before the clone order arrives;
//! `PreparedClone::start` restores the state and runs the vCPUs.
//!
//! Owns the restore order. The ioctls are `kvm_state`'s; device state is
//! `snapshot::DevicesState::restore`'s; the threads are the builder's.

use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kvm_ioctls::{Kvm, VcpuFd, VmFd};

use super::kvm_state::{self, KvmStateError};
use super::Template;
use crate::arch::vm::{self, VmError};
use crate::builder::{self, BuildError, CallerVcpu, ExtraDevice, Prepared, VmHandle};
use crate::config::Console;
use crate::devices::virtio::{PersistError, VsockIdentity};
use crate::devices::{self, DeviceError};
use crate::memory::{GuestRam, MemoryError};
use crate::snapshot::VmState;
use crate::vcpu::{monotonic_ns, Buses, StopLatch, VcpuError};

/// Errors from preparing or starting a clone.
#[derive(Debug, thiserror::Error)]
pub enum CloneError {
    #[error("creating the clone's KVM VM")]
    Vm(#[from] VmError),
    #[error("mapping the template's memory")]
    Memory(#[from] MemoryError),
    #[error("duplicating the template's memory fd failed")]
    Dup(#[source] std::io::Error),
    #[error("creating vCPU {0}")]
    Vcpu(u8, #[source] VcpuError),
    #[error("restoring KVM state")]
    Kvm(#[from] KvmStateError),
    #[error("restoring the devices")]
    Devices(#[from] PersistError),
    #[error("wiring the devices")]
    Wire(#[from] DeviceError),
    #[error("console")]
    Console(#[source] std::io::Error),
    #[error("starting the clone's threads")]
    Build(#[from] BuildError),
}

/// What makes one clone itself.
pub struct CloneOptions {
    pub console: Console,
    /// The clone's vsock CID and host socket (a template with a vsock device
    /// keeps the template's otherwise, which only one clone at a time can bind).
    pub vsock: Option<(u64, PathBuf)>,
    /// A listener already bound at the vsock path (see `VsockIdentity`).
    pub vsock_listener: Option<UnixListener>,
    /// Extra port I/O devices (test guests' report ports).
    pub io_devices: Vec<ExtraDevice>,
}

/// CLOCK_MONOTONIC (ns) at the end of each step of `start`, for the breakdown.
#[derive(Clone, Copy, Debug, Default)]
pub struct StartTimes {
    pub begin: u64,
    pub vm_state: u64,
    /// Devices recreated from their state (then wired to KVM until `devices`).
    pub devices_created: u64,
    pub devices: u64,
    pub vcpus: u64,
    pub threads: u64,
}

/// A clone's VM with everything done that does not depend on the order.
pub struct PreparedClone {
    kvm: Kvm,
    vm: VmFd,
    ram: GuestRam,
    vcpus: Vec<VcpuFd>,
    /// Microseconds of each step of `new`: KVM VM, memory, vCPUs.
    pub prep_us: [u64; 3],
}

impl PreparedClone {
    /// Creates the VM, maps and registers the template's memory privately, and
    /// creates the vCPUs with the template's CPUID.
    pub fn new(template: &Template) -> Result<PreparedClone, CloneError> {
        let t0 = Instant::now();
        // 1. The KVM VM with its irqchip and PIT.
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        let vm = vm::create(&kvm)?;
        let t1 = Instant::now();
        // 2. The template's memory, copy-on-write, registered with KVM.
        let file = template.memory().try_clone().map_err(CloneError::Dup)?;
        let ram = GuestRam::from_memfd_private(file, template.mem_size())?;
        vm::register_memory(&vm, ram.memory())?;
        let t2 = Instant::now();
        // 3. The vCPUs, with CPUID (which must precede the rest of their state)
        //    and the template's TSC frequency.
        let mut vcpus = Vec::new();
        for (index, state) in template.state.vcpus.iter().enumerate() {
            let fd = vm
                .create_vcpu(index as u64)
                .map_err(|e| CloneError::Vcpu(index as u8, VcpuError::Create(index as u8, e)))?;
            kvm_state::restore_cpuid(&fd, state)?;
            kvm_state::restore_tsc_khz(&fd, state)?;
            vcpus.push(fd);
        }
        let us = |a: Instant, b: Instant| (b - a).as_micros() as u64;
        Ok(PreparedClone {
            kvm,
            vm,
            ram,
            vcpus,
            prep_us: [us(t0, t1), us(t1, t2), us(t2, Instant::now())],
        })
    }

    /// Restores `state` (the template's) with `options`' identity and runs the
    /// vCPUs on new threads. `times` gets the end of each step.
    pub fn start(
        self,
        state: &VmState,
        options: CloneOptions,
        times: &mut StartTimes,
    ) -> Result<VmHandle, CloneError> {
        let (prepared, vcpus) = self.restore(state, options, times)?;
        let handle = builder::run(prepared, vcpus)?;
        times.threads = monotonic_ns();
        Ok(handle)
    }

    /// Like `start`, but vCPU 0 is returned for the caller to run on its own
    /// thread (`CallerVcpu::run`), keeping thread creation and wake-ups off the
    /// path from the order to the guest.
    pub fn start_here(
        self,
        state: &VmState,
        options: CloneOptions,
        times: &mut StartTimes,
    ) -> Result<(VmHandle, CallerVcpu), CloneError> {
        let (prepared, vcpus) = self.restore(state, options, times)?;
        let started = builder::run_first_here(prepared, vcpus)?;
        times.threads = monotonic_ns();
        Ok(started)
    }

    /// The restore steps shared by `start` and `start_here`.
    fn restore(
        self,
        state: &VmState,
        options: CloneOptions,
        times: &mut StartTimes,
    ) -> Result<(Prepared, Vec<VcpuFd>), CloneError> {
        times.begin = monotonic_ns();
        // 1. VM-wide state: PIT, clock, PIC and IOAPIC, before any irqfd.
        kvm_state::restore_vm(&self.vm, &state.vm)?;
        times.vm_state = monotonic_ns();
        // 2. Legacy devices (COM1 with its registers), the caller's extra devices.
        let latch = Arc::new(StopLatch::new());
        let mut buses = Buses::default();
        let console = options.console.into_writer().map_err(CloneError::Console)?;
        let saved = Some(&state.devices.serial);
        let serial = devices::attach_legacy(&self.vm, &mut buses.io, console, &latch, saved)?;
        for extra in options.io_devices {
            add_io(&mut buses, extra)?;
        }
        // 3. virtio devices on the clone's memory, with its vsock identity, wired
        //    at their template slots.
        let identity = options.vsock.as_ref().map(|(cid, path)| VsockIdentity {
            cid: *cid,
            uds_path: path,
            listener: options.vsock_listener.as_ref(),
        });
        let virtio = state.devices.restore(self.ram.memory(), identity)?;
        times.devices_created = monotonic_ns();
        let infos = builder::attach_all_virtio(&self.vm, &mut buses, &virtio)?;
        times.devices = monotonic_ns();
        // 4. Every vCPU's registers, LAPIC, MSRs, events.
        for (fd, vcpu_state) in self.vcpus.iter().zip(&state.vcpus) {
            kvm_state::restore_vcpu(&self.vm, fd, vcpu_state)?;
        }
        times.vcpus = monotonic_ns();
        // 5. What the builder needs to run the event loop and the vCPUs.
        let prepared = Prepared {
            kvm: self.kvm,
            vm: self.vm,
            ram: self.ram,
            buses,
            latch,
            virtio,
            serial,
            devices: infos,
            cmdline: String::new(),
            started: Instant::now(),
        };
        Ok((prepared, self.vcpus))
    }
}

fn add_io(buses: &mut Buses, extra: ExtraDevice) -> Result<(), DeviceError> {
    let device: Arc<Mutex<dyn crate::bus::BusDevice>> = extra.device;
    Ok(buses.io.insert(device, extra.base, extra.len)?)
}

/// Prepares and starts a clone in this process (tests, and hosts that need no
/// process per clone).
pub fn clone_in_process(
    template: &Template,
    options: CloneOptions,
) -> Result<VmHandle, CloneError> {
    let prepared = PreparedClone::new(template)?;
    prepared.start(&template.state, options, &mut StartTimes::default())
}
