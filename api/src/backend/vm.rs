//! The `vm` isolation backend: a sandbox is a copy-on-write clone of a template
//! microVM. Templates and clones land with issue 4; until then this module only
//! tells the truth about the host: where microVMs cannot run (kvm_pvm, no KVM) it
//! refuses with the reason and the `--isolation process` command, elsewhere it
//! says clones are not available yet. It never builds VMs itself.

use spore_vmm::host::HostKvm;

use super::BackendError;

/// What the vm backend still lacks, in every message that mentions it.
pub const MISSING: &str = "templates/clones land with issue 4; use `--isolation process` meanwhile";

/// Why this host cannot run a sandbox under vm isolation, with the command that
/// works instead.
pub fn check() -> Result<(), BackendError> {
    check_host(&HostKvm::detect())
}

fn check_host(host: &HostKvm) -> Result<(), BackendError> {
    if let Some(why) = crate::cmd::vm::microvm_refusal(host) {
        return Err(BackendError::VmUnavailable(format!(
            "{why}\nTry: spore run --isolation process busybox echo hello"
        )));
    }
    Err(BackendError::NotYetAvailable(MISSING))
}

/// The one-line status of the vm backend on this host, for health and templates.
pub fn status() -> String {
    match check() {
        Ok(()) => "available".into(),
        Err(e) => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_silently_available() {
        // Whatever the host, vm isolation answers with an explanation today.
        let err = check().unwrap_err();
        let text = err.to_string();
        assert!(!text.is_empty());
        match err {
            BackendError::VmUnavailable(msg) => assert!(msg.contains("--isolation process")),
            BackendError::NotYetAvailable(msg) => assert!(msg.contains("issue 4")),
            other => panic!("unexpected {other:?}"),
        }
    }
}
