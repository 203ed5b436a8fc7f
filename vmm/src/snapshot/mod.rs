//! Templates on disk and in memory: the `VmState` a clone is restored from, its
//! versioned and checksummed file, and the sparse memory file.
//!
//! A saved template is two files: the state (`VmState::save`/`load`) and the guest
//! RAM (`save_memory`/`load_memory`). This module owns the formats and their
//! checks. It does not capture or apply KVM state (the VMM's capture and clone
//! code does, filling `VcpuState`/`VmArchState`), and devices capture themselves
//! (`devices::virtio::persist`).
//!
//! Capture, with the vCPUs paused and the event loop stopped:
//! 1. `DevicesState::capture(&virtio_devices, &serial)` (slot order);
//! 2. each vCPU's and the VM's KVM state into `VcpuState`s and a `VmArchState`;
//! 3. `MemoryLayout::of(ram.memory())`, then `VmState::new(..)`;
//! 4. to disk: `state.save(dir/"state")` and `save_memory(ram.file(), dir/"memory")`.
//!
//! Restore (a clone, or a template loaded from disk):
//! 1. `VmState::load`, then `load_memory(path, &state.memory)` (or the template's
//!    sealed memfd), mapped `MAP_PRIVATE` by `GuestRam::from_memfd_private`;
//! 2. the KVM VM with its irqchip/PIT, RAM registered, `state.vm` applied;
//! 3. `state.devices.restore(ram.memory(), Some(identity))`, then each device wired
//!    with `devices::attach_virtio` at its own index (the irqfd must come after
//!    the irqchip state, so a re-raised interrupt is not overwritten), its
//!    subscriber added to the event loop;
//! 4. the vCPUs created, `state.vcpus` applied, then run.
//!
//! `clone::template` and `clone::restore` implement these lists; a clone creates
//! its VM, maps and registers RAM and creates its vCPUs with their CPUID before
//! its order arrives (`clone::PreparedClone`), so only the state writes remain.

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
///
/// 2: `DevicesState` carries the serial port's registers.
pub const FORMAT_VERSION: u32 = 2;
