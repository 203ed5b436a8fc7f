//! What every virtio device shares: the `VirtioDevice` trait the transport drives, the
//! interrupt line a device raises, the DRIVER_OK timestamp, and common feature bits.
//!
//! Owns nothing device-specific and no register decoding (that is `mmio.rs`).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

/// Device types (virtio 1.2 section 5, "Device Types").
pub const TYPE_BLOCK: u32 = 2;
pub const TYPE_RNG: u32 = 4;
pub const TYPE_VSOCK: u32 = 19;

/// Reserved feature bits (virtio 1.2 section 6).
pub const VIRTIO_F_RING_INDIRECT_DESC: u32 = 28;
pub const VIRTIO_F_VERSION_1: u32 = 32;

/// Interrupt status bits (virtio 1.2 section 4.2.2, InterruptStatus register).
pub const INT_USED_RING: u32 = 1;
pub const INT_CONFIG_CHANGE: u32 = 2;

/// Errors a device reports when the transport hands it its queues.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("device needs {expected} queues, got {got}")]
    QueueCount { expected: usize, got: usize },
    #[error("queue {0} is not ready")]
    QueueNotReady(usize),
}

/// A virtio device behind a transport: identity, features, config space and queues.
///
/// The transport calls these from the vCPU thread; the device's event handler runs on
/// the event-loop thread. Both hold the device behind one mutex.
pub trait VirtioDevice: Send {
    /// The virtio device type (section 5).
    fn device_type(&self) -> u32;
    /// Every feature bit the device offers, VIRTIO_F_VERSION_1 included.
    fn avail_features(&self) -> u64;
    /// Maximum size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Reads the device-specific configuration space at `offset`.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device-specific configuration space at `offset`.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Starts the device after DRIVER_OK with the negotiated features and its queues.
    fn activate(&mut self, queues: Vec<Queue>, acked_features: u64) -> Result<(), DeviceError>;
    /// Returns the device to its state before activation (status 0 written).
    fn reset(&mut self);
    /// The queues `activate` took, in order (empty while inactive): their ring
    /// positions are device state a snapshot must carry.
    fn queues(&self) -> &[Queue];
}

/// Copies the slice of `config` at `offset` into `data`; bytes past the end read as 0.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if start >= config.len() {
        return;
    }
    let end = config.len().min(start.saturating_add(data.len()));
    data[..end - start].copy_from_slice(&config[start..end]);
}

/// The device's interrupt line: the InterruptStatus bits, the config generation and
/// the eventfd the VMM wires to KVM_IRQFD.
#[derive(Debug)]
pub struct IrqTrigger {
    status: AtomicU32,
    config_generation: AtomicU32,
    evt: EventFd,
}

impl IrqTrigger {
    pub fn new(evt: EventFd) -> Self {
        Self {
            status: AtomicU32::new(0),
            config_generation: AtomicU32::new(0),
            evt,
        }
    }

    /// Sets `bits` in InterruptStatus and signals the interrupt line.
    pub fn trigger(&self, bits: u32) {
        self.status.fetch_or(bits, Ordering::SeqCst);
        if let Err(e) = self.evt.write(1) {
            log::error!("virtio: cannot signal interrupt: {e}");
        }
    }

    /// The device put buffers in a used ring.
    pub fn used_ring(&self) {
        self.trigger(INT_USED_RING);
    }

    /// The configuration space changed: bump the generation, then interrupt.
    pub fn config_changed(&self) {
        self.config_generation.fetch_add(1, Ordering::SeqCst);
        self.trigger(INT_CONFIG_CHANGE);
    }

    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// InterruptACK: the driver handled `bits`.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    pub fn config_generation(&self) -> u32 {
        self.config_generation.load(Ordering::SeqCst)
    }

    /// Puts back InterruptStatus and the config generation captured in a snapshot,
    /// and raises the line again if an interrupt was pending, so that a restored
    /// guest does not wait forever for one it had not taken yet (KVM injects an
    /// already-signalled eventfd when the irqfd is registered).
    pub fn restore(&self, status: u32, config_generation: u32) {
        self.config_generation
            .store(config_generation, Ordering::SeqCst);
        self.status.store(0, Ordering::SeqCst);
        if status != 0 {
            self.trigger(status);
        }
    }

    /// Forgets pending interrupts (device reset). The generation keeps counting.
    pub fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
    }
}

/// When the guest driver last wrote DRIVER_OK to the device status (None after reset).
#[derive(Clone, Debug, Default)]
pub struct DriverOk(Arc<Mutex<Option<Instant>>>);

impl DriverOk {
    pub fn at(&self) -> Option<Instant> {
        *self.0.lock().expect("driver-ok poisoned")
    }

    pub(crate) fn set(&self, at: Option<Instant>) {
        *self.0.lock().expect("driver-ok poisoned") = at;
    }
}

/// Checks the queue count and readiness a device needs before activation.
pub fn check_queues(queues: &[Queue], expected: usize) -> Result<(), DeviceError> {
    use virtio_queue::QueueT;
    if queues.len() != expected {
        return Err(DeviceError::QueueCount {
            expected,
            got: queues.len(),
        });
    }
    match queues.iter().position(|q| !q.ready()) {
        Some(i) => Err(DeviceError::QueueNotReady(i)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_bytes_are_bounded() {
        let cfg = [1u8, 2, 3, 4];
        let mut b = [0xffu8; 4];
        read_config_bytes(&cfg, 2, &mut b);
        assert_eq!(b, [3, 4, 0, 0]);
        read_config_bytes(&cfg, 9, &mut b);
        assert_eq!(b, [0; 4]);
        read_config_bytes(&cfg, u64::MAX, &mut b);
        assert_eq!(b, [0; 4]);
    }

    #[test]
    fn irq_status_ack_and_generation() {
        let evt = EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap();
        let irq = IrqTrigger::new(evt.try_clone().unwrap());
        irq.used_ring();
        irq.config_changed();
        assert_eq!(irq.status(), INT_USED_RING | INT_CONFIG_CHANGE);
        assert_eq!(irq.config_generation(), 1);
        assert_eq!(evt.read().unwrap(), 2);
        irq.ack(INT_USED_RING);
        assert_eq!(irq.status(), INT_CONFIG_CHANGE);
        irq.clear();
        assert_eq!(irq.status(), 0);
    }

    #[test]
    fn irq_restore_sets_state_and_resignals_a_pending_interrupt() {
        let evt = EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap();
        let irq = IrqTrigger::new(evt.try_clone().unwrap());
        irq.restore(0, 7);
        assert_eq!((irq.status(), irq.config_generation()), (0, 7));
        assert!(evt.read().is_err(), "nothing pending, nothing signalled");
        irq.restore(INT_CONFIG_CHANGE, 9);
        assert_eq!(
            (irq.status(), irq.config_generation()),
            (INT_CONFIG_CHANGE, 9)
        );
        assert_eq!(evt.read().unwrap(), 1);
    }
}
