//! The seam between the request server and whatever runs containers: the
//! [`Runtime`] trait. The real container engine implements it (see
//! `engine_runtime.rs`); [`super::plain::PlainRuntime`] is the test double that runs
//! plain host processes.
//!
//! This module holds only the trait and the data crossing it.

use std::os::fd::OwnedFd;

use crate::protocol::spec::{ContainerSpec, ContainerState, ExecSpec, ExitInfo};

/// A process's end of its stdio, as the agent holds it.
#[derive(Debug)]
pub struct ProcessIo {
    /// Write end of the process's stdin, if it was asked for.
    pub stdin: Option<OwnedFd>,
    /// Read end of stdout; in tty mode the pty master.
    pub stdout: OwnedFd,
    /// Read end of stderr; `None` in tty mode.
    pub stderr: Option<OwnedFd>,
}

/// A reaped process the runtime recognised.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reaped {
    pub container: String,
    /// `None` for the container's init, else the exec process's pid.
    pub exec_pid: Option<u32>,
    pub exit: ExitInfo,
}

/// Errors a runtime reports.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("no container {0:?}")]
    NotFound(String),
    #[error("{0}")]
    Unsupported(&'static str),
    #[error("{0}")]
    Failed(String, #[source] Box<dyn std::error::Error + Send + Sync>),
}

/// What the server needs from a container runtime. Calls are serialised by the
/// server (one mutex); none of them may wait for a process to end, since the
/// server's reaper owns `waitpid` and reports every ended child through
/// [`Runtime::on_child_exit`].
pub trait Runtime: Send {
    /// Sets the container up; its process is blocked until `start`.
    fn create(&mut self, id: &str, spec: &ContainerSpec) -> Result<ProcessIo, RuntimeError>;
    fn start(&mut self, id: &str) -> Result<(), RuntimeError>;
    /// Starts a further process in a running container: its pid and stdio.
    fn exec(&mut self, id: &str, spec: &ExecSpec) -> Result<(u32, ProcessIo), RuntimeError>;
    /// Signals the container's init.
    fn signal(&mut self, id: &str, sig: i32) -> Result<(), RuntimeError>;
    fn state(&self, id: &str) -> Result<ContainerState, RuntimeError>;
    fn list(&self) -> Vec<ContainerState>;
    /// A child was reaped; say whose it was (or `None` for a stranger).
    fn on_child_exit(&mut self, pid: u32, wait_status: i32) -> Option<Reaped>;
    /// Kills everything in the container and removes it.
    fn delete(&mut self, id: &str) -> Result<(), RuntimeError>;
}
