//! The `process` isolation backend: one host-mode agent per sandbox,
//! `spore-agent --listen unix:<dir>/agent.sock --run-dir <dir>/agent --cgroup-root
//! <cgroup2>/spore/<agent id>` with `<dir>` = `<run_dir>/agents/<agent id>`, driven
//! over the agent protocol like a guest's agent. The container inside is named
//! after the sandbox.
//!
//! The agent runs in its own session so it outlives a daemon that dies: a
//! restarted daemon re-adopts it by pid (see [`AgentProcess::adopt`]). Owns
//! starting, finding, stopping and watching agent processes; not what runs in
//! them (the supervisor decides that).

use std::fs::{self, File};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use spore_agent::protocol::client::{Client, Endpoint};
use spore_agent::protocol::spec::Limits;

use super::pidwatch::{self, PidFd};
use super::BackendError;

/// The file holding an agent's pid, in its directory.
pub const PID_FILE: &str = "agent.pid";
/// The agent's program name, as /proc/PID/comm shows it.
const AGENT_COMM: &str = "spore-agent";
/// How long a fresh agent may take to listen.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stopped agent may take to exit before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// Where agents come from and where their cgroups go.
#[derive(Clone, Debug)]
pub struct ProcessBackend {
    pub agent_bin: PathBuf,
    /// Parent of the per-sandbox cgroup roots, on the cgroup v2 hierarchy.
    pub cgroup_parent: PathBuf,
    /// Extra arguments for every agent (`SPORE_AGENT_ARGS`, for debugging).
    pub extra_args: Vec<String>,
}

impl ProcessBackend {
    /// Finds the agent binary: `$SPORE_AGENT`, else next to the running `spore`.
    pub fn locate() -> Result<ProcessBackend, BackendError> {
        let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("spore"));
        let agent_bin = match std::env::var_os("SPORE_AGENT") {
            Some(p) => PathBuf::from(p),
            None => exe.with_file_name(AGENT_COMM),
        };
        if !agent_bin.is_file() {
            return Err(BackendError::AgentMissing(exe.display().to_string()));
        }
        let extra_args = std::env::var("SPORE_AGENT_ARGS")
            .map(|s| s.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default();
        Ok(ProcessBackend {
            agent_bin,
            cgroup_parent: cgroup2_mount().join("spore"),
            extra_args,
        })
    }

    /// Starts an agent named `id` (its cgroup's name) with its files in `dir`, and
    /// waits until it listens.
    pub fn spawn(&self, id: &str, dir: &Path) -> Result<AgentProcess, BackendError> {
        let socket = dir.join("agent.sock");
        let run_dir = dir.join("agent");
        let cgroup = self.cgroup_parent.join(id);
        fs::create_dir_all(&run_dir).map_err(io_err("cannot create", &run_dir))?;
        self.prepare_cgroup_parent();
        let log_path = dir.join("agent.log");
        let log = File::create(&log_path).map_err(io_err("cannot create", &log_path))?;
        let log2 = log
            .try_clone()
            .map_err(io_err("cannot duplicate", &log_path))?;
        let mut cmd = Command::new(&self.agent_bin);
        cmd.arg("--listen")
            .arg(format!("unix:{}", socket.display()))
            .arg("--run-dir")
            .arg(&run_dir)
            .arg("--cgroup-root")
            .arg(&cgroup)
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        // SAFETY: setsid, sigemptyset and pthread_sigmask are async-signal-safe;
        // the only memory touched is a sigset on this stack. Between fork and exec
        // they move the child into a new session (so the agent outlives signals
        // sent to the daemon's process group) and clear its signal mask.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                // The daemon blocks SIGTERM/SIGINT for its signal thread; the
                // agent and its containers must not inherit that mask.
                let mut none: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut none);
                libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| BackendError::Spawn(self.agent_bin.display().to_string(), e))?;
        let mut agent = AgentProcess {
            pid: child.id(),
            child: Mutex::new(Some(child)),
            pidfd: None,
            endpoint: Endpoint::Unix(socket),
            dir: dir.to_owned(),
            cgroup,
        };
        // The pid file lets a restarted daemon find agents no sandbox names.
        let _ = fs::write(dir.join(PID_FILE), agent.pid.to_string());
        if let Err(e) = agent.wait_listening(&log_path) {
            agent.kill();
            agent.wait_exit();
            return Err(e);
        }
        Ok(agent)
    }
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BackendError {
    let path = path.display().to_string();
    move |source| BackendError::Io { what, path, source }
}

impl ProcessBackend {
    /// Refuses limits the host's cgroup v2 hierarchy cannot enforce (a hybrid
    /// host offers no controllers there). The agent refuses them too; checking
    /// here answers before an agent is started, with a 4xx.
    pub fn check_limits(&self, limits: &Limits) -> Result<(), BackendError> {
        if limits.is_empty() {
            return Ok(());
        }
        self.prepare_cgroup_parent();
        let offered =
            fs::read_to_string(self.cgroup_parent.join("cgroup.controllers")).unwrap_or_default();
        let wanted = [
            (limits.memory_bytes.is_some(), "memory"),
            (limits.cpus.is_some(), "cpu"),
            (limits.pids.is_some(), "pids"),
        ];
        let missing: Vec<&str> = wanted
            .iter()
            .filter(|(w, c)| *w && !offered.split_whitespace().any(|o| o == *c))
            .map(|(_, c)| *c)
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        Err(BackendError::LimitsUnsupported {
            missing: missing.join(", "),
            root: self.cgroup_parent.display().to_string(),
        })
    }

    /// Best effort: create the parent of the sandboxes' cgroups and offer it the
    /// controllers the root has. On hybrid hosts there are none, and the agent
    /// refuses limits.
    fn prepare_cgroup_parent(&self) {
        let _ = fs::create_dir_all(&self.cgroup_parent);
        let Some(root) = self.cgroup_parent.parent() else {
            return;
        };
        let offered = fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
        let line: Vec<String> = ["cpu", "memory", "pids"]
            .iter()
            .filter(|c| offered.split_whitespace().any(|o| o == **c))
            .map(|c| format!("+{c}"))
            .collect();
        if !line.is_empty() {
            let _ = fs::write(root.join("cgroup.subtree_control"), line.join(" "));
        }
    }
}

/// The cgroup v2 mount point: `/sys/fs/cgroup` on unified hosts,
/// `/sys/fs/cgroup/unified` on hybrid ones.
pub fn cgroup2_mount() -> PathBuf {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mountinfo
        .lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            (right.split(' ').next()? == "cgroup2").then(|| left.split(' ').nth(4))?
        })
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/sys/fs/cgroup"))
}

/// One running agent process.
#[derive(Debug)]
pub struct AgentProcess {
    pub pid: u32,
    /// Set when this daemon started the agent (we must reap it).
    child: Mutex<Option<Child>>,
    /// Set when the agent was re-adopted from a previous daemon.
    pidfd: Option<PidFd>,
    pub endpoint: Endpoint,
    /// Its socket, log, pid file and run directory.
    pub dir: PathBuf,
    pub cgroup: PathBuf,
}

impl AgentProcess {
    /// Re-adopts the agent a previous daemon started in `dir`, if `pid` is still
    /// that agent and it answers on its socket.
    pub fn adopt(pid: u32, dir: &Path, cgroup: PathBuf) -> Option<AgentProcess> {
        if !pidwatch::runs(pid, AGENT_COMM) {
            return None;
        }
        let pidfd = PidFd::open(pid).ok()?;
        let agent = AgentProcess {
            pid,
            child: Mutex::new(None),
            pidfd: Some(pidfd),
            endpoint: Endpoint::Unix(dir.join("agent.sock")),
            dir: dir.to_owned(),
            cgroup,
        };
        let mut client = agent.client().ok()?;
        client.hello().ok()?;
        Some(agent)
    }

    /// A new control connection, after `hello`.
    pub fn client(&self) -> Result<Client, BackendError> {
        let mut c = Client::connect(self.endpoint.clone())?;
        c.hello()?;
        Ok(c)
    }

    fn socket(&self) -> &Path {
        match &self.endpoint {
            Endpoint::Unix(p) => p,
            Endpoint::HybridVsock { path, .. } => path,
        }
    }

    fn wait_listening(&mut self, log: &Path) -> Result<(), BackendError> {
        let start = Instant::now();
        let mut pause = Duration::from_micros(200);
        loop {
            if UnixStream::connect(self.socket()).is_ok() {
                return Ok(());
            }
            if let Some(child) = self.child.get_mut().ok().and_then(|c| c.as_mut()) {
                if let Ok(Some(status)) = child.try_wait() {
                    let tail = fs::read_to_string(log).unwrap_or_default();
                    let last = tail.lines().last().unwrap_or("").to_owned();
                    return Err(BackendError::AgentDied(
                        format!("{status}: {last}"),
                        log.display().to_string(),
                    ));
                }
            }
            if start.elapsed() > LISTEN_TIMEOUT {
                return Err(BackendError::AgentTimeout(
                    self.socket().display().to_string(),
                    LISTEN_TIMEOUT.as_millis() as u64,
                ));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(5));
        }
    }

    /// Blocks until the agent process has exited (and reaps it if it is ours).
    /// Returns a description of how it ended.
    pub fn wait_exit(&self) -> String {
        if let Some(pidfd) = &self.pidfd {
            return match pidfd.wait_exit() {
                Ok(()) => "exited".into(),
                Err(e) => format!("cannot watch it: {e}"),
            };
        }
        // Poll rather than block in wait(): `kill` must stay able to take the lock.
        loop {
            {
                let mut guard = self.child.lock().unwrap_or_else(|p| p.into_inner());
                let Some(child) = guard.as_mut() else {
                    return "exited".into();
                };
                match child.try_wait() {
                    Ok(Some(status)) => {
                        *guard = None;
                        return status.to_string();
                    }
                    Ok(None) => {}
                    Err(e) => return format!("cannot wait for it: {e}"),
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL to the agent.
    pub fn kill(&self) {
        if let Some(pidfd) = &self.pidfd {
            let _ = pidfd.kill(libc::SIGKILL);
            return;
        }
        let mut guard = self.child.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(child) = guard.as_mut() {
            let _ = child.kill();
        }
    }

    /// True once the agent process is gone.
    pub fn exited(&self) -> bool {
        if let Some(pidfd) = &self.pidfd {
            return !pidwatch::runs(pidfd.pid(), AGENT_COMM);
        }
        let mut guard = self.child.lock().unwrap_or_else(|p| p.into_inner());
        match guard.as_mut() {
            None => true,
            Some(child) => matches!(child.try_wait(), Ok(Some(_))),
        }
    }

    /// Asks the agent to end, then kills it if it has not within a grace period.
    /// Does not wait for the exit; whoever runs [`AgentProcess::wait_exit`] sees it.
    pub fn stop(&self) {
        if let Ok(mut c) = self.client() {
            let _ = c.set_timeout(Some(STOP_GRACE));
            let _ = c.shutdown();
        }
        let start = Instant::now();
        while start.elapsed() < STOP_GRACE {
            if !self.socket().exists() || self.exited() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if !self.exited() {
            self.kill();
        }
    }

    /// Kills whatever is left in the sandbox's cgroup (containers of an agent that
    /// died) and removes the cgroup directories, deepest first. Best effort.
    pub fn cleanup_cgroup(&self) {
        cleanup_cgroup(&self.cgroup);
    }
}

/// See [`AgentProcess::cleanup_cgroup`].
pub fn cleanup_cgroup(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            cleanup_cgroup(&entry.path());
        }
    }
    // Never create the file: outside cgroupfs (tests) that would fill the dir.
    if let Ok(mut kill) = fs::OpenOptions::new()
        .write(true)
        .open(dir.join("cgroup.kill"))
    {
        let _ = std::io::Write::write_all(&mut kill, b"1");
    }
    for _ in 0..100 {
        if fs::remove_dir(dir).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount() {
        let m = cgroup2_mount();
        assert!(m.starts_with("/sys/fs/cgroup"), "{}", m.display());
    }

    #[test]
    fn limits_need_controllers() {
        let dir = std::env::temp_dir().join(format!("spore-pb3-{}", std::process::id()));
        let backend = ProcessBackend {
            agent_bin: PathBuf::from("/bin/true"),
            cgroup_parent: dir.join("root/spore"),
            extra_args: vec![],
        };
        fs::create_dir_all(&backend.cgroup_parent).unwrap();
        fs::write(
            backend.cgroup_parent.join("cgroup.controllers"),
            "cpu pids\n",
        )
        .unwrap();
        assert!(backend.check_limits(&Limits::default()).is_ok());
        let ok = Limits {
            cpus: Some(1.0),
            pids: Some(5),
            ..Limits::default()
        };
        assert!(backend.check_limits(&ok).is_ok());
        let mem = Limits {
            memory_bytes: Some(1 << 20),
            pids: Some(5),
            ..Limits::default()
        };
        match backend.check_limits(&mem) {
            Err(BackendError::LimitsUnsupported { missing, .. }) => assert_eq!(missing, "memory"),
            other => panic!("{other:?}"),
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_agent_is_explained() {
        let dir = std::env::temp_dir().join(format!("spore-pb-{}", std::process::id()));
        let backend = ProcessBackend {
            agent_bin: PathBuf::from("/nonexistent/spore-agent"),
            cgroup_parent: dir.join("cg"),
            extra_args: vec![],
        };
        let err = backend.spawn("x", &dir).unwrap_err();
        assert!(matches!(err, BackendError::Spawn(..)), "{err:?}");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_agent_that_dies_early_is_reported_with_its_log() {
        let dir = std::env::temp_dir().join(format!("spore-pb2-{}", std::process::id()));
        let backend = ProcessBackend {
            agent_bin: PathBuf::from("/bin/false"),
            cgroup_parent: dir.join("cg"),
            extra_args: vec![],
        };
        let err = backend.spawn("x", &dir).unwrap_err();
        assert!(matches!(err, BackendError::AgentDied(..)), "{err:?}");
        assert!(!adopt_pid_of_shell());
        let _ = fs::remove_dir_all(&dir);
    }

    fn adopt_pid_of_shell() -> bool {
        // Our own pid is not an agent: adoption must refuse it.
        AgentProcess::adopt(
            std::process::id(),
            Path::new("/nonexistent"),
            "/nonexistent".into(),
        )
        .is_some()
    }
}
