//! Attaching a client to an interactive sandbox (created with `interactive`,
//! waiting in state `created`): claim it → attach to its process's stdio → start
//! it → stdin, close and resize frames from the client go to the process while
//! its output goes to the log and to the client, ending with an exit frame.

use std::io::{Read, Write};
use std::sync::Arc;

use spore_agent::protocol::client::Attach;

use super::sandbox::{now_ms, Sandbox, SandboxState};
use super::sandbox_create::{pump, start_timeout};
use super::{Supervisor, SupervisorError};
use crate::backend::BackendError;
use crate::server::http::FrameKind;

/// A started interactive sandbox whose stdio is not joined to the client yet.
pub struct AttachStarted {
    sb: Arc<Sandbox>,
    attach: Attach,
}

impl Supervisor {
    /// Steps 1–3: claim, attach, start. Errors here mean nothing started.
    pub fn attach_start(&self, id: &str) -> Result<AttachStarted, SupervisorError> {
        let sb = self.get(id)?;
        // 1. Only a created sandbox can be attached, and only once.
        let mut state = None;
        sb.update(|r| {
            state = Some(r.state);
            if r.state == SandboxState::Created {
                r.state = SandboxState::Running;
                r.started_at_ms = Some(now_ms());
            }
        });
        if state != Some(SandboxState::Created) {
            let state = state.map(SandboxState::name).unwrap_or("gone");
            return Err(SupervisorError::Conflict(format!(
                "sandbox {} is {state}: attach needs one created with \"interactive\" and not \
                 attached yet",
                sb.id
            )));
        }
        let started = (|| {
            // 2. Its stdio, then 3. its start.
            let mut client = sb.agent_client()?;
            let attach = client.attach(&sb.id, None).map_err(BackendError::from)?;
            client.start(&sb.id).map_err(BackendError::from)?;
            Ok::<Attach, SupervisorError>(attach)
        })();
        match started {
            Ok(attach) => Ok(AttachStarted { sb, attach }),
            Err(e) => {
                sb.update(|r| r.set_failed(format!("attach failed: {e}")));
                sb.log.close();
                Err(e)
            }
        }
    }

    /// Step 4: joins the client to the process until it ends. Runs on the
    /// connection's thread; stdin is copied by a helper thread.
    pub fn attach_finish(
        self: &Arc<Self>,
        started: AttachStarted,
        input: Box<dyn Read + Send>,
        output: Box<dyn Write + Send>,
    ) {
        let AttachStarted { sb, attach } = started;
        start_timeout(&sb);
        if let Ok(to_process) = attach.try_clone() {
            let _ = std::thread::Builder::new()
                .name("sandbox-stdin".into())
                .spawn(move || copy_stdin(input, to_process));
        }
        pump(self, &sb, attach, Some(output));
    }
}

/// Client frames → the process: stdin bytes, close, resize. The end of the
/// client's stream closes stdin.
fn copy_stdin(mut input: Box<dyn Read + Send>, mut to: Attach) {
    let mut header = [0u8; 8];
    loop {
        if input.read_exact(&mut header).is_err() {
            break;
        }
        let len = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
        if len > 1 << 20 {
            break;
        }
        let mut payload = vec![0; len];
        if input.read_exact(&mut payload).is_err() {
            break;
        }
        let sent = match FrameKind::from_u8(header[0]) {
            Some(FrameKind::Stdin) => to.write_stdin(&payload),
            Some(FrameKind::CloseStdin) => {
                let _ = to.close_stdin();
                return;
            }
            Some(FrameKind::Resize) if len == 4 => {
                let rows = u16::from_be_bytes([payload[0], payload[1]]);
                let cols = u16::from_be_bytes([payload[2], payload[3]]);
                to.resize(rows, cols)
            }
            _ => Ok(()),
        };
        if sent.is_err() {
            return;
        }
    }
    let _ = to.close_stdin();
}
