//! spore's virtio device model: the virtio-mmio transport and the devices behind it
//! (vsock, block, rng), each split into its virtio logic and its event-loop glue.
//!
//! Owns device state and queue processing. Does not own KVM wiring: the VMM builder
//! puts each `VirtioMmioDevice` on the MMIO bus, registers its queue eventfds as
//! ioeventfds, its irq eventfd as an irqfd, and runs the event loop.

pub mod device;
pub mod mmio;
pub mod rng;

#[cfg(test)]
mod test_utils;

use std::sync::{Arc, Mutex};

use event_manager::MutEventSubscriber;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub use device::{DriverOk, IrqTrigger, VirtioDevice};
pub use mmio::MmioTransport;
pub use rng::Rng;

use crate::layout;

/// Errors from creating a virtio device.
#[derive(Debug, thiserror::Error)]
pub enum VirtioError {
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
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
}

/// Wires a device to a fresh transport, eventfds and interrupt line.
fn assemble<D, F>(
    name: &'static str,
    mem: &GuestMemoryMmap,
    make: F,
) -> Result<VirtioMmioDevice, VirtioError>
where
    D: VirtioDevice + MutEventSubscriber + Send + 'static,
    F: FnOnce(Arc<IrqTrigger>, Vec<EventFd>) -> D,
    // The queue count comes from the device; build it first with its eventfds.
{
    let irq_evt = EventFd::new(EFD_NONBLOCK).map_err(VirtioError::EventFd)?;
    let irq = Arc::new(IrqTrigger::new(
        irq_evt.try_clone().map_err(VirtioError::EventFd)?,
    ));
    // Every spore device has at most 3 queues; make eventfds for the ones it has.
    let mut queue_events = Vec::new();
    let mut device_evts = Vec::new();
    let mut transport_evts = Vec::new();
    for _ in 0..3 {
        let evt = EventFd::new(EFD_NONBLOCK).map_err(VirtioError::EventFd)?;
        device_evts.push(evt.try_clone().map_err(VirtioError::EventFd)?);
        transport_evts.push(evt.try_clone().map_err(VirtioError::EventFd)?);
        queue_events.push(evt);
    }
    let dev = make(irq.clone(), device_evts);
    let n = dev.queue_max_sizes().len();
    queue_events.truncate(n);
    transport_evts.truncate(n);
    let dev = Arc::new(Mutex::new(dev));
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
        subscriber: dev,
        queue_events,
        irq: irq_evt,
        driver_ok,
    })
}

/// The virtio-rng device.
pub fn rng(mem: &GuestMemoryMmap) -> Result<VirtioMmioDevice, VirtioError> {
    let mem2 = mem.clone();
    assemble("rng", mem, move |irq, mut evts| {
        evts.truncate(1);
        Rng::new(mem2, irq, evts)
    })
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
    use super::*;
    use crate::bus::BusDevice;

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
    }
}
