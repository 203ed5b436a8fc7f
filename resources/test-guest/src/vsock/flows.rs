//! The two vsock conversations the host test expects.
//!
//! Out: guest port 2000 connects to host port 5000 (the VMM bridges it to the
//! unix socket `<uds>_5000`, an echo server), sends a line and checks the echo.
//! In: the host connects to guest port 1234 (`CONNECT 1234` on `<uds>`), sends a
//! line, and gets it back in upper case.
//!
//! A connection request for the listening port may arrive while the outbound
//! conversation is still running; the `Listener` keeps it until `accept_in`.

use super::packet::{
    Conn, Hdr, HOST_CID, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST,
    OP_RW, OP_SHUTDOWN, SHUTDOWN_RCV, SHUTDOWN_SEND,
};
use super::{Packet, Vsock, MAX_DATA};
use crate::io;

pub const LISTEN_PORT: u32 = 1234;
const LOCAL_PORT: u32 = 2000;
const ECHO_PORT: u32 = 5000;
const PING: &[u8] = b"ping from guest\n";

/// Seconds to wait for each step. The guest's code is emulated on this host and
/// the host side of each step is a thread or process that must be scheduled.
const CONNECT_SECS: u64 = 60;
const DATA_SECS: u64 = 60;
const ACCEPT_SECS: u64 = 120;
const CLOSE_SECS: u64 = 5;

/// The listening socket on `port`, holding at most one pending request.
pub struct Listener {
    port: u32,
    pending: Option<Hdr>,
}

impl Listener {
    pub fn new(port: u32) -> Listener {
        Listener {
            port,
            pending: None,
        }
    }
}

/// What to do with a packet that is not for the connection being served.
fn handle_stray(
    vsock: &mut Vsock,
    listener: &mut Listener,
    pkt: &Packet,
) -> Result<(), &'static str> {
    let hdr = &pkt.hdr;
    if hdr.op == OP_REQUEST && hdr.dst_port == listener.port && listener.pending.is_none() {
        listener.pending = Some(*hdr);
        return Ok(());
    }
    if hdr.op == OP_RST {
        return Ok(());
    }
    vsock.reset_peer(hdr)
}

/// Receives the next packet for `conn`, answering credit requests and setting
/// stray packets aside. None at the deadline.
fn recv_for(
    vsock: &mut Vsock,
    listener: &mut Listener,
    conn: &mut Conn,
    deadline: u64,
) -> Result<Option<Packet>, &'static str> {
    while let Some(pkt) = vsock.recv(deadline)? {
        if !conn.owns(&pkt.hdr) {
            handle_stray(vsock, listener, &pkt)?;
            continue;
        }
        conn.update_credit(&pkt.hdr);
        if pkt.hdr.op == OP_CREDIT_REQUEST {
            vsock.send(conn, OP_CREDIT_UPDATE, 0, &[])?;
            continue;
        }
        return Ok(Some(pkt));
    }
    Ok(None)
}

/// Sends `data` as one RW packet, asking for credit first if the peer has too
/// little room.
fn send_data(
    vsock: &mut Vsock,
    listener: &mut Listener,
    conn: &mut Conn,
    data: &[u8],
) -> Result<(), &'static str> {
    let deadline = io::deadline(DATA_SECS);
    let mut asked = false;
    while (conn.credit() as usize) < data.len() {
        if !asked {
            vsock.send(conn, OP_CREDIT_REQUEST, 0, &[])?;
            asked = true;
        }
        match recv_for(vsock, listener, conn, deadline)?.map(|pkt| pkt.hdr.op) {
            None => return Err("vsock: no credit"),
            Some(OP_CREDIT_UPDATE) => {}
            Some(OP_RST | OP_SHUTDOWN) => return Err("vsock: peer closed"),
            Some(_) => return Err("vsock: unexpected packet"),
        }
    }
    vsock.send(conn, OP_RW, 0, data)
}

/// Receives stream bytes into `buf` until it holds `want` bytes or a newline.
/// Returns how many bytes it holds.
fn recv_data(
    vsock: &mut Vsock,
    listener: &mut Listener,
    conn: &mut Conn,
    buf: &mut [u8; MAX_DATA],
    want: usize,
) -> Result<usize, &'static str> {
    let deadline = io::deadline(DATA_SECS);
    let mut have = 0;
    while have < want && !buf[..have].contains(&b'\n') {
        let pkt = recv_for(vsock, listener, conn, deadline)?.ok_or("vsock: no data")?;
        match pkt.hdr.op {
            OP_RW => {
                let data = pkt.payload();
                if have + data.len() > MAX_DATA {
                    return Err("vsock: too much data");
                }
                buf[have..have + data.len()].copy_from_slice(data);
                have += data.len();
                conn.fwd_cnt = conn.fwd_cnt.wrapping_add(data.len() as u32);
            }
            OP_CREDIT_UPDATE => {}
            OP_RST | OP_SHUTDOWN => return Err("vsock: peer closed early"),
            _ => return Err("vsock: unexpected packet"),
        }
    }
    Ok(have)
}

/// Ends `conn`: SHUTDOWN both ways, then wait briefly for the peer's RST
/// (section 5.10.6.5), answering its own SHUTDOWN with RST.
fn close(vsock: &mut Vsock, listener: &mut Listener, conn: &mut Conn) -> Result<(), &'static str> {
    vsock.send(conn, OP_SHUTDOWN, SHUTDOWN_RCV | SHUTDOWN_SEND, &[])?;
    let deadline = io::deadline(CLOSE_SECS);
    while let Some(pkt) = recv_for(vsock, listener, conn, deadline)? {
        match pkt.hdr.op {
            OP_RST => return Ok(()),
            OP_SHUTDOWN => return vsock.send(conn, OP_RST, 0, &[]),
            _ => {}
        }
    }
    // No answer: reset our side so the device forgets the connection.
    vsock.send(conn, OP_RST, 0, &[])
}

/// Guest-initiated: connect to the host's echo service and check the echo.
pub fn connect_out(vsock: &mut Vsock, listener: &mut Listener) -> Result<(), &'static str> {
    let mut conn = Conn::new(LOCAL_PORT, HOST_CID, ECHO_PORT);
    vsock.send(&mut conn, OP_REQUEST, 0, &[])?;
    let deadline = io::deadline(CONNECT_SECS);
    loop {
        match recv_for(vsock, listener, &mut conn, deadline)?.map(|pkt| pkt.hdr.op) {
            Some(OP_RESPONSE) => break,
            Some(OP_CREDIT_UPDATE) => {}
            Some(OP_RST) => return Err("vsock-out: connection refused"),
            Some(_) => return Err("vsock-out: unexpected packet"),
            None => return Err("vsock-out: connect timeout"),
        }
    }
    send_data(vsock, listener, &mut conn, PING)?;
    let mut buf = [0u8; MAX_DATA];
    let have = recv_data(vsock, listener, &mut conn, &mut buf, PING.len())?;
    if &buf[..have] != PING {
        return Err("vsock-out: echo differs");
    }
    close(vsock, listener, &mut conn)
}

/// Host-initiated: accept a connection on `LISTEN_PORT`, read one line and send
/// it back in upper case.
pub fn accept_in(vsock: &mut Vsock, listener: &mut Listener) -> Result<(), &'static str> {
    let deadline = io::deadline(ACCEPT_SECS);
    while listener.pending.is_none() {
        let pkt = vsock.recv(deadline)?.ok_or("vsock-in: no connection")?;
        handle_stray(vsock, listener, &pkt)?;
    }
    let request = listener.pending.take().ok_or("vsock-in: no connection")?;
    let mut conn = Conn::new(listener.port, request.src_cid, request.src_port);
    conn.update_credit(&request);
    vsock.send(&mut conn, OP_RESPONSE, 0, &[])?;

    let mut line = [0u8; MAX_DATA];
    let have = recv_data(vsock, listener, &mut conn, &mut line, MAX_DATA)?;
    let line = &mut line[..have];
    if line.last() != Some(&b'\n') {
        return Err("vsock-in: no full line");
    }
    line.make_ascii_uppercase();
    send_data(vsock, listener, &mut conn, line)?;
    // Close from this side: the device delivers the echo before the SHUTDOWN,
    // and the host closes its end once it has read the line.
    close(vsock, listener, &mut conn)
}
