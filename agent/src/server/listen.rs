//! Where the agent listens: `vsock:PORT` in a guest, `unix:PATH` on the host. A
//! vsock connection is handed around as a `UnixStream`: both are plain
//! connected stream sockets, and std's stream methods (read, write, shutdown,
//! try_clone) are the same system calls for either family.

use std::fmt;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;

use super::os::{self, OsError};
use crate::protocol::AGENT_VSOCK_PORT;

/// Errors binding or accepting.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("listen address {0:?} is not unix:PATH or vsock:PORT")]
    BadAddr(String),
    #[error("unix socket")]
    Unix(#[source] io::Error),
    #[error("vsock")]
    Vsock(#[source] OsError),
}

/// A listen address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddr {
    Unix(PathBuf),
    Vsock(u32),
}

impl Default for ListenAddr {
    fn default() -> Self {
        ListenAddr::Vsock(AGENT_VSOCK_PORT)
    }
}

impl ListenAddr {
    pub fn parse(s: &str) -> Result<ListenAddr, ListenError> {
        let bad = || ListenError::BadAddr(s.to_owned());
        match s.split_once(':') {
            Some(("unix", path)) if !path.is_empty() => Ok(ListenAddr::Unix(path.into())),
            Some(("vsock", port)) => port.parse().map(ListenAddr::Vsock).map_err(|_| bad()),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
            ListenAddr::Vsock(port) => write!(f, "vsock:{port}"),
        }
    }
}

/// A bound listener.
pub enum Listener {
    Unix(UnixListener),
    Vsock(OwnedFd),
}

impl Listener {
    /// Binds; a stale unix socket file from an earlier run is replaced.
    pub fn bind(addr: &ListenAddr) -> Result<Listener, ListenError> {
        match addr {
            ListenAddr::Unix(path) => {
                match std::fs::remove_file(path) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => {
                        return Err(ListenError::Unix(e))
                    }
                    _ => {}
                }
                UnixListener::bind(path)
                    .map(Listener::Unix)
                    .map_err(ListenError::Unix)
            }
            ListenAddr::Vsock(port) => os::vsock_listen(*port)
                .map(Listener::Vsock)
                .map_err(ListenError::Vsock),
        }
    }

    pub fn accept(&self) -> Result<UnixStream, ListenError> {
        match self {
            Listener::Unix(l) => l.accept().map(|(s, _)| s).map_err(ListenError::Unix),
            Listener::Vsock(fd) => os::accept(fd)
                .map(UnixStream::from)
                .map_err(ListenError::Vsock),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_addresses() {
        assert_eq!(
            ListenAddr::parse("unix:/tmp/a.sock").unwrap(),
            ListenAddr::Unix("/tmp/a.sock".into())
        );
        assert_eq!(
            ListenAddr::parse("vsock:1024").unwrap(),
            ListenAddr::Vsock(1024)
        );
        assert_eq!(ListenAddr::default(), ListenAddr::Vsock(AGENT_VSOCK_PORT));
        for bad in ["unix:", "vsock:x", "tcp:1", "/tmp/a"] {
            assert!(ListenAddr::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(ListenAddr::Vsock(5).to_string(), "vsock:5");
    }
}
