//! What a container is asked to be: the spec a host sends with `create`.
//!
//! Shared by the wire protocol and the container engine; plain data, no behaviour.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A container to create.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerSpec {
    /// Program and arguments; `argv[0]` is looked up in the container's PATH.
    pub argv: Vec<String>,
    /// Environment as `KEY=VALUE` strings.
    #[serde(default)]
    pub env: Vec<String>,
    /// Working directory inside the container (default `/`).
    #[serde(default)]
    pub cwd: Option<String>,
    /// `uid[:gid]` as numbers or names from the rootfs's /etc/passwd and /etc/group.
    #[serde(default)]
    pub user: Option<String>,
    /// Hostname inside the container's UTS namespace (default: the container id).
    #[serde(default)]
    pub hostname: Option<String>,
    /// The read-only lower layer of the container's root filesystem.
    pub rootfs: RootfsSpec,
    /// cgroup v2 limits. Refused, never dropped, where the host cannot enforce them.
    #[serde(default)]
    pub limits: Limits,
    /// Resource limits applied with setrlimit, by name (`RLIMIT_NOFILE` → `"nofile"`).
    #[serde(default)]
    pub rlimits: BTreeMap<String, Rlimit>,
    /// Give the process a pseudo-terminal instead of separate pipes.
    #[serde(default)]
    pub tty: bool,
    /// Keep the process's stdin open for the host to write to.
    #[serde(default)]
    pub stdin: bool,
}

/// The container's root filesystem.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootfsSpec {
    /// A directory, or a block device / image file holding a filesystem, used
    /// read-only as the overlayfs lower layer. The writable upper is on tmpfs.
    pub lower: PathBuf,
}

/// cgroup v2 limits; `None` means unlimited.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// memory.max in bytes (swap is always off: memory.swap.max = 0 where it exists).
    #[serde(default)]
    pub memory_bytes: Option<u64>,
    /// CPU share as a number of CPUs, e.g. 0.5 → cpu.max "50000 100000".
    #[serde(default)]
    pub cpus: Option<f64>,
    /// pids.max.
    #[serde(default)]
    pub pids: Option<u64>,
}

// `cpus` is a float; specs compare exactly, which is what tests want.
impl Eq for Limits {}

impl Limits {
    pub fn is_empty(&self) -> bool {
        self.memory_bytes.is_none() && self.cpus.is_none() && self.pids.is_none()
    }
}

/// One resource limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rlimit {
    pub soft: u64,
    pub hard: u64,
}

/// A further process started in a running container (`exec`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecSpec {
    pub argv: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub cwd: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub tty: bool,
    #[serde(default)]
    pub stdin: bool,
}

/// Where a container is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainerStatus {
    /// Set up and waiting for `start`.
    Created,
    Running,
    /// Its init process has ended; see [`ExitInfo`].
    Exited,
}

/// Why a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitReason {
    /// It called exit; `code` is its status.
    Exited,
    /// A signal killed it; `code` is 128 + the signal.
    Signaled,
    /// The kernel's OOM killer killed it because of the container's memory.max.
    Oom,
}

/// How a process ended, docker style: `code` is the exit status or 128 + signal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    pub code: i32,
    pub reason: ExitReason,
    /// The signal that killed it, if any.
    pub signal: Option<i32>,
    /// Unix time in milliseconds.
    pub started_at_ms: u64,
    pub finished_at_ms: u64,
}

/// A container as `state`/`list` report it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerState {
    pub id: String,
    pub status: ContainerStatus,
    /// Host-visible pid of the container's init (0 before start).
    pub pid: u32,
    pub exit: Option<ExitInfo>,
}
