//! The container process's stdin, stdout and stderr: pipes from the engine,
//! or a new pseudo-terminal in the container's own devpts.
//!
//! Runs in the process about to exec. Installs fds 0–2 and marks every other
//! descriptor close-on-exec, so the program starts with exactly three.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use crate::sys;

#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    #[error("expected the stdout and stderr pipes from the engine")]
    MissingPipes,
    #[error("cannot open a pseudo-terminal in the container's /dev/pts")]
    Pty(#[source] std::io::Error),
    #[error("cannot install the container's stdio")]
    Install(#[source] std::io::Error),
}

/// Install stdio. `pipes` are the engine's container ends (stdout, stderr,
/// then stdin if asked for), ignored in tty mode. Returns the pty master in
/// tty mode: the caller sends it to the engine and closes its copy.
pub fn attach(tty: bool, pipes: Vec<OwnedFd>) -> Result<Option<OwnedFd>, StdioError> {
    // Its own session: job control and signals stay inside the container.
    sys::setsid().map_err(StdioError::Install)?;
    let (fds, master) = if tty {
        let (master, slave) = sys::open_pty(Path::new("/dev/pts/ptmx")).map_err(StdioError::Pty)?;
        sys::set_controlling_tty(slave.as_fd()).map_err(StdioError::Pty)?;
        (
            [slave.try_clone(), slave.try_clone(), Ok(slave)],
            Some(master),
        )
    } else {
        let mut it = pipes.into_iter();
        let (out, err) = (it.next(), it.next());
        let (Some(out), Some(err)) = (out, err) else {
            return Err(StdioError::MissingPipes);
        };
        // Without a stdin pipe the program reads from /dev/null, as docker does.
        let input = match it.next() {
            Some(fd) => Ok(fd),
            None => File::open("/dev/null").map(OwnedFd::from),
        };
        ([input, Ok(out), Ok(err)], None)
    };
    for (target, fd) in (0..).zip(fds) {
        let fd = fd.map_err(StdioError::Install)?;
        // dup2 clears close-on-exec on the copy; `fd` itself is dropped here.
        sys::dup_onto(fd.as_fd(), target).map_err(StdioError::Install)?;
    }
    // Everything else we hold (the control socket, stray inherited fds) must
    // not reach the program.
    sys::cloexec_from(3).map_err(StdioError::Install)?;
    Ok(master)
}
