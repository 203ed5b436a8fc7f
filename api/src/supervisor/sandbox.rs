//! One sandbox: its identity, its plan, its record (state, exit, timings — what
//! the API reports and what is persisted in `<dir>/sandbox.json`), its output log
//! and its agent.
//!
//! State changes go through [`Sandbox::update`], which persists the record and
//! wakes everyone waiting in [`Sandbox::wait_until`]. The operations that drive
//! the state live in `sandbox_*.rs`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use spore_agent::protocol::client::Client;
use spore_agent::protocol::spec::{ExitInfo, ExitReason};

use super::output::OutputLog;
use super::spec::Plan;
use crate::backend::process::AgentProcess;
use crate::backend::vm::VmClone;
use crate::backend::{BackendError, Isolation};

/// The record's file name inside the sandbox directory.
pub const RECORD_FILE: &str = "sandbox.json";

/// Where a sandbox is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxState {
    /// Its agent and container are being set up.
    Creating,
    /// Set up; its process starts when a client attaches (interactive).
    Created,
    /// Its main process runs.
    Running,
    /// Its main process ended; see the exit code.
    Exited,
    /// It could not be set up, or its agent died; see `error`.
    Failed,
    /// Being torn down.
    Deleting,
}

impl SandboxState {
    pub const ALL: [SandboxState; 6] = [
        SandboxState::Creating,
        SandboxState::Created,
        SandboxState::Running,
        SandboxState::Exited,
        SandboxState::Failed,
        SandboxState::Deleting,
    ];

    /// True once the main process can no longer run.
    pub fn is_finished(self) -> bool {
        matches!(self, SandboxState::Exited | SandboxState::Failed)
    }

    pub fn name(self) -> &'static str {
        match self {
            SandboxState::Creating => "creating",
            SandboxState::Created => "created",
            SandboxState::Running => "running",
            SandboxState::Exited => "exited",
            SandboxState::Failed => "failed",
            SandboxState::Deleting => "deleting",
        }
    }
}

/// What the API reports about a sandbox, and what survives a daemon restart.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub image: String,
    pub argv: Vec<String>,
    pub isolation: Isolation,
    pub state: SandboxState,
    /// Docker style: the exit status, or 128 + the signal.
    pub exit_code: Option<i32>,
    /// `exited`, `signaled`, `oom` or `timeout`.
    pub exit_reason: Option<String>,
    /// Why the sandbox failed.
    pub error: Option<String>,
    /// The host pid of the sandbox's agent (process isolation) or of its clone's
    /// VMM process (vm isolation).
    pub agent_pid: Option<u32>,
    /// The agent's directory (socket, log, pid file).
    #[serde(default)]
    pub agent_dir: Option<PathBuf>,
    pub created_at_ms: u64,
    pub started_at_ms: Option<u64>,
    pub finished_at_ms: Option<u64>,
    /// Request to running process: agent start, container create and start.
    pub create_ms: Option<f64>,
    /// The steps inside `create_ms` (process isolation: agent_start,
    /// container_create, attach_start).
    #[serde(default)]
    pub create_phases_ms: BTreeMap<String, f64>,
    /// Remove the sandbox once its process has ended (`run --rm`).
    pub auto_remove: bool,
    pub plan: Plan,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Record {
    pub fn new(id: &str, plan: Plan, auto_remove: bool) -> Record {
        Record {
            id: id.to_owned(),
            image: plan.image.clone(),
            argv: plan.container.argv.clone(),
            isolation: plan.isolation,
            state: SandboxState::Creating,
            exit_code: None,
            exit_reason: None,
            error: None,
            agent_pid: None,
            agent_dir: None,
            created_at_ms: now_ms(),
            started_at_ms: None,
            finished_at_ms: None,
            create_ms: None,
            create_phases_ms: BTreeMap::new(),
            auto_remove,
            plan,
        }
    }

    /// Records the end of the main process (first report wins).
    pub fn set_exit(&mut self, exit: &ExitInfo) {
        if self.state.is_finished() || self.state == SandboxState::Deleting {
            return;
        }
        self.state = SandboxState::Exited;
        self.exit_code = Some(exit.code);
        if self.exit_reason.is_none() {
            self.exit_reason = Some(
                match exit.reason {
                    ExitReason::Exited => "exited",
                    ExitReason::Signaled => "signaled",
                    ExitReason::Oom => "oom",
                }
                .into(),
            );
        }
        self.finished_at_ms = Some(exit.finished_at_ms.max(self.created_at_ms));
    }

    /// Records a failure (unless the sandbox already finished or is being deleted).
    pub fn set_failed(&mut self, error: String) {
        if self.state.is_finished() || self.state == SandboxState::Deleting {
            return;
        }
        self.state = SandboxState::Failed;
        self.error = Some(error);
        self.finished_at_ms = Some(now_ms());
    }
}

/// A live sandbox.
#[derive(Debug)]
pub struct Sandbox {
    pub id: String,
    pub dir: PathBuf,
    record: Mutex<Record>,
    changed: Condvar,
    pub log: OutputLog,
    /// Its agent, once started (process isolation).
    pub agent: OnceLock<AgentProcess>,
    /// Its clone, once ordered (vm isolation); its agent is the guest's.
    pub vm: OnceLock<VmClone>,
}

impl Sandbox {
    pub fn new(dir: PathBuf, record: Record, log: OutputLog) -> Sandbox {
        Sandbox {
            id: record.id.clone(),
            dir,
            record: Mutex::new(record),
            changed: Condvar::new(),
            log,
            agent: OnceLock::new(),
            vm: OnceLock::new(),
        }
    }

    /// A new control connection to the sandbox's agent (the host agent under
    /// process isolation, the clone's guest agent under vm), after `hello`.
    pub fn agent_client(&self) -> Result<Client, BackendError> {
        if let Some(vm) = self.vm.get() {
            return Ok(vm.client()?);
        }
        match self.agent.get() {
            Some(agent) => agent.client(),
            None => Err(BackendError::NotYetAvailable("a sandbox without an agent")),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Record> {
        self.record.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of the record.
    pub fn record(&self) -> Record {
        self.lock().clone()
    }

    pub fn state(&self) -> SandboxState {
        self.lock().state
    }

    /// Changes the record, persists it and wakes waiters.
    pub fn update(&self, f: impl FnOnce(&mut Record)) {
        let mut rec = self.lock();
        f(&mut rec);
        // Best effort: a record that cannot be written (its directory is being
        // removed) only costs re-adoption.
        let _ = write_record(&self.dir, &rec);
        drop(rec);
        self.changed.notify_all();
    }

    /// Waits until `done(state)` or the timeout; returns the record then.
    pub fn wait_until(
        &self,
        timeout: Option<Duration>,
        done: impl Fn(SandboxState) -> bool,
    ) -> Record {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut rec = self.lock();
        while !done(rec.state) {
            let wait = match deadline {
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) => left.min(Duration::from_millis(500)),
                    None => break,
                },
                None => Duration::from_millis(500),
            };
            rec = self
                .changed
                .wait_timeout(rec, wait)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        rec.clone()
    }
}

/// Writes the record atomically (temp file + rename).
pub fn write_record(dir: &Path, rec: &Record) -> std::io::Result<()> {
    let tmp = dir.join(format!("{RECORD_FILE}.tmp"));
    std::fs::write(
        &tmp,
        serde_json::to_vec_pretty(rec).map_err(std::io::Error::other)?,
    )?;
    std::fs::rename(tmp, dir.join(RECORD_FILE))
}

/// Reads a persisted record.
pub fn read_record(dir: &Path) -> Option<Record> {
    let bytes = std::fs::read(dir.join(RECORD_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use spore_agent::protocol::spec::ContainerSpec;

    use super::*;

    fn plan() -> Plan {
        Plan {
            image: "busybox".into(),
            isolation: Isolation::Process,
            template: "default".into(),
            container: ContainerSpec {
                argv: vec!["true".into()],
                ..ContainerSpec::default()
            },
            timeout_ms: None,
            stdin: None,
            interactive: false,
        }
    }

    #[test]
    fn exit_and_failure_are_recorded_once() {
        let mut r = Record::new("abc", plan(), false);
        let exit = ExitInfo {
            code: 137,
            reason: ExitReason::Signaled,
            signal: Some(9),
            started_at_ms: 1,
            finished_at_ms: u64::MAX / 2,
        };
        r.set_exit(&exit);
        r.set_failed("late".into());
        assert_eq!(r.state, SandboxState::Exited);
        assert_eq!(r.exit_code, Some(137));
        assert_eq!(r.exit_reason.as_deref(), Some("signaled"));
        assert_eq!(r.error, None);
    }

    #[test]
    fn records_persist_and_waiters_wake() {
        let dir = std::env::temp_dir().join(format!("spore-sb-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = OutputLog::create(&dir.join("output.log")).unwrap();
        let sb = Arc::new(Sandbox::new(
            dir.clone(),
            Record::new("abc", plan(), true),
            log,
        ));
        let waiter = {
            let sb = sb.clone();
            std::thread::spawn(move || sb.wait_until(None, SandboxState::is_finished))
        };
        sb.update(|r| r.set_failed("agent died".into()));
        let seen = waiter.join().unwrap();
        assert_eq!(seen.state, SandboxState::Failed);
        let back = read_record(&dir).unwrap();
        assert_eq!(back, sb.record());
        let timed = sb.wait_until(Some(Duration::from_millis(10)), |s| {
            s == SandboxState::Running
        });
        assert_eq!(timed.state, SandboxState::Failed);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
