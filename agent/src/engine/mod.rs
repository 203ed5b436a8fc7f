//! The container engine: create, start, exec, signal, reap and delete
//! containers, each in fresh namespaces with an overlay root and a cgroup.
//!
//! Synchronous and single-owner: the agent server holds the [`Engine`] behind
//! a lock and calls it from its request handlers and from its reaper (PID 1's
//! `waitpid(-1)` loop, which hands every status to [`Engine::on_child_exit`]).
//! The engine never waits for container processes itself. Container-side
//! setup runs in stage 2 ([`stage2_main`]), a re-exec of the agent binary.
//!
//! Map: `spawn` (engine side of stage 2) → `stage2` → `namespaces` →
//! `container_init` (the setup steps: `rootfs`, `stdio`, `process`
//! with `user`, `caps` and `seccomp`); `cgroup` for limits and kill; `exit`
//! decodes wait statuses; `channel` and `config` are the control socket.

mod caps;
mod cgroup;
mod channel;
mod config;
mod container_init;
mod exit;
mod namespaces;
mod process;
mod rootfs;
mod seccomp;
mod spawn;
mod stage2;
mod stdio;
mod user;

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use self::caps::default_mask as default_capability_mask;
use self::cgroup::Cgroup;
pub use self::cgroup::CgroupError;
use self::channel::Channel;
use self::config::{CreateConfig, ExecConfig, ProcessConfig, Request};
pub use self::spawn::SpawnError;
pub use self::stage2::{stage2_main, STAGE2_ARG};
use crate::protocol::spec::{ContainerSpec, ContainerState, ContainerStatus, ExecSpec, ExitInfo};
use crate::sys;

/// `SPORE_NO_PIVOT=1` in the agent's environment makes containers enter
/// their root with MS_MOVE + chroot instead of pivot_root (`runc --no-pivot`).
/// The engine falls back to that by itself where pivot_root cannot work.
pub const NO_PIVOT_ENV: &str = "SPORE_NO_PIVOT";

/// How long `delete` waits for a container without a cgroup to die.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("invalid container id {0:?}: use 1-64 characters of [A-Za-z0-9_.-]")]
    InvalidId(String),
    #[error("container {0} already exists")]
    Exists(String),
    #[error("no container {0}")]
    UnknownId(String),
    #[error("container {0} was already started")]
    AlreadyStarted(String),
    #[error("container {0} is not running")]
    NotRunning(String),
    #[error("cannot create the run directory {0}")]
    RunDir(PathBuf, #[source] std::io::Error),
    #[error("cannot make the sealed copy of the agent binary for stage 2")]
    Stage2Binary(#[source] std::io::Error),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    #[error("cannot signal container {0}")]
    Signal(String, #[source] std::io::Error),
    #[error("processes of container {0} still alive after {KILL_TIMEOUT:?}")]
    KillTimeout(String),
}

/// Where the engine keeps its state.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Per-container directories (overlay upper/work, image mounts) live here.
    pub run_dir: PathBuf,
    /// A cgroup v2 directory whose children are the containers' cgroups.
    pub cgroup_root: PathBuf,
}

/// A process's stdio as the engine's caller holds it.
#[derive(Debug)]
pub struct ContainerIo {
    pub stdin: Option<OwnedFd>,
    /// stdout, or the pty master in tty mode.
    pub stdout: OwnedFd,
    /// `None` in tty mode: stdout carries both.
    pub stderr: Option<OwnedFd>,
}

/// A reaped process that belonged to a container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildExit {
    pub container: String,
    /// `None` for the container's init, `Some(pid)` for an exec'd process.
    pub exec_pid: Option<u32>,
    pub exit: ExitInfo,
}

struct Container {
    spec: ContainerSpec,
    pid: u32,
    status: ContainerStatus,
    /// Open to the waiting init until `start`.
    control: Option<Channel>,
    cgroup: Option<Cgroup>,
    run_dir: PathBuf,
    started_at_ms: u64,
    exit: Option<ExitInfo>,
    execs: BTreeMap<u32, u64>,
}

/// All containers of this agent.
pub struct Engine {
    cfg: EngineConfig,
    /// Stage 2 runs from this sealed in-memory copy of the agent binary, so
    /// a container process can never reach (and overwrite) the binary on
    /// disk through `/proc/<pid>/exe` (CVE-2019-5736).
    stage2_exe: OwnedFd,
    /// [`NO_PIVOT_ENV`] was set: enter roots without pivot_root.
    no_pivot: bool,
    containers: BTreeMap<String, Container>,
}

fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        && !id.starts_with('.')
}

impl Engine {
    pub fn new(cfg: EngineConfig) -> Result<Engine, EngineError> {
        std::fs::create_dir_all(&cfg.run_dir)
            .map_err(|e| EngineError::RunDir(cfg.run_dir.clone(), e))?;
        let stage2_exe = sys::sealed_memfd_copy("spore-stage2", Path::new("/proc/self/exe"))
            .map_err(EngineError::Stage2Binary)?;
        Ok(Engine {
            stage2_exe,
            no_pivot: std::env::var_os(NO_PIVOT_ENV).is_some_and(|v| v == "1"),
            cfg,
            containers: BTreeMap::new(),
        })
    }

    /// Where a child finds the sealed stage 2 binary: our descriptor, which
    /// it holds (close-on-exec) until its execve has opened it.
    fn stage2_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.stage2_exe.as_raw_fd()))
    }

    fn get(&self, id: &str) -> Result<&Container, EngineError> {
        self.containers
            .get(id)
            .ok_or_else(|| EngineError::UnknownId(id.to_owned()))
    }

    fn get_mut(&mut self, id: &str) -> Result<&mut Container, EngineError> {
        self.containers
            .get_mut(id)
            .ok_or_else(|| EngineError::UnknownId(id.to_owned()))
    }

    /// Set a container up completely; its program waits for [`Engine::start`].
    pub fn create(&mut self, id: &str, spec: &ContainerSpec) -> Result<ContainerIo, EngineError> {
        if !valid_id(id) {
            return Err(EngineError::InvalidId(id.to_owned()));
        }
        if self.containers.contains_key(id) {
            return Err(EngineError::Exists(id.to_owned()));
        }
        let cgroup = Cgroup::create(&self.cfg.cgroup_root, id, &spec.limits)?;
        let run_dir = self.cfg.run_dir.join(id);
        let spawned = std::fs::create_dir(&run_dir)
            .map_err(|e| EngineError::RunDir(run_dir.clone(), e))
            .and_then(|()| {
                let request = Request::Create(CreateConfig {
                    run_dir: run_dir.clone(),
                    lower: spec.rootfs.lower.clone(),
                    hostname: hostname(spec, id).to_owned(),
                    no_pivot: self.no_pivot,
                    process: process_config(spec, id, None),
                });
                Ok(spawn::spawn(
                    &self.stage2_path(),
                    &request,
                    spec.tty,
                    spec.stdin,
                    cgroup.as_ref(),
                )?)
            });
        let spawned = match spawned {
            Ok(s) => s,
            Err(e) => {
                // Whatever stage 2 got to dies with its cgroup or namespace.
                let _ = cgroup.map(Cgroup::kill_and_remove);
                let _ = std::fs::remove_dir_all(&run_dir);
                return Err(e);
            }
        };
        let container = Container {
            spec: spec.clone(),
            pid: spawned.pid,
            status: ContainerStatus::Created,
            control: Some(spawned.chan),
            cgroup,
            run_dir,
            started_at_ms: 0,
            exit: None,
            execs: BTreeMap::new(),
        };
        self.containers.insert(id.to_owned(), container);
        Ok(spawned.io)
    }

    /// Let a created container exec its program; returns once it has.
    pub fn start(&mut self, id: &str) -> Result<(), EngineError> {
        let c = self.get_mut(id)?;
        let chan = c
            .control
            .take()
            .ok_or_else(|| EngineError::AlreadyStarted(id.to_owned()))?;
        c.started_at_ms = exit::now_ms();
        chan.send(&Request::Start, &[]).map_err(SpawnError::from)?;
        // A failed exec ends the init, which the reaper reports; until then
        // the container counts as running.
        c.status = ContainerStatus::Running;
        spawn::await_exec(&chan)?;
        Ok(())
    }

    /// Start a further process in a running container.
    pub fn exec(&mut self, id: &str, spec: &ExecSpec) -> Result<(u32, ContainerIo), EngineError> {
        let c = self.get(id)?;
        if c.status != ContainerStatus::Running {
            return Err(EngineError::NotRunning(id.to_owned()));
        }
        let request = Request::Exec(ExecConfig {
            target_pid: c.pid,
            process: process_config(&c.spec, id, Some(spec)),
        });
        let spawned = spawn::spawn(
            &self.stage2_path(),
            &request,
            spec.tty,
            spec.stdin,
            c.cgroup.as_ref(),
        )?;
        let c = self.get_mut(id)?;
        c.execs.insert(spawned.pid, exit::now_ms());
        if let Err(e) = spawn::await_exec(&spawned.chan) {
            // The caller gets the error; the process's exit is nobody's news.
            c.execs.remove(&spawned.pid);
            return Err(e.into());
        }
        Ok((spawned.pid, spawned.io))
    }

    /// Send `sig` to the container's init.
    pub fn signal(&mut self, id: &str, sig: i32) -> Result<(), EngineError> {
        let c = self.get(id)?;
        if c.status == ContainerStatus::Exited {
            return Err(EngineError::NotRunning(id.to_owned()));
        }
        sys::kill(c.pid, sig).map_err(|e| EngineError::Signal(id.to_owned(), e))
    }

    pub fn state(&self, id: &str) -> Result<ContainerState, EngineError> {
        Ok(state_of(id, self.get(id)?))
    }

    pub fn list(&self) -> Vec<ContainerState> {
        self.containers
            .iter()
            .map(|(id, c)| state_of(id, c))
            .collect()
    }

    /// Record a reaped process. `None` when `pid` is none of ours.
    pub fn on_child_exit(&mut self, pid: u32, wait_status: i32) -> Option<ChildExit> {
        let (id, c) = self.containers.iter_mut().find(|(_, c)| {
            (c.pid == pid && c.status != ContainerStatus::Exited) || c.execs.contains_key(&pid)
        })?;
        let oom = c.cgroup.as_ref().is_some_and(Cgroup::oom_killed);
        let now = exit::now_ms();
        if let Some(started) = c.execs.remove(&pid) {
            let exit = exit::exit_info(wait_status, oom, started, now);
            return Some(ChildExit {
                container: id.clone(),
                exec_pid: Some(pid),
                exit,
            });
        }
        let exit = exit::exit_info(wait_status, oom, c.started_at_ms, now);
        c.status = ContainerStatus::Exited;
        c.control = None;
        c.exit = Some(exit.clone());
        Some(ChildExit {
            container: id.clone(),
            exec_pid: None,
            exit,
        })
    }

    /// Kill everything in the container, then remove its cgroup and run
    /// directory. Its mounts live only in its mount namespace and vanish with it.
    pub fn delete(&mut self, id: &str) -> Result<(), EngineError> {
        let mut c = self
            .containers
            .remove(id)
            .ok_or_else(|| EngineError::UnknownId(id.to_owned()))?;
        // Closing the control socket ends an init still waiting for start.
        c.control = None;
        let killed = match c.cgroup.take() {
            Some(cgroup) => cgroup.kill_and_remove().map_err(EngineError::from),
            None => kill_pid_namespace(id, &c),
        };
        if let Err(e) = killed {
            // Keep it listed so that delete can be retried.
            self.containers.insert(id.to_owned(), c);
            return Err(e);
        }
        let _ = std::fs::remove_dir_all(&c.run_dir);
        Ok(())
    }
}

/// Without a cgroup: SIGKILL the init, which makes the kernel kill its whole
/// pid namespace, and the exec'd processes we know of; wait until the init
/// is exiting. (An init stays in its exit until the agent's reaper collects
/// the namespace's processes whose parent is the agent, so waiting for its
/// zombie here, under the engine's lock, could wait for ever.)
fn kill_pid_namespace(id: &str, c: &Container) -> Result<(), EngineError> {
    if c.status == ContainerStatus::Exited {
        return Ok(());
    }
    for &pid in std::iter::once(&c.pid).chain(c.execs.keys()) {
        let _ = sys::kill(pid, libc::SIGKILL);
    }
    let deadline = Instant::now() + KILL_TIMEOUT;
    while alive(c.pid) {
        if Instant::now() > deadline {
            return Err(EngineError::KillTimeout(id.to_owned()));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// The kernel's "task is exiting" flag in /proc/<pid>/stat.
const PF_EXITING: u64 = 0x4;

/// Whether `pid` exists and has not begun to exit.
fn alive(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields follow the parenthesised command name, which may hold spaces:
    // state is the first, flags the seventh.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return false;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first().copied().unwrap_or("X");
    let flags: u64 = fields
        .get(6)
        .and_then(|f| f.parse().ok())
        .unwrap_or(PF_EXITING);
    !matches!(state, "Z" | "X") && flags & PF_EXITING == 0
}

fn state_of(id: &str, c: &Container) -> ContainerState {
    ContainerState {
        id: id.to_owned(),
        status: c.status,
        pid: c.pid,
        exit: c.exit.clone(),
    }
}

/// The container's hostname: the spec's, else its id.
fn hostname<'a>(spec: &'a ContainerSpec, id: &'a str) -> &'a str {
    spec.hostname.as_deref().unwrap_or(id)
}

/// What a process runs with: the container's spec, overridden by an exec's.
fn process_config(spec: &ContainerSpec, id: &str, exec: Option<&ExecSpec>) -> ProcessConfig {
    // HOSTNAME first, as docker sets it, so that the spec's env can override it.
    let hostname = format!("HOSTNAME={}", hostname(spec, id));
    let base = ProcessConfig {
        argv: spec.argv.clone(),
        env: std::iter::once(hostname)
            .chain(spec.env.iter().cloned())
            .collect(),
        cwd: spec.cwd.clone(),
        user: spec.user.clone(),
        rlimits: spec.rlimits.clone(),
        tty: spec.tty,
        stdin: spec.stdin,
    };
    let Some(exec) = exec else { return base };
    ProcessConfig {
        argv: exec.argv.clone(),
        env: base
            .env
            .into_iter()
            .chain(exec.env.iter().cloned())
            .collect(),
        cwd: exec.cwd.clone().or(base.cwd),
        user: exec.user.clone().or(base.user),
        rlimits: base.rlimits,
        tty: exec.tty,
        stdin: exec.stdin,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        assert!(valid_id("web-1.a_b"));
        for bad in ["", ".", "..", "a/b", "a b", &"x".repeat(65)] {
            assert!(!valid_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn exec_inherits_and_overrides_the_container() {
        let spec = ContainerSpec {
            argv: vec!["sh".into()],
            env: vec!["A=1".into()],
            cwd: Some("/srv".into()),
            user: Some("nobody".into()),
            ..Default::default()
        };
        let exec = ExecSpec {
            argv: vec!["id".into()],
            env: vec!["B=2".into()],
            tty: true,
            ..Default::default()
        };
        let p = process_config(&spec, "c1", Some(&exec));
        assert_eq!(p.argv, vec!["id"]);
        assert_eq!(p.env, vec!["HOSTNAME=c1", "A=1", "B=2"]);
        assert_eq!(
            (p.cwd.as_deref(), p.user.as_deref(), p.tty),
            (Some("/srv"), Some("nobody"), true)
        );
    }

    #[test]
    fn unknown_ids_and_exits_are_reported() {
        let dir = std::env::temp_dir().join(format!("spore-engine-unit-{}", std::process::id()));
        let mut engine = Engine::new(EngineConfig {
            run_dir: dir.clone(),
            cgroup_root: dir.join("no-cgroup"),
        })
        .unwrap();
        assert!(matches!(engine.state("x"), Err(EngineError::UnknownId(_))));
        assert!(matches!(engine.start("x"), Err(EngineError::UnknownId(_))));
        assert_eq!(engine.on_child_exit(1, 0), None);
        assert!(engine.list().is_empty());
        assert_eq!(
            EngineError::UnknownId("x".into()).to_string(),
            "no container x"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn our_own_process_is_alive() {
        assert!(alive(std::process::id()));
        assert!(!alive(u32::MAX));
    }
}
