//! KVM's side of a capture and a restore: every vCPU's registers and the VM's
//! interrupt controllers, PIT and clock, read into and written from
//! `snapshot::{VcpuState, VmArchState}`.
//!
//! Owns the ioctls and their order. Does not own device state or memory.

use kvm_bindings::{
    kvm_irqchip, kvm_msr_entry, CpuId, Msrs, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};

use crate::snapshot::{FpuState, VcpuState, VmArchState, XsaveState};

/// Size of the legacy `kvm_xsave` area; a larger KVM_CAP_XSAVE2 needs XSAVE2.
const LEGACY_XSAVE_BYTES: i32 = 4096;

/// Errors from reading or writing KVM state; each names the ioctl.
#[derive(Debug, thiserror::Error)]
pub enum KvmStateError {
    #[error("{0} failed")]
    Ioctl(&'static str, #[source] kvm_ioctls::Error),
    #[error("building a CPUID or MSR list failed")]
    FamList(#[source] vmm_sys_util::fam::Error),
    #[error("KVM restored {set} of {want} MSRs (first refused: {first:#x})")]
    MsrsPartial { set: usize, want: usize, first: u32 },
    #[error(
        "the template's TSC runs at {want} kHz, this host's at {have} kHz, and KVM cannot scale it"
    )]
    TscKhz {
        want: u32,
        have: u32,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("this host's XSAVE area ({0} bytes) is larger than spore saves")]
    XsaveTooLarge(i32),
}

fn io(name: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> KvmStateError {
    move |e| KvmStateError::Ioctl(name, e)
}

/// The MSRs of `kvm`'s index list that this vCPU can read: KVM_GET_MSRS stops at
/// the first it refuses, so each is probed alone (capture time, not clone time).
pub fn readable_msrs(kvm: &Kvm, vcpu: &VcpuFd) -> Result<Vec<u32>, KvmStateError> {
    let list = kvm
        .get_msr_index_list()
        .map_err(io("KVM_GET_MSR_INDEX_LIST"))?;
    let mut out = Vec::new();
    for &index in list.as_slice() {
        let entry = kvm_msr_entry {
            index,
            ..Default::default()
        };
        let mut msrs = Msrs::from_entries(&[entry]).map_err(KvmStateError::FamList)?;
        if vcpu.get_msrs(&mut msrs).map_err(io("KVM_GET_MSRS"))? == 1 {
            out.push(index);
        }
    }
    Ok(out)
}

/// Whether the legacy 4 KiB XSAVE ioctls cover this host's XSAVE area.
fn xsave_fits(vm: &VmFd) -> Result<bool, KvmStateError> {
    if !vm.check_extension(Cap::Xsave) {
        return Ok(false);
    }
    let size = vm.check_extension_int(Cap::Xsave2);
    if size > LEGACY_XSAVE_BYTES {
        return Err(KvmStateError::XsaveTooLarge(size));
    }
    Ok(true)
}

/// Reads one stopped vCPU (settled with `vcpu::settle`).
pub fn capture_vcpu(vm: &VmFd, vcpu: &VcpuFd, msrs: &[u32]) -> Result<VcpuState, KvmStateError> {
    let cpuid = vcpu
        .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
        .map_err(io("KVM_GET_CPUID2"))?;
    let entries: Vec<kvm_msr_entry> = msrs
        .iter()
        .map(|&index| kvm_msr_entry {
            index,
            ..Default::default()
        })
        .collect();
    let mut msr_values = Msrs::from_entries(&entries).map_err(KvmStateError::FamList)?;
    let read = vcpu.get_msrs(&mut msr_values).map_err(io("KVM_GET_MSRS"))?;
    let xsave = match xsave_fits(vm)? {
        true => Some(XsaveState::from(
            &vcpu.get_xsave().map_err(io("KVM_GET_XSAVE"))?,
        )),
        false => None,
    };
    let xcrs = match vm.check_extension(Cap::Xcrs) {
        true => Some(vcpu.get_xcrs().map_err(io("KVM_GET_XCRS"))?),
        false => None,
    };
    Ok(VcpuState {
        cpuid: cpuid.as_slice().to_vec(),
        regs: vcpu.get_regs().map_err(io("KVM_GET_REGS"))?,
        sregs: vcpu.get_sregs().map_err(io("KVM_GET_SREGS"))?,
        fpu: FpuState::from(&vcpu.get_fpu().map_err(io("KVM_GET_FPU"))?),
        xsave,
        xcrs,
        msrs: msr_values.as_slice()[..read].to_vec(),
        lapic: vcpu.get_lapic().map_err(io("KVM_GET_LAPIC"))?,
        mp_state: vcpu.get_mp_state().map_err(io("KVM_GET_MP_STATE"))?,
        vcpu_events: vcpu.get_vcpu_events().map_err(io("KVM_GET_VCPU_EVENTS"))?,
        debugregs: vcpu.get_debug_regs().map_err(io("KVM_GET_DEBUGREGS"))?,
        tsc_khz: vcpu.get_tsc_khz().ok(),
    })
}

/// Gives a fresh vCPU its template's CPUID: the one step that can be done before
/// the clone order (it is the same for every clone, and must precede the rest).
pub fn restore_cpuid(vcpu: &VcpuFd, state: &VcpuState) -> Result<(), KvmStateError> {
    let cpuid = CpuId::from_entries(&state.cpuid).map_err(KvmStateError::FamList)?;
    vcpu.set_cpuid2(&cpuid).map_err(io("KVM_SET_CPUID2"))
}

/// Gives a fresh vCPU its template's TSC frequency when this host's differs, so
/// the guest's calibrated TSC rate stays true (or refuses, if KVM cannot scale).
/// Done before the order, like CPUID.
pub fn restore_tsc_khz(vcpu: &VcpuFd, state: &VcpuState) -> Result<(), KvmStateError> {
    let Some(want) = state.tsc_khz else {
        return Ok(());
    };
    let have = vcpu.get_tsc_khz().map_err(io("KVM_GET_TSC_KHZ"))?;
    if have == want {
        return Ok(());
    }
    vcpu.set_tsc_khz(want)
        .map_err(|source| KvmStateError::TscKhz { want, have, source })
}

/// Writes everything but CPUID (`restore_cpuid` first) into a fresh vCPU, in the
/// order KVM needs: registers, FPU/XSAVE, XCRs, debug registers, LAPIC before the
/// MSRs (the TSC deadline MSR needs the LAPIC mode), events and MP state last.
pub fn restore_vcpu(vm: &VmFd, vcpu: &VcpuFd, state: &VcpuState) -> Result<(), KvmStateError> {
    vcpu.set_mp_state(state.mp_state)
        .map_err(io("KVM_SET_MP_STATE"))?;
    vcpu.set_regs(&state.regs).map_err(io("KVM_SET_REGS"))?;
    vcpu.set_sregs(&state.sregs).map_err(io("KVM_SET_SREGS"))?;
    vcpu.set_fpu(&(&state.fpu).into())
        .map_err(io("KVM_SET_FPU"))?;
    if let (Some(xsave), true) = (&state.xsave, xsave_fits(vm)?) {
        let x = xsave.to_kvm();
        // SAFETY: `xsave_fits` checked that KVM's XSAVE area is no larger than the
        // legacy `kvm_xsave` struct, which is all KVM reads from `x`.
        unsafe { vcpu.set_xsave(&x) }.map_err(io("KVM_SET_XSAVE"))?;
    }
    if let Some(xcrs) = &state.xcrs {
        vcpu.set_xcrs(xcrs).map_err(io("KVM_SET_XCRS"))?;
    }
    vcpu.set_debug_regs(&state.debugregs)
        .map_err(io("KVM_SET_DEBUGREGS"))?;
    vcpu.set_lapic(&state.lapic).map_err(io("KVM_SET_LAPIC"))?;
    let msrs = Msrs::from_entries(&state.msrs).map_err(KvmStateError::FamList)?;
    let set = vcpu.set_msrs(&msrs).map_err(io("KVM_SET_MSRS"))?;
    if set != state.msrs.len() {
        return Err(KvmStateError::MsrsPartial {
            set,
            want: state.msrs.len(),
            first: state.msrs[set].index,
        });
    }
    vcpu.set_vcpu_events(&state.vcpu_events)
        .map_err(io("KVM_SET_VCPU_EVENTS"))
}

fn get_chip(vm: &VmFd, chip_id: u32) -> Result<kvm_irqchip, KvmStateError> {
    let mut chip = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    vm.get_irqchip(&mut chip).map_err(io("KVM_GET_IRQCHIP"))?;
    Ok(chip)
}

/// Reads the VM-wide state: PIC pair, IOAPIC, PIT and kvmclock.
pub fn capture_vm(vm: &VmFd) -> Result<VmArchState, KvmStateError> {
    Ok(VmArchState {
        pic_master: get_chip(vm, KVM_IRQCHIP_PIC_MASTER)?,
        pic_slave: get_chip(vm, KVM_IRQCHIP_PIC_SLAVE)?,
        ioapic: get_chip(vm, KVM_IRQCHIP_IOAPIC)?,
        pit: vm.get_pit2().map_err(io("KVM_GET_PIT2"))?,
        clock: vm.get_clock().map_err(io("KVM_GET_CLOCK"))?,
    })
}

/// Writes the VM-wide state into a VM created with its irqchip and PIT, before
/// any irqfd is registered (a device's re-raised interrupt must land on the
/// restored IOAPIC, not be overwritten by it).
pub fn restore_vm(vm: &VmFd, state: &VmArchState) -> Result<(), KvmStateError> {
    vm.set_pit2(&state.pit).map_err(io("KVM_SET_PIT2"))?;
    // Only the clock value is restored; the flags KVM reported (TSC stable,
    // realtime) are not accepted back by every kernel.
    let clock = kvm_bindings::kvm_clock_data {
        clock: state.clock.clock,
        ..Default::default()
    };
    vm.set_clock(&clock).map_err(io("KVM_SET_CLOCK"))?;
    vm.set_irqchip(&state.pic_master)
        .map_err(io("KVM_SET_IRQCHIP"))?;
    vm.set_irqchip(&state.pic_slave)
        .map_err(io("KVM_SET_IRQCHIP"))?;
    vm.set_irqchip(&state.ioapic).map_err(io("KVM_SET_IRQCHIP"))
}
