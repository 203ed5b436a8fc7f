//! Devices the guest sees. Legacy ones sit on the port I/O bus; virtio ones behind
//! virtio-mmio transports on the MMIO bus.
//!
//! This module is also the device manager: it allocates each virtio device's MMIO
//! window and IOAPIC pin, and wires devices to KVM (irqfd, ioeventfd) and to the
//! buses. Device logic lives in the submodules.

pub mod exit;
pub mod i8042;
pub mod report;
pub mod serial;
pub mod virtio;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kvm_ioctls::{IoEventAddress, VmFd};

use crate::bus::{Bus, BusError};
use crate::layout::{
    EXIT_PORT, I8042_DATA_PORT, SERIAL_IRQ, SERIAL_PORT, SERIAL_PORT_LEN, VIRTIO_IRQ_BASE,
    VIRTIO_MAX_DEVICES, VIRTIO_MMIO_BASE, VIRTIO_MMIO_SIZE,
};
use crate::vcpu::StopLatch;
use virtio::{DriverOk, VirtioMmioDevice};

/// Offset of QueueNotify in a virtio-mmio window (virtio 1.2, 4.2.2).
const QUEUE_NOTIFY_OFFSET: u64 = 0x50;

/// Errors from wiring devices.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("creating the serial console failed")]
    Serial(#[from] serial::SerialError),
    #[error("placing a device on a bus failed")]
    Bus(#[from] BusError),
    #[error("registering an irqfd for GSI {0} failed")]
    Irqfd(u32, #[source] kvm_ioctls::Error),
    #[error("registering queue {queue}'s ioeventfd at {addr:#x} failed")]
    Ioevent {
        queue: usize,
        addr: u64,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("more than {VIRTIO_MAX_DEVICES} virtio devices")]
    NoSlot,
}

/// A virtio device as the VM's owner sees it.
#[derive(Clone)]
pub struct DeviceInfo {
    pub name: &'static str,
    pub base: u64,
    pub gsi: u32,
    driver_ok: DriverOk,
}

impl DeviceInfo {
    /// When the guest driver set DRIVER_OK, if it has.
    pub fn driver_ok_at(&self) -> Option<Instant> {
        self.driver_ok.at()
    }
}

/// The MMIO base and GSI of virtio device `index`, skipping the serial's pin.
pub fn virtio_slot(index: usize) -> Result<(u64, u32), DeviceError> {
    if index >= VIRTIO_MAX_DEVICES as usize {
        return Err(DeviceError::NoSlot);
    }
    let base = VIRTIO_MMIO_BASE + index as u64 * VIRTIO_MMIO_SIZE;
    let mut gsi = VIRTIO_IRQ_BASE + index as u32;
    if gsi >= SERIAL_IRQ && VIRTIO_IRQ_BASE <= SERIAL_IRQ {
        gsi += 1;
    }
    Ok((base, gsi))
}

/// Puts COM1 (new, or with the registers of `saved` for a clone), the i8042 and
/// the exit port on the I/O bus; the serial interrupt goes to KVM as an irqfd.
/// Returns COM1, for a later capture.
pub fn attach_legacy(
    vm: &VmFd,
    io: &mut Bus,
    console: Box<dyn Write + Send>,
    latch: &Arc<StopLatch>,
    saved: Option<&serial::SerialSnapshot>,
) -> Result<Arc<Mutex<serial::SerialDevice>>, DeviceError> {
    let (serial, irq) = match saved {
        Some(state) => serial::SerialDevice::restore(state, console)?,
        None => serial::SerialDevice::new(console)?,
    };
    vm.register_irqfd(&irq, SERIAL_IRQ)
        .map_err(|e| DeviceError::Irqfd(SERIAL_IRQ, e))?;
    let serial = Arc::new(Mutex::new(serial));
    io.insert(serial.clone(), SERIAL_PORT as u64, SERIAL_PORT_LEN as u64)?;
    let i8042 = i8042::I8042::new(latch.clone());
    io.insert(
        Arc::new(Mutex::new(i8042)),
        I8042_DATA_PORT as u64,
        i8042::I8042_RANGE,
    )?;
    let exit = exit::ExitPort::new(latch.clone());
    io.insert(Arc::new(Mutex::new(exit)), EXIT_PORT as u64, 1)?;
    // The irqfd registration holds its own reference to the eventfd's file.
    drop(irq);
    Ok(serial)
}

/// Wires virtio device `index`: MMIO window, queue-notify ioeventfds, irqfd.
/// The caller adds `device.subscriber` to the event loop.
pub fn attach_virtio(
    vm: &VmFd,
    mmio: &mut Bus,
    index: usize,
    device: &VirtioMmioDevice,
) -> Result<DeviceInfo, DeviceError> {
    let (base, gsi) = virtio_slot(index)?;
    mmio.insert(device.transport.clone(), base, VIRTIO_MMIO_SIZE)?;
    let notify = base + QUEUE_NOTIFY_OFFSET;
    for (queue, evt) in device.queue_events.iter().enumerate() {
        vm.register_ioevent(evt, &IoEventAddress::Mmio(notify), queue as u32)
            .map_err(|source| DeviceError::Ioevent {
                queue,
                addr: notify,
                source,
            })?;
    }
    vm.register_irqfd(&device.irq, gsi)
        .map_err(|e| DeviceError::Irqfd(gsi, e))?;
    Ok(DeviceInfo {
        name: device.name,
        base,
        gsi,
        driver_ok: device.driver_ok.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtio_slots_are_4k_apart_and_avoid_the_serial_irq() {
        assert_eq!(virtio_slot(0).unwrap(), (VIRTIO_MMIO_BASE, VIRTIO_IRQ_BASE));
        let (base, gsi) = virtio_slot(2).unwrap();
        assert_eq!(base, VIRTIO_MMIO_BASE + 0x2000);
        assert_eq!(gsi, VIRTIO_IRQ_BASE + 2);
        let last = virtio_slot(VIRTIO_MAX_DEVICES as usize - 1).unwrap().1;
        assert!(last <= 23, "GSI {last} beyond the IOAPIC");
        for i in 0..VIRTIO_MAX_DEVICES as usize {
            assert_ne!(virtio_slot(i).unwrap().1, SERIAL_IRQ);
        }
        assert!(virtio_slot(VIRTIO_MAX_DEVICES as usize).is_err());
    }

    #[test]
    fn virtio_cmdline_entry_matches_the_slot() {
        let (base, gsi) = virtio_slot(1).unwrap();
        assert_eq!(
            virtio::cmdline_entry(base, gsi),
            "virtio_mmio.device=4K@0xd0001000:6"
        );
    }
}
