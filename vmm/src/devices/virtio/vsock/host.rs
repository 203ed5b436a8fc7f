//! The host side of vsock: the per-VM unix listener, the `CONNECT <port>\n`
//! handshake, the connection table and what each guest packet does to it
//! (virtio 1.2 section 5.10.6).
//!
//! Owns the unix sockets and the queue of control packets for the guest. It does not
//! touch virtqueues (`device.rs`) or epoll (`event_handler.rs`).

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use event_manager::EventSet;

use super::connection::{Connection, State};
use super::packet::*;

/// Host ports for host-initiated connections start here, above well-known ports.
const FIRST_EPHEMERAL_PORT: u32 = 1 << 30;
const MAX_CONNECTIONS: usize = 1024;
const MAX_PENDING_CLIENTS: usize = 64;
/// Control packets waiting for guest receive buffers; more are dropped.
const MAX_CONTROL: usize = 4096;
/// Longest handshake line: "CONNECT 4294967295\n" fits.
const MAX_LINE: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("cannot listen on vsock socket {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// (host port, guest port).
pub type ConnKey = (u32, u32);

/// A host client that connected to the listener and has not finished its
/// `CONNECT <port>\n` line yet.
#[derive(Debug)]
pub struct Client {
    pub stream: UnixStream,
    line: Vec<u8>,
    pub registered: bool,
}

pub struct HostSide {
    uds_path: PathBuf,
    pub guest_cid: u64,
    pub listener: UnixListener,
    pub clients: HashMap<RawFd, Client>,
    pub conns: HashMap<ConnKey, Connection>,
    pub by_fd: HashMap<RawFd, ConnKey>,
    /// Closed streams still to be taken out of epoll (if registered), then dropped.
    pub dead: Vec<(UnixStream, bool)>,
    control: VecDeque<Header>,
    next_port: u32,
}

impl HostSide {
    pub fn bind(uds_path: &Path, guest_cid: u64) -> Result<Self, HostError> {
        Ok(Self::with_listener(listen(uds_path)?, uds_path, guest_cid))
    }

    /// The host side on a listener bound ahead of time at `uds_path` (a clone
    /// process binds its socket before its clone order arrives).
    pub fn with_listener(listener: UnixListener, uds_path: &Path, guest_cid: u64) -> Self {
        Self {
            uds_path: uds_path.to_owned(),
            guest_cid,
            listener,
            clients: HashMap::new(),
            conns: HashMap::new(),
            by_fd: HashMap::new(),
            dead: Vec::new(),
            control: VecDeque::new(),
            next_port: FIRST_EPHEMERAL_PORT,
        }
    }

    pub fn uds_path(&self) -> &Path {
        &self.uds_path
    }

    /// Serves host clients on `listener` at `uds_path` from now on; returns the old
    /// listener. The old path is not unlinked: after a fork it is the template's.
    pub fn replace_listener(&mut self, listener: UnixListener, uds_path: PathBuf) -> UnixListener {
        self.uds_path = uds_path;
        std::mem::replace(&mut self.listener, listener)
    }

    fn push_control(&mut self, hdr: Header) {
        if self.control.len() >= MAX_CONTROL {
            log::warn!("vsock: control queue full, dropping op {}", hdr.op);
            return;
        }
        self.control.push_back(hdr);
    }

    /// Closes a connection, telling the guest with `op` (RST or SHUTDOWN) if given.
    fn kill(&mut self, key: ConnKey, tell: Option<(u16, u32)>) {
        let Some(mut c) = self.conns.remove(&key) else {
            return;
        };
        if let Some((op, flags)) = tell {
            let mut hdr = c.header(self.guest_cid, op);
            hdr.flags = flags;
            self.push_control(hdr);
        }
        self.by_fd.remove(&c.stream.as_raw_fd());
        self.dead.push((c.stream, c.registered.is_some()));
    }

    /// Drops every connection and client without telling the guest (device or
    /// transport reset: the guest forgets its side too).
    pub fn reset_all(&mut self) {
        for (_, c) in self.conns.drain() {
            self.dead.push((c.stream, c.registered.is_some()));
        }
        for (_, c) in self.clients.drain() {
            self.dead.push((c.stream, c.registered));
        }
        self.by_fd.clear();
        self.control.clear();
    }

    /// The listener is readable: take every waiting client.
    pub fn accept_clients(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.clients.len() >= MAX_PENDING_CLIENTS
                        || stream.set_nonblocking(true).is_err()
                    {
                        log::warn!("vsock: refusing host client");
                        continue;
                    }
                    let client = Client {
                        stream,
                        line: Vec::new(),
                        registered: false,
                    };
                    self.clients.insert(client.stream.as_raw_fd(), client);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    if e.kind() != ErrorKind::WouldBlock {
                        log::warn!("vsock: accept: {e}");
                    }
                    return;
                }
            }
        }
    }

    /// A client sent (part of) its handshake. Reads byte by byte so no data after
    /// the newline is taken from the stream.
    pub fn client_readable(&mut self, fd: RawFd) {
        let Some(client) = self.clients.get_mut(&fd) else {
            return;
        };
        let mut byte = [0u8; 1];
        let port = loop {
            match client.stream.read(&mut byte) {
                Ok(1) if byte[0] == b'\n' => break parse_connect(&client.line),
                Ok(1) if client.line.len() < MAX_LINE => client.line.push(byte[0]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                // EOF, error or a line too long.
                _ => break None,
            }
        };
        let client = self.clients.remove(&fd).expect("client present");
        let Some(guest_port) = port.filter(|_| self.conns.len() < MAX_CONNECTIONS) else {
            log::warn!("vsock: bad or unserviceable handshake from host client");
            self.dead.push((client.stream, client.registered));
            return;
        };
        let host_port = self.allocate_port(guest_port);
        let mut c = Connection::new(
            client.stream,
            host_port,
            guest_port,
            State::AwaitingResponse,
        );
        c.registered = client.registered.then_some(EventSet::IN);
        let hdr = c.header(self.guest_cid, OP_REQUEST);
        self.by_fd.insert(fd, (host_port, guest_port));
        self.conns.insert((host_port, guest_port), c);
        self.push_control(hdr);
    }

    fn allocate_port(&mut self, guest_port: u32) -> u32 {
        loop {
            let p = self.next_port;
            self.next_port = self
                .next_port
                .checked_add(1)
                .unwrap_or(FIRST_EPHEMERAL_PORT);
            if !self.conns.contains_key(&(p, guest_port)) {
                return p;
            }
        }
    }

    /// One packet from the guest's TX queue.
    pub fn on_guest_packet(&mut self, hdr: &Header, payload: &[u8]) {
        if hdr.src_cid != self.guest_cid {
            log::warn!("vsock: dropping packet from cid {}", hdr.src_cid);
            return;
        }
        if hdr.dst_cid != HOST_CID || hdr.type_ != TYPE_STREAM {
            if hdr.op != OP_RST {
                self.push_control(hdr.rst_reply());
            }
            return;
        }
        let key = (hdr.dst_port, hdr.src_port);
        let Some(c) = self.conns.get_mut(&key) else {
            match hdr.op {
                OP_REQUEST => self.connect_to_host(hdr),
                OP_RST => {}
                _ => self.push_control(hdr.rst_reply()),
            }
            return;
        };
        c.update_peer_credit(hdr);
        let outcome = match (c.state, hdr.op) {
            (State::AwaitingResponse, OP_RESPONSE) => {
                c.state = State::Established;
                let ok = format!("OK {}\n", c.host_port);
                c.stream.write_all(ok.as_bytes()).map_err(|_| ())
            }
            (State::Established, OP_RW) => c.push_from_guest(payload).map_err(|e| {
                log::warn!("vsock: {e}");
            }),
            (State::Established, OP_CREDIT_UPDATE) => Ok(()),
            (State::Established, OP_CREDIT_REQUEST) => {
                let h = c.header(self.guest_cid, OP_CREDIT_UPDATE);
                self.push_control(h);
                return;
            }
            (State::Established, OP_SHUTDOWN) => {
                c.guest_shutdown |= hdr.flags & SHUTDOWN_BOTH;
                if c.guest_shutdown == SHUTDOWN_BOTH {
                    // Best effort: hand over what the host can still take, then close.
                    let _ = c.flush();
                    self.kill(key, Some((OP_RST, 0)));
                    return;
                }
                c.flush().map_err(|_| ())
            }
            (_, OP_RST) => {
                self.kill(key, None);
                return;
            }
            // REQUEST on a live connection, RW before RESPONSE, unknown ops.
            _ => Err(()),
        };
        match outcome {
            Ok(()) => self.credit_update_if_needed(key),
            Err(()) => self.kill(key, Some((OP_RST, 0))),
        }
    }

    /// A malformed packet from the guest: reset the connection it names.
    pub fn reset_connection(&mut self, hdr: &Header) {
        if hdr.src_cid != self.guest_cid || hdr.op == OP_RST {
            return;
        }
        let key = (hdr.dst_port, hdr.src_port);
        if self.conns.contains_key(&key) {
            self.kill(key, Some((OP_RST, 0)));
        } else {
            self.push_control(hdr.rst_reply());
        }
    }

    fn credit_update_if_needed(&mut self, key: ConnKey) {
        if let Some(c) = self.conns.get_mut(&key) {
            if c.needs_credit_update() {
                let h = c.header(self.guest_cid, OP_CREDIT_UPDATE);
                self.push_control(h);
            }
        }
    }

    /// Guest-initiated: REQUEST to host port P connects to `<uds_path>_<P>`.
    fn connect_to_host(&mut self, hdr: &Header) {
        let mut path = OsString::from(self.uds_path.as_os_str());
        path.push(format!("_{}", hdr.dst_port));
        let stream = (self.conns.len() < MAX_CONNECTIONS)
            .then(|| UnixStream::connect(&path).and_then(|s| s.set_nonblocking(true).map(|()| s)));
        let Some(Ok(stream)) = stream else {
            log::info!("vsock: guest connect to host port {} refused", hdr.dst_port);
            self.push_control(hdr.rst_reply());
            return;
        };
        let mut c = Connection::new(stream, hdr.dst_port, hdr.src_port, State::Established);
        c.update_peer_credit(hdr);
        let resp = c.header(self.guest_cid, OP_RESPONSE);
        self.by_fd
            .insert(c.stream.as_raw_fd(), (hdr.dst_port, hdr.src_port));
        self.conns.insert((hdr.dst_port, hdr.src_port), c);
        self.push_control(resp);
    }

    /// epoll reported `set` on a connection's stream.
    pub fn conn_event(&mut self, fd: RawFd, set: EventSet) {
        let Some(&key) = self.by_fd.get(&fd) else {
            return;
        };
        let c = self.conns.get_mut(&key).expect("by_fd and conns agree");
        if set.intersects(EventSet::HANG_UP | EventSet::ERROR) {
            c.hung_up = true;
            c.readable = true;
        }
        if set.contains(EventSet::IN) {
            c.readable = true;
        }
        if set.contains(EventSet::OUT) || c.has_pending_tx() {
            if c.flush().is_err() {
                self.kill(key, Some((OP_RST, 0)));
                return;
            }
            self.credit_update_if_needed(key);
        }
    }

    /// The next packet for the guest, given `room` payload bytes in its buffer: a
    /// control packet first, else data read from a host socket. None: nothing to send.
    pub fn next_packet(&mut self, room: usize, buf: &mut Vec<u8>) -> Option<Header> {
        buf.clear();
        loop {
            if let Some(h) = self.control.pop_front() {
                return Some(h);
            }
            let key = *self
                .conns
                .iter()
                .find(|(_, c)| c.can_send_data())
                .map(|(k, _)| k)?;
            let c = self.conns.get_mut(&key).expect("key just found");
            buf.resize(room.min(c.peer_credit()), 0);
            match c.read_host(buf) {
                Ok(0) if c.hung_up => self.kill(key, Some((OP_SHUTDOWN, SHUTDOWN_BOTH))),
                Ok(0) => {
                    c.host_eof = true;
                    let mut h = c.header(self.guest_cid, OP_SHUTDOWN);
                    h.flags = SHUTDOWN_SEND;
                    self.push_control(h);
                }
                Ok(n) => {
                    buf.truncate(n);
                    return Some(c.header(self.guest_cid, OP_RW));
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => c.readable = false,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => self.kill(key, Some((OP_RST, 0))),
            }
            buf.clear();
        }
    }
}

impl Drop for HostSide {
    fn drop(&mut self) {
        // The socket file is ours; leave no stale path for the next VM.
        let _ = std::fs::remove_file(&self.uds_path);
    }
}

/// A nonblocking listener at `path`.
pub fn listen(path: &Path) -> Result<UnixListener, HostError> {
    let bind = || {
        let l = UnixListener::bind(path)?;
        l.set_nonblocking(true)?;
        Ok(l)
    };
    bind().map_err(|source| HostError::Bind {
        path: path.to_owned(),
        source,
    })
}

/// Parses `CONNECT <port>` (the newline already stripped).
fn parse_connect(line: &[u8]) -> Option<u32> {
    let line = std::str::from_utf8(line).ok()?;
    let port = line.strip_prefix("CONNECT ")?;
    port.trim_end_matches('\r').parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_connect_lines() {
        assert_eq!(parse_connect(b"CONNECT 52"), Some(52));
        assert_eq!(parse_connect(b"CONNECT 4294967295"), Some(u32::MAX));
        assert_eq!(parse_connect(b"CONNECT 4294967296"), None);
        assert_eq!(parse_connect(b"CONNECT -1"), None);
        assert_eq!(parse_connect(b"connect 52"), None);
        assert_eq!(parse_connect(b"CONNECT"), None);
        assert_eq!(parse_connect(&[0xff, 0xfe]), None);
    }
}
