//! `PlainRuntime`: the test double of the container engine. It runs a container's
//! argv as a plain host process in its own process group — no namespaces, no
//! rootfs, no cgroups, no tty — so the protocol and the server can be tested
//! without root. Selected only by `spore-agent --runtime plain`; never a backend.

use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use super::os;
use super::runtime::{ProcessIo, Reaped, Runtime, RuntimeError};
use crate::protocol::spec::{
    ContainerSpec, ContainerState, ContainerStatus, ExecSpec, ExitInfo, ExitReason,
};

/// The child's ends of its stdio, kept between create and start.
struct ChildStdio {
    stdin: Stdio,
    stdout: Stdio,
    stderr: Stdio,
}

struct Container {
    spec: ContainerSpec,
    stdio: Option<ChildStdio>,
    pid: u32,
    started_at_ms: u64,
    exit: Option<ExitInfo>,
}

/// Plain host processes standing in for containers.
#[derive(Default)]
pub struct PlainRuntime {
    containers: HashMap<String, Container>,
    /// Running exec processes: pid → (container, start time).
    execs: HashMap<u32, (String, u64)>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn os_err(e: os::OsError) -> RuntimeError {
    RuntimeError::Failed("pipe".into(), Box::new(e))
}

fn io_err(what: &str, e: std::io::Error) -> RuntimeError {
    RuntimeError::Failed(what.into(), Box::new(e))
}

/// Pipes for one process: the agent's ends and the child's ends.
fn pipes(want_stdin: bool, tty: bool) -> Result<(ProcessIo, ChildStdio), RuntimeError> {
    if tty {
        return Err(RuntimeError::Unsupported(
            "the plain runtime has no tty mode",
        ));
    }
    let (out_r, out_w) = os::pipe().map_err(os_err)?;
    let (err_r, err_w) = os::pipe().map_err(os_err)?;
    let (stdin, child_stdin) = if want_stdin {
        let (r, w) = os::pipe().map_err(os_err)?;
        (Some(w), Stdio::from(r))
    } else {
        (None, Stdio::null())
    };
    let io = ProcessIo {
        stdin,
        stdout: out_r,
        stderr: Some(err_r),
    };
    let child = ChildStdio {
        stdin: child_stdin,
        stdout: out_w.into(),
        stderr: err_w.into(),
    };
    Ok((io, child))
}

/// Spawns argv; the child's pipe ends are dropped (closed in the agent) when the
/// Command goes out of scope, so only the child holds them.
fn spawn(
    argv: &[String],
    env: &[String],
    cwd: Option<&str>,
    stdio: ChildStdio,
) -> Result<u32, RuntimeError> {
    let (prog, args) = argv
        .split_first()
        .ok_or(RuntimeError::Unsupported("empty argv"))?;
    let mut cmd = Command::new(prog);
    cmd.args(args)
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .envs(env.iter().filter_map(|kv| kv.split_once('=')))
        .stdin(stdio.stdin)
        .stdout(stdio.stdout)
        .stderr(stdio.stderr)
        .process_group(0);
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    // The Child is dropped without waiting: the server's reaper owns waitpid.
    let child = cmd.spawn().map_err(|e| io_err("spawn", e))?;
    Ok(child.id())
}

/// Docker-style exit info from a wait status.
pub fn exit_info(status: i32, started_at_ms: u64) -> ExitInfo {
    let (code, reason, signal) = if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        (128 + sig, ExitReason::Signaled, Some(sig))
    } else {
        (libc::WEXITSTATUS(status), ExitReason::Exited, None)
    };
    ExitInfo {
        code,
        reason,
        signal,
        started_at_ms,
        finished_at_ms: now_ms(),
    }
}

impl Container {
    fn state(&self, id: &str) -> ContainerState {
        let status = match (&self.exit, self.pid) {
            (Some(_), _) => ContainerStatus::Exited,
            (None, 0) => ContainerStatus::Created,
            (None, _) => ContainerStatus::Running,
        };
        ContainerState {
            id: id.into(),
            status,
            pid: self.pid,
            exit: self.exit.clone(),
        }
    }
}

impl PlainRuntime {
    fn get(&mut self, id: &str) -> Result<&mut Container, RuntimeError> {
        self.containers
            .get_mut(id)
            .ok_or_else(|| RuntimeError::NotFound(id.into()))
    }
}

impl Runtime for PlainRuntime {
    fn create(&mut self, id: &str, spec: &ContainerSpec) -> Result<ProcessIo, RuntimeError> {
        let (io, child) = pipes(spec.stdin, spec.tty)?;
        let c = Container {
            spec: spec.clone(),
            stdio: Some(child),
            pid: 0,
            started_at_ms: 0,
            exit: None,
        };
        self.containers.insert(id.into(), c);
        Ok(io)
    }

    fn start(&mut self, id: &str) -> Result<(), RuntimeError> {
        let c = self.get(id)?;
        let stdio = c
            .stdio
            .take()
            .ok_or(RuntimeError::Unsupported("already started"))?;
        c.started_at_ms = now_ms();
        c.pid = spawn(&c.spec.argv, &c.spec.env, c.spec.cwd.as_deref(), stdio)?;
        Ok(())
    }

    fn exec(&mut self, id: &str, spec: &ExecSpec) -> Result<(u32, ProcessIo), RuntimeError> {
        self.get(id)?;
        let (io, child) = pipes(spec.stdin, spec.tty)?;
        let pid = spawn(&spec.argv, &spec.env, spec.cwd.as_deref(), child)?;
        self.execs.insert(pid, (id.into(), now_ms()));
        Ok((pid, io))
    }

    fn signal(&mut self, id: &str, sig: i32) -> Result<(), RuntimeError> {
        let pid = self.get(id)?.pid;
        os::kill(pid as i32, sig).map_err(|e| RuntimeError::Failed("signal".into(), Box::new(e)))
    }

    fn state(&self, id: &str) -> Result<ContainerState, RuntimeError> {
        self.containers
            .get(id)
            .map(|c| c.state(id))
            .ok_or_else(|| RuntimeError::NotFound(id.into()))
    }

    fn list(&self) -> Vec<ContainerState> {
        let mut v: Vec<_> = self.containers.iter().map(|(id, c)| c.state(id)).collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    fn on_child_exit(&mut self, pid: u32, wait_status: i32) -> Option<Reaped> {
        if let Some((container, started)) = self.execs.remove(&pid) {
            let exit = exit_info(wait_status, started);
            return Some(Reaped {
                container,
                exec_pid: Some(pid),
                exit,
            });
        }
        let (id, c) = self
            .containers
            .iter_mut()
            .find(|(_, c)| c.pid == pid && c.exit.is_none())?;
        let exit = exit_info(wait_status, c.started_at_ms);
        c.exit = Some(exit.clone());
        Some(Reaped {
            container: id.clone(),
            exec_pid: None,
            exit,
        })
    }

    fn delete(&mut self, id: &str) -> Result<(), RuntimeError> {
        let c = self
            .containers
            .remove(id)
            .ok_or_else(|| RuntimeError::NotFound(id.into()))?;
        // Each process leads its own group: killing the group takes its children.
        // ESRCH (already gone) is fine.
        if c.pid != 0 {
            let _ = os::kill(-(c.pid as i32), libc::SIGKILL);
        }
        let execs: Vec<u32> = self
            .execs
            .iter()
            .filter(|(_, (cid, _))| cid == id)
            .map(|(p, _)| *p)
            .collect();
        for pid in execs {
            let _ = os::kill(-(pid as i32), libc::SIGKILL);
            self.execs.remove(&pid);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_info_from_wait_status() {
        // Wait status encoding: exit code in bits 8-15; a signal in bits 0-6.
        let e = exit_info(3 << 8, 10);
        assert_eq!(
            (e.code, e.reason, e.signal, e.started_at_ms),
            (3, ExitReason::Exited, None, 10)
        );
        let s = exit_info(libc::SIGKILL, 0);
        assert_eq!(
            (s.code, s.reason, s.signal),
            (137, ExitReason::Signaled, Some(9))
        );
    }

    #[test]
    fn lifecycle_states_without_running_anything() {
        let mut rt = PlainRuntime::default();
        let spec = ContainerSpec {
            argv: vec!["true".into()],
            ..Default::default()
        };
        let io = rt.create("c", &spec).unwrap();
        assert!(io.stdin.is_none() && io.stderr.is_some());
        assert_eq!(rt.state("c").unwrap().status, ContainerStatus::Created);
        assert!(matches!(rt.state("d"), Err(RuntimeError::NotFound(_))));
        let tty = ContainerSpec { tty: true, ..spec };
        assert!(matches!(
            rt.create("t", &tty),
            Err(RuntimeError::Unsupported(_))
        ));
        rt.delete("c").unwrap();
        assert!(rt.list().is_empty());
    }
}
