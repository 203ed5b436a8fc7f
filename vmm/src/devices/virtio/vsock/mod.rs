//! virtio-vsock (socket device, virtio 1.2 section 5.10) with a hybrid unix-socket
//! host side: host clients connect to the VM's socket and write `CONNECT <port>\n`;
//! guest connections to host port P reach the unix socket `<path>_<P>`.

mod connection;
mod device;
mod event_handler;
mod host;
mod packet;
mod persist;

pub use connection::BUF_ALLOC;
pub use device::{Vsock, VsockError};
pub use host::HostError;
pub use packet::Header;
pub use persist::VsockState;

#[cfg(test)]
mod tests;
