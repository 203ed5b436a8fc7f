//! virtio-blk tests over in-memory guest memory and a temporary backing file.

use std::io::Write;

use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EFD_NONBLOCK;
use vmm_sys_util::tempfile::TempFile;

use super::*;
use crate::devices::virtio::block::request::*;
use crate::devices::virtio::device::INT_CONFIG_CHANGE;
use crate::devices::virtio::test_utils::*;

const HDR: u64 = 0x10_0000;
const DATA: u64 = 0x11_0000;
const STATUS: u64 = 0x12_0000;

struct Fixture {
    dev: Block,
    file: TempFile,
    mem: GuestMemoryMmap,
    q: TestQueue,
    irq: EventFd,
}

/// A disk of `sectors` sectors where byte i of the file is `i % 251`.
fn fixture(read_only: bool, sectors: u64) -> Fixture {
    let file = TempFile::new().unwrap();
    let bytes: Vec<u8> = (0..sectors * SECTOR_SIZE)
        .map(|i| (i % 251) as u8)
        .collect();
    file.as_file().write_all(&bytes).unwrap();
    let mem = guest_memory();
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let trigger = Arc::new(IrqTrigger::new(irq.try_clone().unwrap()));
    let mut dev = Block::new(mem.clone(), trigger, vec![], file.as_path(), read_only).unwrap();
    let q = TestQueue::new(&mem, 0x1_0000, 16);
    dev.activate(vec![q.queue()], VERSION_1).unwrap();
    Fixture {
        dev,
        file,
        mem,
        q,
        irq,
    }
}

impl Fixture {
    fn header(&self, kind: u32, sector: u64) {
        self.mem.write_obj(kind, GuestAddress(HDR)).unwrap();
        self.mem.write_obj(0u32, GuestAddress(HDR + 4)).unwrap();
        self.mem.write_obj(sector, GuestAddress(HDR + 8)).unwrap();
        self.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    }

    /// Runs one request chain; returns (status byte, used length).
    fn run(&mut self, bufs: &[Buf]) -> (u8, u32) {
        let before = self.q.used_idx();
        self.q.add_chain(bufs);
        self.dev.process_queue().unwrap();
        assert_eq!(self.q.used_idx(), before.wrapping_add(1));
        let status = self.mem.read_obj(GuestAddress(STATUS)).unwrap();
        (status, self.q.used_elem(before).1)
    }

    fn file_bytes(&self) -> Vec<u8> {
        std::fs::read(self.file.as_path()).unwrap()
    }
}

#[test]
fn reads_sectors_across_descriptors() {
    let mut f = fixture(true, 8);
    f.header(VIRTIO_BLK_T_IN, 1);
    let r = f.run(&[
        ro(HDR, 16),
        wo(DATA, 512),
        wo(DATA + 0x1000, 512),
        wo(STATUS, 1),
    ]);
    assert_eq!(r, (VIRTIO_BLK_S_OK, 1025));
    let mut got = vec![0u8; 512];
    f.mem
        .read_slice(&mut got, GuestAddress(DATA + 0x1000))
        .unwrap();
    assert_eq!(got, f.file_bytes()[1024..1536]);
    assert_eq!(f.irq.read().unwrap(), 1);
}

#[test]
fn writes_sectors() {
    let mut f = fixture(false, 8);
    f.header(VIRTIO_BLK_T_OUT, 7);
    f.mem.write_slice(&[0xab; 512], GuestAddress(DATA)).unwrap();
    let r = f.run(&[ro(HDR, 16), ro(DATA, 512), wo(STATUS, 1)]);
    assert_eq!(r, (VIRTIO_BLK_S_OK, 1));
    let bytes = f.file_bytes();
    assert_eq!(bytes[7 * 512..], [0xab; 512]);
    assert_eq!(bytes[6 * 512], ((6 * 512) % 251) as u8);
}

#[test]
fn write_to_read_only_disk_fails() {
    let mut f = fixture(true, 8);
    let before = f.file_bytes();
    f.header(VIRTIO_BLK_T_OUT, 0);
    let r = f.run(&[ro(HDR, 16), ro(DATA, 512), wo(STATUS, 1)]);
    assert_eq!(r, (VIRTIO_BLK_S_IOERR, 1));
    assert_eq!(f.file_bytes(), before);
    assert_ne!(f.dev.avail_features() & 1 << VIRTIO_BLK_F_RO, 0);
}

#[test]
fn out_of_range_and_partial_sectors_fail() {
    let mut f = fixture(false, 8);
    for (sector, len) in [(8, 512), (7, 1024), (u64::MAX, 512), (0, 100)] {
        f.header(VIRTIO_BLK_T_IN, sector);
        let r = f.run(&[ro(HDR, 16), wo(DATA, len), wo(STATUS, 1)]);
        assert_eq!(r.0, VIRTIO_BLK_S_IOERR, "sector {sector} len {len}");
        f.header(VIRTIO_BLK_T_OUT, sector);
        let r = f.run(&[ro(HDR, 16), ro(DATA, len), wo(STATUS, 1)]);
        assert_eq!(r.0, VIRTIO_BLK_S_IOERR, "sector {sector} len {len}");
    }
}

#[test]
fn flush_get_id_and_unsupported() {
    let mut f = fixture(false, 8);
    f.header(VIRTIO_BLK_T_FLUSH, 0);
    assert_eq!(f.run(&[ro(HDR, 16), wo(STATUS, 1)]), (VIRTIO_BLK_S_OK, 1));
    f.header(VIRTIO_BLK_T_GET_ID, 0);
    assert_eq!(
        f.run(&[ro(HDR, 16), wo(DATA, 20), wo(STATUS, 1)]),
        (VIRTIO_BLK_S_OK, 21)
    );
    let mut id = [0u8; 20];
    f.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    let name = f
        .file
        .as_path()
        .file_name()
        .unwrap()
        .as_encoded_bytes()
        .to_vec();
    assert_eq!(id[..name.len().min(20)], name[..name.len().min(20)]);
    f.header(11, 0);
    assert_eq!(
        f.run(&[ro(HDR, 16), wo(STATUS, 1)]),
        (VIRTIO_BLK_S_UNSUPP, 1)
    );
}

#[test]
fn malformed_requests_do_not_stop_the_device() {
    let mut f = fixture(false, 8);
    // Header too short.
    f.header(VIRTIO_BLK_T_IN, 0);
    assert_eq!(f.run(&[ro(HDR, 8), wo(STATUS, 1)]).0, VIRTIO_BLK_S_IOERR);
    // No writable status byte: nothing to answer with.
    assert_eq!(f.run(&[ro(HDR, 16)]).1, 0);
    // Buffer outside guest memory.
    assert_eq!(
        f.run(&[ro(HDR, 16), wo(MEM_SIZE as u64, 512), wo(STATUS, 1)])
            .1,
        0
    );
    // Still serving.
    f.header(VIRTIO_BLK_T_FLUSH, 0);
    assert_eq!(f.run(&[ro(HDR, 16), wo(STATUS, 1)]), (VIRTIO_BLK_S_OK, 1));
}

#[test]
fn config_space_has_capacity_and_seg_max() {
    let f = fixture(false, 8);
    let mut cap = [0u8; 8];
    f.dev.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 8);
    let mut seg = [0u8; 4];
    f.dev.read_config(12, &mut seg);
    assert_eq!(u32::from_le_bytes(seg), 254);
    assert_eq!(f.dev.avail_features() & 1 << VIRTIO_BLK_F_RO, 0);
}

#[test]
fn set_backing_swaps_file_and_announces_it() {
    let mut f = fixture(true, 0);
    let image = TempFile::new().unwrap();
    image.as_file().write_all(&[0x5a; 4 * 512]).unwrap();
    f.dev.set_backing(image.as_path(), true).unwrap();
    assert_eq!(f.dev.disk().sectors(), 4);
    let mut cap = [0u8; 8];
    f.dev.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 4);
    assert_eq!(f.dev.irq.status() & INT_CONFIG_CHANGE, INT_CONFIG_CHANGE);
    assert_eq!(f.dev.irq.config_generation(), 1);
    assert_eq!(f.irq.read().unwrap(), 1);
    // The guest now reads the new image.
    f.header(VIRTIO_BLK_T_IN, 3);
    assert_eq!(
        f.run(&[ro(HDR, 16), wo(DATA, 512), wo(STATUS, 1)]).0,
        VIRTIO_BLK_S_OK
    );
    assert_eq!(
        f.mem.read_obj::<u8>(GuestAddress(DATA + 511)).unwrap(),
        0x5a
    );
    // A missing file leaves the current one in place.
    assert!(f
        .dev
        .set_backing(std::path::Path::new("/nonexistent/img"), true)
        .is_err());
    assert_eq!(f.dev.disk().path(), image.as_path());
}
