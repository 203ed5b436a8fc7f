//! An attach stream: one thread per output pipe copies it to the connection in
//! ≤ 64 KiB frames, then sends its end-of-stream marker; the connection's own
//! thread reads stdin, stdin-close and resize frames from the host.
//!
//! Writes are blocking on purpose: a slow host fills the socket, the pump stops
//! reading, the pipe fills, and the container's writes wait. Nothing is dropped.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::thread;

use super::{lock, os, PendingIo};
use crate::protocol::frame::{self, FrameError};
use crate::protocol::messages::{AttachFrame, Stream, MAX_CHUNK};

/// Streams `pending` over `stream` until the host closes it and all output ended.
pub(crate) fn run(stream: UnixStream, pending: PendingIo) {
    let PendingIo { io, tty } = pending;
    // The pty master doubles as the resize target; keep a handle before the
    // output pump takes the descriptor.
    let tty_master = if tty {
        io.stdout.try_clone().ok()
    } else {
        None
    };
    let writer = match stream.try_clone() {
        Ok(w) => Arc::new(Mutex::new(w)),
        Err(e) => return eprintln!("spore-agent: attach: {e}"),
    };
    let mut pumps = vec![pump(Stream::Stdout, io.stdout, writer.clone())];
    if let Some(err) = io.stderr {
        pumps.push(pump(Stream::Stderr, err, writer));
    }
    host_input(stream, io.stdin.map(File::from), tty_master);
    for p in pumps.into_iter().flatten() {
        let _ = p.join();
    }
}

fn pump(
    which: Stream,
    fd: OwnedFd,
    out: Arc<Mutex<UnixStream>>,
) -> Option<thread::JoinHandle<bool>> {
    let spawned = thread::Builder::new()
        .name("attach-out".into())
        .spawn(move || copy_output(which, File::from(fd), &out));
    spawned
        .map_err(|e| eprintln!("spore-agent: attach: {e}"))
        .ok()
}

/// Copies one pipe (or pty master) to the connection; `false` if the host went away.
fn copy_output(which: Stream, mut src: File, out: &Mutex<UnixStream>) -> bool {
    let mut buf = vec![0u8; MAX_CHUNK];
    loop {
        let n = match src.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // A pty master reads EIO once the last slave descriptor is closed.
            Err(e) if e.raw_os_error() == Some(libc::EIO) => 0,
            Err(e) => {
                eprintln!("spore-agent: reading {which:?} failed, ending the stream: {e}");
                0
            }
        };
        let frame = if n == 0 {
            AttachFrame::Eof(which)
        } else {
            AttachFrame::Output(which, buf[..n].to_vec())
        };
        if frame::write_frame(&mut *lock(out), &frame.encode()).is_err() {
            return false;
        }
        if n == 0 {
            return true;
        }
    }
}

/// Applies the host's frames until it closes its side of the connection.
fn host_input(mut stream: UnixStream, mut stdin: Option<File>, tty_master: Option<OwnedFd>) {
    loop {
        let payload = match frame::read_frame(&mut stream) {
            Ok(p) => p,
            Err(FrameError::TooLarge(n)) if frame::discard(&mut stream, n).is_ok() => continue,
            Err(_) => return,
        };
        match AttachFrame::decode(&payload) {
            Ok(AttachFrame::Stdin(data)) => {
                // A process that closed its stdin just loses the bytes.
                if let Some(f) = stdin.as_mut() {
                    if f.write_all(&data).is_err() {
                        stdin = None;
                    }
                }
            }
            // Dropping the write end is what gives the process its EOF.
            Ok(AttachFrame::CloseStdin) => stdin = None,
            Ok(AttachFrame::Resize { rows, cols }) => {
                if let Some(m) = &tty_master {
                    let _ = os::set_winsize(m, rows, cols);
                }
            }
            Ok(other) => eprintln!("spore-agent: attach: ignoring host frame {other:?}"),
            Err(e) => eprintln!("spore-agent: attach: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_arrives_in_order_with_end_marker() {
        let (mut host, agent) = UnixStream::pair().unwrap();
        let (r, w) = os::pipe().unwrap();
        let mut w = File::from(w);
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let expect = data.clone();
        let writer = thread::spawn(move || w.write_all(&data).unwrap());
        let out = Mutex::new(agent);
        let copier = thread::spawn(move || copy_output(Stream::Stderr, File::from(r), &out));
        let mut got = Vec::new();
        loop {
            let f = AttachFrame::decode(&frame::read_frame(&mut host).unwrap()).unwrap();
            match f {
                AttachFrame::Output(Stream::Stderr, d) => {
                    assert!(d.len() <= MAX_CHUNK);
                    got.extend(d);
                }
                AttachFrame::Eof(Stream::Stderr) => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        writer.join().unwrap();
        assert!(copier.join().unwrap());
        assert_eq!(got, expect);
    }

    #[test]
    fn stdin_frames_reach_the_pipe_and_close_it() {
        let (mut host, agent) = UnixStream::pair().unwrap();
        let (r, w) = os::pipe().unwrap();
        let mut r = File::from(r);
        let input = thread::spawn(move || host_input(agent, Some(File::from(w)), None));
        for f in [
            AttachFrame::Stdin(b"hel".to_vec()),
            AttachFrame::Stdin(b"lo".to_vec()),
            AttachFrame::CloseStdin,
        ] {
            frame::write_frame(&mut host, &f.encode()).unwrap();
        }
        let mut got = String::new();
        r.read_to_string(&mut got).unwrap();
        assert_eq!(got, "hello");
        drop(host);
        input.join().unwrap();
    }
}
