//! The `vm` isolation backend: a sandbox is a copy-on-write clone of a template
//! microVM (DESIGN.md, process model; issue 4).
//!
//! - [`host`]: the template process. Each template lives in its own `spore
//!   template-host` process: it boots the guest with an empty disk slot, waits for
//!   the agent's hello, captures the VM (`spore_vmm::clone::Template`) and then
//!   keeps a pool of forked, prepared clone workers. The daemon talks to it over a
//!   line protocol on its stdin/stdout. A separate process because clone workers
//!   are forked from the process that holds the template, and the daemon has many
//!   threads (a fork keeps only one).
//! - [`clone`]: one sandbox's clone: order it from a [`CloneSource`] with the
//!   sandbox's image in the disk slot, connect to its agent over vsock, apply the
//!   clone fixup. The container is then driven by the code the process backend
//!   uses too (`supervisor::sandbox_create`).
//! - This file: whether this host can run microVMs at all. Where it cannot
//!   (kvm_pvm, no KVM) everything refuses with the reason and the `--isolation
//!   process` command.
//!
//! Not here: the template table (`supervisor::templates`), sandbox state.

pub mod clone;
pub mod host;

use std::path::PathBuf;

use spore_agent::protocol::client::ClientError;
use spore_vmm::host::HostKvm;

use super::BackendError;
pub use clone::VmClone;
pub use host::{HostArgs, TemplateHost, TemplateSpec};

/// Errors of the vm backend.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("template {0:?} could not be created: {1}")]
    TemplateFailed(String, String),
    #[error("cannot start the template process {0}")]
    HostSpawn(String, #[source] std::io::Error),
    #[error("template process: {0}")]
    HostFailed(String),
    #[error("the template process ended ({0}); its log is {1}")]
    HostGone(String, String),
    #[error("talking to the template process")]
    HostIo(#[source] std::io::Error),
    #[error("the template process answered {0:?}")]
    HostProtocol(String),
    #[error("clone process {0} ended before its agent answered")]
    CloneDied(u32),
    #[error("the agent of clone process {0} did not answer within {1} ms")]
    AgentTimeout(u32, u64),
    #[error("watching clone process {0}")]
    Watch(u32, #[source] std::io::Error),
    #[error("the agent of clone process {0}")]
    Agent(u32, #[source] ClientError),
    #[error("the clone fixup of clone process {0} failed")]
    Fixup(u32, #[source] ClientError),
    #[error("cannot {what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Why this host cannot run a sandbox under vm isolation, with the command that
/// works instead; `Ok` where microVMs can run guest user space.
pub fn check() -> Result<(), BackendError> {
    check_host(&HostKvm::detect())
}

fn check_host(host: &HostKvm) -> Result<(), BackendError> {
    match crate::cmd::vm::microvm_refusal(host) {
        Some(why) => Err(BackendError::VmUnavailable(format!(
            "{why}\nTry: spore run --isolation process busybox echo hello"
        ))),
        None => Ok(()),
    }
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
    fn refuses_exactly_where_guest_user_space_cannot_run() {
        let host = HostKvm::detect();
        match check_host(&host) {
            Ok(()) => assert!(host.usable && host.can_run_guest_user_space()),
            Err(BackendError::VmUnavailable(msg)) => {
                assert!(!host.usable || !host.can_run_guest_user_space());
                assert!(msg.contains("--isolation process"), "{msg}");
            }
            Err(other) => panic!("unexpected {other:?}"),
        }
        assert_eq!(status() == "available", check().is_ok());
    }
}
