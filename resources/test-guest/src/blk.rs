//! virtio-blk driver (virtio 1.2 section 5.2): read sector 0, write a pattern to
//! sector 1, flush, read it back and compare.
//!
//! The host test prepares the disk (sector 0 starts with "spore-disk-0000\n") and
//! checks afterwards that sector 1 of the file holds `pattern()`.

use core::ptr::addr_of_mut;

use crate::io;
use crate::mmio::{self, Device};
use crate::virtq::{self, Ring, Virtq, DESC_F_NEXT, DESC_F_WRITE};

const SECTOR_SIZE: usize = 512;
/// Feature bits, section 5.2.3.
const F_RO: u64 = 1 << 5;
const F_FLUSH: u64 = 1 << 9;
/// Request types, section 5.2.6.
const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const S_OK: u8 = 0;
/// Offset of `capacity` (in 512-byte sectors) in the configuration space.
const CONFIG_CAPACITY: usize = 0;

/// The text the pattern sector starts with; the rest is `i as u8` per byte.
pub const PATTERN_HEAD: &[u8] = b"spore-test-guest wrote sector 1\n";

#[repr(C)]
struct ReqHeader {
    kind: u32,
    reserved: u32,
    sector: u64,
}

/// One request in flight: header, data and status byte, each its own descriptor.
#[repr(C)]
struct Request {
    header: ReqHeader,
    data: [u8; SECTOR_SIZE],
    status: u8,
}

static mut RING: Ring = Ring::ZERO;
static mut REQ: Request = Request {
    header: ReqHeader {
        kind: 0,
        reserved: 0,
        sector: 0,
    },
    data: [0; SECTOR_SIZE],
    status: 0,
};

/// Byte `i` of the sector-1 pattern.
fn pattern(i: usize) -> u8 {
    PATTERN_HEAD.get(i).copied().unwrap_or(i as u8)
}

struct Blk {
    dev: Device,
    q: Virtq,
    req: *mut Request,
}

impl Blk {
    /// Runs one request synchronously on descriptors 0–2; `with_data` is false
    /// for a flush, which has no data buffer.
    fn request(&mut self, kind: u32, sector: u64, with_data: bool) -> Result<(), &'static str> {
        let req = self.req;
        // SAFETY: REQ is only used by this driver and no request is in flight, so
        // the device does not access it now.
        unsafe {
            (*req).header = ReqHeader {
                kind,
                reserved: 0,
                sector,
            };
            (*req).status = 0xff;
        }
        let data_flags = if kind == T_IN { DESC_F_WRITE } else { 0 };
        // SAFETY: only the addresses of fields of the static request are taken.
        let (header, data, status) = unsafe {
            (
                virtq::phys(&raw const (*req).header),
                virtq::phys(&raw const (*req).data),
                virtq::phys(&raw const (*req).status),
            )
        };
        self.q.set_desc(
            0,
            header,
            size_of::<ReqHeader>() as u32,
            DESC_F_NEXT,
            if with_data { 1 } else { 2 },
        );
        if with_data {
            self.q
                .set_desc(1, data, SECTOR_SIZE as u32, data_flags | DESC_F_NEXT, 2);
        }
        self.q.set_desc(2, status, 1, DESC_F_WRITE, 0);
        self.q.push(0);
        self.dev.notify(0);
        let (head, _) = self
            .q
            .wait_used(self.dev, io::deadline(30))
            .ok_or("blk: timeout")?;
        if head != 0 {
            return Err("blk: wrong used id");
        }
        // SAFETY: the device has returned the chain; the status byte is ours again.
        let status = unsafe { core::ptr::read_volatile(&raw const (*req).status) };
        if status != S_OK {
            return Err("blk: request failed");
        }
        Ok(())
    }

    fn data(&mut self) -> &mut [u8; SECTOR_SIZE] {
        // SAFETY: called only between requests, when the device does not own REQ.
        unsafe { &mut (*self.req).data }
    }
}

pub fn run() -> Result<(), &'static str> {
    let dev = Device::find(mmio::ID_BLOCK).ok_or("blk: no device")?;
    let features = dev.begin_init(F_FLUSH | F_RO)?;
    if features & F_RO != 0 {
        dev.fail();
        return Err("blk: device is read-only");
    }
    // SAFETY: RING is used by this queue only, and `run` is called once.
    let q = unsafe { Virtq::new(addr_of_mut!(RING)) };
    dev.setup_queue(0, &q)?;
    dev.driver_ok();
    let mut blk = Blk {
        dev,
        q,
        req: addr_of_mut!(REQ),
    };

    let capacity = dev.config64(CONFIG_CAPACITY);
    if capacity < 2 {
        return Err("blk: capacity below 2 sectors");
    }
    io::print(b"SPORE-TEST blk capacity ");
    io::print_dec(capacity);
    io::print(b"\n");

    blk.request(T_IN, 0, true)?;
    io::print(b"SPORE-TEST blk read ");
    print_text(&blk.data()[..16]);
    io::print(b"\n");

    for (i, b) in blk.data().iter_mut().enumerate() {
        *b = pattern(i);
    }
    blk.request(T_OUT, 1, true)?;
    if features & F_FLUSH != 0 {
        blk.request(T_FLUSH, 0, false)?;
    }
    blk.data().fill(0);
    blk.request(T_IN, 1, true)?;
    if blk.data().iter().enumerate().any(|(i, &b)| b != pattern(i)) {
        return Err("blk: read-back differs");
    }
    dev.reset();
    io::print(b"SPORE-TEST blk ok\n");
    Ok(())
}

/// Prints bytes as text, newlines and other control bytes as '.'.
fn print_text(bytes: &[u8]) {
    for &b in bytes {
        io::print(&[if (0x20..0x7f).contains(&b) { b } else { b'.' }]);
    }
}
