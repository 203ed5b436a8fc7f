//! virtio-vsock tests: a hand-driven guest on in-memory virtqueues, the real event
//! manager, and real unix sockets on the host side.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_manager::{EventManager, SubscriberOps};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::packet::*;
use super::*;
use crate::devices::virtio::device::{IrqTrigger, VirtioDevice};
use crate::devices::virtio::test_utils::*;

const GUEST_CID: u64 = 3;
const RX_BUF_LEN: u32 = 44 + 4096;

fn unique_path() -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    std::env::temp_dir().join(format!("spore-vsock-test-{}-{n}.sock", std::process::id()))
}

struct Guest {
    mem: GuestMemoryMmap,
    dev: Arc<Mutex<Vsock>>,
    em: EventManager<Arc<Mutex<Vsock>>>,
    evts: Vec<EventFd>,
    queues: Vec<TestQueue>,
    rx_addr: HashMap<u32, u64>,
    rx_seen: u16,
    next_rx: u64,
    next_tx: u64,
    path: PathBuf,
}

impl Guest {
    fn new() -> Self {
        let mem = guest_memory();
        let path = unique_path();
        let evts: Vec<EventFd> = (0..3)
            .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
            .collect();
        let irq = Arc::new(IrqTrigger::new(EventFd::new(EFD_NONBLOCK).unwrap()));
        let mut dev = Vsock::new(
            mem.clone(),
            irq,
            evts.iter().map(|e| e.try_clone().unwrap()).collect(),
            EventFd::new(EFD_NONBLOCK).unwrap(),
            GUEST_CID,
            &path,
        )
        .unwrap();
        let queues: Vec<TestQueue> = [0x1_0000, 0x4_0000, 0x7_0000]
            .iter()
            .map(|&base| TestQueue::new(&mem, base, 256))
            .collect();
        dev.activate(queues.iter().map(|q| q.queue()).collect(), VERSION_1)
            .unwrap();
        let dev = Arc::new(Mutex::new(dev));
        let mut em = EventManager::new().unwrap();
        em.add_subscriber(dev.clone());
        let mut g = Self {
            mem,
            dev,
            em,
            evts,
            queues,
            rx_addr: HashMap::new(),
            rx_seen: 0,
            next_rx: 0,
            next_tx: 0,
            path,
        };
        g.give_rx(32);
        g
    }

    /// Runs the event loop until it goes quiet.
    fn pump(&mut self) {
        for _ in 0..20 {
            if self.em.run_with_timeout(1).unwrap() == 0 {
                return;
            }
        }
    }

    fn give_rx(&mut self, n: usize) {
        for _ in 0..n {
            // 96 buffer slots below the TX area; never more than 96 outstanding.
            let addr = 0x10_0000 + (self.next_rx % 96) * 0x2000;
            let head = self.queues[0].add_chain(&[wo(addr, RX_BUF_LEN)]);
            self.rx_addr.insert(u32::from(head), addr);
            self.next_rx += 1;
        }
        self.evts[0].write(1).unwrap();
        self.pump();
    }

    /// Puts raw bytes on the TX queue as one packet and notifies.
    fn send_raw(&mut self, bytes: &[u8], desc_len: u32) {
        let addr = 0x20_0000 + (self.next_tx % 16) * 0x1_1000;
        self.next_tx += 1;
        self.mem.write_slice(bytes, GuestAddress(addr)).unwrap();
        self.queues[1].add_chain(&[ro(addr, desc_len)]);
        self.evts[1].write(1).unwrap();
        self.pump();
    }

    fn send(&mut self, op: u16, src_port: u32, dst_port: u32, payload: &[u8]) {
        let hdr = Header {
            src_cid: GUEST_CID,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            len: payload.len() as u32,
            type_: TYPE_STREAM,
            op,
            buf_alloc: 64 * 1024,
            ..Default::default()
        };
        self.send_hdr(hdr, payload);
    }

    fn send_hdr(&mut self, hdr: Header, payload: &[u8]) {
        let mut bytes = hdr.to_bytes().to_vec();
        bytes.extend_from_slice(payload);
        let len = bytes.len() as u32;
        self.send_raw(&bytes, len);
    }

    /// Packets the device delivered since the last call.
    fn recv(&mut self) -> Vec<(Header, Vec<u8>)> {
        let mut out = Vec::new();
        while self.rx_seen != self.queues[0].used_idx() {
            let (head, len) = self.queues[0].used_elem(self.rx_seen);
            self.rx_seen = self.rx_seen.wrapping_add(1);
            let addr = self.rx_addr[&head];
            assert!(len as usize >= HDR_LEN);
            let mut raw = [0u8; HDR_LEN];
            self.mem.read_slice(&mut raw, GuestAddress(addr)).unwrap();
            let hdr = Header::from_bytes(&raw);
            assert_eq!(len as usize, HDR_LEN + hdr.len as usize);
            let mut payload = vec![0u8; hdr.len as usize];
            self.mem
                .read_slice(&mut payload, GuestAddress(addr + HDR_LEN as u64))
                .unwrap();
            out.push((hdr, payload));
        }
        out
    }

    fn recv_one(&mut self) -> (Header, Vec<u8>) {
        let mut got = self.recv();
        assert_eq!(got.len(), 1, "expected one packet, got {got:?}");
        got.pop().unwrap()
    }

    /// Host client connects to guest port 52; returns the stream and host port.
    fn host_connect(&mut self, guest_buf_alloc: u32) -> (UnixStream, u32) {
        let mut client = UnixStream::connect(&self.path).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        client.write_all(b"CONNECT 52\n").unwrap();
        self.pump();
        let (req, _) = self.recv_one();
        assert_eq!(req.op, OP_REQUEST);
        assert_eq!(
            (req.src_cid, req.dst_cid, req.dst_port),
            (HOST_CID, GUEST_CID, 52)
        );
        let resp = Header {
            src_cid: GUEST_CID,
            dst_cid: HOST_CID,
            src_port: 52,
            dst_port: req.src_port,
            type_: TYPE_STREAM,
            op: OP_RESPONSE,
            buf_alloc: guest_buf_alloc,
            ..Default::default()
        };
        self.send_hdr(resp, &[]);
        let expected = format!("OK {}\n", req.src_port);
        let mut line = vec![0u8; expected.len()];
        client.read_exact(&mut line).unwrap();
        assert_eq!(line, expected.as_bytes());
        (client, req.src_port)
    }
}

fn rw_hdr(host_port: u32, fwd_cnt: u32, buf_alloc: u32, op: u16) -> Header {
    Header {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port: 52,
        dst_port: host_port,
        type_: TYPE_STREAM,
        op,
        buf_alloc,
        fwd_cnt,
        ..Default::default()
    }
}

#[test]
fn host_initiated_request_response_rw_shutdown() {
    let mut g = Guest::new();
    let (mut client, port) = g.host_connect(64 * 1024);
    assert!(port >= 1 << 30);
    client.write_all(b"ping").unwrap();
    g.pump();
    let (rw, data) = g.recv_one();
    assert_eq!((rw.op, rw.src_port, rw.dst_port), (OP_RW, port, 52));
    assert_eq!(data, b"ping");
    g.send_hdr(
        Header {
            len: 4,
            ..rw_hdr(port, 4, 65536, OP_RW)
        },
        b"pong",
    );
    let mut buf = [0u8; 4];
    client.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"pong");
    g.send_hdr(
        Header {
            flags: SHUTDOWN_BOTH,
            ..rw_hdr(port, 4, 65536, OP_SHUTDOWN)
        },
        &[],
    );
    assert_eq!(client.read(&mut buf).unwrap(), 0, "client sees EOF");
    let (rst, _) = g.recv_one();
    assert_eq!((rst.op, rst.dst_port), (OP_RST, 52));
    assert!(g.dev.lock().unwrap().host.conns.is_empty());
}

#[test]
fn guest_initiated_connect_and_host_close() {
    let mut g = Guest::new();
    let mut lpath = g.path.clone().into_os_string();
    lpath.push("_1234");
    let listener = UnixListener::bind(&lpath).unwrap();
    g.send(OP_REQUEST, 5000, 1234, &[]);
    let (resp, _) = g.recv_one();
    assert_eq!(
        (resp.op, resp.src_port, resp.dst_port),
        (OP_RESPONSE, 1234, 5000)
    );
    assert_eq!(resp.buf_alloc, BUF_ALLOC);
    let (mut host, _) = listener.accept().unwrap();
    g.send(OP_RW, 5000, 1234, b"hi");
    let mut buf = [0u8; 2];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hi");
    host.write_all(b"yo").unwrap();
    drop(host);
    g.pump();
    let got = g.recv();
    assert_eq!(got[0].0.op, OP_RW);
    assert_eq!(got[0].1, b"yo");
    assert_eq!(got.last().unwrap().0.op, OP_SHUTDOWN);
    assert_eq!(got.last().unwrap().0.flags, SHUTDOWN_BOTH);
    assert!(g.dev.lock().unwrap().host.conns.is_empty());
    let _ = std::fs::remove_file(&lpath);
}

#[test]
fn guest_connect_to_missing_host_port_gets_rst() {
    let mut g = Guest::new();
    g.send(OP_REQUEST, 5000, 999, &[]);
    let (rst, _) = g.recv_one();
    assert_eq!(
        (rst.op, rst.src_port, rst.dst_port, rst.dst_cid),
        (OP_RST, 999, 5000, GUEST_CID)
    );
}

#[test]
fn credit_limits_host_to_guest_data() {
    let mut g = Guest::new();
    let (mut client, port) = g.host_connect(8);
    client.write_all(&[9u8; 20]).unwrap();
    g.pump();
    let (rw, data) = g.recv_one();
    assert_eq!((rw.op, data.len()), (OP_RW, 8));
    // No credit: nothing more until the guest says it consumed the bytes.
    g.pump();
    assert!(g.recv().is_empty());
    g.send_hdr(rw_hdr(port, 8, 8, OP_CREDIT_UPDATE), &[]);
    assert_eq!(g.recv_one().1.len(), 8);
    g.send_hdr(rw_hdr(port, 16, 8, OP_CREDIT_UPDATE), &[]);
    assert_eq!(g.recv_one().1.len(), 4);
    // A credit request is answered with our buffer state.
    g.send_hdr(rw_hdr(port, 20, 8, OP_CREDIT_REQUEST), &[]);
    let (upd, _) = g.recv_one();
    assert_eq!(
        (upd.op, upd.buf_alloc, upd.fwd_cnt),
        (OP_CREDIT_UPDATE, BUF_ALLOC, 0)
    );
}

#[test]
fn guest_rst_closes_the_host_client() {
    let mut g = Guest::new();
    let (mut client, port) = g.host_connect(4096);
    g.send_hdr(rw_hdr(port, 0, 4096, OP_RST), &[]);
    let mut buf = [0u8; 1];
    assert_eq!(client.read(&mut buf).unwrap(), 0);
    assert!(g.recv().is_empty(), "no answer to an RST");
}

#[test]
fn bad_handshake_closes_the_client() {
    let mut g = Guest::new();
    let mut client = UnixStream::connect(&g.path).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    client.write_all(b"HELLO 52\n").unwrap();
    g.pump();
    let mut buf = [0u8; 1];
    assert_eq!(client.read(&mut buf).unwrap(), 0);
    assert!(g.recv().is_empty());
}

#[test]
fn garbage_from_the_guest_is_answered_or_dropped() {
    let mut g = Guest::new();
    // Too short for a header: dropped.
    g.send_raw(&[1u8; 10], 10);
    // Wrong source CID: dropped.
    g.send_hdr(
        Header {
            src_cid: 77,
            ..rw_hdr(1, 0, 0, OP_REQUEST)
        },
        &[],
    );
    assert!(g.recv().is_empty());
    // Wrong destination, wrong type, unknown op, RW without connection: RST.
    g.send_hdr(
        Header {
            dst_cid: 9,
            ..rw_hdr(1, 0, 0, OP_REQUEST)
        },
        &[],
    );
    g.send_hdr(
        Header {
            type_: 2,
            ..rw_hdr(1, 0, 0, OP_REQUEST)
        },
        &[],
    );
    g.send_hdr(rw_hdr(1, 0, 0, 99), &[]);
    g.send_hdr(rw_hdr(1, 0, 0, OP_RW), &[]);
    // Length beyond the descriptor.
    let lying = Header {
        len: 5000,
        ..rw_hdr(1, 0, 0, OP_RW)
    };
    g.send_raw(&lying.to_bytes(), 50);
    let got = g.recv();
    assert_eq!(got.len(), 5);
    assert!(got
        .iter()
        .all(|(h, _)| h.op == OP_RST && h.dst_cid == GUEST_CID));
    // Pseudo-random headers: no panic.
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for _ in 0..300 {
        let mut raw = [0u8; HDR_LEN + 8];
        for b in raw.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        raw[0..8].copy_from_slice(&GUEST_CID.to_le_bytes());
        let len = (x % 80) as u32;
        g.send_raw(&raw, len);
    }
    // Drain the answers the guest never gave buffers for.
    while !g.recv().is_empty() {
        g.give_rx(32);
    }
    // Still serving.
    let (_client, port) = g.host_connect(4096);
    assert!(port >= 1 << 30);
}

#[test]
fn transport_reset_event_drops_connections_and_changes_identity() {
    let mut g = Guest::new();
    let (mut client, _) = g.host_connect(4096);
    g.queues[2].add_chain(&[wo(0x38_0000, 4)]);
    g.mem
        .write_obj(0xffff_ffffu32, GuestAddress(0x38_0000))
        .unwrap();
    let old_path = g.path.clone();
    let new_path = unique_path();
    g.dev
        .lock()
        .unwrap()
        .request_transport_reset(Some(42), Some(&new_path))
        .unwrap();
    // The new socket is taken at once: a second request for it fails.
    assert!(g
        .dev
        .lock()
        .unwrap()
        .request_transport_reset(None, Some(&new_path))
        .is_err());
    g.pump();
    assert_eq!(g.queues[2].used_idx(), 1);
    assert_eq!(g.queues[2].used_elem(0).1, 4);
    assert_eq!(g.mem.read_obj::<u32>(GuestAddress(0x38_0000)).unwrap(), 0);
    let mut cid = [0u8; 8];
    g.dev.lock().unwrap().read_config(0, &mut cid);
    assert_eq!(u64::from_le_bytes(cid), 42);
    let mut buf = [0u8; 1];
    assert_eq!(client.read(&mut buf).unwrap(), 0);
    // Host clients now come in through the new socket; the old one is closed.
    assert!(UnixStream::connect(&old_path).is_err());
    g.path = new_path.clone();
    let mut c2 = UnixStream::connect(&new_path).unwrap();
    c2.write_all(b"CONNECT 7\n").unwrap();
    g.pump();
    let (req, _) = g.recv_one();
    assert_eq!((req.op, req.dst_port, req.dst_cid), (OP_REQUEST, 7, 42));
    let _ = std::fs::remove_file(&old_path);
}

#[test]
fn socket_file_is_removed_on_drop() {
    let g = Guest::new();
    let path = g.path.clone();
    assert!(path.exists());
    drop(g);
    assert!(!path.exists());
}
