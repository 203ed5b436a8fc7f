//! Save/restore round trips through JSON: a driver sets a device up and uses it, the
//! state is captured and restored on a copy of guest memory, and the same driver
//! keeps going in the copy.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::tempfile::TempFile;

use super::*;
use crate::devices::virtio::device::{INT_CONFIG_CHANGE, INT_USED_RING};
use crate::devices::virtio::mmio::STATUS_DRIVER_OK;
use crate::devices::virtio::test_utils::*;
use crate::devices::virtio::{block, rng, vsock};

type Em = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

/// Captures `d`, sends the state through JSON, restores it on a copy of `mem`.
fn round_trip(
    d: &VirtioMmioDevice,
    mem: &GuestMemoryMmap,
    vsock: Option<VsockIdentity>,
) -> (VirtioMmioDevice, GuestMemoryMmap, VirtioDeviceState) {
    let state = d.save();
    let json = serde_json::to_vec(&state).unwrap();
    let back: VirtioDeviceState = serde_json::from_slice(&json).unwrap();
    assert_eq!(back, state);
    let mem2 = copy_memory(mem);
    let restored = restore(&mem2, &back, vsock).unwrap();
    (restored, mem2, state)
}

/// Runs `d`'s subscriber through one event-loop pass.
fn run_events(d: &VirtioMmioDevice) {
    let mut em = Em::new().unwrap();
    em.add_subscriber(d.subscriber.clone());
    em.run_with_timeout(100).unwrap();
}

fn reg(d: &VirtioMmioDevice, offset: u64) -> u32 {
    read_reg(&mut d.transport.lock().unwrap(), offset)
}

#[test]
fn rng_request_after_restore_is_served_in_the_copy_only() {
    let mem = guest_memory();
    let d = rng(&mem).unwrap();
    let mut q = TestQueue::new(&mem, 0x1_0000, 16);
    drive_to_driver_ok(&mut d.transport.lock().unwrap(), VERSION_1, &[&q]);
    q.add_chain(&[wo(0x10_0000, 32)]);
    write_reg(&mut d.transport.lock().unwrap(), 0x50, 0);
    run_events(&d);
    assert_eq!(q.used_idx(), 1);
    write_reg(&mut d.transport.lock().unwrap(), 0x64, INT_USED_RING);

    let (r, mem2, state) = round_trip(&d, &mem, None);
    assert_eq!(state.device, DeviceKindState::Rng(Default::default()));
    assert_eq!(state.transport.queues[0].next_avail, 1);
    assert!(
        r.driver_ok.at().is_some(),
        "restored active without renegotiation"
    );
    assert_eq!(reg(&r, 0x70), state.transport.status);
    let mut q2 = q.moved_to(&mem2);
    q2.add_chain(&[wo(0x10_1000, 32)]);
    write_reg(&mut r.transport.lock().unwrap(), 0x50, 0);
    run_events(&r);
    assert_eq!(q2.used_idx(), 2, "the used ring continues where it was");
    assert_eq!(q2.used_elem(1), (1, 32));
    let mut bytes = [0u8; 32];
    mem2.read_slice(&mut bytes, GuestAddress(0x10_1000))
        .unwrap();
    assert_ne!(bytes, [0u8; 32]);
    assert_eq!(q.used_idx(), 1, "the template's memory is not touched");
    assert_eq!(r.irq.read().unwrap(), 1);
}

/// A block read of one sector into guest memory at 0x11_0000; returns the status.
fn read_sector(q: &mut TestQueue, mem: &GuestMemoryMmap, d: &VirtioMmioDevice, sector: u64) -> u8 {
    mem.write_obj(0u32, GuestAddress(0x10_0000)).unwrap(); // VIRTIO_BLK_T_IN
    mem.write_obj(0u32, GuestAddress(0x10_0004)).unwrap();
    mem.write_obj(sector, GuestAddress(0x10_0008)).unwrap();
    mem.write_obj(0xffu8, GuestAddress(0x12_0000)).unwrap();
    q.add_chain(&[ro(0x10_0000, 16), wo(0x11_0000, 512), wo(0x12_0000, 1)]);
    write_reg(&mut d.transport.lock().unwrap(), 0x50, 0);
    run_events(d);
    mem.read_obj(GuestAddress(0x12_0000)).unwrap()
}

#[test]
fn block_read_after_restore_reads_the_right_data() {
    let img = TempFile::new().unwrap();
    let bytes: Vec<u8> = (0..8 * 512u32).map(|i| (i / 512) as u8 + 1).collect();
    img.as_file().write_all(&bytes).unwrap();
    let mem = guest_memory();
    let d = block(&mem, img.as_path(), true).unwrap();
    let mut q = TestQueue::new(&mem, 0x1_0000, 16);
    drive_to_driver_ok(&mut d.transport.lock().unwrap(), VERSION_1, &[&q]);
    assert_eq!(read_sector(&mut q, &mem, &d, 2), 0);
    assert_eq!(mem.read_obj::<u8>(GuestAddress(0x11_0000)).unwrap(), 3);

    let (r, mem2, state) = round_trip(&d, &mem, None);
    let DeviceKindState::Block(b) = &state.device else {
        panic!("not a block state: {:?}", state.device);
    };
    assert_eq!(
        (b.path.as_path(), b.read_only, b.sectors),
        (img.as_path(), true, 8)
    );
    let mut q2 = q.moved_to(&mem2);
    assert_eq!(read_sector(&mut q2, &mem2, &r, 5), 0);
    assert_eq!(mem2.read_obj::<u8>(GuestAddress(0x11_0000)).unwrap(), 6);
    assert_eq!(q2.used_idx(), 2);
    assert_eq!(reg(&r, 0x100), 8, "capacity in config space");
    // Same size: no config change was announced.
    assert_eq!(reg(&r, 0x60), INT_USED_RING);
}

#[test]
fn block_restored_on_a_grown_file_announces_the_new_capacity() {
    let img = TempFile::new().unwrap();
    img.as_file().set_len(4 * 512).unwrap();
    let mem = guest_memory();
    let d = block(&mem, img.as_path(), false).unwrap();
    let q = TestQueue::new(&mem, 0x1_0000, 16);
    drive_to_driver_ok(&mut d.transport.lock().unwrap(), VERSION_1, &[&q]);
    let generation = reg(&d, 0xfc);
    let state = d.save();
    img.as_file().set_len(16 * 512).unwrap();
    let r = restore(&copy_memory(&mem), &state, None).unwrap();
    assert_eq!(reg(&r, 0x100), 16);
    assert_eq!(reg(&r, 0xfc), generation + 1);
    assert_eq!(reg(&r, 0x60), INT_CONFIG_CHANGE);
}

fn sock(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("spore-virtio-persist-{tag}-{}", std::process::id()))
}

#[test]
fn active_vsock_restores_with_a_new_identity_and_a_transport_reset() {
    let (template_path, clone_path) = (sock("tpl"), sock("clone"));
    let mem = guest_memory();
    let d = vsock(&mem, 3, &template_path).unwrap();
    let qs: Vec<TestQueue> = [0x1_0000, 0x4_0000, 0x7_0000]
        .iter()
        .map(|&b| TestQueue::new(&mem, b, 16))
        .collect();
    drive_to_driver_ok(
        &mut d.transport.lock().unwrap(),
        VERSION_1,
        &[&qs[0], &qs[1], &qs[2]],
    );
    let mut event_q = qs[2].moved_to(&mem);
    mem.write_obj(0xffff_ffffu32, GuestAddress(0x20_0000))
        .unwrap();
    event_q.add_chain(&[wo(0x20_0000, 4)]);
    let generation = reg(&d, 0xfc);

    let id = VsockIdentity {
        cid: 42,
        uds_path: &clone_path,
        listener: None,
    };
    let (r, mem2, state) = round_trip(&d, &mem, Some(id));
    let DeviceKindState::Vsock(v) = &state.device else {
        panic!("not a vsock state: {:?}", state.device);
    };
    assert_eq!((v.cid, v.uds_path.as_path()), (3, template_path.as_path()));
    assert!(state.transport.status & STATUS_DRIVER_OK != 0);
    assert!(clone_path.exists(), "the clone listens on its own socket");
    run_events(&r);
    // The guest got TRANSPORT_RESET (event id 0) in its event buffer and the new CID.
    let event_q2 = event_q.moved_to(&mem2);
    assert_eq!(event_q2.used_idx(), 1);
    assert_eq!(event_q2.used_elem(0), (0, 4));
    assert_eq!(mem2.read_obj::<u32>(GuestAddress(0x20_0000)).unwrap(), 0);
    assert_eq!(reg(&r, 0x100), 42);
    assert_eq!(reg(&r, 0xfc), generation + 1);
    assert_eq!(reg(&r, 0x60), INT_USED_RING | INT_CONFIG_CHANGE);
    // The template's queue and CID are untouched.
    assert_eq!(event_q.used_idx(), 0);
    assert_eq!(reg(&d, 0x100), 3);
    drop((d, r));
    assert!(!template_path.exists() && !clone_path.exists());
}

#[test]
fn inactive_vsock_takes_the_new_cid_without_a_reset() {
    let (template_path, clone_path) = (sock("itpl"), sock("iclone"));
    let mem = guest_memory();
    let d = vsock(&mem, 3, &template_path).unwrap();
    let id = VsockIdentity {
        cid: 43,
        uds_path: &clone_path,
        listener: None,
    };
    let (r, _mem2, _) = round_trip(&d, &mem, Some(id));
    run_events(&r);
    assert_eq!(reg(&r, 0x100), 43);
    assert_eq!(reg(&r, 0x70), 0);
    assert_eq!(
        reg(&r, 0x60),
        0,
        "no interrupt for a driver that is not there"
    );
    assert!(r.irq.read().is_err());
}

#[test]
fn restore_fails_with_the_device_named() {
    let mem = guest_memory();
    let d = rng(&mem).unwrap();
    let mut state = d.save();
    state.device = DeviceKindState::Block(Default::default());
    let err = restore(&mem, &state, None).err().unwrap();
    assert!(matches!(err, PersistError::Create("block", _)), "{err:?}");
    let mut state = d.save();
    state.transport.device_type = 19;
    let err = restore(&mem, &state, None).err().unwrap();
    assert!(matches!(err, PersistError::Transport("rng", _)), "{err:?}");
}
