//! The vsock packet: `struct virtio_vsock_hdr` and moving packets between descriptor
//! chains and host memory (virtio 1.2 section 5.10.6).
//!
//! Owns the wire format only; what a packet means is decided in `host.rs`.

use std::io::{Read, Write};

use virtio_queue::{DescriptorChain, Reader, Writer};
use vm_memory::GuestMemoryMmap;

/// The well-known CID of the host (5.10.4).
pub const HOST_CID: u64 = 2;
/// Socket type stream (5.10.6); seqpacket is not offered.
pub const TYPE_STREAM: u16 = 1;
// Operations, 5.10.6 "Device Operation".
pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;
// SHUTDOWN flags, 5.10.6.5.
pub const SHUTDOWN_RCV: u32 = 1;
pub const SHUTDOWN_SEND: u32 = 2;
pub const SHUTDOWN_BOTH: u32 = SHUTDOWN_RCV | SHUTDOWN_SEND;

/// `sizeof(struct virtio_vsock_hdr)`: packed, little endian.
pub const HDR_LEN: usize = 44;
/// Largest payload accepted or sent in one packet (Linux's VIRTIO_VSOCK_MAX_PKT_BUF_SIZE).
pub const MAX_PAYLOAD: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum PacketError {
    #[error("descriptor chain outside guest memory")]
    Memory(#[source] virtio_queue::Error),
    #[error("packet shorter than its header")]
    ShortHeader,
    /// The header parsed but its length field is wrong; the header is kept so the
    /// sender can be answered with RST.
    #[error("payload length {len} does not fit the {avail} bytes of the chain or the limit")]
    BadLength { hdr: Header, len: u32, avail: usize },
    #[error("receive buffer too small for a header")]
    SmallBuffer,
    #[error("cannot write the guest buffer")]
    Write(#[source] std::io::Error),
}

/// `struct virtio_vsock_hdr` (5.10.6).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl Header {
    pub fn from_bytes(b: &[u8; HDR_LEN]) -> Self {
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let u16_at = |i: usize| u16::from_le_bytes(b[i..i + 2].try_into().expect("2 bytes"));
        Self {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    pub fn to_bytes(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// The RST answering `self`, addressed back to its sender.
    pub fn rst_reply(&self) -> Self {
        Self {
            src_cid: self.dst_cid,
            dst_cid: self.src_cid,
            src_port: self.dst_port,
            dst_port: self.src_port,
            type_: TYPE_STREAM,
            op: OP_RST,
            ..Default::default()
        }
    }
}

/// Reads a guest-sent (TX queue) packet: header, then `len` payload bytes.
pub fn read_packet(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
) -> Result<(Header, Vec<u8>), PacketError> {
    let mut reader = Reader::<()>::new(mem, chain).map_err(PacketError::Memory)?;
    let mut raw = [0u8; HDR_LEN];
    reader
        .read_exact(&mut raw)
        .map_err(|_| PacketError::ShortHeader)?;
    let hdr = Header::from_bytes(&raw);
    let avail = reader.available_bytes();
    let len = hdr.len;
    if len as usize > avail || len as usize > MAX_PAYLOAD {
        return Err(PacketError::BadLength { hdr, len, avail });
    }
    let mut payload = vec![0u8; len as usize];
    reader
        .read_exact(&mut payload)
        .map_err(|_| PacketError::BadLength { hdr, len, avail })?;
    Ok((hdr, payload))
}

/// A guest receive buffer (RX queue chain), ready to take one packet.
pub struct RxBuffer<'a> {
    writer: Writer<'a>,
}

impl<'a> RxBuffer<'a> {
    pub fn new(
        mem: &'a GuestMemoryMmap,
        chain: DescriptorChain<&'a GuestMemoryMmap>,
    ) -> Result<Self, PacketError> {
        let writer = Writer::<()>::new(mem, chain).map_err(PacketError::Memory)?;
        if writer.available_bytes() < HDR_LEN {
            return Err(PacketError::SmallBuffer);
        }
        Ok(Self { writer })
    }

    /// Payload bytes this buffer can take after the header.
    pub fn payload_room(&self) -> usize {
        (self.writer.available_bytes() - HDR_LEN).min(MAX_PAYLOAD)
    }

    /// Writes the packet; `hdr.len` is set from `payload`. Returns the used length.
    pub fn write(mut self, mut hdr: Header, payload: &[u8]) -> Result<u32, PacketError> {
        hdr.len = payload.len() as u32;
        self.writer
            .write_all(&hdr.to_bytes())
            .and_then(|()| self.writer.write_all(payload))
            .map_err(PacketError::Write)?;
        Ok(self.writer.bytes_written() as u32)
    }
}

#[cfg(test)]
mod tests {
    use virtio_queue::QueueT;
    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::devices::virtio::test_utils::*;

    fn sample() -> Header {
        Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 1000,
            dst_port: 52,
            len: 5,
            type_: TYPE_STREAM,
            op: OP_RW,
            flags: 0,
            buf_alloc: 65536,
            fwd_cnt: 17,
        }
    }

    #[test]
    fn header_layout_matches_the_spec() {
        let b = sample().to_bytes();
        assert_eq!(b[0], 3);
        assert_eq!(b[8], 2);
        assert_eq!(&b[16..20], &1000u32.to_le_bytes());
        assert_eq!(&b[24..28], &5u32.to_le_bytes());
        assert_eq!(&b[28..32], &[1, 0, 5, 0]);
        assert_eq!(&b[36..40], &65536u32.to_le_bytes());
        assert_eq!(b[40], 17);
        assert_eq!(Header::from_bytes(&b), sample());
        let r = sample().rst_reply();
        assert_eq!(
            (r.src_cid, r.dst_cid, r.src_port, r.dst_port),
            (2, 3, 52, 1000)
        );
        assert_eq!(r.op, OP_RST);
    }

    fn chain_packet(bytes: &[u8], bufs: &[Buf]) -> Result<(Header, Vec<u8>), PacketError> {
        let mem = guest_memory();
        mem.write_slice(bytes, GuestAddress(0x10_0000)).unwrap();
        let mut tq = TestQueue::new(&mem, 0x1_0000, 16);
        tq.add_chain(bufs);
        let mut q = tq.queue();
        let chain = q.pop_descriptor_chain(&mem).unwrap();
        read_packet(&mem, chain)
    }

    #[test]
    fn parses_header_and_payload_split_across_descriptors() {
        let mut bytes = sample().to_bytes().to_vec();
        bytes.extend_from_slice(b"hello");
        let (h, p) = chain_packet(&bytes, &[ro(0x10_0000, 40), ro(0x10_0028, 9)]).unwrap();
        assert_eq!(h, sample());
        assert_eq!(p, b"hello");
    }

    #[test]
    fn rejects_short_header_and_lying_length() {
        let bytes = sample().to_bytes();
        assert!(matches!(
            chain_packet(&bytes, &[ro(0x10_0000, 20)]),
            Err(PacketError::ShortHeader)
        ));
        match chain_packet(&bytes, &[ro(0x10_0000, 46)]) {
            Err(PacketError::BadLength {
                hdr,
                len: 5,
                avail: 2,
            }) => assert_eq!(hdr, sample()),
            other => panic!("unexpected {other:?}"),
        }
        let mut huge = sample();
        huge.len = u32::MAX;
        assert!(matches!(
            chain_packet(&huge.to_bytes(), &[ro(0x10_0000, 0x10_0000)]),
            Err(PacketError::BadLength { .. })
        ));
        assert!(matches!(
            chain_packet(&bytes, &[ro(MEM_SIZE as u64 - 4, 44)]),
            Err(PacketError::Memory(_))
        ));
    }

    #[test]
    fn rx_buffer_writes_header_then_payload() {
        let mem = guest_memory();
        let mut tq = TestQueue::new(&mem, 0x1_0000, 16);
        tq.add_chain(&[wo(0x10_0000, 44), wo(0x11_0000, 100)]);
        tq.add_chain(&[wo(0x12_0000, 43)]);
        let mut q = tq.queue();
        let rx = RxBuffer::new(&mem, q.pop_descriptor_chain(&mem).unwrap()).unwrap();
        assert_eq!(rx.payload_room(), 100);
        assert_eq!(rx.write(sample(), b"abc").unwrap(), 47);
        let mut raw = [0u8; HDR_LEN];
        mem.read_slice(&mut raw, GuestAddress(0x10_0000)).unwrap();
        assert_eq!(Header::from_bytes(&raw).len, 3);
        let mut p = [0u8; 3];
        mem.read_slice(&mut p, GuestAddress(0x11_0000)).unwrap();
        assert_eq!(&p, b"abc");
        let small = RxBuffer::new(&mem, q.pop_descriptor_chain(&mem).unwrap());
        assert!(matches!(small, Err(PacketError::SmallBuffer)));
    }
}
