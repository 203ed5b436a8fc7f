//! The x86_64 KVM VM itself: TSS and identity-map addresses, the in-kernel
//! irqchip (PIC, IOAPIC, LAPICs) and PIT, and guest RAM registration.

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use crate::layout::{KVM_IDENTITY_MAP_START, KVM_TSS_START};

/// Errors from creating the KVM VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("opening /dev/kvm failed")]
    OpenKvm(#[source] kvm_ioctls::Error),
    #[error("KVM_CREATE_VM failed")]
    Create(#[source] kvm_ioctls::Error),
    #[error("KVM_SET_TSS_ADDR failed")]
    Tss(#[source] kvm_ioctls::Error),
    #[error("KVM_SET_IDENTITY_MAP_ADDR failed")]
    IdentityMap(#[source] kvm_ioctls::Error),
    #[error("creating the in-kernel irqchip failed")]
    Irqchip(#[source] kvm_ioctls::Error),
    #[error("creating the in-kernel PIT failed")]
    Pit(#[source] kvm_ioctls::Error),
    #[error("registering guest RAM slot {0} with KVM failed")]
    Memory(u32, #[source] kvm_ioctls::Error),
}

/// Creates a VM with irqchip and PIT (before any vCPU, as KVM requires).
pub fn create(kvm: &Kvm) -> Result<VmFd, VmError> {
    let vm = kvm.create_vm().map_err(VmError::Create)?;
    vm.set_tss_address(KVM_TSS_START as usize)
        .map_err(VmError::Tss)?;
    vm.set_identity_map_address(KVM_IDENTITY_MAP_START)
        .map_err(VmError::IdentityMap)?;
    vm.create_irq_chip().map_err(VmError::Irqchip)?;
    // The dummy speaker port lets Linux calibrate against PIT channel 2 (port 0x61).
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(VmError::Pit)?;
    Ok(vm)
}

/// Tells KVM where each guest RAM region lives in this process.
pub fn register_memory(vm: &VmFd, mem: &vm_memory::GuestMemoryMmap<()>) -> Result<(), VmError> {
    for (slot, region) in mem.iter().enumerate() {
        let slot = slot as u32;
        let region_desc = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
        };
        // SAFETY: the region is a live mapping of `memory_size` bytes owned by the
        // caller's GuestRam, which outlives the VM (VmHandle drops the VM first).
        unsafe { vm.set_user_memory_region(region_desc) }.map_err(|e| VmError::Memory(slot, e))?;
    }
    Ok(())
}
