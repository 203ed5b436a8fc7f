//! Templates: the booted-and-captured microVMs that vm sandboxes are cloned from.
//! The daemon's table of them: create (boot + capture in a template process,
//! `backend::vm::host`), list, get, delete. The `default` template is created on
//! first use by a vm sandbox; while it boots its state is `creating` and its
//! `progress` the template process's last line (also logged to stderr).
//!
//! A template's process ends once the template is deleted *and* its last clone
//! ended: each clone holds the template process's handle.
//!
//! Not here: booting, capturing and cloning (`backend::vm`), HTTP (`server`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};

use serde::{Deserialize, Serialize};

use super::spec::DEFAULT_TEMPLATE;
use super::SupervisorError;
use crate::backend::vm::{self, TemplateHost, TemplateSpec, VmError};
use crate::backend::BackendError;
use crate::guest_image;

/// The default template's guest memory, MiB.
const DEFAULT_MEMORY_MIB: u32 = 128;
/// Prepared clone workers each template keeps ahead of orders.
const WORKER_POOL: usize = 2;
const MEMORY_MIB: std::ops::RangeInclusive<u32> = 64..=65536;
const VCPUS: std::ops::RangeInclusive<u8> = 1..=32;

/// A template as the API reports it.
#[derive(Clone, Debug, Serialize)]
pub struct TemplateInfo {
    pub name: String,
    pub kernel: String,
    pub initrd: String,
    pub memory_mib: u32,
    pub vcpus: u8,
    /// `not_built` (the default before its first use), `creating`, `ready`.
    pub state: &'static str,
    /// The last progress line while `creating`.
    pub progress: Option<String>,
    /// Guest memory of the captured template (0 until ready).
    pub memory_bytes: u64,
    /// What vm isolation can do on this host.
    pub vm_status: String,
}

/// `POST /v1/templates`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateRequest {
    pub name: String,
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub memory_mib: Option<u32>,
    pub vcpus: Option<u8>,
}

/// One template of the table.
struct Entry {
    info: Mutex<TemplateInfo>,
    /// Set once ready; waiters on `ready` wake then (or when it failed).
    host: OnceLock<Result<Arc<TemplateHost>, String>>,
    ready: Condvar,
}

fn table() -> MutexGuard<'static, BTreeMap<String, Arc<Entry>>> {
    static TABLE: OnceLock<Mutex<BTreeMap<String, Arc<Entry>>>> = OnceLock::new();
    TABLE
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

fn default_request() -> TemplateRequest {
    TemplateRequest {
        name: DEFAULT_TEMPLATE.into(),
        ..TemplateRequest::default()
    }
}

/// A request with its defaults filled in and its values checked.
fn validate(req: &TemplateRequest) -> Result<TemplateSpec, SupervisorError> {
    let bad = |m: String| Err(SupervisorError::InvalidSpec(m));
    let name_ok = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    if req.name.is_empty() || req.name.len() > 64 || !req.name.chars().all(name_ok) {
        return bad(format!(
            "template name {:?}: 1-64 of [A-Za-z0-9_-]",
            req.name
        ));
    }
    let memory_mib = req.memory_mib.unwrap_or(DEFAULT_MEMORY_MIB);
    if !MEMORY_MIB.contains(&memory_mib) {
        return bad(format!("memory_mib {memory_mib}: {MEMORY_MIB:?}"));
    }
    let vcpus = req.vcpus.unwrap_or(1);
    if !VCPUS.contains(&vcpus) {
        return bad(format!("vcpus {vcpus}: {VCPUS:?}"));
    }
    Ok(TemplateSpec {
        kernel: req
            .kernel
            .clone()
            .unwrap_or_else(guest_image::default_kernel),
        initrd: req
            .initrd
            .clone()
            .unwrap_or_else(guest_image::default_initrd),
        memory_mib,
        vcpus,
        pool: WORKER_POOL,
    })
}

fn info_of(name: &str, spec: &TemplateSpec, state: &'static str) -> TemplateInfo {
    TemplateInfo {
        name: name.into(),
        kernel: spec.kernel.display().to_string(),
        initrd: spec.initrd.display().to_string(),
        memory_mib: spec.memory_mib,
        vcpus: spec.vcpus,
        state,
        progress: None,
        memory_bytes: 0,
        vm_status: vm::status(),
    }
}

/// The default template as it will be built.
fn default_info() -> TemplateInfo {
    let spec = validate(&default_request()).expect("the default template is valid");
    info_of(DEFAULT_TEMPLATE, &spec, "not_built")
}

pub fn list() -> Vec<TemplateInfo> {
    let table = table();
    let mut all: Vec<TemplateInfo> = table.values().map(|e| lock(&e.info).clone()).collect();
    if !table.contains_key(DEFAULT_TEMPLATE) {
        all.insert(0, default_info());
    }
    all
}

pub fn get(name: &str) -> Result<TemplateInfo, SupervisorError> {
    match table().get(name) {
        Some(e) => Ok(lock(&e.info).clone()),
        None if name == DEFAULT_TEMPLATE => Ok(default_info()),
        None => Err(SupervisorError::UnknownTemplate(name.into())),
    }
}

/// Checks that a template exists (or is the default) without probing the host.
pub fn exists(name: &str) -> Result<(), SupervisorError> {
    get(name).map(drop)
}

/// Boots and captures a template; returns once it is ready. Refused with the
/// reason (and the `--isolation process` hint) where microVMs cannot run.
pub fn create(run_dir: &Path, req: &TemplateRequest) -> Result<TemplateInfo, SupervisorError> {
    // 1. A valid request, 2. on a host that can run it.
    let spec = validate(req)?;
    vm::check()?;
    guest_image::check_kernel(&spec.kernel)
        .and_then(|()| guest_image::check_initrd(&spec.initrd))
        .map_err(|e| SupervisorError::InvalidSpec(e.to_string()))?;
    // 3. Claim the name.
    let entry = Arc::new(Entry {
        info: Mutex::new(info_of(&req.name, &spec, "creating")),
        host: OnceLock::new(),
        ready: Condvar::new(),
    });
    {
        let mut table = table();
        if table.contains_key(&req.name) {
            return Err(SupervisorError::Conflict(format!(
                "template {:?} exists",
                req.name
            )));
        }
        table.insert(req.name.clone(), entry.clone());
    }
    // 4. Boot and capture in the template process, reporting progress.
    let dir = run_dir.join("templates").join(&req.name);
    let started = TemplateHost::start(&spec, &dir, |line| {
        eprintln!("spore: template {}: {line}", req.name);
        lock(&entry.info).progress = Some(line.to_owned());
    });
    // 5. Ready, or gone from the table with the reason.
    let result = started
        .map(Arc::new)
        .map_err(|e| spore_vmm::clone::worker::chain(&e));
    let _ = entry.host.set(result.clone());
    {
        let mut info = lock(&entry.info);
        if let Ok(host) = &result {
            info.state = "ready";
            info.progress = None;
            info.memory_bytes = host.memory_bytes;
        }
    }
    entry.ready.notify_all();
    match result {
        Ok(_) => {
            eprintln!("spore: template {} ready", req.name);
            Ok(lock(&entry.info).clone())
        }
        Err(why) => {
            table().remove(&req.name);
            Err(BackendError::from(VmError::TemplateFailed(req.name.clone(), why)).into())
        }
    }
}

/// The template process of `name`, ready to clone: waits while it is being
/// created, creates the default one on its first use.
pub fn source(run_dir: &Path, name: &str) -> Result<Arc<TemplateHost>, SupervisorError> {
    let existing = table().get(name).cloned();
    let entry = match existing {
        Some(entry) => entry,
        None if name == DEFAULT_TEMPLATE => {
            match create(run_dir, &default_request()) {
                Ok(_) | Err(SupervisorError::Conflict(_)) => {}
                Err(e) => return Err(e),
            }
            return source(run_dir, name);
        }
        None => return Err(SupervisorError::UnknownTemplate(name.into())),
    };
    let mut info = lock(&entry.info);
    while entry.host.get().is_none() {
        info = entry.ready.wait(info).unwrap_or_else(|p| p.into_inner());
    }
    drop(info);
    match entry.host.get() {
        Some(Ok(host)) if !host.alive() => {
            // Its process died (its clones with it): forget it; the default one
            // is built again.
            eprintln!("spore: template {name}: its process {} ended", host.pid());
            let mut table = table();
            if table.get(name).is_some_and(|e| Arc::ptr_eq(e, &entry)) {
                table.remove(name);
            }
            drop(table);
            match name == DEFAULT_TEMPLATE {
                true => source(run_dir, name),
                false => Err(SupervisorError::UnknownTemplate(name.into())),
            }
        }
        Some(Ok(host)) => Ok(host.clone()),
        Some(Err(why)) => {
            Err(BackendError::from(VmError::TemplateFailed(name.into(), why.clone())).into())
        }
        None => Err(SupervisorError::UnknownTemplate(name.into())),
    }
}

/// Removes a template from the table. Its process ends once its last clone
/// has; the default one is built again on its next use.
pub fn delete(name: &str) -> Result<(), SupervisorError> {
    exists(name)?;
    let removed = table().remove(name);
    if let Some(entry) = removed {
        if let Some(Ok(host)) = entry.host.get() {
            eprintln!(
                "spore: template {name} deleted (template process {})",
                host.pid()
            );
        }
    }
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_template_is_listed_before_its_first_use() {
        let all = list();
        assert!(all.iter().any(|t| t.name == "default"));
        assert_eq!(get("default").unwrap().memory_mib, DEFAULT_MEMORY_MIB);
        assert!(matches!(
            get("nope"),
            Err(SupervisorError::UnknownTemplate(_))
        ));
        assert!(matches!(
            delete("nope"),
            Err(SupervisorError::UnknownTemplate(_))
        ));
        assert!(delete("default").is_ok());
    }

    #[test]
    fn requests_are_validated_before_the_host_is_asked() {
        let req = |name: &str, mem, vcpus| TemplateRequest {
            name: name.into(),
            memory_mib: mem,
            vcpus,
            ..TemplateRequest::default()
        };
        let dir = std::env::temp_dir();
        for bad in [
            req("", None, None),
            req("a/b", None, None),
            req("t", Some(0), None),
            req("t", None, Some(0)),
        ] {
            let err = create(&dir, &bad).unwrap_err();
            assert!(matches!(err, SupervisorError::InvalidSpec(_)), "{err:?}");
        }
        let spec = validate(&req("t", None, None)).unwrap();
        assert_eq!((spec.memory_mib, spec.vcpus), (DEFAULT_MEMORY_MIB, 1));
    }

    #[test]
    fn creation_is_refused_with_the_reason_where_microvms_cannot_run() {
        if vm::check().is_ok() {
            eprintln!("skipped: this host runs microVMs; creation is tested end to end");
            return;
        }
        let dir = std::env::temp_dir().join(format!("spore-tpl-{}", std::process::id()));
        let req = TemplateRequest {
            name: "t".into(),
            ..TemplateRequest::default()
        };
        match create(&dir, &req) {
            Err(SupervisorError::Backend(BackendError::VmUnavailable(msg))) => {
                assert!(msg.contains("--isolation process"), "{msg}")
            }
            other => panic!("{other:?}"),
        }
        // Nothing was claimed or started.
        assert!(matches!(get("t"), Err(SupervisorError::UnknownTemplate(_))));
        assert!(!dir.exists());
        let err = source(&dir, "default").unwrap_err();
        assert!(
            matches!(
                err,
                SupervisorError::Backend(BackendError::VmUnavailable(_))
            ),
            "{err:?}"
        );
    }
}
