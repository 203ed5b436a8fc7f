//! virtio-vsock driver (virtio 1.2 section 5.10): the device, its three queues and
//! packet send/receive. The two test conversations live in `flows`.
//!
//! RX buffers are single descriptors holding header and payload (as Linux posts
//! them); TX packets are a header descriptor plus a payload descriptor (as Linux
//! sends them). Everything is synchronous: one TX packet in flight at a time.

mod flows;
mod packet;

use core::ptr::{addr_of, addr_of_mut};

use crate::io;
use crate::mmio::{self, Device};
use crate::virtq::{self, barrier, Ring, Virtq, DESC_F_NEXT, DESC_F_WRITE};
use packet::{Conn, Hdr, BUF_ALLOC, HDR_LEN, OP_RST, OP_RW, TYPE_STREAM};

/// Queue indices, section 5.10.2.
const RX_QUEUE: u32 = 0;
const TX_QUEUE: u32 = 1;
const EVENT_QUEUE: u32 = 2;
/// Offset of `guest_cid` in the configuration space.
const CONFIG_GUEST_CID: usize = 0;

const RX_BUFS: usize = 8;
const RX_PAYLOAD: usize = 4096;
const RX_BUF_LEN: usize = HDR_LEN + RX_PAYLOAD;
/// The largest payload this guest sends or keeps from one packet.
pub const MAX_DATA: usize = 256;
const EVENT_BUFS: usize = 4;
/// `struct virtio_vsock_event` is one le32.
const EVENT_LEN: usize = 4;

static mut RX_RING: Ring = Ring::ZERO;
static mut TX_RING: Ring = Ring::ZERO;
static mut EVENT_RING: Ring = Ring::ZERO;
static mut RX_BUF: [[u8; RX_BUF_LEN]; RX_BUFS] = [[0; RX_BUF_LEN]; RX_BUFS];
static mut TX_HDR: [u8; HDR_LEN] = [0; HDR_LEN];
static mut TX_DATA: [u8; MAX_DATA] = [0; MAX_DATA];
static mut EVENT_BUF: [[u8; EVENT_LEN]; EVENT_BUFS] = [[0; EVENT_LEN]; EVENT_BUFS];

/// A received packet, copied out of its RX buffer.
pub struct Packet {
    pub hdr: Hdr,
    pub data: [u8; MAX_DATA],
}

impl Packet {
    pub fn payload(&self) -> &[u8] {
        &self.data[..(self.hdr.len as usize).min(MAX_DATA)]
    }
}

pub struct Vsock {
    dev: Device,
    rx: Virtq,
    tx: Virtq,
    cid: u64,
}

impl Vsock {
    /// Initialises the device and posts every RX and event buffer.
    fn init() -> Result<Vsock, &'static str> {
        let dev = Device::find(mmio::ID_VSOCK).ok_or("vsock: no device")?;
        dev.begin_init(0)?;
        // SAFETY: each ring belongs to one queue, and `init` runs once.
        let (mut rx, tx, mut event) = unsafe {
            (
                Virtq::new(addr_of_mut!(RX_RING)),
                Virtq::new(addr_of_mut!(TX_RING)),
                Virtq::new(addr_of_mut!(EVENT_RING)),
            )
        };
        dev.setup_queue(RX_QUEUE, &rx)?;
        dev.setup_queue(TX_QUEUE, &tx)?;
        dev.setup_queue(EVENT_QUEUE, &event)?;
        let cid = dev.config64(CONFIG_GUEST_CID);
        dev.driver_ok();

        for i in 0..RX_BUFS as u16 {
            post_rx(&mut rx, i);
        }
        for i in 0..EVENT_BUFS as u16 {
            post_event(&mut event, i);
        }
        dev.notify(RX_QUEUE);
        dev.notify(EVENT_QUEUE);
        if cid <= packet::HOST_CID {
            return Err("vsock: bad guest CID");
        }
        Ok(Vsock { dev, rx, tx, cid })
    }

    /// Sends one packet on `conn` and waits until the device has taken it.
    pub fn send(
        &mut self,
        conn: &mut Conn,
        op: u16,
        flags: u32,
        data: &[u8],
    ) -> Result<(), &'static str> {
        let hdr = Hdr {
            src_cid: self.cid,
            dst_cid: conn.peer_cid,
            src_port: conn.local_port,
            dst_port: conn.peer_port,
            len: data.len() as u32,
            kind: TYPE_STREAM,
            op,
            flags,
            buf_alloc: BUF_ALLOC,
            fwd_cnt: conn.fwd_cnt,
        };
        self.send_hdr(&hdr, data)?;
        if op == OP_RW {
            conn.tx_cnt = conn.tx_cnt.wrapping_add(data.len() as u32);
        }
        Ok(())
    }

    /// Answers a packet for no known connection with RST (section 5.10.6.4).
    pub fn reset_peer(&mut self, to: &Hdr) -> Result<(), &'static str> {
        let hdr = Hdr {
            src_cid: self.cid,
            dst_cid: to.src_cid,
            src_port: to.dst_port,
            dst_port: to.src_port,
            kind: TYPE_STREAM,
            op: OP_RST,
            ..Hdr::default()
        };
        self.send_hdr(&hdr, &[])
    }

    fn send_hdr(&mut self, hdr: &Hdr, data: &[u8]) -> Result<(), &'static str> {
        if data.len() > MAX_DATA {
            return Err("vsock: packet too long");
        }
        let (hdr_buf, data_buf) = (addr_of_mut!(TX_HDR), addr_of_mut!(TX_DATA));
        // SAFETY: no TX packet is in flight (each send waits for its used entry),
        // so the device is not reading the TX buffers.
        unsafe {
            *hdr_buf = hdr.encode();
            (&mut *data_buf)[..data.len()].copy_from_slice(data);
        }
        let with_data = !data.is_empty();
        let next_flag = if with_data { DESC_F_NEXT } else { 0 };
        self.tx
            .set_desc(0, virtq::phys(hdr_buf), HDR_LEN as u32, next_flag, 1);
        if with_data {
            self.tx
                .set_desc(1, virtq::phys(data_buf), data.len() as u32, 0, 0);
        }
        self.tx.push(0);
        self.dev.notify(TX_QUEUE);
        match self.tx.wait_used(self.dev, io::deadline(30)) {
            Some((0, _)) => Ok(()),
            Some(_) => Err("vsock: wrong TX used id"),
            None => Err("vsock: TX timeout"),
        }
    }

    /// The next received packet, or None at `deadline`. The RX buffer is posted
    /// again before returning.
    pub fn recv(&mut self, deadline: u64) -> Result<Option<Packet>, &'static str> {
        let Some((id, len)) = self.rx.wait_used(self.dev, deadline) else {
            return Ok(None);
        };
        let index = usize::from(id);
        if index >= RX_BUFS || (len as usize) < HDR_LEN {
            return Err("vsock: bad RX used entry");
        }
        barrier();
        // SAFETY: the device returned buffer `index`; it is ours until posted again.
        let buf = unsafe { &*addr_of!(RX_BUF[index]) };
        let mut hdr_bytes = [0u8; HDR_LEN];
        hdr_bytes.copy_from_slice(&buf[..HDR_LEN]);
        let hdr = Hdr::decode(&hdr_bytes);
        let payload_len = hdr.len as usize;
        if payload_len > len as usize - HDR_LEN || payload_len > MAX_DATA {
            return Err("vsock: RX payload too long");
        }
        let mut data = [0u8; MAX_DATA];
        data[..payload_len].copy_from_slice(&buf[HDR_LEN..HDR_LEN + payload_len]);
        post_rx(&mut self.rx, id);
        self.dev.notify(RX_QUEUE);
        Ok(Some(Packet { hdr, data }))
    }

    /// Stops the device using guest memory.
    fn shutdown(&self) {
        self.dev.reset();
    }
}

/// Hands RX buffer `index` (descriptor `index`) to the device.
fn post_rx(rx: &mut Virtq, index: u16) {
    // SAFETY: only the address of a static buffer is taken.
    let addr = virtq::phys(unsafe { addr_of!(RX_BUF[usize::from(index)]) });
    rx.set_desc(index, addr, RX_BUF_LEN as u32, DESC_F_WRITE, 0);
    rx.push(index);
}

/// Hands event buffer `index` (descriptor `index`) to the device. The only event,
/// a transport reset, means nothing to a guest that never migrates.
fn post_event(event: &mut Virtq, index: u16) {
    // SAFETY: only the address of a static buffer is taken.
    let addr = virtq::phys(unsafe { addr_of!(EVENT_BUF[usize::from(index)]) });
    event.set_desc(index, addr, EVENT_LEN as u32, DESC_F_WRITE, 0);
    event.push(index);
}

/// Both conversations: guest to host echo, then host to guest echo.
pub fn run() -> Result<(), &'static str> {
    let mut vsock = Vsock::init()?;
    let mut listener = flows::Listener::new(flows::LISTEN_PORT);
    flows::connect_out(&mut vsock, &mut listener)?;
    io::print(b"SPORE-TEST vsock-out ok\n");
    flows::accept_in(&mut vsock, &mut listener)?;
    io::print(b"SPORE-TEST vsock-in ok\n");
    vsock.shutdown();
    Ok(())
}
