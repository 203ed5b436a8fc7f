//! virtio-blk (block device, virtio 1.2 section 5.2) backed by a host file, read-only
//! or read-write, whose backing file can be swapped while the guest runs.

mod device;
mod event_handler;
mod persist;
mod request;

pub use device::{Block, BlockError};
pub use persist::BlockState;
pub use request::Disk;
