//! A template: a VM captured once and never run again — its state and its sealed
//! guest memory — from which clones are made. Capture from a running VM, save to a
//! directory, load from one.
//!
//! Owns the capture procedure and the template's two files. The formats and their
//! checks are `snapshot`'s; KVM's side is `kvm_state`; clones are `restore`.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::kvm_state::{self, KvmStateError};
use crate::builder::VmHandle;
use crate::memory::MemoryError;
use crate::snapshot::{
    load_memory, save_memory, DevicesState, MemoryFileError, MemoryLayout, StateFileError, VmState,
};
use crate::vcpu;

/// File names inside a template directory.
pub const STATE_FILE: &str = "state";
pub const MEMORY_FILE: &str = "memory";

/// Errors from capturing, saving or loading a template.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("the VM had no vCPU left to capture")]
    NoVcpus,
    #[error("completing vCPU {0}'s pending exit before the capture failed")]
    Settle(usize, #[source] kvm_ioctls::Error),
    #[error("capturing KVM state")]
    Kvm(#[from] KvmStateError),
    #[error("guest RAM is not file-backed; only memfd RAM can be a template")]
    NotFileBacked,
    #[error("sealing the template's memory")]
    Seal(#[from] MemoryError),
    #[error("state file")]
    State(#[from] StateFileError),
    #[error("memory file")]
    MemoryFile(#[from] MemoryFileError),
    #[error("cannot create template directory {}", .0.display())]
    Dir(PathBuf, #[source] std::io::Error),
}

/// A captured VM: what every clone starts from.
pub struct Template {
    pub state: VmState,
    /// The sealed memfd, or the memory file of a loaded template.
    memory: File,
}

impl Template {
    /// Stops `vm` for good and captures it: vCPUs out of KVM_RUN and their threads
    /// joined, the event loop ended, then every vCPU, the VM and the devices read,
    /// and the RAM's memfd sealed once the VM's mappings are gone.
    pub fn capture(vm: VmHandle) -> Result<Template, TemplateError> {
        // 1. Stop the vCPUs and the event loop; take the VM apart.
        let mut stopped = vm.stop_for_capture();
        // 2. Let KVM finish any I/O instruction the last exit left half done.
        for (i, fd) in stopped.vcpus.iter_mut().enumerate() {
            vcpu::settle(fd).map_err(|e| TemplateError::Settle(i, e))?;
        }
        // 3. Which MSRs this host lets us save.
        let first = stopped.vcpus.first().ok_or(TemplateError::NoVcpus)?;
        let msrs = kvm_state::readable_msrs(&stopped.kvm, first)?;
        // 4. Every vCPU, then the VM-wide state.
        let vcpus = stopped
            .vcpus
            .iter()
            .map(|fd| kvm_state::capture_vcpu(&stopped.vm, fd, &msrs))
            .collect::<Result<Vec<_>, _>>()?;
        let arch = kvm_state::capture_vm(&stopped.vm)?;
        // 5. Devices, with nothing running that could move their rings.
        let serial = stopped.serial.lock().expect("serial poisoned");
        let devices = DevicesState::capture(&stopped.virtio, &serial);
        drop(serial);
        // 6. Where RAM sits in the memfd.
        let layout = MemoryLayout::of(stopped.ram.memory()).ok_or(TemplateError::NotFileBacked)?;
        // 7. Drop everything that maps the RAM (vCPUs, VM, devices), then seal it.
        let ram = stopped.ram;
        drop((stopped.vcpus, stopped.vm, stopped.virtio, stopped.serial));
        let memory = ram.into_sealed_file()?;
        Ok(Template {
            state: VmState::new(vcpus, arch, devices, layout),
            memory,
        })
    }

    /// Writes the state file and a sparse memory file into `dir` (created if
    /// missing). Returns the bytes of memory data written.
    pub fn save(&self, dir: &Path) -> Result<u64, TemplateError> {
        std::fs::create_dir_all(dir).map_err(|e| TemplateError::Dir(dir.to_owned(), e))?;
        let written = save_memory(&self.memory, &dir.join(MEMORY_FILE))?;
        self.state.save(&dir.join(STATE_FILE))?;
        Ok(written)
    }

    /// Loads a template saved by `save`: the state is checked (magic, version,
    /// length, checksum) and the memory file's size against the state's layout.
    /// Clones map the file `MAP_PRIVATE`, sharing the host page cache.
    pub fn load(dir: &Path) -> Result<Template, TemplateError> {
        let state = VmState::load(&dir.join(STATE_FILE))?;
        let memory = load_memory(&dir.join(MEMORY_FILE), &state.memory)?;
        Ok(Template { state, memory })
    }

    /// The guest RAM's bytes: sealed memfd or template memory file.
    pub fn memory(&self) -> &File {
        &self.memory
    }

    /// Guest RAM size in bytes.
    pub fn mem_size(&self) -> u64 {
        self.state.memory.file_size()
    }
}
