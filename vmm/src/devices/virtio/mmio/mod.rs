//! The virtio-mmio transport, version 2 ("modern") only: register decoding, feature
//! negotiation, queue setup, device status and activation (virtio 1.2 section 4.2.2).
//!
//! Owns the register state the driver writes. It does not process queues: on
//! DRIVER_OK it builds `virtio_queue::Queue`s and hands them to the device.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::device::{DriverOk, IrqTrigger, VirtioDevice, INT_CONFIG_CHANGE, VIRTIO_F_VERSION_1};
use crate::bus::BusDevice;

// Register offsets, virtio 1.2 section 4.2.2 "MMIO Device Register Layout".
const MAGIC_VALUE: u64 = 0x000;
const VERSION: u64 = 0x004;
const DEVICE_ID: u64 = 0x008;
const VENDOR_ID: u64 = 0x00c;
const DEVICE_FEATURES: u64 = 0x010;
const DEVICE_FEATURES_SEL: u64 = 0x014;
const DRIVER_FEATURES: u64 = 0x020;
const DRIVER_FEATURES_SEL: u64 = 0x024;
const QUEUE_SEL: u64 = 0x030;
const QUEUE_NUM_MAX: u64 = 0x034;
const QUEUE_NUM: u64 = 0x038;
const QUEUE_READY: u64 = 0x044;
/// QueueNotify; the VMM also puts the queue ioeventfds here.
pub const QUEUE_NOTIFY: u64 = 0x050;
const INTERRUPT_STATUS: u64 = 0x060;
const INTERRUPT_ACK: u64 = 0x064;
const STATUS: u64 = 0x070;
const QUEUE_DESC_LOW: u64 = 0x080;
const QUEUE_DESC_HIGH: u64 = 0x084;
const QUEUE_DRIVER_LOW: u64 = 0x090;
const QUEUE_DRIVER_HIGH: u64 = 0x094;
const QUEUE_DEVICE_LOW: u64 = 0x0a0;
const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
const SHM_LEN_LOW: u64 = 0x0b0;
const SHM_BASE_HIGH: u64 = 0x0bc;
const CONFIG_GENERATION: u64 = 0x0fc;
const CONFIG_SPACE: u64 = 0x100;

/// "virt" in little endian (4.2.2).
const MMIO_MAGIC: u32 = 0x7472_6976;
const MMIO_VERSION: u32 = 2;
/// Vendor ID "SPOR"; the spec leaves it to the device.
const VENDOR: u32 = 0x524f_5053;

// Device status bits, virtio 1.2 section 2.1 "Device Status Field".
pub const STATUS_ACKNOWLEDGE: u32 = 1;
pub const STATUS_DRIVER: u32 = 2;
pub const STATUS_DRIVER_OK: u32 = 4;
pub const STATUS_FEATURES_OK: u32 = 8;
pub const STATUS_DEVICE_NEEDS_RESET: u32 = 0x40;
pub const STATUS_FAILED: u32 = 0x80;

/// What the driver wrote about one queue; a `Queue` is built from it at DRIVER_OK.
#[derive(Clone, Copy, Debug, Default)]
struct QueueConfig {
    max_size: u16,
    size: u16,
    ready: bool,
    desc: u64,
    driver: u64,
    device: u64,
}

impl QueueConfig {
    fn build(&self, mem: &GuestMemoryMmap) -> Option<Queue> {
        let mut q = Queue::new(self.max_size).ok()?;
        if self.ready {
            q.try_set_size(self.size).ok()?;
            q.try_set_desc_table_address(GuestAddress(self.desc)).ok()?;
            q.try_set_avail_ring_address(GuestAddress(self.driver))
                .ok()?;
            q.try_set_used_ring_address(GuestAddress(self.device))
                .ok()?;
            q.set_ready(true);
            if !q.is_valid(mem) {
                return None;
            }
        }
        Some(q)
    }
}

/// One virtio-mmio register window in front of one device.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: GuestMemoryMmap,
    irq: Arc<IrqTrigger>,
    queue_evts: Vec<EventFd>,
    driver_ok: DriverOk,
    device_features_sel: u32,
    driver_features_sel: u32,
    acked_features: u64,
    queue_sel: u32,
    queues: Vec<QueueConfig>,
    status: u32,
}

impl MmioTransport {
    /// `queue_evts` are signalled on a QueueNotify write (one per device queue).
    pub fn new(
        device: Arc<Mutex<dyn VirtioDevice>>,
        mem: GuestMemoryMmap,
        irq: Arc<IrqTrigger>,
        queue_evts: Vec<EventFd>,
        driver_ok: DriverOk,
    ) -> Self {
        let queues = lock(&device)
            .queue_max_sizes()
            .iter()
            .map(|&max_size| QueueConfig {
                max_size,
                size: max_size,
                ..Default::default()
            })
            .collect();
        Self {
            device,
            mem,
            irq,
            queue_evts,
            driver_ok,
            device_features_sel: 0,
            driver_features_sel: 0,
            acked_features: 0,
            queue_sel: 0,
            queues,
            status: 0,
        }
    }

    /// The device status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// The features the driver acknowledged.
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    fn selected_queue(&mut self) -> Option<&mut QueueConfig> {
        // Queues are configured after FEATURES_OK and frozen at DRIVER_OK (3.1.1).
        let configurable =
            self.status & STATUS_FEATURES_OK != 0 && self.status & STATUS_DRIVER_OK == 0;
        let q = self.queues.get_mut(self.queue_sel as usize)?;
        // QueueNum and the addresses must not change while QueueReady is 1 (4.2.2.2).
        (configurable && !q.ready).then_some(q)
    }

    fn read_reg(&self, offset: u64) -> u32 {
        let q = self.queues.get(self.queue_sel as usize);
        match offset {
            MAGIC_VALUE => MMIO_MAGIC,
            VERSION => MMIO_VERSION,
            DEVICE_ID => lock(&self.device).device_type(),
            VENDOR_ID => VENDOR,
            DEVICE_FEATURES => match self.device_features_sel {
                0 => lock(&self.device).avail_features() as u32,
                1 => (lock(&self.device).avail_features() >> 32) as u32,
                _ => 0,
            },
            QUEUE_NUM_MAX => q.map_or(0, |q| u32::from(q.max_size)),
            QUEUE_READY => q.map_or(0, |q| u32::from(q.ready)),
            INTERRUPT_STATUS => self.irq.status(),
            STATUS => self.status,
            QUEUE_DESC_LOW => q.map_or(0, |q| q.desc as u32),
            QUEUE_DESC_HIGH => q.map_or(0, |q| (q.desc >> 32) as u32),
            QUEUE_DRIVER_LOW => q.map_or(0, |q| q.driver as u32),
            QUEUE_DRIVER_HIGH => q.map_or(0, |q| (q.driver >> 32) as u32),
            QUEUE_DEVICE_LOW => q.map_or(0, |q| q.device as u32),
            QUEUE_DEVICE_HIGH => q.map_or(0, |q| (q.device >> 32) as u32),
            // No shared memory regions: length and base read as all ones (4.2.2).
            SHM_LEN_LOW..=SHM_BASE_HIGH => u32::MAX,
            CONFIG_GENERATION => self.irq.config_generation(),
            _ => {
                log::debug!("virtio-mmio: read of unknown register {offset:#x}");
                0
            }
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        match offset {
            DEVICE_FEATURES_SEL => self.device_features_sel = v,
            DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            DRIVER_FEATURES => self.write_driver_features(v),
            QUEUE_SEL => self.queue_sel = v,
            QUEUE_NUM => {
                if let Some(q) = self.selected_queue() {
                    q.size = v.try_into().unwrap_or(0);
                }
            }
            QUEUE_READY => {
                if let Some(q) = self.queues.get_mut(self.queue_sel as usize) {
                    if self.status & STATUS_FEATURES_OK != 0 && self.status & STATUS_DRIVER_OK == 0
                    {
                        q.ready = v == 1;
                    }
                }
            }
            QUEUE_DESC_LOW => self.set_queue_addr(|q| &mut q.desc, v, false),
            QUEUE_DESC_HIGH => self.set_queue_addr(|q| &mut q.desc, v, true),
            QUEUE_DRIVER_LOW => self.set_queue_addr(|q| &mut q.driver, v, false),
            QUEUE_DRIVER_HIGH => self.set_queue_addr(|q| &mut q.driver, v, true),
            QUEUE_DEVICE_LOW => self.set_queue_addr(|q| &mut q.device, v, false),
            QUEUE_DEVICE_HIGH => self.set_queue_addr(|q| &mut q.device, v, true),
            QUEUE_NOTIFY => self.notify(v),
            INTERRUPT_ACK => self.irq.ack(v),
            STATUS => self.write_status(v),
            _ => log::debug!("virtio-mmio: write of {v:#x} to register {offset:#x} ignored"),
        }
    }

    fn set_queue_addr(&mut self, field: fn(&mut QueueConfig) -> &mut u64, v: u32, high: bool) {
        if let Some(q) = self.selected_queue() {
            let a = field(q);
            *a = if high {
                (*a & 0xffff_ffff) | (u64::from(v) << 32)
            } else {
                (*a & !0xffff_ffff) | u64::from(v)
            };
        }
    }

    fn write_driver_features(&mut self, v: u32) {
        // Features are negotiated between DRIVER and FEATURES_OK (3.1.1 steps 3-5).
        if self.status & STATUS_DRIVER == 0 || self.status & STATUS_FEATURES_OK != 0 {
            log::warn!(
                "virtio-mmio: DriverFeatures written in status {:#x}",
                self.status
            );
            return;
        }
        let shift = match self.driver_features_sel {
            0 => 0,
            1 => 32,
            _ => return,
        };
        self.acked_features =
            (self.acked_features & !(0xffff_ffffu64 << shift)) | (u64::from(v) << shift);
    }

    fn notify(&self, index: u32) {
        match self.queue_evts.get(index as usize) {
            Some(evt) => {
                if let Err(e) = evt.write(1) {
                    log::error!("virtio-mmio: cannot signal queue {index}: {e}");
                }
            }
            None => log::warn!("virtio-mmio: notify for missing queue {index}"),
        }
    }

    fn write_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        let added = v & !old;
        // The driver only ever adds bits, in the order of 3.1.1; FAILED may come anytime.
        let in_order = v & old == old
            && (v & STATUS_DRIVER == 0 || v & STATUS_ACKNOWLEDGE != 0)
            && (v & STATUS_FEATURES_OK == 0 || v & STATUS_DRIVER != 0)
            && (v & STATUS_DRIVER_OK == 0 || v & STATUS_FEATURES_OK != 0);
        if !in_order {
            log::warn!("virtio-mmio: status {old:#x} -> {v:#x} ignored");
            return;
        }
        let mut new = v;
        if added & STATUS_FEATURES_OK != 0 && !self.features_acceptable() {
            // Leaving FEATURES_OK clear tells the driver we refuse its features (3.1.1).
            new &= !STATUS_FEATURES_OK;
        }
        self.status = new;
        if added & STATUS_DRIVER_OK != 0 && new & STATUS_FAILED == 0 {
            self.activate();
        }
    }

    fn features_acceptable(&self) -> bool {
        let avail = lock(&self.device).avail_features();
        self.acked_features & !avail == 0 && self.acked_features & (1 << VIRTIO_F_VERSION_1) != 0
    }

    fn activate(&mut self) {
        let queues: Option<Vec<Queue>> = self.queues.iter().map(|q| q.build(&self.mem)).collect();
        let result = match queues {
            Some(queues) => lock(&self.device)
                .activate(queues, self.acked_features)
                .map_err(|e| e.to_string()),
            None => Err("a ready queue is malformed or outside guest memory".to_string()),
        };
        match result {
            Ok(()) => self.driver_ok.set(Some(Instant::now())),
            Err(e) => {
                log::error!("virtio-mmio: activation failed: {e}");
                // 2.1.2: set DEVICE_NEEDS_RESET and tell a running driver about it.
                self.status |= STATUS_DEVICE_NEEDS_RESET;
                self.irq.trigger(INT_CONFIG_CHANGE);
            }
        }
    }

    fn reset(&mut self) {
        if self.status & STATUS_DRIVER_OK != 0 {
            lock(&self.device).reset();
        }
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.acked_features = 0;
        self.queue_sel = 0;
        for q in &mut self.queues {
            *q = QueueConfig {
                max_size: q.max_size,
                size: q.max_size,
                ..Default::default()
            };
        }
        self.irq.clear();
        self.driver_ok.set(None);
    }
}

fn lock(
    device: &Arc<Mutex<dyn VirtioDevice>>,
) -> std::sync::MutexGuard<'_, dyn VirtioDevice + 'static> {
    device.lock().expect("virtio device poisoned")
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE {
            lock(&self.device).read_config(offset - CONFIG_SPACE, data);
            return;
        }
        // Control registers are 32 bits wide and aligned (4.2.2.2).
        if data.len() != 4 || offset % 4 != 0 {
            log::warn!("virtio-mmio: {}-byte read at {offset:#x}", data.len());
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE {
            lock(&self.device).write_config(offset - CONFIG_SPACE, data);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            log::warn!("virtio-mmio: {}-byte write at {offset:#x}", data.len());
            return;
        };
        if offset % 4 != 0 {
            return;
        }
        self.write_reg(offset, u32::from_le_bytes(bytes));
    }
}

mod persist;

pub use persist::{MmioPersistError, MmioTransportState, QueueState};

#[cfg(test)]
mod tests;
