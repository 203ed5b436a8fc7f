//! Split virtqueues (virtio 1.2 section 2.7) in the guest's own static memory.
//!
//! Owns the descriptor table, available ring and used ring of one queue, and the
//! driver-side indices. Guest physical addresses equal virtual ones here (the VMM
//! identity-maps the first 4 GiB), so a buffer's address is its pointer. Which
//! descriptors are free is the caller's business: every driver in this guest uses
//! fixed descriptor numbers.

use core::arch::asm;
use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use crate::io;
use crate::mmio::Device;

/// Entries per queue; the device's QueueNumMax must be at least this.
pub const QUEUE_SIZE: u16 = 16;

/// The descriptor continues in `next`.
pub const DESC_F_NEXT: u16 = 1;
/// The device writes this buffer (otherwise it only reads it).
pub const DESC_F_WRITE: u16 = 2;
/// Avail flag: the driver polls and needs no used-buffer interrupts.
const AVAIL_F_NO_INTERRUPT: u16 = 1;

#[repr(C, align(16))]
#[derive(Clone, Copy)]
struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

#[repr(C, align(2))]
struct Avail {
    flags: u16,
    idx: u16,
    ring: [u16; QUEUE_SIZE as usize],
    used_event: u16,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct UsedElem {
    id: u32,
    len: u32,
}

#[repr(C, align(4))]
struct Used {
    flags: u16,
    idx: u16,
    ring: [UsedElem; QUEUE_SIZE as usize],
    avail_event: u16,
}

/// The memory of one queue, page aligned; zeroed statics of this type live in .bss.
#[repr(C, align(4096))]
pub struct Ring {
    desc: [Desc; QUEUE_SIZE as usize],
    avail: Avail,
    used: Used,
}

impl Ring {
    /// An all-zero ring, for `static mut` storage.
    pub const ZERO: Ring = Ring {
        desc: [Desc {
            addr: 0,
            len: 0,
            flags: 0,
            next: 0,
        }; QUEUE_SIZE as usize],
        avail: Avail {
            flags: 0,
            idx: 0,
            ring: [0; QUEUE_SIZE as usize],
            used_event: 0,
        },
        used: Used {
            flags: 0,
            idx: 0,
            ring: [UsedElem { id: 0, len: 0 }; QUEUE_SIZE as usize],
            avail_event: 0,
        },
    };
}

/// Tells the compiler that memory reachable by the device may have been read or
/// changed (Linux's `barrier()`); x86 keeps stores and loads in order themselves.
pub fn barrier() {
    // SAFETY: an empty asm block; without `nomem` the compiler assumes it touches
    // any memory whose address escaped, which is exactly the device's view.
    unsafe { asm!("", options(nostack, preserves_flags)) }
}

/// The address the device uses for `ptr` (identity mapping).
pub fn phys<T>(ptr: *const T) -> u64 {
    ptr as usize as u64
}

/// One split virtqueue over a static `Ring`.
pub struct Virtq {
    ring: *mut Ring,
    /// Free-running count of buffers made available.
    next_avail: u16,
    /// Free-running count of used entries consumed.
    last_used: u16,
}

impl Virtq {
    /// Takes over `ring`.
    ///
    /// # Safety
    /// `ring` must point to a `Ring` that nothing else uses while this queue lives.
    pub unsafe fn new(ring: *mut Ring) -> Virtq {
        // SAFETY: the caller hands `ring` over exclusively; the device does not know
        // it yet, so plain writes are fine.
        unsafe {
            ring.write(Ring::ZERO);
            (*ring).avail.flags = AVAIL_F_NO_INTERRUPT;
        }
        Virtq {
            ring,
            next_avail: 0,
            last_used: 0,
        }
    }

    pub fn size(&self) -> u16 {
        QUEUE_SIZE
    }

    /// Guest addresses of the descriptor table, available ring and used ring.
    pub fn addresses(&self) -> (u64, u64, u64) {
        // SAFETY: `ring` is valid (see `new`); only addresses are taken.
        unsafe {
            (
                phys(addr_of!((*self.ring).desc)),
                phys(addr_of!((*self.ring).avail)),
                phys(addr_of!((*self.ring).used)),
            )
        }
    }

    /// Fills descriptor `index`; the caller makes sure the device does not own it.
    pub fn set_desc(&mut self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let i = usize::from(index % QUEUE_SIZE);
        // SAFETY: `ring` is valid and `i` in bounds; the descriptor is not in the
        // device's hands, so writing it races with nothing.
        unsafe {
            write_volatile(
                addr_of_mut!((*self.ring).desc[i]),
                Desc {
                    addr,
                    len,
                    flags,
                    next,
                },
            )
        }
    }

    /// Makes the chain starting at descriptor `head` available (no notify).
    pub fn push(&mut self, head: u16) {
        let slot = usize::from(self.next_avail % QUEUE_SIZE);
        self.next_avail = self.next_avail.wrapping_add(1);
        // SAFETY: `ring` is valid and `slot` in bounds. The ring slot is ours until
        // idx moves past it; the barrier orders the descriptor and slot writes
        // before the index the device reads (section 2.7.13).
        unsafe {
            write_volatile(addr_of_mut!((*self.ring).avail.ring[slot]), head);
            barrier();
            write_volatile(addr_of_mut!((*self.ring).avail.idx), self.next_avail);
        }
        barrier();
    }

    /// The next used entry (descriptor head, bytes written), if the device
    /// returned one.
    pub fn pop_used(&mut self) -> Option<(u16, u32)> {
        // SAFETY: `ring` is valid; used.idx is written by the device, so it is
        // read volatile, and the element only after the index (section 2.7.14).
        unsafe {
            let idx = read_volatile(addr_of!((*self.ring).used.idx));
            if idx == self.last_used {
                return None;
            }
            barrier();
            let slot = usize::from(self.last_used % QUEUE_SIZE);
            let elem = read_volatile(addr_of!((*self.ring).used.ring[slot]));
            self.last_used = self.last_used.wrapping_add(1);
            barrier();
            Some((elem.id as u16, elem.len))
        }
    }

    /// Polls for the next used entry until `deadline` (a TSC value).
    pub fn wait_used(&mut self, dev: Device, deadline: u64) -> Option<(u16, u32)> {
        loop {
            if let Some(used) = self.pop_used() {
                dev.ack_interrupts();
                return Some(used);
            }
            if io::expired(deadline) {
                return None;
            }
        }
    }
}
