//! Isolation backends: what actually runs a sandbox's container.
//!
//! - `vm` (the default, the point of spore): a clone of a template microVM. Refused
//!   here with the host's reason where microVMs cannot run. See [`vm`].
//! - `process`: spore's agent runs directly on the host, one agent process per
//!   sandbox, and puts the container in fresh namespaces. See [`process`]; agents
//!   are pre-started by [`pool`], and re-adopted agents watched by [`pidwatch`].
//!
//! Not here: sandbox state and orchestration (`supervisor`), HTTP (`server`).

pub mod pidwatch;
pub mod pool;
pub mod process;
pub mod vm;

use std::fmt;

use serde::{Deserialize, Serialize};
use spore_agent::protocol::client::ClientError;
use spore_agent::protocol::messages::ErrorReply;

/// How a sandbox is isolated from the host. Every description of a sandbox says
/// which one it has; `process` is only ever chosen explicitly.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    #[default]
    Vm,
    Process,
}

impl fmt::Display for Isolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Isolation::Vm => "vm",
            Isolation::Process => "process",
        })
    }
}

impl std::str::FromStr for Isolation {
    type Err = String;

    fn from_str(s: &str) -> Result<Isolation, String> {
        match s {
            "vm" => Ok(Isolation::Vm),
            "process" => Ok(Isolation::Process),
            other => Err(format!("isolation {other:?}: use vm or process")),
        }
    }
}

/// Errors of the backends.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The host cannot run microVMs; the text says why and what to do.
    #[error("{0}")]
    VmUnavailable(String),
    /// The feature exists in the design but not in the code yet.
    #[error("not yet available: {0}")]
    NotYetAvailable(&'static str),
    #[error(
        "the spore-agent binary was not found next to {0} — build it with \
         `cargo build --release -p spore-agent`, or set SPORE_AGENT"
    )]
    AgentMissing(String),
    #[error("cannot start the agent {0}")]
    Spawn(String, #[source] std::io::Error),
    #[error("the agent did not listen on {0} within {1} ms")]
    AgentTimeout(String, u64),
    #[error("agent process exited before it listened ({0}); its log is {1}")]
    AgentDied(String, String),
    #[error(
        "resource limits need the cgroup v2 controller(s) {missing}, which {root} does not \
         offer (this host's cgroups are v1 or hybrid); run without limits, or on a cgroup v2 host"
    )]
    LimitsUnsupported { missing: String, root: String },
    /// The agent refused a request; its code decides the HTTP status.
    #[error("{0}")]
    Refused(ErrorReply),
    #[error("talking to the agent")]
    Agent(#[source] ClientError),
    #[error(transparent)]
    Vm(#[from] vm::VmError),
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl From<ClientError> for BackendError {
    fn from(e: ClientError) -> BackendError {
        match e {
            ClientError::Agent(reply) => BackendError::Refused(reply),
            other => BackendError::Agent(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use spore_agent::protocol::messages::ErrorCode;

    use super::*;

    #[test]
    fn isolation_names() {
        assert_eq!("process".parse::<Isolation>(), Ok(Isolation::Process));
        assert_eq!("vm".parse::<Isolation>(), Ok(Isolation::Vm));
        assert!("docker".parse::<Isolation>().is_err());
        assert_eq!(Isolation::Process.to_string(), "process");
        assert_eq!(serde_json::to_string(&Isolation::Vm).unwrap(), "\"vm\"");
        assert_eq!(Isolation::default(), Isolation::Vm);
    }

    #[test]
    fn agent_refusals_keep_their_code() {
        let e = ClientError::Agent(ErrorReply::new(ErrorCode::Unsupported, "no limits"));
        match BackendError::from(e) {
            BackendError::Refused(r) => assert_eq!(r.code, ErrorCode::Unsupported),
            other => panic!("{other:?}"),
        }
    }
}
