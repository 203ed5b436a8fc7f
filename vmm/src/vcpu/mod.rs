//! vCPUs: creating and configuring them for a 64-bit boot, and the KVM_RUN loop
//! each one runs on its own thread.
//!
//! Exit decoding and the decision of what to do are pure (`exit`); stopping and
//! kicking are in `stop`. Devices are reached only through the buses.

mod exit;
mod run;
mod stop;

use kvm_bindings::{CpuId, Msrs};
use kvm_ioctls::{VcpuFd, VmFd};

pub use exit::{handle_exit, instruction_bytes, Action, Buses, Data, Exit};
pub use run::{run_vcpu, settle};
pub use stop::{monotonic_ns, StopLatch, VmExit};

use crate::arch::{cpuid, gdt, regs, Quirks};

/// Errors from creating or configuring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("creating vCPU {0} failed")]
    Create(u8, #[source] kvm_ioctls::Error),
    #[error("building vCPU {0}'s CPUID or MSR list failed")]
    FamList(u8, #[source] vmm_sys_util::fam::Error),
    #[error("setting vCPU {0}'s CPUID failed")]
    Cpuid(u8, #[source] kvm_ioctls::Error),
    #[error("setting vCPU {0}'s MSRs failed")]
    Msrs(u8, #[source] kvm_ioctls::Error),
    #[error("KVM accepted only {set} of vCPU {cpu}'s {want} boot MSRs")]
    MsrsPartial { cpu: u8, set: usize, want: usize },
    #[error("setting vCPU {0}'s registers failed")]
    Regs(u8, #[source] kvm_ioctls::Error),
    #[error("setting vCPU {0}'s local APIC failed")]
    Lapic(u8, #[source] kvm_ioctls::Error),
}

/// What every vCPU of a VM shares for its setup.
pub struct VcpuSetup<'a> {
    pub supported_cpuid: &'a CpuId,
    pub num_cpus: u8,
    pub quirks: Quirks,
    /// Where the boot vCPU starts (the others wait for INIT/SIPI).
    pub entry: u64,
}

/// Creates vCPU `index` and gives it CPUID, MSRs, LAPIC wiring and, for the boot
/// vCPU, long-mode registers at `setup.entry`.
pub fn create(vm: &VmFd, index: u8, setup: &VcpuSetup) -> Result<VcpuFd, VcpuError> {
    let vcpu = vm
        .create_vcpu(index as u64)
        .map_err(|e| VcpuError::Create(index, e))?;
    let entries = cpuid::build(
        setup.supported_cpuid.as_slice(),
        index,
        setup.num_cpus,
        setup.quirks,
    );
    let cpuid = CpuId::from_entries(&entries).map_err(|e| VcpuError::FamList(index, e))?;
    vcpu.set_cpuid2(&cpuid)
        .map_err(|e| VcpuError::Cpuid(index, e))?;
    let boot_msrs = regs::boot_msrs();
    let msrs = Msrs::from_entries(&boot_msrs).map_err(|e| VcpuError::FamList(index, e))?;
    let set = vcpu
        .set_msrs(&msrs)
        .map_err(|e| VcpuError::Msrs(index, e))?;
    if set != boot_msrs.len() {
        return Err(VcpuError::MsrsPartial {
            cpu: index,
            set,
            want: boot_msrs.len(),
        });
    }
    vcpu.set_fpu(&regs::boot_fpu())
        .map_err(|e| VcpuError::Regs(index, e))?;
    let mut lapic = vcpu.get_lapic().map_err(|e| VcpuError::Lapic(index, e))?;
    regs::set_lint(&mut lapic);
    vcpu.set_lapic(&lapic)
        .map_err(|e| VcpuError::Lapic(index, e))?;
    if index == 0 {
        let mut sregs = vcpu.get_sregs().map_err(|e| VcpuError::Regs(index, e))?;
        gdt::set_long_mode(&mut sregs);
        vcpu.set_sregs(&sregs)
            .map_err(|e| VcpuError::Regs(index, e))?;
        vcpu.set_regs(&regs::boot_regs(setup.entry))
            .map_err(|e| VcpuError::Regs(index, e))?;
    }
    Ok(vcpu)
}
