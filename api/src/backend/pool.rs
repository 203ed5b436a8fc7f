//! A pool of pre-started idle agents for the process backend, so starting an
//! agent is off the path of a sandbox create — the same idea as the design's pool
//! of pre-started VMM processes for clones.
//!
//! Each agent has its own directory `<run_dir>/agents/<agent id>/` (socket, log,
//! pid file, run directory) and cgroup `<cgroup2>/spore/<agent id>`; a sandbox
//! records which agent it got. A taken agent is replaced in the background. At
//! startup, agents no sandbox names (idle ones of a previous daemon, or strays)
//! are killed and their files and cgroups removed; at shutdown the idle ones are.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::pidwatch::{self, PidFd};
use super::process::{self, AgentProcess, ProcessBackend, PID_FILE};
use super::BackendError;

/// Idle agents, ready for a sandbox.
#[derive(Debug)]
pub struct AgentPool {
    backend: ProcessBackend,
    dir: PathBuf,
    target: usize,
    idle: Mutex<Vec<AgentProcess>>,
    refilling: AtomicBool,
    closed: AtomicBool,
}

impl AgentPool {
    /// A pool keeping `target` idle agents (0: start each agent on demand).
    pub fn new(backend: ProcessBackend, dir: PathBuf, target: usize) -> Arc<AgentPool> {
        Arc::new(AgentPool {
            backend,
            dir,
            target,
            idle: Mutex::new(Vec::new()),
            refilling: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        })
    }

    pub fn backend(&self) -> &ProcessBackend {
        &self.backend
    }

    fn idle(&self) -> MutexGuard<'_, Vec<AgentProcess>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A ready agent: an idle one, or a freshly started one if none is idle.
    pub fn take(self: &Arc<Self>) -> Result<AgentProcess, BackendError> {
        let mut got = self.idle().pop();
        self.refill();
        while let Some(agent) = got {
            if !agent.exited() {
                return Ok(agent);
            }
            discard(&agent);
            got = self.idle().pop();
        }
        self.start_one()
    }

    fn start_one(&self) -> Result<AgentProcess, BackendError> {
        let id = format!("agent-{}", crate::supervisor::new_id());
        self.backend.spawn(&id, &self.dir.join(&id))
    }

    /// Tops the pool up on a helper thread (one at a time).
    pub fn refill(self: &Arc<Self>) {
        if self.target == 0 || self.refilling.swap(true, Ordering::AcqRel) {
            return;
        }
        let pool = self.clone();
        let spawned = std::thread::Builder::new()
            .name("agent-pool".into())
            .spawn(move || {
                while !pool.closed.load(Ordering::Acquire) && pool.idle().len() < pool.target {
                    match pool.start_one() {
                        Ok(agent) if pool.closed.load(Ordering::Acquire) => discard(&agent),
                        Ok(agent) => pool.idle().push(agent),
                        Err(e) => {
                            eprintln!("spore: cannot pre-start an agent: {e}");
                            break;
                        }
                    }
                }
                pool.refilling.store(false, Ordering::Release);
            });
        if spawned.is_err() {
            self.refilling.store(false, Ordering::Release);
        }
    }

    /// Stops the idle agents and removes their files and cgroups.
    pub fn drain(&self) {
        self.closed.store(true, Ordering::Release);
        // Let a refill in progress finish (it discards what it starts now).
        let start = std::time::Instant::now();
        while self.refilling.load(Ordering::Acquire)
            && start.elapsed() < std::time::Duration::from_secs(10)
        {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let idle: Vec<AgentProcess> = std::mem::take(&mut *self.idle());
        for agent in &idle {
            discard(agent);
        }
    }

    /// Kills agents in the pool directory that no sandbox uses (`in_use` holds
    /// their directories) and removes their files and cgroups.
    pub fn reap_strays(&self, in_use: &[PathBuf]) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let dir = entry.path();
            if in_use.contains(&dir) {
                continue;
            }
            reap_dir(&dir, &self.backend.cgroup_parent);
        }
    }
}

/// Ends one unused agent and removes what it had.
fn discard(agent: &AgentProcess) {
    agent.kill();
    agent.wait_exit();
    agent.cleanup_cgroup();
    let _ = fs::remove_dir_all(&agent.dir);
}

/// Kills the agent recorded in `dir` (if it is still one), then removes the
/// directory and the agent's cgroup.
fn reap_dir(dir: &Path, cgroup_parent: &Path) {
    let pid = fs::read_to_string(dir.join(PID_FILE))
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok());
    if let Some(pid) = pid.filter(|p| pidwatch::runs(*p, "spore-agent")) {
        if let Ok(pidfd) = PidFd::open(pid) {
            let _ = pidfd.kill(libc::SIGKILL);
            let _ = pidfd.wait_exit();
        }
    }
    if let Some(name) = dir.file_name() {
        process::cleanup_cgroup(&cgroup_parent.join(name));
    }
    let _ = fs::remove_dir_all(dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strays_are_removed_and_used_dirs_kept() {
        let root = std::env::temp_dir().join(format!("spore-pool-{}", std::process::id()));
        let backend = ProcessBackend {
            agent_bin: PathBuf::from("/bin/false"),
            cgroup_parent: root.join("cg"),
            extra_args: vec![],
        };
        let pool = AgentPool::new(backend, root.join("agents"), 0);
        let stray = root.join("agents/agent-stray");
        let used = root.join("agents/agent-used");
        fs::create_dir_all(&stray).unwrap();
        fs::create_dir_all(&used).unwrap();
        fs::create_dir_all(root.join("cg/agent-stray")).unwrap();
        // A pid that is not an agent must not be killed: our own.
        fs::write(stray.join(PID_FILE), std::process::id().to_string()).unwrap();
        pool.reap_strays(std::slice::from_ref(&used));
        assert!(!stray.exists());
        assert!(!root.join("cg/agent-stray").exists());
        assert!(used.exists());
        // An agent that cannot start is an error, not a hang.
        assert!(pool.take().is_err());
        fs::remove_dir_all(&root).unwrap();
    }
}
