//! Boots a VM: the numbered steps from a `VmConfig` to running vCPUs, and the
//! `VmHandle` that owns everything the VM created.
//!
//! `start` boots a Linux kernel; `start_raw` boots hand-made machine code in long
//! mode (spore's own test guests). Both share the steps after "what to load".

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::{Kvm, VmFd};
use linux_loader::cmdline::Cmdline;
use linux_loader::loader::{load_cmdline, BzImage, Elf, KernelLoader, KernelLoaderResult};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::arch::{boot_params, gdt, mptable, paging, vm, Quirks};
use crate::bus::BusDevice;
use crate::config::{ConfigError, Console, VmConfig};
use crate::devices::{self, virtio, DeviceError, DeviceInfo};
use crate::host::HostKvm;
use crate::layout::{CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START};
use crate::memory::{low_ram_end, GuestRam, MemoryError};
use crate::vcpu::{self, Buses, StopLatch, VcpuError, VcpuSetup, VmExit};

/// spore's own kernel command line, before devices, quirks and the user's extra.
pub const BASE_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 nomodule spore.exit_port=0xf4";
/// Offset of the 64-bit entry point in a bzImage's protected-mode code.
const BZIMAGE_ENTRY_64: u64 = 0x200;
/// How often the event loop checks whether the VM is stopping.
const EVENT_LOOP_TICK_MS: i32 = 100;

type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Errors from booting a VM.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("invalid VM configuration")]
    Config(#[from] ConfigError),
    #[error("/dev/kvm is not usable: {0}")]
    NoKvm(String),
    #[error("guest memory")]
    Memory(#[from] MemoryError),
    #[error("creating the KVM VM")]
    Vm(#[from] vm::VmError),
    #[error("cannot open kernel image {0}")]
    KernelOpen(PathBuf, #[source] std::io::Error),
    #[error("kernel image {path} is neither a loadable ELF vmlinux ({elf}) nor a bzImage ({bzimage}) — rebuild it with `make kernel`")]
    KernelFormat {
        path: PathBuf,
        elf: String,
        bzimage: String,
    },
    #[error("cannot read initramfs {0}")]
    Initrd(PathBuf, #[source] std::io::Error),
    #[error("writing boot data into guest memory failed")]
    GuestWrite(#[source] vm_memory::GuestMemoryError),
    #[error("kernel command line")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    #[error("writing the kernel command line failed")]
    LoadCmdline(#[source] linux_loader::loader::Error),
    #[error("boot parameters")]
    BootParams(#[from] boot_params::BootParamsError),
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

/// A running VM. Dropping it stops the VM and releases every thread, fd and byte
/// of memory it made.
pub struct VmHandle {
    latch: Arc<StopLatch>,
    vcpu_threads: Vec<JoinHandle<()>>,
    event_thread: Option<JoinHandle<()>>,
    devices: Vec<DeviceInfo>,
    started: Instant,
    cmdline: String,
    // Dropped in this order after the threads: the VM, then its RAM.
    _vm: VmFd,
    ram: GuestRam,
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
    let kernel = load_kernel(ram.memory(), &config.kernel)?;
    let initrd = load_initrd(&ram, kernel.kernel_end, config.initrd.as_deref())?;
    // 5. Legacy devices, then virtio devices (their cmdline entries follow).
    let latch = Arc::new(StopLatch::new());
    let mut buses = Buses::default();
    let console = std::mem::replace(&mut config.console, Console::Null);
    let console = console.into_writer().map_err(BuildError::Console)?;
    devices::attach_legacy(&vm, &mut buses.io, console, &latch)?;
    let virtio_devices = create_virtio(&config, ram.memory())?;
    let (infos, subscribers) = attach_all_virtio(&vm, &mut buses, virtio_devices)?;
    // 6. Command line, zero page, page tables, GDT, MP table.
    let entries: Vec<String> = infos
        .iter()
        .map(|d| virtio::cmdline_entry(d.base, d.gsi))
        .collect();
    let cmdline = kernel_cmdline(&entries, quirks, &config.cmdline_extra);
    let cmdline_size = write_cmdline(ram.memory(), &cmdline)?;
    let inputs = boot_params::BootInputs {
        cmdline_addr: CMDLINE_START,
        cmdline_size,
        initrd,
    };
    let params = boot_params::build(kernel.setup_header, ram.size(), &inputs)?;
    boot_params::write(ram.memory(), &params)?;
    write_long_mode_tables(ram.memory())?;
    mptable::write(ram.memory(), config.vcpus)?;
    // 7. Event loop, then vCPUs.
    let event_thread = spawn_event_loop(subscribers, &latch)?;
    let entry = kernel_entry(&kernel);
    let setup = VcpuSetup {
        supported_cpuid: &kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(BuildError::Cpuid)?,
        num_cpus: config.vcpus,
        quirks,
        entry,
    };
    let vcpu_threads = spawn_vcpus(&vm, &setup, buses, &latch)?;
    log::info!("VM started in {:?}: {cmdline}", started.elapsed());
    Ok(VmHandle {
        latch,
        vcpu_threads,
        event_thread: Some(event_thread),
        devices: infos,
        started,
        cmdline,
        _vm: vm,
        ram,
    })
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
    devices::attach_legacy(&vm, &mut buses.io, console, &latch)?;
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
    // 4. Event loop and the vCPU.
    let event_thread = spawn_event_loop(Vec::new(), &latch)?;
    let setup = VcpuSetup {
        supported_cpuid: &kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(BuildError::Cpuid)?,
        num_cpus: 1,
        quirks: Quirks::for_host(&host),
        entry: guest.entry,
    };
    let vcpu_threads = spawn_vcpus(&vm, &setup, buses, &latch)?;
    Ok(VmHandle {
        latch,
        vcpu_threads,
        event_thread: Some(event_thread),
        devices: Vec::new(),
        started,
        cmdline: String::new(),
        _vm: vm,
        ram,
    })
}

impl VmHandle {
    /// Waits until the VM ends and releases it.
    pub fn wait(self) -> VmExit {
        self.latch
            .wait(None)
            .unwrap_or_else(|| VmExit::Error("stop latch returned no reason".into()))
    }

    /// The exit reason if the VM ends within `timeout`; the VM keeps running otherwise.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<VmExit> {
        self.latch.wait(Some(timeout))
    }

    /// Asks the VM to stop (`VmExit::Stopped` unless it already ended).
    pub fn stop(&self) {
        self.latch.request(VmExit::Stopped);
    }

    /// The virtio devices, with when their drivers set DRIVER_OK.
    pub fn devices(&self) -> &[DeviceInfo] {
        &self.devices
    }

    pub fn memory(&self) -> &GuestMemoryMmap<()> {
        self.ram.memory()
    }

    /// When `start` began.
    pub fn started_at(&self) -> Instant {
        self.started
    }

    /// The kernel command line the guest got.
    pub fn cmdline(&self) -> &str {
        &self.cmdline
    }
}

impl Drop for VmHandle {
    fn drop(&mut self) {
        self.latch.request(VmExit::Stopped);
        for thread in self.vcpu_threads.drain(..) {
            // A kick can land while the thread is outside KVM_RUN; repeat until it leaves.
            while !thread.is_finished() {
                self.latch.kick_all();
                std::thread::sleep(Duration::from_millis(5));
            }
            let _ = thread.join();
        }
        if let Some(thread) = self.event_thread.take() {
            let _ = thread.join();
        }
    }
}

/// spore's kernel command line: base options, one entry per virtio device, the
/// host quirks' options, then the caller's extra.
pub fn kernel_cmdline(virtio_entries: &[String], quirks: Quirks, extra: &str) -> String {
    let mut parts = vec![BASE_CMDLINE];
    parts.extend(virtio_entries.iter().map(String::as_str));
    parts.push(quirks.cmdline());
    parts.push(extra.trim());
    parts.retain(|p| !p.is_empty());
    parts.join(" ")
}

fn detect_host() -> Result<HostKvm, BuildError> {
    let host = HostKvm::detect();
    match &host.problem {
        Some(problem) => Err(BuildError::NoKvm(problem.clone())),
        None => Ok(host),
    }
}

/// Loads an ELF vmlinux, or failing that a bzImage, at 1 MiB and up.
fn load_kernel(mem: &GuestMemoryMmap<()>, path: &Path) -> Result<KernelLoaderResult, BuildError> {
    let mut file = File::open(path).map_err(|e| BuildError::KernelOpen(path.into(), e))?;
    let himem = Some(GuestAddress(HIMEM_START));
    let elf = match Elf::load(mem, None, &mut file, himem) {
        Ok(result) => return Ok(result),
        Err(e) => e.to_string(),
    };
    file.seek(SeekFrom::Start(0))
        .map_err(|e| BuildError::KernelOpen(path.into(), e))?;
    BzImage::load(mem, None, &mut file, himem).map_err(|bz| BuildError::KernelFormat {
        path: path.into(),
        elf,
        bzimage: bz.to_string(),
    })
}

/// An ELF's entry is its 64-bit entry; a bzImage's is 0x200 into its code.
fn kernel_entry(kernel: &KernelLoaderResult) -> u64 {
    match kernel.setup_header {
        Some(_) => kernel.kernel_load.0 + BZIMAGE_ENTRY_64,
        None => kernel.kernel_load.0,
    }
}

fn load_initrd(
    ram: &GuestRam,
    kernel_end: u64,
    path: Option<&Path>,
) -> Result<Option<(u64, u64)>, BuildError> {
    let Some(path) = path else {
        return Ok(None);
    };
    let bytes = std::fs::read(path).map_err(|e| BuildError::Initrd(path.into(), e))?;
    let addr =
        boot_params::initrd_address(kernel_end, low_ram_end(ram.size()), bytes.len() as u64)?;
    ram.memory()
        .write_slice(&bytes, GuestAddress(addr))
        .map_err(BuildError::GuestWrite)?;
    Ok(Some((addr, bytes.len() as u64)))
}

/// Writes the command line; returns its size including the NUL.
fn write_cmdline(mem: &GuestMemoryMmap<()>, text: &str) -> Result<u32, BuildError> {
    let mut cmdline = Cmdline::new(CMDLINE_MAX_SIZE).map_err(BuildError::Cmdline)?;
    cmdline.insert_str(text).map_err(BuildError::Cmdline)?;
    load_cmdline(mem, GuestAddress(CMDLINE_START), &cmdline).map_err(BuildError::LoadCmdline)?;
    Ok(text.len() as u32 + 1)
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

fn attach_all_virtio(
    vm: &VmFd,
    buses: &mut Buses,
    devices: Vec<virtio::VirtioMmioDevice>,
) -> Result<(Vec<DeviceInfo>, Vec<Subscriber>), BuildError> {
    let mut infos = Vec::new();
    let mut subscribers = Vec::new();
    for (index, device) in devices.into_iter().enumerate() {
        infos.push(devices::attach_virtio(vm, &mut buses.mmio, index, &device)?);
        subscribers.push(device.subscriber);
    }
    Ok((infos, subscribers))
}

/// Runs the device event loop on its own thread until the VM stops.
fn spawn_event_loop(
    subscribers: Vec<Subscriber>,
    latch: &Arc<StopLatch>,
) -> Result<JoinHandle<()>, BuildError> {
    let mut manager = EventManager::<Subscriber>::new().map_err(BuildError::EventLoop)?;
    for subscriber in subscribers {
        manager.add_subscriber(subscriber);
    }
    let latch = latch.clone();
    std::thread::Builder::new()
        .name("spore-events".into())
        .spawn(move || {
            while !latch.is_stopping() {
                if let Err(e) = manager.run_with_timeout(EVENT_LOOP_TICK_MS) {
                    latch.request(VmExit::Error(format!("event loop failed: {e:?}")));
                }
            }
        })
        .map_err(BuildError::Thread)
}

/// Creates every vCPU (all before any runs), then starts one thread each.
fn spawn_vcpus(
    vm: &VmFd,
    setup: &VcpuSetup,
    buses: Buses,
    latch: &Arc<StopLatch>,
) -> Result<Vec<JoinHandle<()>>, BuildError> {
    let fds = (0..setup.num_cpus)
        .map(|i| vcpu::create(vm, i, setup))
        .collect::<Result<Vec<_>, _>>()?;
    let buses = Arc::new(buses);
    let mut threads = Vec::new();
    for (index, fd) in fds.into_iter().enumerate() {
        let (buses, latch) = (buses.clone(), latch.clone());
        let thread = std::thread::Builder::new()
            .name(format!("spore-vcpu{index}"))
            .spawn(move || vcpu::run_vcpu(fd, index as u8, buses, latch))
            .map_err(BuildError::Thread)?;
        threads.push(thread);
    }
    Ok(threads)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_has_base_devices_quirks_and_extra_in_order() {
        let entries = vec![
            "virtio_mmio.device=4K@0xd0000000:5".to_string(),
            "virtio_mmio.device=4K@0xd0001000:6".to_string(),
        ];
        let line = kernel_cmdline(&entries, Quirks { pvm: true }, " quiet ");
        assert_eq!(
            line,
            "console=ttyS0 reboot=k panic=-1 nomodule spore.exit_port=0xf4 \
             virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6 \
             noxsave clearcpuid=popcnt,smap quiet"
        );
    }

    #[test]
    fn cmdline_without_quirks_or_devices_is_the_base() {
        assert_eq!(kernel_cmdline(&[], Quirks::NONE, ""), BASE_CMDLINE);
        assert!(!kernel_cmdline(&[], Quirks::NONE, "").contains("noxsave"));
    }

    #[test]
    fn exit_port_in_cmdline_matches_layout() {
        let port = format!("spore.exit_port={:#x}", crate::layout::EXIT_PORT);
        assert!(BASE_CMDLINE.contains(&port));
    }

    #[test]
    fn corrupt_kernel_is_a_clear_error() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        let path = std::env::temp_dir().join(format!("spore-bad-kernel-{}", std::process::id()));
        std::fs::write(&path, b"not a kernel at all").unwrap();
        let err = load_kernel(&mem, &path).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(err, BuildError::KernelFormat { .. }), "{err:?}");
        assert!(err.to_string().contains("make kernel"), "{err}");
        let missing = load_kernel(&mem, Path::new("/nonexistent/vmlinux")).unwrap_err();
        assert!(matches!(missing, BuildError::KernelOpen(..)));
    }
}
