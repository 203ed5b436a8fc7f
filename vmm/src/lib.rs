//! spore's virtual machine monitor: one KVM microVM and its devices.
//!
//! Owns KVM handles, guest memory, kernel loading, the vCPU loop and the device
//! model (serial, i8042, exit port, virtio-mmio: vsock, block, rng), and
//! templates and copy-on-write clones (`clone`, `snapshot`). Knows nothing of
//! containers.

pub mod arch;
pub mod builder;
pub mod bus;
pub mod clone;
pub mod config;
pub mod devices;
pub mod handle;
pub mod host;
pub mod layout;
pub mod memory;
pub mod snapshot;
pub mod test_guests;
pub mod vcpu;

pub use builder::{start, VmHandle};
pub use config::VmConfig;
pub use host::{HostKvm, KvmKind};
pub use vcpu::VmExit;
