//! Devices the guest sees. Legacy ones sit on the port I/O bus; virtio ones behind
//! virtio-mmio transports on the MMIO bus.

pub mod exit;
pub mod i8042;
pub mod serial;
pub mod virtio;
