//! The messages between the engine and stage 2, over their control socket.
//!
//! Plain data, serialised as JSON in one `SOCK_SEQPACKET` message each. The
//! descriptors that travel with a message (stdio ends, a pty master) are listed
//! next to the message that carries them. No behaviour here.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::protocol::spec::Rlimit;

/// Engine → stage 2 (and → the container's init for [`Request::Start`]).
#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    /// Set up a new container and wait for `Start`.
    /// Descriptors when not a tty: stdout, stderr, then stdin if asked for.
    Create(CreateConfig),
    /// Start a further process in a running container.
    /// Descriptors as for `Create`.
    Exec(ExecConfig),
    /// Let the waiting init exec the container's program.
    Start,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct CreateConfig {
    /// This container's private directory; its tmpfs and overlay live here,
    /// mounted only inside the container's mount namespace.
    pub run_dir: PathBuf,
    /// The overlayfs lower layer: a directory, a block device or an image file.
    pub lower: PathBuf,
    pub hostname: String,
    /// Enter the root with MS_MOVE + chroot instead of pivot_root, as
    /// `runc --no-pivot` does (for agents whose own root is an initramfs).
    pub no_pivot: bool,
    pub process: ProcessConfig,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ExecConfig {
    /// Host pid of the container's init, whose namespaces are joined.
    pub target_pid: u32,
    pub process: ProcessConfig,
}

/// The process to run, common to a container's init and to exec.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ProcessConfig {
    pub argv: Vec<String>,
    pub env: Vec<String>,
    pub cwd: Option<String>,
    pub user: Option<String>,
    pub rlimits: BTreeMap<String, Rlimit>,
    pub tty: bool,
    pub stdin: bool,
}

/// Stage 2 and the container's process → engine.
#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    /// Stage 2 forked the process; this is its pid as the engine sees it.
    Pid(u32),
    /// Set up and about to wait for `Start` (create) or to exec (exec).
    /// Carries the pty master in tty mode.
    Ready,
    /// Setup failed; the message is the whole error chain.
    Failed(String),
}
