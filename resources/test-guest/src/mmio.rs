//! The virtio-mmio transport (virtio 1.2, section 4.2.2 registers, 4.2.3 driver
//! initialisation): finding devices, the status handshake, feature negotiation and
//! handing queue addresses to the device.
//!
//! Owns register access only; the ring memory itself lives in `virtq`.

use core::ptr::{read_volatile, write_volatile};

use crate::virtq::Virtq;

/// First virtio-mmio window, the window size and the number of windows
/// (vmm/src/layout.rs).
#[cfg(not(feature = "qemu"))]
const MMIO_WINDOWS: (usize, usize, usize) = (0xd000_0000, 0x1000, 16);
/// QEMU's microvm puts 24 windows of 512 bytes at 0xfeb0_0000.
#[cfg(feature = "qemu")]
const MMIO_WINDOWS: (usize, usize, usize) = (0xfeb0_0000, 0x200, 24);
const MMIO_BASE: usize = MMIO_WINDOWS.0;
const MMIO_STRIDE: usize = MMIO_WINDOWS.1;
const MMIO_SLOTS: usize = MMIO_WINDOWS.2;

/// "virt" in little endian.
const MAGIC: u32 = 0x7472_6976;

// Register offsets, virtio 1.2 section 4.2.2.
const REG_MAGIC: usize = 0x000;
const REG_VERSION: usize = 0x004;
const REG_DEVICE_ID: usize = 0x008;
const REG_DEVICE_FEATURES: usize = 0x010;
const REG_DEVICE_FEATURES_SEL: usize = 0x014;
const REG_DRIVER_FEATURES: usize = 0x020;
const REG_DRIVER_FEATURES_SEL: usize = 0x024;
const REG_QUEUE_SEL: usize = 0x030;
const REG_QUEUE_NUM_MAX: usize = 0x034;
const REG_QUEUE_NUM: usize = 0x038;
const REG_QUEUE_READY: usize = 0x044;
const REG_QUEUE_NOTIFY: usize = 0x050;
const REG_INTERRUPT_STATUS: usize = 0x060;
const REG_INTERRUPT_ACK: usize = 0x064;
const REG_STATUS: usize = 0x070;
const REG_QUEUE_DESC: usize = 0x080;
const REG_QUEUE_DRIVER: usize = 0x090;
const REG_QUEUE_DEVICE: usize = 0x0a0;
const REG_CONFIG_GENERATION: usize = 0x0fc;
const REG_CONFIG: usize = 0x100;

// Device status bits, virtio 1.2 section 2.1.
const STATUS_ACKNOWLEDGE: u32 = 1;
const STATUS_DRIVER: u32 = 2;
const STATUS_DRIVER_OK: u32 = 4;
const STATUS_FEATURES_OK: u32 = 8;
const STATUS_FAILED: u32 = 128;

/// VIRTIO_F_VERSION_1: the only transport feature this driver accepts.
pub const F_VERSION_1: u64 = 1 << 32;

// Device IDs, virtio 1.2 section 5.
pub const ID_BLOCK: u32 = 2;
pub const ID_RNG: u32 = 4;
pub const ID_VSOCK: u32 = 19;

/// One virtio-mmio device window.
#[derive(Clone, Copy)]
pub struct Device {
    base: usize,
}

impl Device {
    fn read(self, offset: usize) -> u32 {
        // SAFETY: `base` is a virtio-mmio window inside the identity-mapped MMIO
        // hole and `offset` one of its 32-bit registers; reads have no memory effects.
        unsafe { read_volatile((self.base + offset) as *const u32) }
    }

    fn write(self, offset: usize, value: u32) {
        // SAFETY: as in `read`; writing a register only changes device state.
        unsafe { write_volatile((self.base + offset) as *mut u32, value) }
    }

    /// Finds the first virtio 1.x (version 2) device with `device_id`.
    pub fn find(device_id: u32) -> Option<Device> {
        (0..MMIO_SLOTS)
            .map(|i| Device {
                base: MMIO_BASE + i * MMIO_STRIDE,
            })
            .find(|d| {
                d.read(REG_MAGIC) == MAGIC
                    && d.read(REG_VERSION) == 2
                    && d.read(REG_DEVICE_ID) == device_id
            })
    }

    /// Steps 1–6 of the initialisation sequence (section 3.1.1): reset, ACKNOWLEDGE,
    /// DRIVER, negotiate `wanted` ∩ offered (VERSION_1 is required), FEATURES_OK.
    /// Returns the negotiated features.
    pub fn begin_init(self, wanted: u64) -> Result<u64, &'static str> {
        self.write(REG_STATUS, 0);
        if !self.wait_status_zero() {
            return Err("reset");
        }
        self.write(REG_STATUS, STATUS_ACKNOWLEDGE);
        self.write(REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        let offered = self.device_features();
        if offered & F_VERSION_1 == 0 {
            self.fail();
            return Err("no VERSION_1");
        }
        let accepted = offered & (wanted | F_VERSION_1);
        self.write(REG_DRIVER_FEATURES_SEL, 0);
        self.write(REG_DRIVER_FEATURES, accepted as u32);
        self.write(REG_DRIVER_FEATURES_SEL, 1);
        self.write(REG_DRIVER_FEATURES, (accepted >> 32) as u32);
        let status = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        self.write(REG_STATUS, status);
        if self.read(REG_STATUS) & STATUS_FEATURES_OK == 0 {
            self.fail();
            return Err("FEATURES_OK refused");
        }
        Ok(accepted)
    }

    /// Step 8: the driver is ready; the device may now use the queues.
    pub fn driver_ok(self) {
        let status = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;
        self.write(REG_STATUS, status);
    }

    /// Tells the device the initialisation failed (and stops it using anything).
    pub fn fail(self) {
        self.write(REG_STATUS, self.read(REG_STATUS) | STATUS_FAILED);
    }

    /// Resets the device, so it stops touching guest memory.
    pub fn reset(self) {
        self.write(REG_STATUS, 0);
        self.wait_status_zero();
    }

    fn wait_status_zero(self) -> bool {
        (0..100_000).any(|_| self.read(REG_STATUS) == 0)
    }

    fn device_features(self) -> u64 {
        self.write(REG_DEVICE_FEATURES_SEL, 0);
        let lo = self.read(REG_DEVICE_FEATURES);
        self.write(REG_DEVICE_FEATURES_SEL, 1);
        let hi = self.read(REG_DEVICE_FEATURES);
        (u64::from(hi) << 32) | u64::from(lo)
    }

    /// Step 7 for one queue (section 4.2.3.2): size, ring addresses, QueueReady.
    pub fn setup_queue(self, index: u32, q: &Virtq) -> Result<(), &'static str> {
        self.write(REG_QUEUE_SEL, index);
        if self.read(REG_QUEUE_READY) != 0 {
            return Err("queue already live");
        }
        let max = self.read(REG_QUEUE_NUM_MAX);
        if max == 0 || max < u32::from(q.size()) {
            return Err("queue too small");
        }
        self.write(REG_QUEUE_NUM, u32::from(q.size()));
        let (desc, driver, device) = q.addresses();
        self.write64(REG_QUEUE_DESC, desc);
        self.write64(REG_QUEUE_DRIVER, driver);
        self.write64(REG_QUEUE_DEVICE, device);
        self.write(REG_QUEUE_READY, 1);
        Ok(())
    }

    fn write64(self, offset: usize, value: u64) {
        self.write(offset, value as u32);
        self.write(offset + 4, (value >> 32) as u32);
    }

    /// Tells the device queue `index` has new buffers.
    pub fn notify(self, index: u32) {
        self.write(REG_QUEUE_NOTIFY, index);
    }

    /// Acknowledges any pending interrupt; this driver polls, but a device may
    /// hold an edge until it is acknowledged.
    pub fn ack_interrupts(self) {
        let pending = self.read(REG_INTERRUPT_STATUS);
        if pending != 0 {
            self.write(REG_INTERRUPT_ACK, pending);
        }
    }

    /// Reads a 32-bit word of device-specific configuration.
    pub fn config32(self, offset: usize) -> u32 {
        self.read(REG_CONFIG + offset)
    }

    /// Reads a 64-bit configuration field consistently (section 4.2.2.2: retry
    /// while ConfigGeneration changes).
    pub fn config64(self, offset: usize) -> u64 {
        let mut value = 0;
        for _ in 0..100 {
            let generation = self.read(REG_CONFIG_GENERATION);
            let lo = self.config32(offset);
            let hi = self.config32(offset + 4);
            value = (u64::from(hi) << 32) | u64::from(lo);
            if self.read(REG_CONFIG_GENERATION) == generation {
                break;
            }
        }
        value
    }
}
