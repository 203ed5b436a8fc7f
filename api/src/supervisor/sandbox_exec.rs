//! Running a further process in a running sandbox: start it through the agent →
//! attach to its stdio → pass its output on as it comes → its exit. Split in two
//! calls so the HTTP layer can answer errors of the first with a status.

use std::io;

use spore_agent::protocol::client::{Attach, Client};
use spore_agent::protocol::messages::{AttachFrame, Stream};
use spore_agent::protocol::spec::ExitInfo;

use super::sandbox::SandboxState;
use super::spec::ExecRequest;
use super::{Supervisor, SupervisorError};
use crate::backend::BackendError;
use crate::server::http::FrameKind;

/// A started exec process whose output has not been read yet.
pub struct ExecStarted {
    container: String,
    pid: u32,
    client: Client,
    attach: Attach,
}

impl Supervisor {
    /// Starts `req` in sandbox `id` (steps 1–2); errors here mean nothing ran.
    pub fn exec_start(&self, id: &str, req: &ExecRequest) -> Result<ExecStarted, SupervisorError> {
        let spec = req.validate()?;
        let sb = self.get(id)?;
        let state = sb.state();
        if state != SandboxState::Running {
            return Err(SupervisorError::Conflict(format!(
                "sandbox {} is {}: exec needs a running sandbox",
                sb.id,
                state.name()
            )));
        }
        // 1. Start the process.
        let mut client = sb.agent_client()?;
        let pid = client.exec(&sb.id, &spec).map_err(BackendError::from)?;
        // 2. Attach to its stdio.
        let attach = client
            .attach(&sb.id, Some(pid))
            .map_err(BackendError::from)?;
        Ok(ExecStarted {
            container: sb.id.clone(),
            pid,
            client,
            attach,
        })
    }

    /// Copies the exec process's output to `sink` as it comes, then returns its
    /// exit. A sink error (the client went away) stops the copying, not the process.
    pub fn exec_finish(
        &self,
        started: ExecStarted,
        sink: &mut dyn FnMut(FrameKind, &[u8]) -> io::Result<()>,
    ) -> Result<ExitInfo, SupervisorError> {
        let ExecStarted {
            container,
            pid,
            mut client,
            mut attach,
        } = started;
        let mut open = if attach.tty() { 1 } else { 2 };
        // 3. Copy its output.
        while open > 0 {
            match attach.next_frame().map_err(BackendError::from)? {
                Some(AttachFrame::Output(stream, data)) => {
                    let kind = match stream {
                        Stream::Stdout => FrameKind::Stdout,
                        Stream::Stderr => FrameKind::Stderr,
                    };
                    if sink(kind, &data).is_err() {
                        break;
                    }
                }
                Some(AttachFrame::Eof(_)) => open -= 1,
                Some(_) => {}
                None => break,
            }
        }
        // 4. Its exit.
        Ok(client
            .wait(&container, Some(pid))
            .map_err(BackendError::from)?)
    }
}
