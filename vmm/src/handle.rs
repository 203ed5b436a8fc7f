//! A VM once it runs: the `VmHandle` that owns its threads, devices, KVM handles
//! and RAM (dropping it stops and releases everything), the device event loop
//! thread, and `StoppedVm`, the parts a capture takes over.
//!
//! The builder (`builder`) and clone restore (`clone::restore`) make handles.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::builder::BuildError;
use crate::devices::serial::SerialDevice;
use crate::devices::{virtio, DeviceInfo};
use crate::memory::GuestRam;
use crate::vcpu::{StopLatch, VmExit};

pub(crate) type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// How often the event loop checks whether the VM is stopping, should a wake-up
/// from the stop latch be missed.
const EVENT_LOOP_TICK_MS: i32 = 1000;

/// A running VM. Dropping it stops the VM and releases every thread, fd and byte
/// of memory it made.
pub struct VmHandle {
    pub(crate) latch: Arc<StopLatch>,
    pub(crate) vcpu_threads: Vec<JoinHandle<VcpuFd>>,
    pub(crate) event_thread: Option<JoinHandle<()>>,
    pub(crate) devices: Vec<DeviceInfo>,
    pub(crate) started: Instant,
    pub(crate) cmdline: String,
    // Kept for a capture: the devices' state and KVM's MSR list.
    pub(crate) virtio: Vec<virtio::VirtioMmioDevice>,
    pub(crate) serial: Arc<Mutex<SerialDevice>>,
    pub(crate) kvm: Option<Kvm>,
    /// Device subscribers whose event loop the owner starts later
    /// (`start_event_loop`, for clones started with `run_first_here`).
    pub(crate) pending_subscribers: Vec<Subscriber>,
    // Dropped in this order after the threads: the VM, then its RAM.
    pub(crate) vm: Option<VmFd>,
    pub(crate) ram: Option<GuestRam>,
}

/// A VM whose vCPU threads and event loop have ended, taken apart for a capture:
/// nothing runs, every part is still alive.
pub struct StoppedVm {
    pub kvm: Kvm,
    pub vm: VmFd,
    /// In index order.
    pub vcpus: Vec<VcpuFd>,
    pub virtio: Vec<virtio::VirtioMmioDevice>,
    pub serial: Arc<Mutex<SerialDevice>>,
    pub ram: GuestRam,
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
        self.ram
            .as_ref()
            .expect("RAM lives as long as the handle")
            .memory()
    }

    /// The guest RAM (its memfd, for a template).
    pub fn ram(&self) -> &GuestRam {
        self.ram.as_ref().expect("RAM lives as long as the handle")
    }

    /// The virtio devices themselves (slot order).
    pub fn virtio_devices(&self) -> &[virtio::VirtioMmioDevice] {
        &self.virtio
    }

    /// Starts the device event loop of a VM started with `run_first_here`
    /// (nothing to do for other VMs, or twice).
    pub fn start_event_loop(&mut self) -> Result<(), BuildError> {
        let subscribers = std::mem::take(&mut self.pending_subscribers);
        if !subscribers.is_empty() && self.event_thread.is_none() {
            self.event_thread = Some(spawn_event_loop(subscribers, &self.latch)?);
        }
        Ok(())
    }

    /// Parks the vCPUs outside the guest until `resume`.
    pub fn pause(&self) {
        self.latch.pause();
    }

    pub fn resume(&self) {
        self.latch.resume();
    }

    /// CLOCK_MONOTONIC (ns, `vcpu::monotonic_ns`) when a vCPU first entered the
    /// guest, waiting up to `timeout`: the "VM is running" hook.
    pub fn wait_running(&self, timeout: Duration) -> Option<u64> {
        self.latch.wait_running(timeout)
    }

    /// Stops the VM for good and hands back its parts, vCPUs included, for a
    /// capture. The guest never runs again on this VM.
    pub fn stop_for_capture(mut self) -> StoppedVm {
        self.latch.request(VmExit::Stopped);
        let vcpus = self.join_threads();
        StoppedVm {
            kvm: self.kvm.take().expect("KVM lives as long as the handle"),
            vm: self.vm.take().expect("VM lives as long as the handle"),
            vcpus,
            virtio: std::mem::take(&mut self.virtio),
            serial: self.serial.clone(),
            ram: self.ram.take().expect("RAM lives as long as the handle"),
        }
    }

    /// Joins every VM thread (the VM must be stopping), returning the vCPUs.
    fn join_threads(&mut self) -> Vec<VcpuFd> {
        let mut vcpus = Vec::new();
        for thread in self.vcpu_threads.drain(..) {
            // A kick can land while the thread is outside KVM_RUN; repeat until it leaves.
            while !thread.is_finished() {
                self.latch.kick_all();
                std::thread::sleep(Duration::from_millis(1));
            }
            if let Ok(fd) = thread.join() {
                vcpus.push(fd);
            }
        }
        if let Some(thread) = self.event_thread.take() {
            let _ = thread.join();
        }
        vcpus
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
        drop(self.join_threads());
        // The devices hold copies of the RAM mapping; the VM goes before its RAM.
        self.virtio.clear();
        drop(self.vm.take());
        drop(self.ram.take());
    }
}

/// Wakes the event loop when the VM starts stopping, so teardown does not wait
/// for the next tick.
struct StopWake(EventFd);

impl MutEventSubscriber for StopWake {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.0.read();
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.0, EventSet::IN)) {
            log::warn!("event loop will notice a stop only on its tick: {e:?}");
        }
    }
}

/// Runs the device event loop on its own thread until the VM stops.
pub(crate) fn spawn_event_loop(
    subscribers: Vec<Subscriber>,
    latch: &Arc<StopLatch>,
) -> Result<JoinHandle<()>, BuildError> {
    let mut manager = EventManager::<Subscriber>::new().map_err(BuildError::EventLoop)?;
    for subscriber in subscribers {
        manager.add_subscriber(subscriber);
    }
    let wake = EventFd::new(EFD_NONBLOCK).map_err(BuildError::StopEventFd)?;
    latch.add_waker(wake.try_clone().map_err(BuildError::StopEventFd)?);
    manager.add_subscriber(Arc::new(Mutex::new(StopWake(wake))));
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
