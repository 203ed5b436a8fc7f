//! The host side of a guest vsock connection through a unix socket.
//!
//! Both vhost-device-vsock and spore's own vsock device expose a guest's vsock as a
//! unix socket on the host. A host client connects to it, writes `CONNECT <port>\n`
//! and reads `OK <host port>\n`; from then on the stream is the guest connection.
//! Until something in the guest listens on the port, the backend accepts the unix
//! connection and then resets it, so [`connect`] retries until a deadline.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// Pause between connection attempts.
const RETRY_INTERVAL: Duration = Duration::from_millis(50);
/// How long one handshake may take once the unix connection is accepted.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Performs the `CONNECT <port>` handshake on `stream`; returns the host-side port
/// from the `OK` reply.
pub fn handshake(stream: &mut UnixStream, port: u32) -> io::Result<u32> {
    stream.write_all(format!("CONNECT {port}\n").as_bytes())?;
    let line = read_line(stream)?;
    parse_ok(&line).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected handshake reply {line:?}"),
        )
    })
}

/// Parses `OK <port>`; `None` for anything else.
pub fn parse_ok(line: &str) -> Option<u32> {
    line.strip_prefix("OK ")?.trim().parse().ok()
}

/// Reads up to and excluding `\n`, one byte at a time so nothing after the line is
/// consumed from the stream.
fn read_line(stream: &mut UnixStream) -> io::Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) if line.len() >= 64 => {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "reply too long"))
            }
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

/// Connects to guest vsock `port` through the unix socket at `uds`, retrying until
/// the guest listens or `timeout` passes. `alive` is asked between attempts and
/// stops the retries early with its error (e.g. "the VM exited").
pub fn connect(
    uds: &Path,
    port: u32,
    timeout: Duration,
    mut alive: impl FnMut() -> io::Result<()>,
) -> io::Result<UnixStream> {
    let deadline = Instant::now() + timeout;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let last_err = match try_connect(uds, port) {
            Ok(stream) => return Ok(stream),
            Err(e) => e,
        };
        alive()?;
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "vsock port {port} via {}: no connection after {attempts} attempts in {timeout:?} (last: {last_err})",
                    uds.display()
                ),
            ));
        }
        std::thread::sleep(RETRY_INTERVAL);
    }
}

fn try_connect(uds: &Path, port: u32) -> io::Result<UnixStream> {
    let mut stream = UnixStream::connect(uds)?;
    stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    handshake(&mut stream, port)?;
    stream.set_read_timeout(None)?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn parses_ok_replies() {
        assert_eq!(parse_ok("OK 1024"), Some(1024));
        assert_eq!(parse_ok("OK 7\r"), Some(7));
        assert_eq!(parse_ok("ERR"), None);
        assert_eq!(parse_ok("OK"), None);
    }

    /// A fake backend that resets the first two connections (guest not listening
    /// yet), then answers the handshake and echoes one line.
    #[test]
    fn connect_retries_until_the_handshake_succeeds() {
        let dir = crate::tempdir::TempDir::new("spore-vsock-test").unwrap();
        let uds = dir.path().join("vm.vsock");
        let listener = UnixListener::bind(&uds).unwrap();
        let server = std::thread::spawn(move || {
            for _ in 0..2 {
                let (s, _) = listener.accept().unwrap();
                drop(s);
            }
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 13];
            s.read_exact(&mut buf).unwrap();
            assert_eq!(&buf, b"CONNECT 1024\n");
            s.write_all(b"OK 1073741824\nhello").unwrap();
        });
        let mut stream = connect(&uds, 1024, Duration::from_secs(10), || Ok(())).unwrap();
        let mut rest = String::new();
        stream.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "hello");
        server.join().unwrap();
    }

    #[test]
    fn connect_gives_up_when_told_the_vm_is_gone() {
        let dir = crate::tempdir::TempDir::new("spore-vsock-test").unwrap();
        let err = connect(&dir.path().join("none"), 1, Duration::from_secs(30), || {
            Err(io::Error::other("vm exited"))
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "vm exited");
    }
}
