//! virtio-rng driver (virtio 1.2 section 5.4): one request for 64 bytes.

use core::ptr::addr_of_mut;

use crate::io;
use crate::mmio::{self, Device};
use crate::virtq::{self, Ring, Virtq, DESC_F_WRITE};

const REQUEST_LEN: usize = 64;

static mut RING: Ring = Ring::ZERO;
static mut BUF: [u8; REQUEST_LEN] = [0; REQUEST_LEN];

/// Reads 64 random bytes and reports the first 8.
pub fn run() -> Result<(), &'static str> {
    let dev = Device::find(mmio::ID_RNG).ok_or("rng: no device")?;
    dev.begin_init(0)?;
    // SAFETY: RING is used by this queue only, and `run` is called once.
    let mut q = unsafe { Virtq::new(addr_of_mut!(RING)) };
    dev.setup_queue(0, &q)?;
    dev.driver_ok();

    let buf = addr_of_mut!(BUF);
    q.set_desc(0, virtq::phys(buf), REQUEST_LEN as u32, DESC_F_WRITE, 0);
    q.push(0);
    dev.notify(0);
    let (_, len) = q.wait_used(dev, io::deadline(30)).ok_or("rng: timeout")?;
    dev.reset();
    if len == 0 || len as usize > REQUEST_LEN {
        return Err("rng: bad length");
    }
    // SAFETY: the device returned the buffer and was reset, so BUF is ours again.
    let bytes = unsafe { &*buf };
    let filled = &bytes[..len as usize];
    if filled.iter().all(|&b| b == 0) {
        return Err("rng: all zero");
    }
    io::print(b"SPORE-TEST rng ok ");
    io::print_hex(&filled[..filled.len().min(8)]);
    io::print(b"\n");
    Ok(())
}
