//! The supervisor: the daemon's table of sandboxes and the operations on them.
//! Each operation lives in its own file (`sandbox_create.rs`, `sandbox_delete.rs`,
//! `sandbox_exec.rs`, `sandbox_run.rs`, `sandbox_attach.rs`); re-adoption after a
//! restart in `adopt.rs`.
//!
//! State on disk: `<run_dir>/sandboxes/<id>/` holds `sandbox.json` (the record)
//! and `output.log` (stdout/stderr frames); for process isolation the record
//! names the agent's directory `<run_dir>/agents/<agent id>/` (socket, log, pid
//! file, run directory).
//!
//! Not here: HTTP (`server`), how agents are started (`backend`).

mod adopt;
pub mod images;
pub mod metrics;
pub mod output;
pub mod sandbox;
mod sandbox_attach;
mod sandbox_create;
mod sandbox_delete;
mod sandbox_exec;
mod sandbox_run;
pub mod spec;
pub mod templates;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use crate::backend::pool::AgentPool;
use crate::backend::process::ProcessBackend;
use crate::backend::{BackendError, Isolation};
pub use sandbox::{Record, Sandbox, SandboxState};

/// Errors of supervisor operations. The HTTP status of each is decided in one
/// place: `server::error`.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
    #[error(
        "unknown image {0:?}: import it first (`spore image import PATH|REF`); \
         `spore image ls` lists imported images, \"busybox\" is built in"
    )]
    UnknownImage(String),
    #[error("image {0:?} is not built")]
    ImageNotBuilt(String, #[source] std::io::Error),
    #[error("unknown template {0:?}")]
    UnknownTemplate(String),
    #[error("no sandbox {0:?}")]
    NotFound(String),
    #[error("sandbox id prefix {0:?} matches more than one sandbox")]
    Ambiguous(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Images(#[from] images::ImagesError),
    #[error("cannot {what} {path}")]
    Io {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// How the daemon runs.
#[derive(Clone, Debug)]
pub struct SupervisorConfig {
    /// `/run/spore` or `$SPORE_RUN_DIR`.
    pub run_dir: PathBuf,
    /// Isolation of sandboxes whose spec names none.
    pub default_isolation: Isolation,
    /// Idle agents kept ready for process sandboxes.
    pub agent_pool: usize,
}

/// The daemon's sandboxes.
pub struct Supervisor {
    pub config: SupervisorConfig,
    sandboxes: Mutex<BTreeMap<String, Arc<Sandbox>>>,
    pub metrics: metrics::Metrics,
    agents: OnceLock<Result<Arc<AgentPool>, String>>,
}

impl Supervisor {
    /// Opens the state directory and re-adopts or reaps the sandboxes a previous
    /// daemon left there.
    pub fn open(config: SupervisorConfig) -> Result<Arc<Supervisor>, SupervisorError> {
        let sup = Arc::new(Supervisor {
            config,
            sandboxes: Mutex::new(BTreeMap::new()),
            metrics: metrics::Metrics::default(),
            agents: OnceLock::new(),
        });
        let dir = sup.sandboxes_dir();
        std::fs::create_dir_all(&dir).map_err(|source| SupervisorError::Io {
            what: "create",
            path: dir.display().to_string(),
            source,
        })?;
        adopt::adopt_all(&sup);
        if let Ok(pool) = sup.agents() {
            let in_use: Vec<PathBuf> = sup
                .table()
                .values()
                .filter_map(|sb| sb.record().agent_dir)
                .collect();
            pool.reap_strays(&in_use);
            pool.refill();
        }
        Ok(sup)
    }

    /// Before the daemon exits: stop idle agents. Sandboxes keep running for
    /// the next daemon to re-adopt.
    pub fn shutdown(&self) {
        if let Some(Ok(pool)) = self.agents.get() {
            pool.drain();
        }
    }

    pub fn agents_dir(&self) -> PathBuf {
        self.config.run_dir.join("agents")
    }

    pub fn sandboxes_dir(&self) -> PathBuf {
        self.config.run_dir.join("sandboxes")
    }

    fn table(&self) -> MutexGuard<'_, BTreeMap<String, Arc<Sandbox>>> {
        self.sandboxes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn insert(&self, sb: Arc<Sandbox>) {
        self.table().insert(sb.id.clone(), sb);
    }

    fn forget(&self, id: &str) {
        self.table().remove(id);
    }

    /// The process backend's agent pool, set up once.
    fn agents(&self) -> Result<Arc<AgentPool>, SupervisorError> {
        self.agents
            .get_or_init(|| {
                ProcessBackend::locate()
                    .map(|b| AgentPool::new(b, self.agents_dir(), self.config.agent_pool))
                    .map_err(|e| e.to_string())
            })
            .clone()
            .map_err(|_| {
                // Locate again for a typed error.
                match ProcessBackend::locate() {
                    Ok(_) => BackendError::NotYetAvailable("restart the daemon").into(),
                    Err(e) => e.into(),
                }
            })
    }

    fn process_backend(&self) -> Result<ProcessBackend, SupervisorError> {
        Ok(self.agents()?.backend().clone())
    }

    /// A sandbox by id or unique id prefix.
    pub fn get(&self, id: &str) -> Result<Arc<Sandbox>, SupervisorError> {
        let table = self.table();
        if let Some(sb) = table.get(id) {
            return Ok(sb.clone());
        }
        let mut matches = table
            .range(id.to_owned()..)
            .take_while(|(k, _)| k.starts_with(id))
            .map(|(_, v)| v.clone());
        match (id.is_empty(), matches.next(), matches.next()) {
            (false, Some(sb), None) => Ok(sb),
            (false, Some(_), Some(_)) => Err(SupervisorError::Ambiguous(id.into())),
            _ => Err(SupervisorError::NotFound(id.into())),
        }
    }

    /// Every sandbox's record, oldest first.
    pub fn list(&self) -> Vec<Record> {
        let mut all: Vec<Record> = self.table().values().map(|s| s.record()).collect();
        all.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
        all
    }

    /// Sandboxes per state, for metrics.
    pub fn count_by_state(&self) -> BTreeMap<&'static str, usize> {
        let mut counts: BTreeMap<&'static str, usize> =
            SandboxState::ALL.iter().map(|s| (s.name(), 0)).collect();
        for sb in self.table().values() {
            *counts.entry(sb.state().name()).or_default() += 1;
        }
        counts
    }
}

/// A fresh 12-hex-digit sandbox id.
pub fn new_id() -> String {
    let mut bytes = [0u8; 6];
    let filled = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if filled.is_err() {
        // No /dev/urandom: time and pid still make ids unique within a host.
        let t = sandbox::now_ms() ^ ((std::process::id() as u64) << 24);
        bytes.copy_from_slice(&t.to_be_bytes()[2..]);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp_sup(name: &str) -> (Arc<Supervisor>, PathBuf) {
        let dir = std::env::temp_dir().join(format!("spore-sup-{}-{name}", std::process::id()));
        let sup = Supervisor::open(SupervisorConfig {
            run_dir: dir.clone(),
            default_isolation: Isolation::Process,
            agent_pool: 0,
        })
        .unwrap();
        (sup, dir)
    }

    #[test]
    fn ids_are_fresh_hex() {
        let a = new_id();
        assert_eq!(a.len(), 12);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, new_id());
    }

    #[test]
    fn lookup_by_prefix() {
        let (sup, dir) = tmp_sup("prefix");
        let plan = spec::SandboxSpec {
            image: "busybox".into(),
            ..Default::default()
        }
        .validate(Isolation::Process, |_| Ok(PathBuf::from("/")))
        .unwrap();
        for id in ["abc111", "abc222", "def333"] {
            let sdir = dir.join(id);
            std::fs::create_dir_all(&sdir).unwrap();
            let log = output::OutputLog::create(&sdir.join("output.log")).unwrap();
            sup.insert(Arc::new(Sandbox::new(
                sdir,
                Record::new(id, plan.clone(), false),
                log,
            )));
        }
        assert_eq!(sup.get("def").unwrap().id, "def333");
        assert_eq!(sup.get("abc111").unwrap().id, "abc111");
        assert!(matches!(sup.get("abc"), Err(SupervisorError::Ambiguous(_))));
        assert!(matches!(sup.get("zzz"), Err(SupervisorError::NotFound(_))));
        assert!(matches!(sup.get(""), Err(SupervisorError::NotFound(_))));
        assert_eq!(sup.list().len(), 3);
        assert_eq!(sup.count_by_state()["creating"], 3);
        assert_eq!(sup.count_by_state()["running"], 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
