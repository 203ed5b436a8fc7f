//! Deleting a sandbox, also while it runs: mark it deleting → kill the container
//! and end the agent → remove its cgroup and directory → forget it.

use std::fs;
use std::sync::Arc;

use super::sandbox::SandboxState;
use super::{Supervisor, SupervisorError};

impl Supervisor {
    /// Deletes a sandbox. Without `force`, a running sandbox is refused (409).
    pub fn delete(self: &Arc<Self>, id: &str, force: bool) -> Result<(), SupervisorError> {
        let sb = self.get(id)?;
        // 1. Claim it: only one delete proceeds.
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
        // 2. Kill the container and end the agent.
        if let Some(agent) = sb.agent.get() {
            if let Ok(mut c) = agent.client() {
                let _ = c.delete(&sb.id);
            }
            agent.stop();
            agent.wait_exit();
            // 3. Whatever the agent left in its cgroup goes too.
            agent.cleanup_cgroup();
        }
        sb.log.close();
        let _ = fs::remove_dir_all(&sb.dir);
        // 4. Forget it.
        self.forget(&sb.id);
        Ok(())
    }
}
