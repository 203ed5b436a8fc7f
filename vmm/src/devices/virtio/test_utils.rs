//! Test helpers: guest memory and a driver-side split virtqueue written by hand into
//! it (virtio 1.2 section 2.7), plus a way to bring an MMIO transport to DRIVER_OK.
//!
//! Compiled for tests only.

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::device::VIRTIO_F_VERSION_1;
use super::mmio::{
    MmioTransport, STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK,
};
use crate::bus::BusDevice;

pub const MEM_SIZE: usize = 0x40_0000;
const VIRTQ_DESC_F_NEXT: u16 = 1;
const VIRTQ_DESC_F_WRITE: u16 = 2;

pub fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

/// A new guest memory holding a copy of every byte of `mem` (a restored guest's RAM).
pub fn copy_memory(mem: &GuestMemoryMmap) -> GuestMemoryMmap {
    let copy = guest_memory();
    let mut bytes = vec![0u8; MEM_SIZE];
    mem.read_slice(&mut bytes, GuestAddress(0)).unwrap();
    copy.write_slice(&bytes, GuestAddress(0)).unwrap();
    copy
}

/// One buffer of a chain: guest address, length, device-writable.
#[derive(Clone, Copy, Debug)]
pub struct Buf {
    pub addr: u64,
    pub len: u32,
    pub write: bool,
}

pub fn ro(addr: u64, len: u32) -> Buf {
    Buf {
        addr,
        len,
        write: false,
    }
}

pub fn wo(addr: u64, len: u32) -> Buf {
    Buf {
        addr,
        len,
        write: true,
    }
}

/// The driver's view of a split virtqueue at `base` (descriptors, then the available
/// ring at +0x1000, then the used ring at +0x2000).
pub struct TestQueue {
    mem: GuestMemoryMmap,
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    next_desc: u16,
    avail_idx: u16,
}

impl TestQueue {
    pub fn new(mem: &GuestMemoryMmap, base: u64, size: u16) -> Self {
        let q = Self {
            mem: mem.clone(),
            size,
            desc: base,
            avail: base + 0x1000,
            used: base + 0x2000,
            next_desc: 0,
            avail_idx: 0,
        };
        mem.write_obj(0u16, GuestAddress(q.avail)).unwrap();
        mem.write_obj(0u16, GuestAddress(q.avail + 2)).unwrap();
        mem.write_obj(0u16, GuestAddress(q.used + 2)).unwrap();
        q
    }

    /// Writes a descriptor chain and publishes its head in the available ring.
    pub fn add_chain(&mut self, bufs: &[Buf]) -> u16 {
        let head = self.next_desc;
        for (i, b) in bufs.iter().enumerate() {
            let idx = (self.next_desc + i as u16) % self.size;
            let last = i + 1 == bufs.len();
            let flags = if last { 0 } else { VIRTQ_DESC_F_NEXT }
                | if b.write { VIRTQ_DESC_F_WRITE } else { 0 };
            let next = (idx + 1) % self.size;
            let at = self.desc + 16 * u64::from(idx);
            self.mem.write_obj(b.addr, GuestAddress(at)).unwrap();
            self.mem.write_obj(b.len, GuestAddress(at + 8)).unwrap();
            self.mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
            self.mem.write_obj(next, GuestAddress(at + 14)).unwrap();
        }
        self.next_desc = (self.next_desc + bufs.len() as u16) % self.size;
        self.publish(head);
        head
    }

    /// Publishes an arbitrary head index (for malformed-chain tests).
    pub fn publish(&mut self, head: u16) {
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % self.size);
        self.mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem
            .write_obj(self.avail_idx, GuestAddress(self.avail + 2))
            .unwrap();
    }

    pub fn used_idx(&self) -> u16 {
        self.mem.read_obj(GuestAddress(self.used + 2)).unwrap()
    }

    /// The `i`th used element: (descriptor head, bytes written).
    pub fn used_elem(&self, i: u16) -> (u32, u32) {
        let at = self.used + 4 + 8 * u64::from(i % self.size);
        (
            self.mem.read_obj(GuestAddress(at)).unwrap(),
            self.mem.read_obj(GuestAddress(at + 4)).unwrap(),
        )
    }

    /// The same driver queue over `mem`, a copy of this queue's memory (the driver
    /// as a restored guest continues it).
    pub fn moved_to(&self, mem: &GuestMemoryMmap) -> Self {
        Self {
            mem: mem.clone(),
            ..*self
        }
    }

    /// A ready device-side `Queue` over this ring.
    pub fn queue(&self) -> Queue {
        let mut q = Queue::new(self.size).unwrap();
        q.try_set_desc_table_address(GuestAddress(self.desc))
            .unwrap();
        q.try_set_avail_ring_address(GuestAddress(self.avail))
            .unwrap();
        q.try_set_used_ring_address(GuestAddress(self.used))
            .unwrap();
        q.set_ready(true);
        q
    }
}

pub fn write_reg(t: &mut MmioTransport, offset: u64, v: u32) {
    t.write(offset, &v.to_le_bytes());
}

pub fn read_reg(t: &mut MmioTransport, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(offset, &mut b);
    u32::from_le_bytes(b)
}

/// Does what a driver does (3.1.1) up to DRIVER_OK, acking `features`.
pub fn drive_to_driver_ok(t: &mut MmioTransport, features: u64, queues: &[&TestQueue]) {
    write_reg(t, 0x70, STATUS_ACKNOWLEDGE);
    write_reg(t, 0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    for sel in 0..2u32 {
        write_reg(t, 0x24, sel);
        write_reg(t, 0x20, (features >> (32 * sel)) as u32);
    }
    let s = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
    write_reg(t, 0x70, s);
    assert_eq!(read_reg(t, 0x70), s, "features refused");
    for (i, q) in queues.iter().enumerate() {
        write_reg(t, 0x30, i as u32);
        write_reg(t, 0x38, u32::from(q.size));
        for (off, addr) in [(0x80, q.desc), (0x90, q.avail), (0xa0, q.used)] {
            write_reg(t, off, addr as u32);
            write_reg(t, off + 4, (addr >> 32) as u32);
        }
        write_reg(t, 0x44, 1);
    }
    write_reg(t, 0x70, s | STATUS_DRIVER_OK);
}

/// VIRTIO_F_VERSION_1 alone.
pub const VERSION_1: u64 = 1 << VIRTIO_F_VERSION_1;
