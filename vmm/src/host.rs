//! What this host's KVM is: present or not, and of which kind.
//!
//! Owns the detection `spore doctor` reports and the builder uses to decide on
//! guest quirks. It does not open a VM; it only looks at /dev/kvm, /sys and
//! /proc/cpuinfo.

use std::fs::OpenOptions;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Where the kvm_pvm module shows itself when it is loaded or built in.
const KVM_PVM_SYSFS: &str = "/sys/module/kvm_pvm";
const KVM_DEV: &str = "/dev/kvm";
const CPUINFO: &str = "/proc/cpuinfo";

/// Which implementation stands behind /dev/kvm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KvmKind {
    /// Intel VT-x.
    Vmx,
    /// AMD-V.
    Svm,
    /// Pagetable-based Virtual Machine: a standard guest kernel's supervisor code
    /// runs in KVM's instruction emulator (see shared/notes/kvm-pvm.md).
    #[serde(rename = "kvm_pvm")]
    Pvm,
    /// /dev/kvm works but none of the above was recognised.
    Unknown,
}

/// The host's KVM as `spore doctor --json` reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostKvm {
    /// /dev/kvm exists and this process can open it read-write.
    pub usable: bool,
    /// Why /dev/kvm is not usable, when it is not.
    pub problem: Option<String>,
    pub kind: KvmKind,
}

impl HostKvm {
    /// Looks at this host.
    pub fn detect() -> HostKvm {
        let problem = OpenOptions::new()
            .read(true)
            .write(true)
            .open(KVM_DEV)
            .err()
            .map(|e| format!("cannot open {KVM_DEV}: {e}"));
        let cpuinfo = std::fs::read_to_string(CPUINFO).unwrap_or_default();
        let kind = classify(Path::new(KVM_PVM_SYSFS).exists(), &cpuinfo);
        HostKvm {
            usable: problem.is_none(),
            problem,
            kind,
        }
    }

    /// Whether a standard guest kernel's user space can run here. On kvm_pvm a
    /// `syscall` from guest user mode arrives at the kernel still at CPL 3.
    pub fn can_run_guest_user_space(&self) -> bool {
        self.usable && self.kind != KvmKind::Pvm
    }

    /// Whether the guest needs the kvm_pvm quirks (CPUID masks, cmdline options).
    pub fn is_pvm(&self) -> bool {
        self.kind == KvmKind::Pvm
    }
}

/// kvm_pvm wins over CPU flags: a PVM host may also be a VMX/SVM guest whose
/// hypervisor does not pass the virtualization extensions through.
fn classify(pvm_loaded: bool, cpuinfo: &str) -> KvmKind {
    if pvm_loaded {
        return KvmKind::Pvm;
    }
    let flags = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, f)| f)
        .unwrap_or("");
    let has = |flag: &str| flags.split_whitespace().any(|f| f == flag);
    match (has("vmx"), has("svm")) {
        (true, _) => KvmKind::Vmx,
        (_, true) => KvmKind::Svm,
        _ => KvmKind::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_prefers_pvm_then_flags() {
        let intel = "processor\t: 0\nflags\t\t: fpu vme vmx sse2\n";
        let amd = "flags\t\t: fpu svm sse2\n";
        let none = "flags\t\t: fpu hypervisor sse2\n";
        assert_eq!(classify(true, intel), KvmKind::Pvm);
        assert_eq!(classify(false, intel), KvmKind::Vmx);
        assert_eq!(classify(false, amd), KvmKind::Svm);
        assert_eq!(classify(false, none), KvmKind::Unknown);
        // A flag that merely contains "svm" does not count.
        assert_eq!(classify(false, "flags : svmx\n"), KvmKind::Unknown);
    }

    #[test]
    fn user_space_needs_usable_non_pvm_kvm() {
        let mut host = HostKvm {
            usable: true,
            problem: None,
            kind: KvmKind::Svm,
        };
        assert!(host.can_run_guest_user_space());
        host.kind = KvmKind::Pvm;
        assert!(!host.can_run_guest_user_space());
        host.kind = KvmKind::Vmx;
        host.usable = false;
        assert!(!host.can_run_guest_user_space());
    }

    #[test]
    fn serializes_kind_in_snake_case() {
        let host = HostKvm {
            usable: true,
            problem: None,
            kind: KvmKind::Pvm,
        };
        let json = serde_json::to_string(&host).unwrap();
        assert!(json.contains("\"kind\":\"kvm_pvm\""), "{json}");
    }
}
