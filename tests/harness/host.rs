//! Facts about the host the tests run on: which KVM it has and its TSC frequency.
//!
//! Pure parsing functions take the file contents, so they are tested without
//! depending on the machine; the wrappers read `/sys` and `/proc`.

use std::path::Path;

/// Which kind of KVM the host offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvmKind {
    /// No `/dev/kvm`.
    None,
    /// `kvm_pvm`: runs PVM-aware guests; a standard guest's user space cannot run
    /// (see notes/kvm-pvm.md), so tests needing it skip.
    Pvm,
    /// Intel VMX hardware virtualization.
    Vmx,
    /// AMD SVM hardware virtualization.
    Svm,
    /// `/dev/kvm` exists but the CPU flags show neither vmx nor svm.
    Unknown,
}

impl KvmKind {
    /// The short name `spore doctor` also uses: "none", "kvm_pvm", "vmx", "svm",
    /// "unknown".
    pub fn as_str(self) -> &'static str {
        match self {
            KvmKind::None => "none",
            KvmKind::Pvm => "kvm_pvm",
            KvmKind::Vmx => "vmx",
            KvmKind::Svm => "svm",
            KvmKind::Unknown => "unknown",
        }
    }

    /// Whether a standard Linux guest's user space runs under this KVM.
    pub fn runs_guest_user_space(self) -> bool {
        matches!(self, KvmKind::Vmx | KvmKind::Svm)
    }
}

/// Classifies the host's KVM from its facts: whether `/dev/kvm` exists, whether
/// the `kvm_pvm` module is loaded, and the text of `/proc/cpuinfo`.
pub fn classify_kvm(dev_kvm: bool, kvm_pvm_loaded: bool, cpuinfo: &str) -> KvmKind {
    if !dev_kvm {
        return KvmKind::None;
    }
    if kvm_pvm_loaded {
        return KvmKind::Pvm;
    }
    let flags = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, f)| f)
        .unwrap_or("");
    let has = |flag: &str| flags.split_whitespace().any(|f| f == flag);
    if has("vmx") {
        KvmKind::Vmx
    } else if has("svm") {
        KvmKind::Svm
    } else {
        KvmKind::Unknown
    }
}

/// This host's KVM kind.
pub fn host_kvm_kind() -> KvmKind {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    classify_kvm(
        Path::new("/dev/kvm").exists(),
        Path::new("/sys/module/kvm_pvm").exists(),
        &cpuinfo,
    )
}

/// The first `cpu MHz` figure in cpuinfo text, in kHz.
pub fn parse_cpu_khz(cpuinfo: &str) -> Option<u64> {
    let mhz: f64 = cpuinfo
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split_once(':')?
        .1
        .trim()
        .parse()
        .ok()?;
    (mhz > 0.0).then(|| (mhz * 1000.0).round() as u64)
}

/// The host CPU frequency in kHz, used as the guest's `tsc_early_khz` under TCG
/// (QEMU's emulated TSC runs at host speed). Falls back to 2 GHz.
pub fn host_cpu_khz() -> u64 {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| parse_cpu_khz(&s))
        .unwrap_or(2_000_000)
}

/// Whether the test process runs as root (effective uid 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTEL: &str = "processor\t: 0\ncpu MHz\t\t: 2596.148\nflags\t\t: fpu vme vmx sse2\n";
    const AMD: &str = "processor\t: 0\ncpu MHz\t\t: 3000.000\nflags\t\t: fpu svm sse2\n";
    const NONE: &str = "processor\t: 0\nflags\t\t: fpu sse2 hypervisor\n";

    #[test]
    fn kvm_kind_from_facts() {
        assert_eq!(classify_kvm(false, false, INTEL), KvmKind::None);
        assert_eq!(classify_kvm(true, true, INTEL), KvmKind::Pvm);
        assert_eq!(classify_kvm(true, false, INTEL), KvmKind::Vmx);
        assert_eq!(classify_kvm(true, false, AMD), KvmKind::Svm);
        assert_eq!(classify_kvm(true, false, NONE), KvmKind::Unknown);
        assert!(!KvmKind::Pvm.runs_guest_user_space());
        assert!(KvmKind::Vmx.runs_guest_user_space());
        assert_eq!(KvmKind::Pvm.as_str(), "kvm_pvm");
    }

    #[test]
    fn vmx_must_be_a_whole_flag() {
        let tricky = "flags\t\t: fpu vmxfoo nosvm\n";
        assert_eq!(classify_kvm(true, false, tricky), KvmKind::Unknown);
    }

    #[test]
    fn cpu_khz_parsing() {
        assert_eq!(parse_cpu_khz(INTEL), Some(2_596_148));
        assert_eq!(parse_cpu_khz(AMD), Some(3_000_000));
        assert_eq!(parse_cpu_khz(NONE), None);
        assert_eq!(parse_cpu_khz("cpu MHz : 0.0\n"), None);
    }
}
