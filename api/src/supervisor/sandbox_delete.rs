//! Deleting a sandbox, also while it runs: claim it (state `deleting`, persisted,
//! so a daemon that dies half way finishes the job after its restart) → kill the
//! container and end the agent → remove its cgroup and directory → forget it.
//!
//! `run` uses [`Supervisor::delete_in_background`]: the sandbox leaves the table
//! at once and its teardown does not delay the answer.

use std::fs;
use std::sync::Arc;

use super::sandbox::{Sandbox, SandboxState};
use super::{Supervisor, SupervisorError};

impl Supervisor {
    /// Deletes a sandbox. Without `force`, a running sandbox is refused (409).
    pub fn delete(self: &Arc<Self>, id: &str, force: bool) -> Result<(), SupervisorError> {
        let sb = self.claim(id, force)?;
        teardown(&sb);
        self.forget(&sb.id);
        Ok(())
    }

    /// Like `delete(id, true)`, but the teardown runs on a helper thread; the
    /// sandbox is gone from the API when this returns.
    pub fn delete_in_background(self: &Arc<Self>, id: &str) -> Result<(), SupervisorError> {
        let sb = self.claim(id, true)?;
        self.forget(&sb.id);
        let spawned = std::thread::Builder::new()
            .name("sandbox-teardown".into())
            .spawn({
                let sb = sb.clone();
                move || teardown(&sb)
            });
        if spawned.is_err() {
            teardown(&sb);
        }
        Ok(())
    }

    /// Step 1: mark it deleting; only one delete proceeds.
    fn claim(&self, id: &str, force: bool) -> Result<Arc<Sandbox>, SupervisorError> {
        let sb = self.get(id)?;
        let mut refused = None;
        let mut claimed = false;
        sb.update(|r| match r.state {
            SandboxState::Running | SandboxState::Creating if !force => {
                refused = Some(format!(
                    "sandbox {} is {}: stop it first or delete with force",
                    r.id,
                    r.state.name()
                ))
            }
            SandboxState::Deleting => {}
            _ => {
                r.state = SandboxState::Deleting;
                claimed = true;
            }
        });
        if let Some(msg) = refused {
            return Err(SupervisorError::Conflict(msg));
        }
        if !claimed {
            return Err(SupervisorError::NotFound(sb.id.clone()));
        }
        Ok(sb)
    }
}

/// Steps 2–3: kill the container, end the agent (or kill the clone: its
/// containers end with its VM), remove what is left.
pub(super) fn teardown(sb: &Sandbox) {
    if let Some(clone) = sb.vm.get() {
        clone.end();
        clone.wait_exit();
    }
    if let Some(agent) = sb.agent.get() {
        if let Ok(mut c) = agent.client() {
            let _ = c.delete(&sb.id);
        }
        agent.stop();
        agent.wait_exit();
        agent.cleanup_cgroup();
        let _ = fs::remove_dir_all(&agent.dir);
    }
    sb.log.close();
    let _ = fs::remove_dir_all(&sb.dir);
}
