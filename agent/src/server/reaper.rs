//! The reaper: the only place in the agent that calls `waitpid`. It wakes on
//! SIGCHLD (through a self-pipe) or once a second, reaps every ended child, hands
//! each to the runtime and records the ones the runtime recognises.
//!
//! It holds the runtime lock only for one `on_child_exit` call at a time, so it
//! never stalls request handling for long; requests never wait on it either.

use std::sync::Arc;
use std::thread;

use super::os::{self, OsError};
use super::Shared;

/// How long the reaper sleeps when no SIGCHLD arrives (a missed wakeup costs
/// at most this).
const IDLE_MS: i32 = 1000;

/// Installs the SIGCHLD handler and starts the reaper thread.
pub(crate) fn spawn(shared: Arc<Shared>) -> Result<(), OsError> {
    let wake = os::sigchld_pipe()?;
    thread::Builder::new()
        .name("reaper".into())
        .spawn(move || loop {
            while let Some((pid, status)) = os::reap_one() {
                let reaped = shared.runtime().on_child_exit(pid, status);
                if let Some(r) = reaped {
                    shared.record_exit(r);
                }
            }
            os::wait_readable_and_drain(&wake, IDLE_MS);
        })
        .map_err(|e| OsError::Call("spawn reaper thread", e))?;
    Ok(())
}
