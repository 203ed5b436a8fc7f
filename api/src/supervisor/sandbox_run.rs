//! The serverless path in one call: create a sandbox → pass on or collect its
//! output → its exit → delete it, whatever happened to the caller meanwhile.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use super::output::Sink;
use super::sandbox::{Record, Sandbox, SandboxState};
use super::spec::SandboxSpec;
use super::{Supervisor, SupervisorError};

/// What a finished `run` returns.
#[derive(Clone, Debug, Serialize)]
pub struct RunResult {
    pub id: String,
    pub isolation: String,
    pub state: SandboxState,
    pub exit_code: Option<i32>,
    pub exit_reason: Option<String>,
    pub error: Option<String>,
    /// Output as UTF-8 (invalid bytes replaced); absent when streamed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
    /// Request to running process.
    pub create_ms: Option<f64>,
    /// The steps inside `create_ms`.
    pub create_phases_ms: BTreeMap<String, f64>,
    /// Request to exit.
    pub total_ms: f64,
}

impl Supervisor {
    /// Runs `spec` to completion. With a `stream` sink, output frames (the log's
    /// framing) go there as they come and are not returned.
    pub fn run(
        self: &Arc<Self>,
        spec: &SandboxSpec,
        stream: Option<Sink<'_>>,
    ) -> Result<RunResult, SupervisorError> {
        let t0 = Instant::now();
        // 1. Create and start it.
        let sb = self.create(spec, false)?;
        Ok(self.finish_run(t0, &sb, stream))
    }

    /// Steps 2–4 of [`Supervisor::run`], for callers that must know the sandbox
    /// started before they begin streaming.
    pub fn finish_run(
        self: &Arc<Self>,
        t0: Instant,
        sb: &Arc<Sandbox>,
        stream: Option<Sink<'_>>,
    ) -> RunResult {
        // 2. Its output, live or at the end.
        let streamed = stream.is_some();
        if let Some(out) = stream {
            // A client that went away still gets its sandbox removed below.
            let _ = sb.log.copy_to(0, true, out);
        }
        // 3. Its exit.
        let rec: Record = sb.wait_until(None, |s| s.is_finished() || s == SandboxState::Deleting);
        let (stdout, stderr) = if streamed {
            (None, None)
        } else {
            let (out, err) = sb.log.collect().unwrap_or_default();
            (
                Some(String::from_utf8_lossy(&out).into_owned()),
                Some(String::from_utf8_lossy(&err).into_owned()),
            )
        };
        // 4. Delete it (the teardown does not delay the answer).
        let _ = self.delete_in_background(&sb.id);
        let total = t0.elapsed();
        self.metrics.observe_run(&rec.isolation.to_string(), total);
        RunResult {
            id: rec.id,
            isolation: rec.isolation.to_string(),
            state: rec.state,
            exit_code: rec.exit_code,
            exit_reason: rec.exit_reason,
            error: rec.error,
            stdout,
            stderr,
            create_ms: rec.create_ms,
            create_phases_ms: rec.create_phases_ms,
            total_ms: total.as_secs_f64() * 1000.0,
        }
    }
}
