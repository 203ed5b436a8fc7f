//! One vsock stream between a guest port and a host unix socket: its state, its
//! credit accounting (virtio 1.2 section 5.10.6.3) and the bytes waiting for the
//! host socket.
//!
//! Owns the unix stream. Which packets to send when is decided in `host.rs`.

use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::num::Wrapping;
use std::os::unix::net::UnixStream;

use event_manager::EventSet;

use super::packet::{Header, HOST_CID, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};

/// Receive buffer we advertise to the guest (buf_alloc): guest bytes we will hold
/// for the host socket before it reads them.
pub const BUF_ALLOC: u32 = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("guest sent {len} bytes with {room} bytes of credit")]
    CreditExceeded { len: usize, room: usize },
    #[error("host socket")]
    Socket(#[source] std::io::Error),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Host-initiated: REQUEST sent, waiting for the guest's RESPONSE.
    AwaitingResponse,
    Established,
}

#[derive(Debug)]
pub struct Connection {
    pub stream: UnixStream,
    pub host_port: u32,
    pub guest_port: u32,
    pub state: State,
    /// The host socket has data (or EOF) we have not read yet.
    pub readable: bool,
    /// The host socket hung up: it is out of epoll and read until EOF.
    pub hung_up: bool,
    /// The host will send nothing more (EOF read, SHUTDOWN sent).
    pub host_eof: bool,
    /// SHUTDOWN flags the guest sent.
    pub guest_shutdown: u32,
    /// Interest registered with epoll (None: not registered).
    pub registered: Option<EventSet>,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    /// Bytes sent to the guest.
    rx_cnt: Wrapping<u32>,
    /// Guest bytes written to the host socket.
    fwd_cnt: Wrapping<u32>,
    /// The fwd_cnt the guest last heard from us.
    fwd_cnt_told: Wrapping<u32>,
    /// Guest bytes the host socket has not taken yet.
    tx_buf: Vec<u8>,
}

impl Connection {
    pub fn new(stream: UnixStream, host_port: u32, guest_port: u32, state: State) -> Self {
        Self {
            stream,
            host_port,
            guest_port,
            state,
            readable: false,
            hung_up: false,
            host_eof: false,
            guest_shutdown: 0,
            registered: None,
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            rx_cnt: Wrapping(0),
            fwd_cnt: Wrapping(0),
            fwd_cnt_told: Wrapping(0),
            tx_buf: Vec::new(),
        }
    }

    /// A packet header for this connection; tells the guest our current fwd_cnt.
    pub fn header(&mut self, guest_cid: u64, op: u16) -> Header {
        self.fwd_cnt_told = self.fwd_cnt;
        Header {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port: self.host_port,
            dst_port: self.guest_port,
            type_: TYPE_STREAM,
            op,
            buf_alloc: BUF_ALLOC,
            fwd_cnt: self.fwd_cnt.0,
            ..Default::default()
        }
    }

    /// Every guest packet carries its receive buffer state.
    pub fn update_peer_credit(&mut self, hdr: &Header) {
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
    }

    /// Bytes we may still send to the guest (5.10.6.3.1).
    pub fn peer_credit(&self) -> usize {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight) as usize
    }

    /// Room left in our receive buffer as the guest last saw it.
    fn guest_view_of_room(&self) -> usize {
        let received = self.fwd_cnt + Wrapping(self.tx_buf.len() as u32);
        let in_flight = (received - self.fwd_cnt_told).0;
        BUF_ALLOC.saturating_sub(in_flight) as usize
    }

    /// True when the guest should hear about freed buffer space: it believes less
    /// than half the buffer is free and we have forwarded bytes since we last said.
    pub fn needs_credit_update(&self) -> bool {
        self.fwd_cnt != self.fwd_cnt_told && self.guest_view_of_room() < BUF_ALLOC as usize / 2
    }

    /// Accepts an RW payload from the guest: straight into the host socket, the rest
    /// buffered. A guest that sends beyond its credit breaks the protocol.
    pub fn push_from_guest(&mut self, data: &[u8]) -> Result<(), ConnectionError> {
        let room = self.guest_view_of_room();
        if data.len() > room {
            return Err(ConnectionError::CreditExceeded {
                len: data.len(),
                room,
            });
        }
        self.tx_buf.extend_from_slice(data);
        self.flush()
    }

    /// Writes buffered guest bytes to the host socket as far as it takes them.
    pub fn flush(&mut self) -> Result<(), ConnectionError> {
        let mut done = 0;
        while done < self.tx_buf.len() {
            match self.stream.write(&self.tx_buf[done..]) {
                Ok(0) => return Err(ConnectionError::Socket(ErrorKind::WriteZero.into())),
                Ok(n) => done += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(ConnectionError::Socket(e)),
            }
        }
        self.tx_buf.drain(..done);
        self.fwd_cnt += Wrapping(done as u32);
        if self.tx_buf.is_empty() && self.guest_shutdown & SHUTDOWN_SEND != 0 {
            // The guest will send no more: pass its EOF on to the host client.
            let _ = self.stream.shutdown(Shutdown::Write);
        }
        Ok(())
    }

    pub fn has_pending_tx(&self) -> bool {
        !self.tx_buf.is_empty()
    }

    /// Whether data should be read from the host socket for the guest now.
    pub fn can_send_data(&self) -> bool {
        self.state == State::Established
            && self.readable
            && !self.host_eof
            && self.guest_shutdown & SHUTDOWN_RCV == 0
            && self.peer_credit() > 0
    }

    /// Reads host bytes for the guest; accounts them as sent.
    pub fn read_host(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.stream.read(buf)?;
        self.rx_cnt += Wrapping(n as u32);
        Ok(n)
    }

    /// The epoll interest this connection needs now (None: stay out of epoll).
    pub fn interest(&self) -> Option<EventSet> {
        if self.hung_up {
            return None;
        }
        let mut set = EventSet::empty();
        if self.state == State::Established && !self.readable && !self.host_eof {
            set |= EventSet::IN;
        }
        if self.has_pending_tx() {
            set |= EventSet::OUT;
        }
        Some(set)
    }
}

#[cfg(test)]
mod tests {
    use super::super::packet::OP_RW;
    use super::*;

    fn pair() -> (Connection, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        (Connection::new(a, 1 << 30, 52, State::Established), b)
    }

    #[test]
    fn peer_credit_follows_guest_headers() {
        let (mut c, mut peer) = pair();
        assert_eq!(c.peer_credit(), 0);
        c.update_peer_credit(&Header {
            buf_alloc: 100,
            fwd_cnt: 0,
            ..Default::default()
        });
        assert_eq!(c.peer_credit(), 100);
        peer.write_all(&[7u8; 60]).unwrap();
        let mut buf = [0u8; 60];
        assert_eq!(c.read_host(&mut buf).unwrap(), 60);
        assert_eq!(c.peer_credit(), 40);
        c.update_peer_credit(&Header {
            buf_alloc: 100,
            fwd_cnt: 50,
            ..Default::default()
        });
        assert_eq!(c.peer_credit(), 90);
        // A guest shrinking its buffer below what is in flight leaves no credit.
        c.update_peer_credit(&Header {
            buf_alloc: 5,
            fwd_cnt: 50,
            ..Default::default()
        });
        assert_eq!(c.peer_credit(), 0);
        // Counters wrap.
        c.rx_cnt = Wrapping(3);
        c.update_peer_credit(&Header {
            buf_alloc: 100,
            fwd_cnt: u32::MAX - 1,
            ..Default::default()
        });
        assert_eq!(c.peer_credit(), 95);
    }

    #[test]
    fn guest_bytes_reach_the_socket_and_count() {
        let (mut c, mut peer) = pair();
        c.push_from_guest(b"hello").unwrap();
        let mut buf = [0u8; 5];
        peer.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        assert_eq!(c.fwd_cnt.0, 5);
        let h = c.header(3, OP_RW);
        assert_eq!(
            (h.fwd_cnt, h.buf_alloc, h.src_cid, h.dst_cid),
            (5, BUF_ALLOC, 2, 3)
        );
    }

    #[test]
    fn credit_update_threshold() {
        let (mut c, _peer) = pair();
        c.fwd_cnt = Wrapping(10);
        assert!(!c.needs_credit_update());
        c.fwd_cnt = Wrapping(BUF_ALLOC / 2 + 1);
        assert!(c.needs_credit_update());
        // Telling the guest (any header carries fwd_cnt) resets the threshold.
        c.header(3, OP_RW);
        assert!(!c.needs_credit_update());
    }

    #[test]
    fn guest_beyond_credit_is_refused() {
        let (mut c, _peer) = pair();
        c.tx_buf = vec![0u8; BUF_ALLOC as usize - 10];
        assert!(matches!(
            c.push_from_guest(&[1u8; 11]),
            Err(ConnectionError::CreditExceeded { len: 11, room: 10 })
        ));
        c.tx_buf.clear();
        c.fwd_cnt = Wrapping(BUF_ALLOC - 10);
        assert!(c.push_from_guest(&[1u8; 11]).is_err());
        c.push_from_guest(&[1u8; 10]).unwrap();
        assert_eq!(c.fwd_cnt.0, BUF_ALLOC);
    }

    #[test]
    fn interest_tracks_state() {
        let (mut c, _peer) = pair();
        assert_eq!(c.interest(), Some(EventSet::IN));
        c.readable = true;
        assert_eq!(c.interest(), Some(EventSet::empty()));
        c.state = State::AwaitingResponse;
        c.readable = false;
        assert_eq!(c.interest(), Some(EventSet::empty()));
        c.hung_up = true;
        assert_eq!(c.interest(), None);
    }
}
