//! Snapshot state of a virtio-mmio transport: the registers the driver wrote, each
//! queue's configuration and ring positions, and the interrupt line's state.
//!
//! Owns capture and restore of the transport only; what is behind it (a disk path,
//! a vsock CID) is each device's `persist.rs`. Restoring a transport whose driver
//! had set DRIVER_OK activates the device with the saved queues, so the guest goes
//! on without negotiating again.

use std::time::Instant;

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueT};

use super::{
    lock, MmioTransport, QueueConfig, STATUS_DEVICE_NEEDS_RESET, STATUS_DRIVER_OK, STATUS_FAILED,
};
use crate::devices::virtio::device::DeviceError;

/// Errors from restoring a transport: the saved state does not fit the device.
#[derive(Debug, thiserror::Error)]
pub enum MmioPersistError {
    #[error("saved state is for virtio device type {saved}, the device is type {actual}")]
    DeviceType { saved: u32, actual: u32 },
    #[error("saved queue sizes {saved:?} do not match the device's {actual:?}")]
    QueueLayout { saved: Vec<u16>, actual: Vec<u16> },
    #[error("saved acked features {acked:#x} are not all offered by the device ({offered:#x})")]
    Features { acked: u64, offered: u64 },
    #[error("saved queue {0} is malformed or outside guest memory")]
    BadQueue(usize),
    #[error("restore needs a freshly created transport; this one has status {0:#x}")]
    NotFresh(u32),
    #[error("activating the restored device failed")]
    Activate(#[source] DeviceError),
}

/// One queue: what the driver configured and where the device was in its rings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueState {
    pub max_size: u16,
    pub size: u16,
    pub ready: bool,
    /// Descriptor table, driver (available) ring and device (used) ring addresses.
    pub desc: u64,
    pub driver: u64,
    pub device: u64,
    /// Next available-ring entry the device will take (0 while inactive).
    pub next_avail: u16,
    /// Next used-ring entry the device will fill (0 while inactive).
    pub next_used: u16,
    pub event_idx: bool,
}

/// The transport's registers and queues (virtio 1.2 section 4.2.2).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmioTransportState {
    pub device_type: u32,
    pub status: u32,
    pub device_features_sel: u32,
    pub driver_features_sel: u32,
    pub acked_features: u64,
    pub queue_sel: u32,
    pub queues: Vec<QueueState>,
    pub interrupt_status: u32,
    pub config_generation: u32,
}

impl MmioTransportState {
    /// Whether a restore activates the device: the driver finished initialization
    /// and the device did not fail it.
    pub fn is_active(&self) -> bool {
        self.status & STATUS_DRIVER_OK != 0
            && self.status & (STATUS_FAILED | STATUS_DEVICE_NEEDS_RESET) == 0
    }
}

impl MmioTransport {
    /// Captures the transport and its device's ring positions. Call it with the
    /// vCPUs and the event loop stopped, so that nothing moves the rings meanwhile.
    pub fn save(&self) -> MmioTransportState {
        let device = lock(&self.device);
        let active = device.queues();
        let queues = self
            .queues
            .iter()
            .enumerate()
            .map(|(i, q)| {
                let live = active.get(i);
                QueueState {
                    max_size: q.max_size,
                    size: q.size,
                    ready: q.ready,
                    desc: q.desc,
                    driver: q.driver,
                    device: q.device,
                    next_avail: live.map_or(0, |l| l.next_avail()),
                    next_used: live.map_or(0, |l| l.next_used()),
                    event_idx: live.is_some_and(|l| l.event_idx_enabled()),
                }
            })
            .collect();
        MmioTransportState {
            device_type: device.device_type(),
            status: self.status,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            acked_features: self.acked_features,
            queue_sel: self.queue_sel,
            queues,
            interrupt_status: self.irq.status(),
            config_generation: self.irq.config_generation(),
        }
    }

    /// Puts `state` into a freshly created transport. If the driver had set
    /// DRIVER_OK, activates the device with the saved queues and ring positions and
    /// signals every queue once, so requests the guest published before the capture
    /// but the device never took are served now.
    pub fn restore(&mut self, state: &MmioTransportState) -> Result<(), MmioPersistError> {
        self.check_fits(state)?;
        self.status = state.status;
        self.device_features_sel = state.device_features_sel;
        self.driver_features_sel = state.driver_features_sel;
        self.acked_features = state.acked_features;
        self.queue_sel = state.queue_sel;
        for (q, s) in self.queues.iter_mut().zip(&state.queues) {
            *q = QueueConfig {
                max_size: s.max_size,
                size: s.size,
                ready: s.ready,
                desc: s.desc,
                driver: s.driver,
                device: s.device,
            };
        }
        if state.is_active() {
            let queues = self.restored_queues(state)?;
            lock(&self.device)
                .activate(queues, self.acked_features)
                .map_err(MmioPersistError::Activate)?;
            self.driver_ok.set(Some(Instant::now()));
            for i in 0..self.queue_evts.len() {
                self.notify(i as u32);
            }
        }
        self.irq
            .restore(state.interrupt_status, state.config_generation);
        Ok(())
    }

    fn check_fits(&self, state: &MmioTransportState) -> Result<(), MmioPersistError> {
        if self.status != 0 {
            return Err(MmioPersistError::NotFresh(self.status));
        }
        let device = lock(&self.device);
        let actual = device.device_type();
        if state.device_type != actual {
            return Err(MmioPersistError::DeviceType {
                saved: state.device_type,
                actual,
            });
        }
        let saved: Vec<u16> = state.queues.iter().map(|q| q.max_size).collect();
        if saved != device.queue_max_sizes() {
            return Err(MmioPersistError::QueueLayout {
                saved,
                actual: device.queue_max_sizes().to_vec(),
            });
        }
        let offered = device.avail_features();
        if state.acked_features & !offered != 0 {
            return Err(MmioPersistError::Features {
                acked: state.acked_features,
                offered,
            });
        }
        Ok(())
    }

    fn restored_queues(&self, state: &MmioTransportState) -> Result<Vec<Queue>, MmioPersistError> {
        self.queues
            .iter()
            .zip(&state.queues)
            .enumerate()
            .map(|(i, (config, s))| {
                let mut q = config
                    .build(&self.mem)
                    .ok_or(MmioPersistError::BadQueue(i))?;
                q.set_next_avail(s.next_avail);
                q.set_next_used(s.next_used);
                q.set_event_idx(s.event_idx);
                Ok(q)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    use super::*;
    use crate::devices::virtio::device::{DriverOk, IrqTrigger, VirtioDevice, INT_USED_RING};
    use crate::devices::virtio::rng::Rng;
    use crate::devices::virtio::test_utils::*;

    struct Fixture {
        t: MmioTransport,
        rng: Arc<Mutex<Rng>>,
        evt: EventFd,
        irq_evt: EventFd,
        driver_ok: DriverOk,
    }

    fn fixture(mem: &vm_memory::GuestMemoryMmap) -> Fixture {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let irq_evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let irq = Arc::new(IrqTrigger::new(irq_evt.try_clone().unwrap()));
        let rng = Arc::new(Mutex::new(Rng::new(mem.clone(), irq.clone(), vec![])));
        let driver_ok = DriverOk::default();
        let t = MmioTransport::new(
            rng.clone(),
            mem.clone(),
            irq,
            vec![evt.try_clone().unwrap()],
            driver_ok.clone(),
        );
        Fixture {
            t,
            rng,
            evt,
            irq_evt,
            driver_ok,
        }
    }

    #[test]
    fn save_reads_registers_and_ring_positions() {
        let mem = guest_memory();
        let mut f = fixture(&mem);
        let fresh = f.t.save();
        assert_eq!(fresh.status, 0);
        assert_eq!(fresh.queues[0].size, 256);
        assert!(!fresh.is_active());
        let mut q = TestQueue::new(&mem, 0x1_0000, 16);
        drive_to_driver_ok(&mut f.t, VERSION_1, &[&q]);
        q.add_chain(&[wo(0x10_0000, 8)]);
        q.add_chain(&[wo(0x10_1000, 8)]);
        f.rng.lock().unwrap().process_queue().unwrap();
        let s = f.t.save();
        assert!(s.is_active());
        assert_eq!(s.device_type, 4);
        assert_eq!(s.acked_features, VERSION_1);
        assert_eq!(s.interrupt_status, INT_USED_RING);
        let q0 = &s.queues[0];
        assert_eq!(
            (q0.size, q0.ready, q0.desc, q0.driver, q0.device),
            (16, true, q.desc, q.avail, q.used)
        );
        assert_eq!((q0.next_avail, q0.next_used), (2, 2));
    }

    #[test]
    fn restore_activates_without_renegotiation_and_continues_the_rings() {
        let mem = guest_memory();
        let mut f = fixture(&mem);
        let mut q = TestQueue::new(&mem, 0x1_0000, 16);
        drive_to_driver_ok(&mut f.t, VERSION_1, &[&q]);
        q.add_chain(&[wo(0x10_0000, 8)]);
        f.rng.lock().unwrap().process_queue().unwrap();
        // Published but never processed before the capture.
        q.add_chain(&[wo(0x10_1000, 16)]);
        let s = f.t.save();

        let mut g = fixture(&mem);
        g.t.restore(&s).unwrap();
        assert_eq!(g.t.save(), s);
        assert!(g.driver_ok.at().is_some());
        assert_eq!(read_reg(&mut g.t, 0x70), s.status);
        assert_eq!(read_reg(&mut g.t, 0x60), INT_USED_RING);
        // The pending interrupt is raised again, and every queue is kicked once.
        assert_eq!(g.irq_evt.read().unwrap(), 1);
        assert_eq!(g.evt.read().unwrap(), 1);
        g.rng.lock().unwrap().process_queue().unwrap();
        assert_eq!(q.used_idx(), 2);
        assert_eq!(q.used_elem(1), (1, 16));
        // The original is untouched by the restore.
        assert!(f.driver_ok.at().is_some());
    }

    #[test]
    fn restore_of_an_unfinished_driver_does_not_activate() {
        let mem = guest_memory();
        let mut f = fixture(&mem);
        write_reg(&mut f.t, 0x70, 1);
        write_reg(&mut f.t, 0x70, 3);
        write_reg(&mut f.t, 0x30, 0);
        let s = f.t.save();
        let mut g = fixture(&mem);
        g.t.restore(&s).unwrap();
        assert_eq!(read_reg(&mut g.t, 0x70), 3);
        assert!(g.driver_ok.at().is_none());
        assert!(
            g.evt.read().is_err(),
            "no queue kick for an inactive device"
        );
        assert!(g.rng.lock().unwrap().queues().is_empty());
    }

    #[test]
    fn restore_refuses_state_of_another_device() {
        let mem = guest_memory();
        let mut f = fixture(&mem);
        let good = f.t.save();
        let mut s = good.clone();
        s.device_type = 2;
        assert!(matches!(
            f.t.restore(&s),
            Err(MmioPersistError::DeviceType {
                saved: 2,
                actual: 4
            })
        ));
        let mut s = good.clone();
        s.queues.push(QueueState::default());
        assert!(matches!(
            f.t.restore(&s),
            Err(MmioPersistError::QueueLayout { .. })
        ));
        let mut s = good.clone();
        s.acked_features = 1 << 40;
        assert!(matches!(
            f.t.restore(&s),
            Err(MmioPersistError::Features { .. })
        ));
    }

    #[test]
    fn restore_refuses_an_active_queue_outside_memory() {
        let mem = guest_memory();
        let mut f = fixture(&mem);
        let q = TestQueue::new(&mem, 0x1_0000, 16);
        drive_to_driver_ok(&mut f.t, VERSION_1, &[&q]);
        let mut s = f.t.save();
        s.queues[0].desc = 1 << 40;
        let mut g = fixture(&mem);
        assert!(matches!(
            g.t.restore(&s),
            Err(MmioPersistError::BadQueue(0))
        ));
    }
}
