//! Templates: the booted-and-captured microVMs that vm sandboxes are cloned from.
//! Creating, capturing and deleting them lands with issue 4; until then there is
//! one built-in template, `default`, described with the kernel and initramfs it
//! will boot and the vm backend's status on this host.

use serde::Serialize;

use super::spec::DEFAULT_TEMPLATE;
use super::SupervisorError;
use crate::backend::{vm, BackendError};

/// A template as the API reports it.
#[derive(Clone, Debug, Serialize)]
pub struct TemplateInfo {
    pub name: String,
    pub kernel: String,
    pub initrd: String,
    pub memory_mib: u32,
    pub vcpus: u8,
    /// `not_built` until templates can be booted and captured.
    pub state: &'static str,
    /// Resident memory of the captured template (0 while not built).
    pub memory_bytes: u64,
    /// What vm isolation can do on this host.
    pub vm_status: String,
}

fn default_template() -> TemplateInfo {
    TemplateInfo {
        name: DEFAULT_TEMPLATE.into(),
        kernel: "target/guest/vmlinux".into(),
        initrd: "target/guest/initramfs.cpio".into(),
        memory_mib: 128,
        vcpus: 1,
        state: "not_built",
        memory_bytes: 0,
        vm_status: vm::status(),
    }
}

pub fn list() -> Vec<TemplateInfo> {
    vec![default_template()]
}

pub fn get(name: &str) -> Result<TemplateInfo, SupervisorError> {
    if name == DEFAULT_TEMPLATE {
        Ok(default_template())
    } else {
        Err(SupervisorError::UnknownTemplate(name.into()))
    }
}

/// Checks that a template exists without probing the host.
pub fn exists(name: &str) -> Result<(), SupervisorError> {
    if name == DEFAULT_TEMPLATE {
        Ok(())
    } else {
        Err(SupervisorError::UnknownTemplate(name.into()))
    }
}

/// Creating templates needs clones (issue 4).
pub fn create() -> Result<TemplateInfo, SupervisorError> {
    Err(BackendError::NotYetAvailable(vm::MISSING).into())
}

pub fn delete(name: &str) -> Result<(), SupervisorError> {
    exists(name)?;
    Err(BackendError::NotYetAvailable(vm::MISSING).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_template_only() {
        assert_eq!(list().len(), 1);
        assert_eq!(get("default").unwrap().name, "default");
        assert!(matches!(
            get("nope"),
            Err(SupervisorError::UnknownTemplate(_))
        ));
        assert!(matches!(
            delete("nope"),
            Err(SupervisorError::UnknownTemplate(_))
        ));
        assert!(matches!(
            delete("default"),
            Err(SupervisorError::Backend(BackendError::NotYetAvailable(_)))
        ));
        assert!(create().is_err());
    }
}
