//! General registers, FPU, boot MSRs and local APIC setup of a boot vCPU.
//!
//! Pure builders of the structs KVM takes; `vcpu` applies them.

use kvm_bindings::{kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_regs};

use crate::layout::{BOOT_STACK_POINTER, ZERO_PAGE_START};

/// Bit 1 of RFLAGS is reserved and always set.
const RFLAGS_RESERVED: u64 = 0x2;
/// x87 control word after FNINIT: all exceptions masked, extended precision.
const FPU_FCW: u16 = 0x37f;
/// MXCSR after reset: all SIMD exceptions masked.
const MXCSR_DEFAULT: u32 = 0x1f80;

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRs enabled, default memory type write-back.
const MTRR_ENABLE_WB: u64 = (1 << 11) | 6;

/// Local APIC LVT registers (offsets in the APIC page) and delivery modes.
const APIC_LVT_LINT0: usize = 0x350;
const APIC_LVT_LINT1: usize = 0x360;
const APIC_MODE_MASK: u32 = 0x700;
const APIC_MODE_NMI: u32 = 0x400;
const APIC_MODE_EXTINT: u32 = 0x700;

/// Registers of a vCPU entering a 64-bit kernel (or test snippet) at `entry`.
pub fn boot_regs(entry: u64) -> kvm_regs {
    kvm_regs {
        rip: entry,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: ZERO_PAGE_START,
        rflags: RFLAGS_RESERVED,
        ..Default::default()
    }
}

pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: FPU_FCW,
        mxcsr: MXCSR_DEFAULT,
        ..Default::default()
    }
}

/// The MSRs a boot vCPU starts with (syscall MSRs cleared, fast strings on,
/// MTRRs write-back).
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    let entry = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    vec![
        entry(MSR_IA32_SYSENTER_CS, 0),
        entry(MSR_IA32_SYSENTER_ESP, 0),
        entry(MSR_IA32_SYSENTER_EIP, 0),
        entry(MSR_STAR, 0),
        entry(MSR_CSTAR, 0),
        entry(MSR_KERNEL_GS_BASE, 0),
        entry(MSR_SYSCALL_MASK, 0),
        entry(MSR_LSTAR, 0),
        entry(MSR_IA32_TSC, 0),
        entry(MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        entry(MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WB),
    ]
}

fn lapic_reg(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let b = &lapic.regs[offset..offset + 4];
    u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
}

fn set_lapic_reg(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (dst, src) in lapic.regs[offset..offset + 4]
        .iter_mut()
        .zip(value.to_le_bytes())
    {
        *dst = src as _;
    }
}

/// Wires LINT0 to the legacy PIC (ExtINT) and LINT1 to NMI, as a BIOS would
/// (virtual wire mode, which the MP table announces).
pub fn set_lint(lapic: &mut kvm_lapic_state) {
    for (offset, mode) in [
        (APIC_LVT_LINT0, APIC_MODE_EXTINT),
        (APIC_LVT_LINT1, APIC_MODE_NMI),
    ] {
        let value = lapic_reg(lapic, offset);
        set_lapic_reg(lapic, offset, (value & !APIC_MODE_MASK) | mode);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regs_follow_the_64_bit_boot_protocol() {
        let regs = boot_regs(0x100_0000);
        assert_eq!(regs.rip, 0x100_0000);
        assert_eq!(regs.rsi, ZERO_PAGE_START);
        assert_eq!(
            (regs.rsp, regs.rbp),
            (BOOT_STACK_POINTER, BOOT_STACK_POINTER)
        );
        assert_eq!(regs.rflags, 2);
    }

    #[test]
    fn fpu_defaults() {
        let fpu = boot_fpu();
        assert_eq!((fpu.fcw, fpu.mxcsr), (0x37f, 0x1f80));
    }

    #[test]
    fn msrs_include_misc_enable_and_mtrr() {
        let msrs = boot_msrs();
        let get = |i| msrs.iter().find(|m| m.index == i).map(|m| m.data);
        assert_eq!(get(MSR_IA32_MISC_ENABLE), Some(1));
        assert_eq!(get(MSR_MTRR_DEF_TYPE), Some(0x806));
        assert_eq!(get(MSR_LSTAR), Some(0));
    }

    #[test]
    fn lint_modes_keep_other_bits() {
        let mut lapic = kvm_lapic_state::default();
        // Masked (bit 16) with a fixed delivery mode and a vector.
        set_lapic_reg(&mut lapic, APIC_LVT_LINT0, 0x1_0020);
        set_lapic_reg(&mut lapic, APIC_LVT_LINT1, 0x1_0130);
        set_lint(&mut lapic);
        assert_eq!(lapic_reg(&lapic, APIC_LVT_LINT0), 0x1_0720);
        assert_eq!(lapic_reg(&lapic, APIC_LVT_LINT1), 0x1_0430);
    }
}
