//! The engine's side of stage 2: start it, hand it the request and the
//! container's stdio, collect the pid and the ready report.
//!
//! Owns the stdio pipes and the control socket until they are handed over.
//! Waits only for stage 2 itself (a child it owns for the duration of the
//! call); the container's processes are reaped by the agent's reaper.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::cgroup::{Cgroup, CgroupError};
use super::channel::{Channel, ChannelError};
use super::config::{Reply, Request};
use super::stage2::STAGE2_ARG;
use super::ContainerIo;
use crate::sys;

/// How long container setup, and then its exec, may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("cannot create the stdio pipes or control socket")]
    Pipes(#[source] std::io::Error),
    #[error("cannot start stage 2")]
    Exec(#[source] std::io::Error),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Channel(#[from] ChannelError),
    #[error("{0}")]
    Failed(String),
    #[error("container setup ended without a report")]
    Vanished,
}

/// A process set up by stage 2.
pub struct Spawned {
    /// Its pid as the engine sees it.
    pub pid: u32,
    /// The control socket, still open in the process until it execs.
    pub chan: Channel,
    pub io: ContainerIo,
}

/// The engine's ends and the container's ends of the stdio pipes.
struct Pipes {
    engine: ContainerIo,
    /// stdout, stderr, then stdin if any: the order stage 2 expects.
    container: Vec<OwnedFd>,
}

fn pipes(stdin: bool) -> std::io::Result<Pipes> {
    let (out_r, out_w) = sys::pipe()?;
    let (err_r, err_w) = sys::pipe()?;
    let mut container = vec![out_w, err_w];
    let stdin = if stdin {
        let (in_r, in_w) = sys::pipe()?;
        container.push(in_r);
        Some(in_w)
    } else {
        None
    };
    Ok(Pipes {
        engine: ContainerIo {
            stdin,
            stdout: out_r,
            stderr: Some(err_r),
        },
        container,
    })
}

/// Start stage 2 for `request` and wait until the process it forks is set
/// up (for create: blocked before exec, waiting for start).
pub fn spawn(
    stage2_exe: &Path,
    request: &Request,
    tty: bool,
    stdin: bool,
    cgroup: Option<&Cgroup>,
) -> Result<Spawned, SpawnError> {
    let (ours, theirs) = sys::seqpacket_pair().map_err(SpawnError::Pipes)?;
    let chan = Channel::new(ours);
    // A container whose setup hangs must not hold the engine for ever.
    sys::set_recv_timeout(chan.as_fd(), SETUP_TIMEOUT).map_err(SpawnError::Pipes)?;
    let pipes = if tty {
        None
    } else {
        Some(pipes(stdin).map_err(SpawnError::Pipes)?)
    };
    // Stage 2's stdin is its end of the control socket; `Command` is dropped
    // at the end of this statement, closing our copy of that end.
    let stage2 = Command::new(stage2_exe)
        .arg(STAGE2_ARG)
        .stdin(Stdio::from(theirs))
        .stdout(Stdio::null())
        .spawn()
        .map_err(SpawnError::Exec)?
        .id();
    let result = hand_over(&chan, stage2, request, pipes, cgroup);
    // Stage 2 exits once it reported the pid (or failed). ECHILD means the
    // agent's reaper collected it first, which is just as good.
    if result.is_err() {
        let _ = sys::kill(stage2, libc::SIGKILL);
    }
    let _ = sys::waitpid(stage2);
    let (pid, engine_io, master) = result?;
    let io = match (engine_io, master) {
        (Some(io), _) => io,
        (None, Some(master)) => ContainerIo {
            stdin: if stdin {
                Some(master.try_clone().map_err(SpawnError::Pipes)?)
            } else {
                None
            },
            stdout: master,
            stderr: None,
        },
        (None, None) => return Err(SpawnError::Vanished),
    };
    Ok(Spawned { pid, chan, io })
}

type HandOver = (u32, Option<ContainerIo>, Option<OwnedFd>);

fn hand_over(
    chan: &Channel,
    stage2: u32,
    request: &Request,
    pipes: Option<Pipes>,
    cgroup: Option<&Cgroup>,
) -> Result<HandOver, SpawnError> {
    // In the cgroup before it forks, so everything it starts is accounted.
    if let Some(cgroup) = cgroup {
        cgroup.add(stage2)?;
    }
    let (engine_io, container_fds) = match pipes {
        Some(p) => (Some(p.engine), p.container),
        None => (None, Vec::new()),
    };
    let fds: Vec<_> = container_fds.iter().map(|f| f.as_fd()).collect();
    chan.send(request, &fds)?;
    // The container's ends now live in stage 2; ours must close, or reading
    // stdout would never see end-of-file.
    drop(container_fds);
    let (pid, master) = await_ready(chan)?;
    Ok((pid, engine_io, master))
}

/// Collect `Pid` and `Ready` (in either order: stage 2 and the process it
/// forked write independently).
fn await_ready(chan: &Channel) -> Result<(u32, Option<OwnedFd>), SpawnError> {
    let (mut pid, mut ready) = (None, None);
    while pid.is_none() || ready.is_none() {
        match chan.recv::<Reply>()? {
            None => return Err(SpawnError::Vanished),
            Some((Reply::Pid(p), _)) => pid = Some(p),
            Some((Reply::Ready, fds)) => ready = Some(fds.into_iter().next()),
            Some((Reply::Failed(msg), _)) => return Err(SpawnError::Failed(msg)),
        }
    }
    Ok((pid.unwrap_or_default(), ready.flatten()))
}

/// After `Start` (or right after an exec's `Ready`): end of stream means the
/// program was exec'd (the socket is close-on-exec); a message is a failure.
pub fn await_exec(chan: &Channel) -> Result<(), SpawnError> {
    match chan.recv::<Reply>()? {
        None => Ok(()),
        Some((Reply::Failed(msg), _)) => Err(SpawnError::Failed(msg)),
        Some(_) => Err(SpawnError::Vanished),
    }
}
