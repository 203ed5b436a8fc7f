//! virtio-vsock packet headers and per-connection credit (virtio 1.2 sections
//! 5.10.6 and 5.10.6.3).
//!
//! Pure data: encoding and decoding the 44-byte little-endian header, and the
//! bookkeeping one stream connection needs. No device access here.

/// Size of `struct virtio_vsock_hdr` on the wire.
pub const HDR_LEN: usize = 44;
/// The host's CID (section 5.10.4).
pub const HOST_CID: u64 = 2;
/// VIRTIO_VSOCK_TYPE_STREAM.
pub const TYPE_STREAM: u16 = 1;

// Operations, section 5.10.6.
pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;

/// SHUTDOWN flags: no more receiving, no more sending.
pub const SHUTDOWN_RCV: u32 = 1;
pub const SHUTDOWN_SEND: u32 = 2;

/// Receive buffer space this guest advertises per connection. It consumes every
/// byte as soon as it arrives, so the space never runs low.
pub const BUF_ALLOC: u32 = 64 * 1024;

#[derive(Clone, Copy, Default)]
pub struct Hdr {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub kind: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

fn get<const N: usize>(bytes: &[u8; HDR_LEN], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[at..at + N]);
    out
}

impl Hdr {
    pub fn encode(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.kind.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8; HDR_LEN]) -> Hdr {
        Hdr {
            src_cid: u64::from_le_bytes(get(b, 0)),
            dst_cid: u64::from_le_bytes(get(b, 8)),
            src_port: u32::from_le_bytes(get(b, 16)),
            dst_port: u32::from_le_bytes(get(b, 20)),
            len: u32::from_le_bytes(get(b, 24)),
            kind: u16::from_le_bytes(get(b, 28)),
            op: u16::from_le_bytes(get(b, 30)),
            flags: u32::from_le_bytes(get(b, 32)),
            buf_alloc: u32::from_le_bytes(get(b, 36)),
            fwd_cnt: u32::from_le_bytes(get(b, 40)),
        }
    }
}

/// One stream connection, seen from this guest.
#[derive(Clone, Copy)]
pub struct Conn {
    pub local_port: u32,
    pub peer_cid: u64,
    pub peer_port: u32,
    /// The peer's receive space and how much of our data it has consumed.
    pub peer_buf_alloc: u32,
    pub peer_fwd_cnt: u32,
    /// Bytes we have sent, and bytes we have received and consumed.
    pub tx_cnt: u32,
    pub fwd_cnt: u32,
}

impl Conn {
    pub fn new(local_port: u32, peer_cid: u64, peer_port: u32) -> Conn {
        Conn {
            local_port,
            peer_cid,
            peer_port,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            tx_cnt: 0,
            fwd_cnt: 0,
        }
    }

    /// Whether `hdr` belongs to this connection.
    pub fn owns(&self, hdr: &Hdr) -> bool {
        hdr.src_cid == self.peer_cid
            && hdr.src_port == self.peer_port
            && hdr.dst_port == self.local_port
    }

    /// Every packet from the peer carries its current credit (section 5.10.6.3).
    pub fn update_credit(&mut self, hdr: &Hdr) {
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = hdr.fwd_cnt;
    }

    /// Bytes we may send without overrunning the peer's buffer.
    pub fn credit(&self) -> u32 {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }
}
