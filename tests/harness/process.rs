//! Child processes that cannot outlive the test that started them.
//!
//! A [`ChildGuard`] starts its command in a new process group and kills the whole
//! group with `SIGKILL` when dropped, so helpers the program started die with it.
//! The child also gets `PR_SET_PDEATHSIG(SIGKILL)`: if the test process itself is
//! killed and no destructor runs, the kernel still kills the child. That signal fires
//! when the *thread* that spawned the child exits, so a guard must be dropped on (or
//! before the end of) the thread that created it — one guest per test.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// A running child process group, killed and reaped on drop.
#[derive(Debug)]
pub struct ChildGuard {
    name: String,
    child: Child,
    status: Option<ExitStatus>,
}

impl ChildGuard {
    /// Spawns `cmd` as the leader of a new process group. `name` is used in messages.
    pub fn spawn(name: &str, mut cmd: Command) -> io::Result<ChildGuard> {
        cmd.process_group(0);
        // SAFETY: the closure runs in the forked child before exec and only calls
        // prctl(2), which is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("starting {name}: {e}")))?;
        Ok(ChildGuard {
            name: name.to_string(),
            child,
            status: None,
        })
    }

    /// The child's pid (also its process group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the child has exited, without blocking.
    pub fn try_status(&mut self) -> io::Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self.child.try_wait()?;
        }
        Ok(self.status)
    }

    /// Waits up to `timeout` for the child to exit on its own.
    pub fn wait_timeout(&mut self, timeout: Duration) -> io::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the whole process group and reaps the leader. Idempotent.
    pub fn kill(&mut self) {
        let pgid = self.child.id() as libc::pid_t;
        // SAFETY: plain kill(2) on the process group this guard created; the leader
        // is not reaped until below, so its pid (= the pgid) cannot have been reused.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
        if self.status.is_none() {
            if let Ok(status) = self.child.wait() {
                self.status = Some(status);
            }
        }
    }

    /// The name given at spawn time.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alive(pid: i32) -> bool {
        // SAFETY: signal 0 only checks that the process exists.
        unsafe { libc::kill(pid, 0) == 0 }
    }

    #[test]
    fn drop_kills_the_whole_group() {
        let dir = crate::tempdir::TempDir::new("spore-process-test").unwrap();
        let pidfile = dir.path().join("grandchild");
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!("sleep 600 & echo $! > {}; wait", pidfile.display()));
        let guard = ChildGuard::spawn("sh", cmd).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let grandchild = loop {
            if let Ok(s) = std::fs::read_to_string(&pidfile) {
                if let Ok(pid) = s.trim().parse::<i32>() {
                    break pid;
                }
            }
            assert!(Instant::now() < deadline, "sh never wrote its child's pid");
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(alive(grandchild));
        drop(guard);
        // The grandchild is not ours to reap; it becomes a zombie of init briefly.
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(grandchild) && !is_zombie(grandchild) {
            assert!(
                Instant::now() < deadline,
                "grandchild {grandchild} survived"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn is_zombie(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(true)
    }

    #[test]
    fn exit_status_is_reported() {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg("exit 7");
        let mut guard = ChildGuard::spawn("sh", cmd).unwrap();
        let status = guard.wait_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(status.and_then(|s| s.code()), Some(7));
    }
}
