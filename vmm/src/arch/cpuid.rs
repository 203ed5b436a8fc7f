//! The guest's CPUID: KVM's supported set, given per-vCPU topology, plus the
//! masks a kvm_pvm host needs (shared/notes/kvm-pvm.md).
//!
//! A pure function over entries, so every mask is unit-tested without KVM. The
//! kvm_pvm quirks never apply on VMX/SVM hosts.

use kvm_bindings::kvm_cpuid_entry2;

use crate::host::{HostKvm, KvmKind};

/// Guest adjustments that depend on the host's KVM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quirks {
    /// The host is kvm_pvm: hide what its instruction emulator cannot run.
    pub pvm: bool,
}

impl Quirks {
    pub const NONE: Quirks = Quirks { pvm: false };

    pub fn for_host(host: &HostKvm) -> Quirks {
        Quirks {
            pvm: host.kind == KvmKind::Pvm,
        }
    }

    /// Kernel command-line options the quirks need (CPUID hiding alone was not
    /// always honoured, per the notes).
    pub fn cmdline(&self) -> &'static str {
        if self.pvm {
            "noxsave clearcpuid=popcnt,smap"
        } else {
            ""
        }
    }
}

/// A bit mask to clear in one register of one leaf (any subleaf when `index` is None).
struct Mask {
    function: u32,
    index: Option<u32>,
    reg: Reg,
    bits: u32,
}

#[derive(Clone, Copy)]
enum Reg {
    Eax,
    Ebx,
    Ecx,
    Edx,
}

const fn bit(n: u32) -> u32 {
    1 << n
}

/// Leaf 1 ECX features.
pub const CPUID1_ECX_FMA: u32 = bit(12);
pub const CPUID1_ECX_CX16: u32 = bit(13);
pub const CPUID1_ECX_POPCNT: u32 = bit(23);
pub const CPUID1_ECX_XSAVE: u32 = bit(26);
pub const CPUID1_ECX_OSXSAVE: u32 = bit(27);
pub const CPUID1_ECX_AVX: u32 = bit(28);
pub const CPUID1_ECX_F16C: u32 = bit(29);
pub const CPUID1_ECX_HYPERVISOR: u32 = bit(31);
const CPUID1_EDX_HTT: u32 = bit(28);
/// Leaf 7.0 EBX: supervisor-mode access prevention.
pub const CPUID7_EBX_SMAP: u32 = bit(20);

/// KVM paravirt features (leaf 0x40000001 EAX) that use hypercalls or async
/// page faults: PV EOI, PV unhalt, PV TLB flush, async PF (and its VM-exit and
/// interrupt delivery), PV IPI, poll control, PV sched-yield, map-GPA-range.
pub const KVM_PV_HIDDEN: u32 =
    bit(4) | bit(6) | bit(7) | bit(9) | bit(10) | bit(11) | bit(12) | bit(13) | bit(14) | bit(16);
pub const KVM_LEAF_FEATURES: u32 = 0x4000_0001;

/// Everything hidden on kvm_pvm. XSAVE goes, and with it everything that needs
/// XSAVE-managed state (AVX family, AVX-512, AMX, FMA4/XOP).
const PVM_MASKS: &[Mask] = &[
    Mask {
        function: 1,
        index: None,
        reg: Reg::Ecx,
        bits: CPUID1_ECX_CX16
            | CPUID1_ECX_POPCNT
            | CPUID1_ECX_XSAVE
            | CPUID1_ECX_OSXSAVE
            | CPUID1_ECX_AVX
            | CPUID1_ECX_FMA
            | CPUID1_ECX_F16C,
    },
    // Leaf 7.0 EBX: SMAP (the emulator lacks `clac`/`stac`), AVX2 and the AVX-512
    // foundation/extensions.
    Mask {
        function: 7,
        index: Some(0),
        reg: Reg::Ebx,
        bits: CPUID7_EBX_SMAP
            | bit(5)
            | bit(16)
            | bit(17)
            | bit(21)
            | bit(26)
            | bit(27)
            | bit(28)
            | bit(30)
            | bit(31),
    },
    // Leaf 7.0 ECX: AVX-512 VBMI/VBMI2/VNNI/BITALG/VPOPCNTDQ, VAES, VPCLMULQDQ.
    Mask {
        function: 7,
        index: Some(0),
        reg: Reg::Ecx,
        bits: bit(1) | bit(6) | bit(9) | bit(10) | bit(11) | bit(12) | bit(14),
    },
    // Leaf 7.0 EDX: AVX-512 4VNNIW/4FMAPS/VP2INTERSECT/FP16, AMX.
    Mask {
        function: 7,
        index: Some(0),
        reg: Reg::Edx,
        bits: bit(2) | bit(3) | bit(8) | bit(22) | bit(23) | bit(24),
    },
    // Leaf 7.1 EAX: AVX-VNNI, AVX512-BF16.
    Mask {
        function: 7,
        index: Some(1),
        reg: Reg::Eax,
        bits: bit(4) | bit(5),
    },
    // 0x80000001 ECX: XOP, FMA4.
    Mask {
        function: 0x8000_0001,
        index: None,
        reg: Reg::Ecx,
        bits: bit(11) | bit(16),
    },
    Mask {
        function: KVM_LEAF_FEATURES,
        index: None,
        reg: Reg::Eax,
        bits: KVM_PV_HIDDEN,
    },
];

/// The XSAVE state leaf, dropped with XSAVE.
const LEAF_XSAVE: u32 = 0xd;
/// "GenuineIntel" as EBX, EDX, ECX of leaf 0. AMD's FXSAVE-leak workaround runs
/// `fnclex`, which the kvm_pvm emulator lacks.
const INTEL_VENDOR: [u32; 3] = [0x756e_6547, 0x4965_6e69, 0x6c65_746e];

/// Builds vCPU `cpu`'s CPUID (of `num_cpus`) from KVM's supported entries.
pub fn build(
    supported: &[kvm_cpuid_entry2],
    cpu: u8,
    num_cpus: u8,
    quirks: Quirks,
) -> Vec<kvm_cpuid_entry2> {
    let mut entries: Vec<kvm_cpuid_entry2> = supported
        .iter()
        .filter(|e| !(quirks.pvm && e.function == LEAF_XSAVE))
        .copied()
        .collect();
    for entry in &mut entries {
        set_topology(entry, cpu, num_cpus);
        if quirks.pvm {
            apply_pvm(entry);
        }
    }
    entries
}

/// Bits needed to number `n` things (x2APIC id shift).
fn shift_for(n: u8) -> u32 {
    (n.max(1) as u32).next_power_of_two().trailing_zeros()
}

fn set_topology(entry: &mut kvm_cpuid_entry2, cpu: u8, num_cpus: u8) {
    let apic_id = cpu as u32;
    match entry.function {
        1 => {
            // APIC id, logical processor count, CLFLUSH line size (8 x 8 bytes).
            entry.ebx = (apic_id << 24) | ((num_cpus as u32) << 16) | (8 << 8);
            entry.ecx |= CPUID1_ECX_HYPERVISOR;
            if num_cpus > 1 {
                entry.edx |= CPUID1_EDX_HTT;
            } else {
                entry.edx &= !CPUID1_EDX_HTT;
            }
        }
        4 => {
            // Cores per package - 1, in bits 31..26; keep the cache description.
            entry.eax =
                (entry.eax & 0x3ff_ffff) | (((num_cpus as u32).saturating_sub(1) & 0x3f) << 26);
        }
        0xb => {
            // One thread per core, `num_cpus` cores, one package.
            let (shift, count, level_type) = match entry.index {
                0 => (0, 1, 1),
                1 => (shift_for(num_cpus), num_cpus as u32, 2),
                _ => (0, 0, 0),
            };
            entry.eax = shift;
            entry.ebx = count;
            entry.ecx = (level_type << 8) | (entry.index & 0xff);
            entry.edx = apic_id;
        }
        _ => {}
    }
}

fn apply_pvm(entry: &mut kvm_cpuid_entry2) {
    if entry.function == 0 {
        [entry.ebx, entry.edx, entry.ecx] = INTEL_VENDOR;
    }
    for mask in PVM_MASKS {
        if mask.function != entry.function || mask.index.is_some_and(|i| i != entry.index) {
            continue;
        }
        let reg = match mask.reg {
            Reg::Eax => &mut entry.eax,
            Reg::Ebx => &mut entry.ebx,
            Reg::Ecx => &mut entry.ecx,
            Reg::Edx => &mut entry.edx,
        };
        *reg &= !mask.bits;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: u32::MAX,
            ebx: u32::MAX,
            ecx: u32::MAX,
            edx: u32::MAX,
            ..Default::default()
        }
    }

    /// An AMD-like host's supported CPUID, every feature bit set.
    fn host() -> Vec<kvm_cpuid_entry2> {
        let mut vendor = leaf(0, 0);
        // "AuthenticAMD"
        [vendor.ebx, vendor.edx, vendor.ecx] = [0x6874_7541, 0x6974_6e65, 0x444d_4163];
        vec![
            vendor,
            leaf(1, 0),
            leaf(7, 0),
            leaf(7, 1),
            leaf(0xb, 0),
            leaf(0xb, 1),
            leaf(0xd, 0),
            leaf(0xd, 1),
            leaf(KVM_LEAF_FEATURES, 0),
            leaf(0x8000_0001, 0),
        ]
    }

    fn find(entries: &[kvm_cpuid_entry2], function: u32, index: u32) -> kvm_cpuid_entry2 {
        *entries
            .iter()
            .find(|e| e.function == function && e.index == index)
            .expect("leaf present")
    }

    #[test]
    fn topology_per_vcpu() {
        let e = build(&host(), 3, 4, Quirks::NONE);
        let l1 = find(&e, 1, 0);
        assert_eq!(l1.ebx >> 24, 3);
        assert_eq!((l1.ebx >> 16) & 0xff, 4);
        assert_ne!(l1.ecx & CPUID1_ECX_HYPERVISOR, 0);
        let core = find(&e, 0xb, 1);
        assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (2, 4, 0x201, 3));
        let smt = find(&e, 0xb, 0);
        assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (0, 1, 0x100, 3));
    }

    #[test]
    fn pvm_hides_cx16_xsave_popcnt_and_avx() {
        let e = build(&host(), 0, 1, Quirks { pvm: true });
        let ecx = find(&e, 1, 0).ecx;
        for b in [
            CPUID1_ECX_CX16,
            CPUID1_ECX_XSAVE,
            CPUID1_ECX_OSXSAVE,
            CPUID1_ECX_POPCNT,
            CPUID1_ECX_AVX,
            CPUID1_ECX_FMA,
            CPUID1_ECX_F16C,
        ] {
            assert_eq!(ecx & b, 0, "bit {b:#x} still set");
        }
        // Unrelated leaf-1 features stay (SSE3 is bit 0).
        assert_ne!(ecx & 1, 0);
        assert_eq!(find(&e, 7, 0).ebx & bit(5), 0, "AVX2");
        assert_eq!(find(&e, 7, 0).ebx & CPUID7_EBX_SMAP, 0, "SMAP");
        assert_eq!(find(&e, 7, 0).ebx & bit(16), 0, "AVX512F");
        assert_ne!(find(&e, 7, 0).ebx & bit(0), 0, "FSGSBASE kept");
        assert_eq!(find(&e, 7, 1).eax & bit(4), 0, "AVX-VNNI");
        assert!(e.iter().all(|x| x.function != 0xd), "XSAVE leaf dropped");
    }

    #[test]
    fn pvm_reports_intel_vendor() {
        let e = build(&host(), 0, 1, Quirks { pvm: true });
        let v = find(&e, 0, 0);
        let mut name = Vec::new();
        for r in [v.ebx, v.edx, v.ecx] {
            name.extend(r.to_le_bytes());
        }
        assert_eq!(name, b"GenuineIntel");
    }

    #[test]
    fn pvm_hides_kvm_hypercall_features_but_keeps_kvmclock() {
        let e = build(&host(), 0, 1, Quirks { pvm: true });
        let kvm = find(&e, KVM_LEAF_FEATURES, 0).eax;
        for b in [4, 6, 7, 11, 12, 13, 14] {
            assert_eq!(kvm & bit(b), 0, "KVM feature bit {b}");
        }
        // CLOCKSOURCE, CLOCKSOURCE2, CLOCKSOURCE_STABLE_BIT.
        assert_eq!(kvm & (bit(0) | bit(3) | bit(24)), bit(0) | bit(3) | bit(24));
    }

    #[test]
    fn no_quirks_leave_features_untouched() {
        let supported = host();
        let e = build(&supported, 0, 1, Quirks::NONE);
        assert_eq!(e.len(), supported.len());
        for (got, want) in e.iter().zip(&supported) {
            if matches!(got.function, 1 | 0xb) {
                continue; // topology, checked elsewhere
            }
            assert_eq!(
                (got.eax, got.ebx, got.ecx, got.edx),
                (want.eax, want.ebx, want.ecx, want.edx),
                "leaf {:#x}.{}",
                got.function,
                got.index
            );
        }
        let ecx = find(&e, 1, 0).ecx;
        assert_eq!(ecx, u32::MAX, "leaf 1 ECX untouched without quirks");
    }

    #[test]
    fn quirk_cmdline_only_on_pvm() {
        assert_eq!(Quirks::NONE.cmdline(), "");
        assert!(Quirks { pvm: true }.cmdline().contains("noxsave"));
        assert!(Quirks { pvm: true }.cmdline().contains("clearcpuid=popcnt"));
        let vmx = HostKvm {
            usable: true,
            problem: None,
            kind: KvmKind::Vmx,
        };
        assert_eq!(Quirks::for_host(&vmx), Quirks::NONE);
    }
}
