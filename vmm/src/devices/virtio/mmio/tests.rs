//! virtio-mmio transport tests: register decoding, negotiation, activation, reset.
use super::*;
use crate::devices::virtio::device::DeviceError;
use crate::devices::virtio::test_utils::*;
use vmm_sys_util::eventfd::EFD_NONBLOCK;

#[derive(Default)]
struct Dummy {
    activated: Option<(usize, u64)>,
    queues: Vec<Queue>,
    resets: u32,
    config: [u8; 8],
}

impl VirtioDevice for Dummy {
    fn device_type(&self) -> u32 {
        4
    }
    fn avail_features(&self) -> u64 {
        VERSION_1 | 1 << 3
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16, 8]
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::super::device::read_config_bytes(&self.config, offset, data);
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.config[offset as usize..offset as usize + data.len()].copy_from_slice(data);
    }
    fn activate(&mut self, queues: Vec<Queue>, acked: u64) -> Result<(), DeviceError> {
        super::super::device::check_queues(&queues, 2)?;
        self.activated = Some((queues.len(), acked));
        self.queues = queues;
        Ok(())
    }
    fn reset(&mut self) {
        self.activated = None;
        self.queues.clear();
        self.resets += 1;
    }
    fn queues(&self) -> &[Queue] {
        &self.queues
    }
}

struct Fixture {
    dev: Arc<Mutex<Dummy>>,
    t: MmioTransport,
    evts: Vec<EventFd>,
    irq: Arc<IrqTrigger>,
    irq_evt: EventFd,
    driver_ok: DriverOk,
    mem: GuestMemoryMmap,
}

fn fixture() -> Fixture {
    let mem = guest_memory();
    let dev = Arc::new(Mutex::new(Dummy::default()));
    let evts: Vec<EventFd> = (0..2)
        .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
        .collect();
    let irq_evt = EventFd::new(EFD_NONBLOCK).unwrap();
    let irq = Arc::new(IrqTrigger::new(irq_evt.try_clone().unwrap()));
    let driver_ok = DriverOk::default();
    let t = MmioTransport::new(
        dev.clone(),
        mem.clone(),
        irq.clone(),
        evts.iter().map(|e| e.try_clone().unwrap()).collect(),
        driver_ok.clone(),
    );
    Fixture {
        dev,
        t,
        evts,
        irq,
        irq_evt,
        driver_ok,
        mem,
    }
}

#[test]
fn identity_registers() {
    let mut f = fixture();
    assert_eq!(read_reg(&mut f.t, 0x0), 0x7472_6976);
    assert_eq!(read_reg(&mut f.t, 0x4), 2);
    assert_eq!(read_reg(&mut f.t, 0x8), 4);
    assert_eq!(read_reg(&mut f.t, 0xc), VENDOR);
    write_reg(&mut f.t, 0x14, 0);
    assert_eq!(read_reg(&mut f.t, 0x10), 1 << 3);
    write_reg(&mut f.t, 0x14, 1);
    assert_eq!(read_reg(&mut f.t, 0x10), 1);
    write_reg(&mut f.t, 0x14, 2);
    assert_eq!(read_reg(&mut f.t, 0x10), 0);
    write_reg(&mut f.t, 0x30, 1);
    assert_eq!(read_reg(&mut f.t, 0x34), 8);
    write_reg(&mut f.t, 0x30, 2);
    assert_eq!(read_reg(&mut f.t, 0x34), 0);
    assert_eq!(read_reg(&mut f.t, 0xb0), u32::MAX);
}

#[test]
fn unaligned_and_narrow_register_access_is_ignored() {
    let mut f = fixture();
    let mut b = [0xffu8; 2];
    f.t.read(0x0, &mut b);
    assert_eq!(b, [0, 0]);
    let mut b = [0xffu8; 4];
    f.t.read(0x2, &mut b);
    assert_eq!(b, [0; 4]);
    f.t.write(0x70, &[1]);
    assert_eq!(read_reg(&mut f.t, 0x70), 0);
}

#[test]
fn config_space_reads_and_writes_any_width() {
    let mut f = fixture();
    f.t.write(0x102, &[7, 8]);
    let mut b = [0u8; 1];
    f.t.read(0x103, &mut b);
    assert_eq!(b, [8]);
    assert_eq!(f.dev.lock().unwrap().config[2], 7);
}

#[test]
fn negotiation_and_activation() {
    let mut f = fixture();
    let q0 = TestQueue::new(&f.mem, 0x10000, 16);
    let q1 = TestQueue::new(&f.mem, 0x20000, 8);
    assert!(f.driver_ok.at().is_none());
    drive_to_driver_ok(&mut f.t, VERSION_1 | 1 << 3, &[&q0, &q1]);
    assert_eq!(f.t.status() & STATUS_DRIVER_OK, STATUS_DRIVER_OK);
    assert_eq!(
        f.dev.lock().unwrap().activated,
        Some((2, VERSION_1 | 1 << 3))
    );
    assert!(f.driver_ok.at().is_some());
    // Queue registers read back and are frozen after DRIVER_OK.
    write_reg(&mut f.t, 0x30, 0);
    assert_eq!(read_reg(&mut f.t, 0x44), 1);
    assert_eq!(read_reg(&mut f.t, 0x80), 0x10000);
    write_reg(&mut f.t, 0x80, 0x5000);
    assert_eq!(read_reg(&mut f.t, 0x80), 0x10000);
}

#[test]
fn features_without_version_1_or_unoffered_are_refused() {
    for acked in [1u64 << 3, VERSION_1 | 1 << 5] {
        let mut f = fixture();
        write_reg(&mut f.t, 0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        write_reg(&mut f.t, 0x70, STATUS_ACKNOWLEDGE);
        // Clearing a bit is not allowed; status stays where it was.
        assert_eq!(read_reg(&mut f.t, 0x70), STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        write_reg(&mut f.t, 0x24, 0);
        write_reg(&mut f.t, 0x20, acked as u32);
        write_reg(&mut f.t, 0x24, 1);
        write_reg(&mut f.t, 0x20, (acked >> 32) as u32);
        write_reg(
            &mut f.t,
            0x70,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        assert_eq!(read_reg(&mut f.t, 0x70) & STATUS_FEATURES_OK, 0);
    }
}

#[test]
fn status_out_of_order_is_ignored() {
    let mut f = fixture();
    write_reg(&mut f.t, 0x70, STATUS_DRIVER);
    assert_eq!(read_reg(&mut f.t, 0x70), 0);
    write_reg(
        &mut f.t,
        0x70,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DRIVER_OK,
    );
    assert_eq!(read_reg(&mut f.t, 0x70), 0);
    assert!(f.dev.lock().unwrap().activated.is_none());
}

#[test]
fn bad_queue_sets_needs_reset() {
    let mut f = fixture();
    let q0 = TestQueue::new(&f.mem, 0x10000, 16);
    let mut q1 = TestQueue::new(&f.mem, 0x20000, 8);
    q1.used = MEM_SIZE as u64 + 0x1000;
    drive_to_driver_ok(&mut f.t, VERSION_1, &[&q0, &q1]);
    assert_ne!(f.t.status() & STATUS_DEVICE_NEEDS_RESET, 0);
    assert_eq!(f.irq.status(), INT_CONFIG_CHANGE);
    assert!(f.dev.lock().unwrap().activated.is_none());
    assert!(f.driver_ok.at().is_none());
}

#[test]
fn reset_clears_everything() {
    let mut f = fixture();
    let q0 = TestQueue::new(&f.mem, 0x10000, 16);
    let q1 = TestQueue::new(&f.mem, 0x20000, 8);
    drive_to_driver_ok(&mut f.t, VERSION_1, &[&q0, &q1]);
    f.irq.used_ring();
    write_reg(&mut f.t, 0x70, 0);
    assert_eq!(read_reg(&mut f.t, 0x70), 0);
    assert_eq!(read_reg(&mut f.t, 0x60), 0);
    assert_eq!(f.t.acked_features(), 0);
    assert_eq!(f.dev.lock().unwrap().resets, 1);
    assert!(f.dev.lock().unwrap().activated.is_none());
    assert!(f.driver_ok.at().is_none());
    write_reg(&mut f.t, 0x30, 0);
    assert_eq!(read_reg(&mut f.t, 0x44), 0);
    assert_eq!(read_reg(&mut f.t, 0x80), 0);
    // And it can be brought up again.
    drive_to_driver_ok(&mut f.t, VERSION_1, &[&q0, &q1]);
    assert!(f.dev.lock().unwrap().activated.is_some());
}

#[test]
fn interrupt_status_and_ack() {
    let mut f = fixture();
    f.irq.used_ring();
    f.irq.config_changed();
    assert_eq!(f.irq_evt.read().unwrap(), 2);
    assert_eq!(read_reg(&mut f.t, 0x60), 3);
    assert_eq!(read_reg(&mut f.t, 0xfc), 1);
    write_reg(&mut f.t, 0x64, 1);
    assert_eq!(read_reg(&mut f.t, 0x60), 2);
}

#[test]
fn queue_notify_signals_the_queue_event() {
    let mut f = fixture();
    write_reg(&mut f.t, 0x50, 1);
    assert!(f.evts[0].read().is_err());
    assert_eq!(f.evts[1].read().unwrap(), 1);
    write_reg(&mut f.t, 0x50, 7);
}
