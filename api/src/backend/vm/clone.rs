//! One sandbox's clone: order it from a [`CloneSource`] with the sandbox's image
//! in its disk slot, connect to its agent (retrying until it answers), and apply
//! the clone fixup — fresh entropy from the host's getrandom, the wall clock, the
//! hostname (the sandbox id's prefix) and the sandbox id — before anything else
//! runs in it. Also watching and ending the clone process.
//!
//! Not here: the container inside (the supervisor drives it with the code the
//! process backend uses), the template process (`host`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use spore_agent::protocol::client::{Client, Endpoint};
use spore_agent::protocol::messages::CloneFixup;
use spore_agent::protocol::AGENT_VSOCK_PORT;

use super::VmError;
use crate::backend::pidwatch::PidFd;

/// Bytes of host entropy a clone's RNG is reseeded with.
const FIXUP_ENTROPY: usize = 64;
/// A clone's hostname: this many leading characters of its sandbox id.
const HOSTNAME_LEN: usize = 12;
/// Reads on a clone's agent connection during setup end after this.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Where clones come from: the template process (`TemplateHost`), or a test
/// double.
pub trait CloneSource: Send + Sync {
    /// Orders a prepared clone with `image` in its disk slot; returns once the
    /// clone's vCPU runs.
    fn order(&self, image: &Path) -> Result<ClonedVm, VmError>;
    /// Kills clone process `pid` and frees what the source holds for it.
    fn release(&self, pid: u32);
}

/// A clone as its source reports it.
#[derive(Clone, Debug)]
pub struct ClonedVm {
    /// The clone's VMM process.
    pub pid: u32,
    /// Its agent.
    pub endpoint: Endpoint,
    /// Order → the clone's vCPU in the guest.
    pub latency: Duration,
}

impl ClonedVm {
    /// A clone whose agent listens on the guest's vsock port behind `uds`.
    pub fn hybrid_vsock(pid: u32, uds: PathBuf, latency: Duration) -> ClonedVm {
        ClonedVm {
            pid,
            endpoint: Endpoint::HybridVsock {
                path: uds,
                port: AGENT_VSOCK_PORT,
            },
            latency,
        }
    }
}

/// A sandbox's running clone. [`VmClone::end`] kills it; dropping does not (a
/// sandbox's teardown decides when).
pub struct VmClone {
    pub vm: ClonedVm,
    pidfd: PidFd,
    source: Arc<dyn CloneSource>,
}

impl std::fmt::Debug for VmClone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmClone").field("vm", &self.vm).finish()
    }
}

impl VmClone {
    pub fn pid(&self) -> u32 {
        self.vm.pid
    }

    /// A new control connection to the clone's agent, after `hello`.
    pub fn client(&self) -> Result<Client, VmError> {
        let pid = self.vm.pid;
        let agent_err = move |e| VmError::Agent(pid, e);
        let mut c = Client::connect(self.vm.endpoint.clone()).map_err(agent_err)?;
        c.hello().map_err(agent_err)?;
        Ok(c)
    }

    fn fixup_err(&self) -> impl Fn(spore_agent::protocol::client::ClientError) -> VmError {
        let pid = self.vm.pid;
        move |e| VmError::Fixup(pid, e)
    }

    /// True once the clone's VMM process has ended.
    pub fn exited(&self) -> bool {
        self.pidfd.has_exited()
    }

    /// Blocks until the clone's VMM process has ended.
    pub fn wait_exit(&self) -> String {
        match self.pidfd.wait_exit() {
            Ok(()) => "exited".into(),
            Err(e) => format!("cannot watch it: {e}"),
        }
    }

    /// Kills the clone process; its source reaps it and removes its socket.
    pub fn end(&self) {
        let _ = self.pidfd.kill(libc::SIGKILL);
        self.source.release(self.vm.pid);
    }
}

/// Steps 1–4 of a vm sandbox: order a clone with `image` in its slot, watch its
/// process, reach its agent, apply the fixup. On failure the clone is ended.
pub fn start_clone(
    source: Arc<dyn CloneSource>,
    sandbox_id: &str,
    image: &Path,
    agent_timeout: Duration,
) -> Result<(VmClone, Client), VmError> {
    // 1. The order.
    let vm = source.order(image)?;
    // 2. A pidfd on the clone process: its death is seen, its pid never reused.
    let pidfd = match PidFd::open(vm.pid) {
        Ok(p) => p,
        Err(e) => {
            source.release(vm.pid);
            return Err(VmError::Watch(vm.pid, e));
        }
    };
    let clone = VmClone { vm, pidfd, source };
    // 3. Its agent, then 4. the fixup.
    let ready = connect_agent(&clone, agent_timeout).and_then(|mut client| {
        client
            .fixup(&fixup_for(sandbox_id))
            .map_err(clone.fixup_err())?;
        Ok(client)
    });
    match ready {
        Ok(client) => Ok((clone, client)),
        Err(e) => {
            clone.end();
            Err(e)
        }
    }
}

/// Retries connecting to the clone's agent until it answers `hello`, the clone
/// dies, or `timeout` passes.
fn connect_agent(clone: &VmClone, timeout: Duration) -> Result<Client, VmError> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_micros(200);
    loop {
        if clone.exited() {
            return Err(VmError::CloneDied(clone.pid()));
        }
        if let Ok(client) = Client::connect(clone.vm.endpoint.clone()) {
            let mut client = client;
            if client.set_timeout(Some(SETUP_TIMEOUT)).is_ok() && client.hello().is_ok() {
                let _ = client.set_timeout(None);
                return Ok(client);
            }
        }
        if Instant::now() > deadline {
            return Err(VmError::AgentTimeout(
                clone.pid(),
                timeout.as_millis() as u64,
            ));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// What makes a clone its own machine: fresh entropy, the wall clock, its
/// hostname and sandbox id.
pub fn fixup_for(sandbox_id: &str) -> CloneFixup {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    CloneFixup {
        entropy: host_entropy(),
        realtime_ns: Some(now.as_nanos() as u64),
        hostname: Some(sandbox_id.chars().take(HOSTNAME_LEN).collect()),
        sandbox_id: Some(sandbox_id.to_owned()),
    }
}

/// Bytes from the host's getrandom; empty (no reseed beyond virtio-rng) if it
/// fails, which it does not on a kernel newer than 3.17.
fn host_entropy() -> Vec<u8> {
    let mut buf = vec![0u8; FIXUP_ENTROPY];
    // SAFETY: getrandom writes at most `buf.len()` bytes into `buf`, which is
    // valid and exclusively ours for the call.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n != buf.len() as isize {
        return Vec::new();
    }
    buf
}

#[cfg(test)]
#[path = "clone_tests.rs"]
mod tests;
