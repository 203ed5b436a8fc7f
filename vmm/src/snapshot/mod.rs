//! Templates on disk and in memory: the `VmState` a clone is restored from, its
//! versioned and checksummed file, and the sparse memory file.
//!
//! A saved template is two files: the state (`VmState::save`/`load`) and the guest
//! RAM (`save_memory`/`load_memory`). This module owns the formats and their
//! checks. It does not capture or apply KVM state (the VMM's capture and clone
//! code does, filling `VcpuState`/`VmArchState`), and devices capture themselves
//! (`devices::virtio::persist`).

mod crc64;
mod file;
mod memory_file;
mod state;

pub use file::{StateFileError, HEADER_LEN, MAGIC};
pub use memory_file::{load_memory, save_memory, MemoryFileError};
pub use state::{
    DevicesState, FpuState, MemoryLayout, MemoryRegion, VcpuState, VmArchState, VmState, XsaveState,
};

/// The state format this spore writes and reads. Bump it whenever `VmState` or
/// anything in it changes shape or meaning; old templates are then refused with
/// "recreate the template" rather than misread.
pub const FORMAT_VERSION: u32 = 1;
