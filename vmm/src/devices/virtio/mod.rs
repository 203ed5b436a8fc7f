//! spore's virtio device model: the virtio-mmio transport and the devices behind it
//! (vsock, block, rng), each split into its virtio logic and its event-loop glue.
//!
//! Owns device state and queue processing. Does not own KVM wiring: the VMM builder
//! puts each `VirtioMmioDevice` on the MMIO bus, registers its queue eventfds as
//! ioeventfds, its irq eventfd as an irqfd, and runs the event loop.
//!
//! What a driver must do (the devices are strict; virtio 1.2 sections 3.1.1, 4.2):
//! - use 32-bit aligned accesses for registers below 0x100 (config space: any width);
//! - set status bits in order (ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK), never
//!   clear one except by writing 0 (reset); write features between DRIVER and
//!   FEATURES_OK and acknowledge VIRTIO_F_VERSION_1; only offered bits are accepted;
//! - configure queues between FEATURES_OK and DRIVER_OK: a power-of-two size up to
//!   QueueNumMax, addresses inside guest memory, then QueueReady = 1. *Every* queue
//!   of the device must be ready at DRIVER_OK (vsock: rx, tx and event), otherwise
//!   the device sets DEVICE_NEEDS_RESET and raises a config-change interrupt;
//! - notify by writing the queue index to QueueNotify (0x50);
//! - vsock: receive buffers of at least 44 bytes (the header), event buffers of 4.

pub mod block;
pub mod device;
pub mod mmio;
pub mod persist;
pub mod rng;
pub mod vsock;

#[cfg(test)]
mod test_utils;

use std::path::Path;
use std::sync::{Arc, Mutex};

use event_manager::MutEventSubscriber;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub use block::Block;
pub use device::{DriverOk, IrqTrigger, VirtioDevice};
pub use mmio::MmioTransport;
pub use persist::{restore, DeviceKindState, PersistError, VirtioDeviceState, VsockIdentity};
pub use rng::Rng;
pub use vsock::Vsock;

use crate::layout;

/// Errors from creating or controlling a virtio device.
#[derive(Debug, thiserror::Error)]
pub enum VirtioError {
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
    #[error("block device")]
    Block(#[from] block::BlockError),
    #[error("vsock device")]
    Vsock(#[from] vsock::VsockError),
    #[error("duplicating the vsock listener failed")]
    Listener(#[source] std::io::Error),
    #[error("{0} device does not support this operation")]
    WrongDevice(&'static str),
}

/// The device behind a transport, for the VMM to act on it directly (clone time).
#[derive(Clone)]
pub enum DeviceControl {
    Block(Arc<Mutex<Block>>),
    Rng(Arc<Mutex<Rng>>),
    Vsock(Arc<Mutex<Vsock>>),
}

impl DeviceControl {
    /// Swaps a block device's backing file and raises a config-change interrupt.
    pub fn set_backing(&self, path: &Path, read_only: bool) -> Result<(), VirtioError> {
        match self {
            Self::Block(b) => Ok(b
                .lock()
                .expect("block device poisoned")
                .set_backing(path, read_only)?),
            Self::Rng(_) => Err(VirtioError::WrongDevice("rng")),
            Self::Vsock(_) => Err(VirtioError::WrongDevice("vsock")),
        }
    }

    /// Asks a vsock device to drop its connections and send the guest a
    /// TRANSPORT_RESET event, switching first to `new_cid` and a new host socket at
    /// `new_uds_path` if given (a clone's identity). The old socket path is left in
    /// place: after a fork it belongs to the template.
    pub fn vsock_transport_reset(
        &self,
        new_cid: Option<u64>,
        new_uds_path: Option<&Path>,
    ) -> Result<(), VirtioError> {
        match self {
            Self::Vsock(v) => Ok(v
                .lock()
                .expect("vsock device poisoned")
                .request_transport_reset(new_cid, new_uds_path)?),
            Self::Block(_) => Err(VirtioError::WrongDevice("block")),
            Self::Rng(_) => Err(VirtioError::WrongDevice("rng")),
        }
    }
}

/// A device ready to be wired into a VM (see the module doc for who does what).
pub struct VirtioMmioDevice {
    /// "vsock" | "block" | "rng".
    pub name: &'static str,
    /// Goes on the MMIO bus at the device's base, `layout::VIRTIO_MMIO_SIZE` long.
    pub transport: Arc<Mutex<MmioTransport>>,
    /// Handles queue notifications (and host sockets) on the event-loop thread.
    pub subscriber: Arc<Mutex<dyn MutEventSubscriber + Send>>,
    /// One per queue, for KVM_IOEVENTFD at base + 0x50 with datamatch = queue index.
    pub queue_events: Vec<EventFd>,
    /// For KVM_IRQFD on the device's GSI.
    pub irq: EventFd,
    /// When the guest driver wrote DRIVER_OK.
    pub driver_ok: DriverOk,
    /// The device itself, for operations the VMM starts (`set_backing`, ...).
    pub control: DeviceControl,
}

/// Builds a device with `queues` queue eventfds and wires it to a fresh transport.
fn assemble<D, F>(
    name: &'static str,
    mem: &GuestMemoryMmap,
    queues: usize,
    make: F,
    control: fn(Arc<Mutex<D>>) -> DeviceControl,
) -> Result<VirtioMmioDevice, VirtioError>
where
    D: VirtioDevice + MutEventSubscriber + Send + 'static,
    F: FnOnce(Arc<IrqTrigger>, Vec<EventFd>) -> Result<D, VirtioError>,
{
    let evt = || EventFd::new(EFD_NONBLOCK).map_err(VirtioError::EventFd);
    let dup = |e: &EventFd| e.try_clone().map_err(VirtioError::EventFd);
    let irq_evt = evt()?;
    let irq = Arc::new(IrqTrigger::new(dup(&irq_evt)?));
    let queue_events = (0..queues).map(|_| evt()).collect::<Result<Vec<_>, _>>()?;
    let device_evts = queue_events
        .iter()
        .map(dup)
        .collect::<Result<Vec<_>, _>>()?;
    let transport_evts = queue_events
        .iter()
        .map(dup)
        .collect::<Result<Vec<_>, _>>()?;
    let dev = Arc::new(Mutex::new(make(irq.clone(), device_evts)?));
    let driver_ok = DriverOk::default();
    let transport = MmioTransport::new(
        dev.clone(),
        mem.clone(),
        irq,
        transport_evts,
        driver_ok.clone(),
    );
    Ok(VirtioMmioDevice {
        name,
        transport: Arc::new(Mutex::new(transport)),
        subscriber: dev.clone(),
        queue_events,
        irq: irq_evt,
        driver_ok,
        control: control(dev),
    })
}

/// The virtio-vsock device for guest `cid`; its host socket listens at `uds_path`
/// (removed when the device is dropped).
pub fn vsock(
    mem: &GuestMemoryMmap,
    cid: u64,
    uds_path: &Path,
) -> Result<VirtioMmioDevice, VirtioError> {
    let m = mem.clone();
    let make = |irq, evts| {
        let wake = EventFd::new(EFD_NONBLOCK).map_err(VirtioError::EventFd)?;
        Ok(Vsock::new(m, irq, evts, wake, cid, uds_path)?)
    };
    assemble("vsock", mem, 3, make, DeviceControl::Vsock)
}

/// A file-backed virtio-blk disk.
pub fn block(
    mem: &GuestMemoryMmap,
    path: &Path,
    read_only: bool,
) -> Result<VirtioMmioDevice, VirtioError> {
    let m = mem.clone();
    let make = |irq, evts| Ok(Block::new(m, irq, evts, path, read_only)?);
    assemble("block", mem, 1, make, DeviceControl::Block)
}

/// The virtio-rng device.
pub fn rng(mem: &GuestMemoryMmap) -> Result<VirtioMmioDevice, VirtioError> {
    let m = mem.clone();
    let make = |irq, evts| Ok(Rng::new(m, irq, evts));
    assemble("rng", mem, 1, make, DeviceControl::Rng)
}

/// The kernel command-line entry that tells Linux's virtio_mmio driver where a device is.
pub fn cmdline_entry(base: u64, irq: u32) -> String {
    format!(
        "virtio_mmio.device={}K@{base:#x}:{irq}",
        layout::VIRTIO_MMIO_SIZE / 1024
    )
}

#[cfg(test)]
mod tests {
    use event_manager::{EventManager, SubscriberOps};

    use super::*;
    use crate::bus::BusDevice;
    use test_utils::*;

    type Em = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

    fn reg(d: &VirtioMmioDevice, offset: u64) -> u32 {
        read_reg(&mut d.transport.lock().unwrap(), offset)
    }

    #[test]
    fn rng_serves_the_guest_through_transport_and_event_loop() {
        let mem = guest_memory();
        let d = rng(&mem).unwrap();
        let mut q = TestQueue::new(&mem, 0x1_0000, 16);
        drive_to_driver_ok(&mut d.transport.lock().unwrap(), VERSION_1, &[&q]);
        assert!(d.driver_ok.at().is_some());
        let mut em = Em::new().unwrap();
        em.add_subscriber(d.subscriber.clone());
        q.add_chain(&[wo(0x10_0000, 32)]);
        // QueueNotify through the bus, as without ioeventfd.
        write_reg(&mut d.transport.lock().unwrap(), 0x50, 0);
        em.run_with_timeout(1000).unwrap();
        assert_eq!(q.used_idx(), 1);
        assert_eq!(q.used_elem(0), (0, 32));
        assert_eq!(d.irq.read().unwrap(), 1);
        assert_eq!(reg(&d, 0x60), 1);
        write_reg(&mut d.transport.lock().unwrap(), 0x64, 1);
        assert_eq!(reg(&d, 0x60), 0);
    }

    #[test]
    fn block_backing_swap_is_a_config_change_for_the_driver() {
        let mem = guest_memory();
        let d = block(&mem, Path::new("/dev/null"), true).unwrap();
        let q = TestQueue::new(&mem, 0x1_0000, 16);
        drive_to_driver_ok(&mut d.transport.lock().unwrap(), VERSION_1, &[&q]);
        let generation = reg(&d, 0xfc);
        let img = vmm_sys_util::tempfile::TempFile::new().unwrap();
        img.as_file().set_len(1 << 20).unwrap();
        d.control.set_backing(img.as_path(), true).unwrap();
        assert_eq!(d.irq.read().unwrap(), 1);
        assert_eq!(reg(&d, 0x60), 2);
        assert_eq!(reg(&d, 0xfc), generation + 1);
        assert_eq!(reg(&d, 0x100), 2048);
    }

    #[test]
    fn cmdline_entry_format() {
        assert_eq!(
            cmdline_entry(0xd000_0000, 5),
            "virtio_mmio.device=4K@0xd0000000:5"
        );
        assert_eq!(
            cmdline_entry(0xd000_1000, 6),
            "virtio_mmio.device=4K@0xd0001000:6"
        );
    }

    #[test]
    fn rng_is_assembled() {
        let mem = test_utils::guest_memory();
        let d = rng(&mem).unwrap();
        assert_eq!(d.name, "rng");
        assert_eq!(d.queue_events.len(), 1);
        let mut b = [0u8; 4];
        d.transport.lock().unwrap().read(0x8, &mut b);
        assert_eq!(u32::from_le_bytes(b), 4);
        d.transport.lock().unwrap().write(0x50, &0u32.to_le_bytes());
        assert_eq!(d.queue_events[0].read().unwrap(), 1);
        assert!(d.control.set_backing(Path::new("/dev/null"), true).is_err());
    }

    #[test]
    fn vsock_is_assembled() {
        let mem = test_utils::guest_memory();
        let path = std::env::temp_dir().join(format!("spore-vsock-mod-{}", std::process::id()));
        let d = vsock(&mem, 3, &path).unwrap();
        assert_eq!((d.name, d.queue_events.len()), ("vsock", 3));
        let mut b = [0u8; 4];
        d.transport.lock().unwrap().read(0x8, &mut b);
        assert_eq!(u32::from_le_bytes(b), 19);
        d.transport.lock().unwrap().read(0x100, &mut b);
        assert_eq!(u32::from_le_bytes(b), 3);
        assert!(path.exists());
        // The path is taken: a second device cannot listen there.
        assert!(vsock(&mem, 4, &path).is_err());
        d.control.vsock_transport_reset(None, None).unwrap();
        assert!(d.control.set_backing(&path, true).is_err());
        drop(d);
        assert!(!path.exists());
    }

    #[test]
    fn block_is_assembled_and_controllable() {
        let mem = test_utils::guest_memory();
        let img = vmm_sys_util::tempfile::TempFile::new().unwrap();
        img.as_file().set_len(4096).unwrap();
        let d = block(&mem, Path::new("/dev/null"), true).unwrap();
        let mut b = [0u8; 8];
        d.transport.lock().unwrap().read(0x100, &mut b);
        assert_eq!(u64::from_le_bytes(b), 0);
        d.control.set_backing(img.as_path(), true).unwrap();
        d.transport.lock().unwrap().read(0x100, &mut b);
        assert_eq!(u64::from_le_bytes(b), 8);
        assert!(block(&mem, Path::new("/nonexistent/disk.img"), true).is_err());
    }
}
