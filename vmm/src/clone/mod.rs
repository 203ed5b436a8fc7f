//! Templates and copy-on-write clones (DESIGN.md, memory model).
//!
//! A template is a VM captured once and never run again: its `VmState` and its
//! sealed memfd (`template`). A clone is a new KVM VM whose RAM maps that memory
//! `MAP_PRIVATE` and whose vCPUs and devices are restored from the state
//! (`restore`), each in its own process forked ahead of time and waiting for its
//! order (`worker`). `kvm_state` holds the KVM ioctls of capture and restore.
//!
//! Does not own the state formats (`snapshot`) or the device models (`devices`).

mod child;
pub mod kvm_state;
pub mod restore;
pub mod template;
pub mod worker;

pub use restore::{clone_in_process, CloneError, CloneOptions, PreparedClone, StartTimes};
pub use template::{Template, TemplateError, MEMORY_FILE, STATE_FILE};
pub use worker::{
    private_kib, private_split_kib, CloneOrder, PrepTimes, Started, Worker, WorkerError,
    WorkerOptions,
};
