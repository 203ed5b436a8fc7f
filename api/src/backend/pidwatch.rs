//! Watching and signalling processes that are not (or no longer) our children:
//! agents a previous daemon started and this one re-adopts. Linux pidfds make this
//! race-free — a pidfd names one process, never a later one that reuses its pid.
//!
//! The only raw syscalls of the control plane live here.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A handle on one process, by pidfd.
#[derive(Debug)]
pub struct PidFd {
    fd: OwnedFd,
    pid: u32,
}

impl PidFd {
    /// Opens a pidfd for `pid`; fails if no such process exists.
    pub fn open(pid: u32) -> io::Result<PidFd> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or
        // -1; it touches no memory of ours.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel just returned this descriptor to us and nothing else
        // owns it; OwnedFd closes it exactly once.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        Ok(PidFd { fd, pid })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Blocks until the process has exited.
    pub fn wait_exit(&self) -> io::Result<()> {
        loop {
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: pfd is a valid pollfd for the duration of the call and we
            // pass a count of exactly one.
            let r = unsafe { libc::poll(&mut pfd, 1, -1) };
            if r > 0 {
                return Ok(());
            }
            let err = io::Error::last_os_error();
            if r < 0 && err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }

    /// True once the process has exited (a pidfd polls readable from then on).
    pub fn has_exited(&self) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: pfd is a valid pollfd for the duration of the call, the count
        // is exactly one and a zero timeout never blocks.
        unsafe { libc::poll(&mut pfd, 1, 0) > 0 }
    }

    /// Sends `signal` to the process; harmless if it already exited.
    pub fn kill(&self, signal: i32) -> io::Result<()> {
        // SAFETY: the descriptor is a live pidfd we own; a null siginfo is allowed
        // and means "as kill(2) would send it".
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if r < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::ESRCH) {
                return Err(err);
            }
        }
        Ok(())
    }
}

/// True if `pid` runs a program whose name is `comm` (guards re-adoption against
/// a recycled pid).
pub fn runs(pid: u32, comm: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim_end() == comm)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    #[test]
    fn watches_and_kills_a_stranger() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let pidfd = PidFd::open(child.id()).unwrap();
        assert_eq!(pidfd.pid(), child.id());
        // comm changes at exec; give a loaded machine a moment.
        let start = std::time::Instant::now();
        while !runs(child.id(), "sleep") && start.elapsed().as_secs() < 5 {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let comm = std::fs::read_to_string(format!("/proc/{}/comm", child.id()));
        assert!(runs(child.id(), "sleep"), "{comm:?}");
        pidfd.kill(libc::SIGKILL).unwrap();
        pidfd.wait_exit().unwrap();
        let status = child.wait().unwrap();
        assert!(!status.success());
        // Signalling an exited process is not an error.
        pidfd.kill(libc::SIGKILL).unwrap();
        assert!(PidFd::open(u32::MAX / 2).is_err());
    }
}
