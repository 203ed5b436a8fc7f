//! Boots a VM: the numbered steps from a `VmConfig` to running vCPUs, and the
//! `VmHandle` that owns everything the VM created.
//!
//! `start` boots a Linux kernel; `start_raw` boots hand-made machine code in long
//! mode (spore's own test guests). Both share the steps after "what to load".

use std::sync::{Arc, Mutex};
use std::time::Instant;

use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::arch::{gdt, kernel, mptable, paging, vm, Quirks};
use crate::bus::BusDevice;
use crate::config::{ConfigError, Console, VmConfig};
use crate::devices::serial::SerialDevice;
use crate::devices::{self, virtio, DeviceError, DeviceInfo};
use crate::host::HostKvm;
use crate::memory::{GuestRam, MemoryError};
use crate::vcpu::{self, Buses, StopLatch, VcpuError, VcpuSetup};

use crate::handle::{spawn_event_loop, Subscriber};
pub use crate::handle::{StoppedVm, VmHandle};

/// Errors from booting a VM.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("invalid VM configuration")]
    Config(#[from] ConfigError),
    #[error("/dev/kvm is not usable ({0}) — run as root or join the kvm group; `spore doctor` explains the host")]
    NoKvm(String),
    #[error("guest memory")]
    Memory(#[from] MemoryError),
    #[error("creating the KVM VM")]
    Vm(#[from] vm::VmError),
    #[error("loading the guest kernel")]
    Kernel(#[from] kernel::KernelError),
    #[error("writing boot data into guest memory failed")]
    GuestWrite(#[source] vm_memory::GuestMemoryError),
    #[error("boot page tables")]
    Paging(#[from] paging::PagingError),
    #[error("boot GDT")]
    Gdt(#[from] gdt::GdtError),
    #[error("MP table")]
    Mptable(#[from] mptable::MptableError),
    #[error("console")]
    Console(#[source] std::io::Error),
    #[error("devices")]
    Devices(#[from] DeviceError),
    #[error("virtio device {0}")]
    Virtio(&'static str, #[source] virtio::VirtioError),
    #[error("event loop")]
    EventLoop(#[source] event_manager::Error),
    #[error("reading KVM's supported CPUID failed")]
    Cpuid(#[source] kvm_ioctls::Error),
    #[error("vCPU")]
    Vcpu(#[from] VcpuError),
    #[error("spawning a VM thread failed")]
    Thread(#[source] std::io::Error),
    #[error("the VM has no vCPU")]
    NoVcpu,
    #[error("creating the event loop's stop eventfd failed")]
    StopEventFd(#[source] std::io::Error),
}

/// Hand-made machine code booted directly in 64-bit mode (test guests).
pub struct RawGuest {
    pub mem_mib: u32,
    /// (guest address, bytes) to put in RAM before the vCPU starts.
    pub load: Vec<(u64, Vec<u8>)>,
    /// RIP of the boot vCPU; RSP starts at `layout::BOOT_STACK_POINTER`.
    pub entry: u64,
    pub console: Console,
    /// Extra devices on the port I/O bus.
    pub io_devices: Vec<ExtraDevice>,
    /// Extra devices on the MMIO bus.
    pub mmio_devices: Vec<ExtraDevice>,
}

/// A device a test guest talks to, at `[base, base + len)` on its bus.
pub struct ExtraDevice {
    pub base: u64,
    pub len: u64,
    pub device: Arc<Mutex<dyn BusDevice>>,
}

/// Boots `config`'s kernel.
pub fn start(mut config: VmConfig) -> Result<VmHandle, BuildError> {
    let started = Instant::now();
    // 1. Check the configuration and the host.
    config.validate()?;
    let host = detect_host()?;
    let quirks = Quirks::for_host(&host);
    // 2. Guest RAM.
    let ram = GuestRam::new(config.mem_mib as u64 * (1 << 20))?;
    // 3. The KVM VM with irqchip and PIT, RAM registered.
    let kvm = Kvm::new().map_err(vm::VmError::OpenKvm)?;
    let vm = vm::create(&kvm)?;
    vm::register_memory(&vm, ram.memory())?;
    // 4. Kernel, then initrd above it.
    let kernel = kernel::load(ram.memory(), &config.kernel)?;
    let initrd = config.initrd.as_deref();
    let initrd = kernel::load_initrd(ram.memory(), ram.size(), &kernel, initrd)?;
    // 5. Legacy devices, then virtio devices (their cmdline entries follow).
    let latch = Arc::new(StopLatch::new());
    let mut buses = Buses::default();
    let console = std::mem::replace(&mut config.console, Console::Null);
    let console = console.into_writer().map_err(BuildError::Console)?;
    let serial = devices::attach_legacy(&vm, &mut buses.io, console, &latch, None)?;
    let virtio_devices = create_virtio(&config, ram.memory())?;
    let infos = attach_all_virtio(&vm, &mut buses, &virtio_devices)?;
    // 6. Command line, zero page, page tables, GDT, MP table.
    let entries: Vec<String> = infos
        .iter()
        .map(|d| virtio::cmdline_entry(d.base, d.gsi))
        .collect();
    let cmdline = kernel::cmdline(&entries, quirks, &config.cmdline_extra);
    kernel::write_boot_data(ram.memory(), ram.size(), &kernel, &cmdline, initrd)?;
    write_long_mode_tables(ram.memory())?;
    mptable::write(ram.memory(), config.vcpus)?;
    // 7. vCPUs, event loop, run.
    let prepared = Prepared {
        kvm,
        vm,
        ram,
        buses,
        latch,
        virtio: virtio_devices,
        serial,
        devices: infos,
        cmdline,
        started,
    };
    launch(prepared, config.vcpus, quirks, kernel::entry(&kernel))
}

/// Boots hand-made code on one vCPU in long mode, with the legacy devices and
/// `guest`'s extra devices; no kernel, no virtio.
pub fn start_raw(guest: RawGuest) -> Result<VmHandle, BuildError> {
    let started = Instant::now();
    // 1. Host, RAM, VM.
    let host = detect_host()?;
    let ram = GuestRam::new(guest.mem_mib as u64 * (1 << 20))?;
    let kvm = Kvm::new().map_err(vm::VmError::OpenKvm)?;
    let vm = vm::create(&kvm)?;
    vm::register_memory(&vm, ram.memory())?;
    // 2. Long-mode tables and the guest's code.
    write_long_mode_tables(ram.memory())?;
    for (addr, bytes) in &guest.load {
        ram.memory()
            .write_slice(bytes, GuestAddress(*addr))
            .map_err(BuildError::GuestWrite)?;
    }
    // 3. Devices.
    let latch = Arc::new(StopLatch::new());
    let mut buses = Buses::default();
    let console = guest.console.into_writer().map_err(BuildError::Console)?;
    let serial = devices::attach_legacy(&vm, &mut buses.io, console, &latch, None)?;
    for extra in guest.io_devices {
        let (device, base, len) = (extra.device, extra.base, extra.len);
        buses
            .io
            .insert(device, base, len)
            .map_err(DeviceError::from)?;
    }
    for extra in guest.mmio_devices {
        let (device, base, len) = (extra.device, extra.base, extra.len);
        buses
            .mmio
            .insert(device, base, len)
            .map_err(DeviceError::from)?;
    }
    // 4. The vCPU, event loop, run.
    let prepared = Prepared {
        kvm,
        vm,
        ram,
        buses,
        latch,
        virtio: Vec::new(),
        serial,
        devices: Vec::new(),
        cmdline: String::new(),
        started,
    };
    launch(prepared, 1, Quirks::for_host(&host), guest.entry)
}

/// A VM whose memory and devices are ready and wired, before any vCPU runs.
pub(crate) struct Prepared {
    pub kvm: Kvm,
    pub vm: VmFd,
    pub ram: GuestRam,
    pub buses: Buses,
    pub latch: Arc<StopLatch>,
    /// Their subscribers go to the event loop.
    pub virtio: Vec<virtio::VirtioMmioDevice>,
    pub serial: Arc<Mutex<SerialDevice>>,
    pub devices: Vec<DeviceInfo>,
    pub cmdline: String,
    pub started: Instant,
}

/// Creates the vCPUs, then hands everything to a `VmHandle` and starts the
/// threads; if a thread cannot start, dropping the handle stops the others.
fn launch(p: Prepared, num_cpus: u8, quirks: Quirks, entry: u64) -> Result<VmHandle, BuildError> {
    let supported_cpuid = p
        .kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(BuildError::Cpuid)?;
    let setup = VcpuSetup {
        supported_cpuid: &supported_cpuid,
        num_cpus,
        quirks,
        entry,
    };
    let fds = (0..num_cpus)
        .map(|i| vcpu::create(&p.vm, i, &setup))
        .collect::<Result<Vec<_>, _>>()?;
    run(p, fds)
}

/// vCPU 0 of a VM, for the caller to run on its own thread (a clone process runs
/// it on the thread that received the clone order: no thread to wake or spawn
/// between the order and the guest).
pub struct CallerVcpu {
    fd: VcpuFd,
    buses: Arc<Buses>,
    latch: Arc<StopLatch>,
}

impl CallerVcpu {
    /// Runs vCPU 0 until the VM stops.
    pub fn run(self) {
        drop(vcpu::run_vcpu(self.fd, 0, self.buses, self.latch));
    }
}

/// Starts the event loop and one thread per configured vCPU (`fds` in index
/// order), and hands everything to a `VmHandle`.
pub(crate) fn run(p: Prepared, fds: Vec<VcpuFd>) -> Result<VmHandle, BuildError> {
    Ok(spawn_all(p, fds, false)?.0)
}

/// Like `run`, except that vCPU 0 is handed back to run on the caller's thread.
/// The handle must outlive that run.
pub(crate) fn run_first_here(
    p: Prepared,
    fds: Vec<VcpuFd>,
) -> Result<(VmHandle, CallerVcpu), BuildError> {
    let (handle, first) = spawn_all(p, fds, true)?;
    let first = first.ok_or(BuildError::NoVcpu)?;
    Ok((handle, first))
}

fn spawn_all(
    p: Prepared,
    fds: Vec<VcpuFd>,
    first_here: bool,
) -> Result<(VmHandle, Option<CallerVcpu>), BuildError> {
    let subscribers: Vec<Subscriber> = p.virtio.iter().map(|d| d.subscriber.clone()).collect();
    let mut handle = VmHandle {
        latch: p.latch,
        vcpu_threads: Vec::new(),
        event_thread: None,
        devices: p.devices,
        started: p.started,
        cmdline: p.cmdline,
        virtio: p.virtio,
        serial: p.serial,
        kvm: Some(p.kvm),
        pending_subscribers: Vec::new(),
        vm: Some(p.vm),
        ram: Some(p.ram),
    };
    if first_here {
        // Started by the owner once vCPU 0 runs: a thread spawn is not worth
        // delaying the guest for (queue notifications wait in their eventfds).
        handle.pending_subscribers = subscribers;
    } else if !subscribers.is_empty() {
        handle.event_thread = Some(spawn_event_loop(subscribers, &handle.latch)?);
    }
    let buses = Arc::new(p.buses);
    let mut first = None;
    for (index, fd) in fds.into_iter().enumerate() {
        if index == 0 && first_here {
            first = Some(CallerVcpu {
                fd,
                buses: buses.clone(),
                latch: handle.latch.clone(),
            });
            continue;
        }
        let (buses, latch) = (buses.clone(), handle.latch.clone());
        let thread = std::thread::Builder::new()
            .name(format!("spore-vcpu{index}"))
            .spawn(move || vcpu::run_vcpu(fd, index as u8, buses, latch))
            .map_err(BuildError::Thread)?;
        handle.vcpu_threads.push(thread);
    }
    log::info!(
        "VM started in {:?}: {}",
        handle.started.elapsed(),
        handle.cmdline
    );
    Ok((handle, first))
}

fn detect_host() -> Result<HostKvm, BuildError> {
    let host = HostKvm::detect();
    match &host.problem {
        Some(problem) => Err(BuildError::NoKvm(problem.clone())),
        None => Ok(host),
    }
}

fn write_long_mode_tables(mem: &GuestMemoryMmap<()>) -> Result<(), BuildError> {
    paging::write(mem)?;
    gdt::write(mem)?;
    Ok(())
}

fn create_virtio(
    config: &VmConfig,
    mem: &GuestMemoryMmap<()>,
) -> Result<Vec<virtio::VirtioMmioDevice>, BuildError> {
    let mut out = Vec::new();
    if let Some(vsock) = &config.vsock {
        let cid = vsock.cid as u64;
        let device = virtio::vsock(mem, cid, &vsock.uds_path);
        out.push(device.map_err(|e| BuildError::Virtio("vsock", e))?);
    }
    for disk in &config.disks {
        out.push(
            virtio::block(mem, &disk.path, disk.read_only)
                .map_err(|e| BuildError::Virtio("block", e))?,
        );
    }
    if config.rng {
        out.push(virtio::rng(mem).map_err(|e| BuildError::Virtio("rng", e))?);
    }
    Ok(out)
}

/// Wires each device at its slot index; the caller keeps the devices.
pub(crate) fn attach_all_virtio(
    vm: &VmFd,
    buses: &mut Buses,
    devices: &[virtio::VirtioMmioDevice],
) -> Result<Vec<DeviceInfo>, BuildError> {
    devices
        .iter()
        .enumerate()
        .map(|(index, device)| Ok(devices::attach_virtio(vm, &mut buses.mmio, index, device)?))
        .collect()
}
