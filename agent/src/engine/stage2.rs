//! Stage 2: the fresh, single-threaded re-exec of the agent binary that turns
//! a request from the engine into a process inside a container.
//!
//! The engine starts the agent binary (a sealed in-memory copy of it) with
//! [`STAGE2_ARG`] and one end of the control socket as stdin, and sends a
//! [`Request`]. Stage 2 enters the namespaces, forks the process with
//! `CLONE_PARENT` (so the engine's process is its parent and the agent's
//! reaper sees it exit), reports its pid, and exits. The forked process
//! reports `Ready` or `Failed` on the same socket.

use std::convert::Infallible;
use std::os::fd::{AsFd, OwnedFd};

use super::channel::{Channel, ChannelError};
use super::config::{ExecConfig, Reply, Request};
use super::container_init;
use super::namespaces::{self, Enter, NamespaceError};
use super::process::{self, ProcessError};
use super::rootfs::RootfsError;
use super::stdio::{self, StdioError};
use crate::sys;

/// `argv[1]` that makes the agent binary run [`stage2_main`].
pub const STAGE2_ARG: &str = "--spore-stage2";

/// Lowest descriptor number for the control socket once it leaves fd 0.
const CONTROL_FD_MIN: i32 = 10;

#[derive(Debug, thiserror::Error)]
pub enum Stage2Error {
    #[error(transparent)]
    Channel(#[from] ChannelError),
    #[error("the engine sent no request")]
    NoRequest,
    #[error("unexpected request from the engine")]
    Unexpected,
    #[error(transparent)]
    Namespace(#[from] NamespaceError),
    #[error("cannot fork the container process")]
    Fork(#[source] std::io::Error),
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    #[error("cannot bring up the loopback interface")]
    Loopback(#[source] std::io::Error),
    #[error("cannot set the hostname")]
    Hostname(#[source] std::io::Error),
    #[error(transparent)]
    Stdio(#[from] StdioError),
    #[error(transparent)]
    Process(#[from] ProcessError),
}

/// Entry point of stage 2; the agent's `main` calls it when `argv[1]` is
/// [`STAGE2_ARG`]. Never returns.
pub fn stage2_main() -> ! {
    // The control socket arrives as stdin; move it out of the way of the
    // container's stdio, close-on-exec (the container's program must never see it).
    let chan = match sys::dup_cloexec(std::io::stdin().as_fd(), CONTROL_FD_MIN) {
        Ok(fd) => Channel::new(fd),
        Err(_) => sys::exit_now(2),
    };
    match run(&chan) {
        Ok(()) => sys::exit_now(0),
        Err(e) => fail(&chan, &e),
    }
}

/// Report `err` to the engine and exit.
fn fail(chan: &Channel, err: &Stage2Error) -> ! {
    // If the engine is gone there is nobody left to tell.
    let _ = chan.send(&Reply::Failed(crate::error_chain(err)), &[]);
    sys::exit_now(1)
}

fn run(chan: &Channel) -> Result<(), Stage2Error> {
    // Modes in the spec are meant literally (device nodes, tmpfs dirs);
    // process::apply_credentials sets the program's umask back to 022.
    sys::umask(0);
    let (request, fds) = chan.recv::<Request>()?.ok_or(Stage2Error::NoRequest)?;
    match request {
        Request::Create(cfg) => {
            namespaces::enter(Enter::Create)?;
            fork_and_report(chan, |chan| container_init::run(chan, cfg, fds))
        }
        Request::Exec(cfg) => {
            namespaces::enter(Enter::Join(cfg.target_pid))?;
            fork_and_report(chan, |chan| exec_setup(chan, cfg, fds))
        }
        Request::Start => Err(Stage2Error::Unexpected),
    }
}

/// Fork the container-side process (a sibling of ours: the engine's child),
/// run `child` in it, and report its pid.
fn fork_and_report(
    chan: &Channel,
    child: impl FnOnce(&Channel) -> Result<Infallible, Stage2Error>,
) -> Result<(), Stage2Error> {
    let pid = sys::fork_sibling().map_err(Stage2Error::Fork)?;
    if pid == 0 {
        match child(chan) {
            Ok(never) => match never {},
            Err(e) => fail(chan, &e),
        }
    }
    chan.send(&Reply::Pid(pid), &[])?;
    Ok(())
}

/// A further process in a running container: we already joined its
/// namespaces (the mount namespace put us at its root).
fn exec_setup(
    chan: &Channel,
    cfg: ExecConfig,
    pipes: Vec<OwnedFd>,
) -> Result<Infallible, Stage2Error> {
    let master = stdio::attach(cfg.process.tty, pipes)?;
    let prepared = process::prepare(&cfg.process)?;
    process::apply_credentials(&prepared)?;
    let fds: Vec<_> = master.iter().map(|m| m.as_fd()).collect();
    chan.send(&Reply::Ready, &fds)?;
    // Our copy of the master must not leak into the program.
    drop(master);
    Err(process::exec(&prepared).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage2_arg_cannot_be_mistaken_for_a_test_filter() {
        assert!(STAGE2_ARG.starts_with("--"));
    }
}
