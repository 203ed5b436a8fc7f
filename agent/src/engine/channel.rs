//! The control socket between the engine and stage 2: one JSON message per
//! `SOCK_SEQPACKET` packet, with descriptors attached where a message needs them.
//!
//! Owns framing only; what the messages mean is in [`super::config`].

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::sys;

/// The largest message accepted; a spec with a huge environment is refused.
const MAX_MESSAGE: usize = 128 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("control socket I/O failed")]
    Io(#[source] std::io::Error),
    #[error("timed out waiting for the container process")]
    Timeout,
    #[error("malformed control message")]
    Json(#[source] serde_json::Error),
}

/// One end of the control socket.
pub struct Channel {
    fd: OwnedFd,
}

impl Channel {
    pub fn new(fd: OwnedFd) -> Self {
        Channel { fd }
    }

    /// Send `msg` with `fds` attached. The caller keeps its copies of `fds`
    /// and closes them when they are no longer its business.
    pub fn send<T: Serialize>(&self, msg: &T, fds: &[BorrowedFd<'_>]) -> Result<(), ChannelError> {
        let bytes = serde_json::to_vec(msg).map_err(ChannelError::Json)?;
        sys::send_with_fds(self.fd.as_fd(), &bytes, fds).map_err(ChannelError::Io)
    }

    /// Receive one message and its descriptors; `None` when every peer has
    /// closed its end (for a process that was told to exec: exec succeeded,
    /// since the socket is close-on-exec).
    pub fn recv<T: DeserializeOwned>(&self) -> Result<Option<(T, Vec<OwnedFd>)>, ChannelError> {
        let mut buf = vec![0u8; MAX_MESSAGE];
        let (len, fds) =
            sys::recv_with_fds(self.fd.as_fd(), &mut buf).map_err(|e| match e.kind() {
                std::io::ErrorKind::WouldBlock => ChannelError::Timeout,
                _ => ChannelError::Io(e),
            })?;
        if len == 0 {
            return Ok(None);
        }
        let msg = serde_json::from_slice(&buf[..len]).map_err(ChannelError::Json)?;
        Ok(Some((msg, fds)))
    }
}

impl AsFd for Channel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::config::Reply;

    #[test]
    fn message_round_trip_and_end_of_stream() {
        let (a, b) = sys::seqpacket_pair().unwrap();
        let (a, b) = (Channel::new(a), Channel::new(b));
        a.send(&Reply::Pid(42), &[]).unwrap();
        let (msg, fds) = b.recv::<Reply>().unwrap().unwrap();
        assert!(matches!(msg, Reply::Pid(42)));
        assert!(fds.is_empty());
        drop(a);
        assert!(b.recv::<Reply>().unwrap().is_none());
    }

    #[test]
    fn garbage_is_a_json_error() {
        let (a, b) = sys::seqpacket_pair().unwrap();
        sys::send_with_fds(a.as_fd(), b"not json", &[]).unwrap();
        let err = Channel::new(b).recv::<Reply>().unwrap_err();
        assert!(matches!(err, ChannelError::Json(_)));
    }
}
