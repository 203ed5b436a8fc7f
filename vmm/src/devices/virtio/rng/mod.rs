//! virtio-rng (entropy device, virtio 1.2 section 5.4): one request queue whose
//! device-writable buffers the device fills with host random bytes.

mod device;
mod event_handler;
mod persist;

pub use device::{Rng, RngError};
pub use persist::RngState;
