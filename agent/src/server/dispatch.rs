//! One request → one outcome. The server-side checks live here (names, states,
//! double attach) so every runtime answers with the same error codes; the
//! runtime is called only for requests that make sense.

use std::time::Duration;

use super::{fixup, lock, PendingIo, ProcKey, RuntimeError, Shared};
use crate::protocol::messages::{
    ErrorCode, ErrorReply, HelloInfo, Reply, RequestBody, PROTOCOL_VERSION,
};
use crate::protocol::spec::{ContainerState, ContainerStatus, ExitInfo};

/// What the connection does after a request.
pub(crate) enum Action {
    Reply(Reply),
    /// Reply `attached`, then stream this process's stdio.
    Attach(PendingIo),
    /// Reply `done`, then shut the machine (or the host-mode agent) down.
    Shutdown,
}

/// How often a `wait` rechecks in case its container was deleted.
const WAIT_RECHECK: Duration = Duration::from_millis(200);

type Outcome = Result<Action, ErrorReply>;

pub(crate) fn handle(shared: &Shared, body: RequestBody) -> Outcome {
    let reply = match body {
        RequestBody::Hello { protocol_version } => hello(shared, protocol_version)?,
        RequestBody::Create { container, spec } => {
            valid_name(&container)?;
            if shared.runtime().state(&container).is_ok() {
                return Err(err(
                    ErrorCode::AlreadyExists,
                    format!("container {container:?} exists"),
                ));
            }
            let io = shared.runtime().create(&container, &spec).map_err(engine)?;
            let pending = PendingIo { io, tty: spec.tty };
            lock(&shared.stdio).insert((container, None), pending);
            Reply::Done
        }
        RequestBody::Start { container } => {
            let mut rt = shared.runtime();
            require(
                &rt.state(&container).map_err(engine)?,
                &[ContainerStatus::Created],
                "start",
            )?;
            rt.start(&container).map_err(engine)?;
            Reply::Done
        }
        RequestBody::Wait {
            container,
            exec_pid,
        } => Reply::Exit(wait(shared, (container, exec_pid))?),
        RequestBody::Signal { container, signal } => {
            let mut rt = shared.runtime();
            let st = rt.state(&container).map_err(engine)?;
            require(
                &st,
                &[ContainerStatus::Created, ContainerStatus::Running],
                "signal",
            )?;
            rt.signal(&container, signal).map_err(engine)?;
            Reply::Done
        }
        RequestBody::Exec { container, spec } => {
            let (pid, io) = {
                let mut rt = shared.runtime();
                require(
                    &rt.state(&container).map_err(engine)?,
                    &[ContainerStatus::Running],
                    "exec into",
                )?;
                rt.exec(&container, &spec).map_err(engine)?
            };
            let key = (container, Some(pid));
            lock(&shared.execs).insert(key.clone());
            lock(&shared.stdio).insert(key, PendingIo { io, tty: spec.tty });
            Reply::Exec { exec_pid: pid }
        }
        RequestBody::State { container } => {
            Reply::State(shared.runtime().state(&container).map_err(engine)?)
        }
        RequestBody::List => Reply::List {
            containers: shared.runtime().list(),
        },
        RequestBody::Delete { container } => {
            shared.runtime().delete(&container).map_err(engine)?;
            shared.forget(&container);
            Reply::Done
        }
        RequestBody::Attach {
            container,
            exec_pid,
        } => {
            shared.runtime().state(&container).map_err(engine)?;
            let key = (container, exec_pid);
            return match lock(&shared.stdio).remove(&key) {
                Some(p) => Ok(Action::Attach(p)),
                None if exec_pid.is_some() && !lock(&shared.execs).contains(&key) => Err(err(
                    ErrorCode::NotFound,
                    format!("no exec process {exec_pid:?} in {:?}", key.0),
                )),
                None => Err(err(ErrorCode::AlreadyAttached, "stdio already attached")),
            };
        }
        RequestBody::Fixup(f) => {
            fixup::apply(shared, &f)?;
            Reply::Done
        }
        RequestBody::Shutdown => return Ok(Action::Shutdown),
    };
    Ok(Action::Reply(reply))
}

fn err(code: ErrorCode, message: impl Into<String>) -> ErrorReply {
    ErrorReply::new(code, message)
}

/// Maps a runtime error to a reply, with its whole cause chain in the message.
pub(crate) fn engine(e: RuntimeError) -> ErrorReply {
    let code = match &e {
        RuntimeError::NotFound(_) => ErrorCode::NotFound,
        RuntimeError::Unsupported(_) => ErrorCode::Unsupported,
        RuntimeError::Failed(..) => ErrorCode::Engine,
    };
    let message = crate::error_chain(&e);
    err(code, message)
}

fn hello(shared: &Shared, version: u32) -> Result<Reply, ErrorReply> {
    if version != PROTOCOL_VERSION {
        return Err(err(
            ErrorCode::VersionMismatch,
            format!("agent speaks protocol {PROTOCOL_VERSION}, host {version}"),
        ));
    }
    Ok(Reply::Hello(HelloInfo {
        protocol_version: PROTOCOL_VERSION,
        agent_version: env!("CARGO_PKG_VERSION").into(),
        kernel_release: super::os::kernel_release(),
        hostname: super::os::hostname(),
        uptime_ms: super::os::boottime_ms(),
        pid1: shared.pid1,
        sandbox_id: lock(&shared.sandbox_id).clone(),
    }))
}

/// Container ids become directory and cgroup names: keep them boring.
fn valid_name(name: &str) -> Result<(), ErrorReply> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(err(
            ErrorCode::BadRequest,
            format!("container id {name:?}: use 1-64 of [A-Za-z0-9_.-], not starting with '.'"),
        ))
    }
}

fn require(st: &ContainerState, allowed: &[ContainerStatus], what: &str) -> Result<(), ErrorReply> {
    if allowed.contains(&st.status) {
        Ok(())
    } else {
        Err(err(
            ErrorCode::InvalidState,
            format!("cannot {what} container {:?}: it is {:?}", st.id, st.status),
        ))
    }
}

/// Blocks until the process has ended. Never holds the runtime lock while asleep.
fn wait(shared: &Shared, key: ProcKey) -> Result<ExitInfo, ErrorReply> {
    loop {
        let st = shared.runtime().state(&key.0).map_err(engine)?;
        if key.1.is_none() {
            if let Some(exit) = st.exit {
                return Ok(exit);
            }
        } else if !lock(&shared.execs).contains(&key) {
            return Err(err(
                ErrorCode::NotFound,
                format!("no exec process {:?} in {:?}", key.1, key.0),
            ));
        }
        let exits = lock(&shared.exits);
        if let Some(exit) = exits.get(&key) {
            return Ok(exit.clone());
        }
        let _ = shared.exited.wait_timeout(exits, WAIT_RECHECK);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::protocol::spec::{ContainerSpec, ExecSpec, ExitReason};
    use crate::server::{os, ProcessIo, Reaped, Runtime};

    /// Containers as bare states; exits are injected by the test. Shares its
    /// table so a test can end a container the way the reaper would.
    #[derive(Default, Clone)]
    struct FakeRuntime {
        states: Arc<Mutex<HashMap<String, ContainerState>>>,
    }

    fn fake_io() -> ProcessIo {
        let (r, _w) = os::pipe().unwrap();
        ProcessIo {
            stdin: None,
            stdout: r,
            stderr: None,
        }
    }

    impl Runtime for FakeRuntime {
        fn create(&mut self, id: &str, _: &ContainerSpec) -> Result<ProcessIo, RuntimeError> {
            let st = ContainerState {
                id: id.into(),
                status: ContainerStatus::Created,
                pid: 0,
                exit: None,
            };
            lock(&self.states).insert(id.into(), st);
            Ok(fake_io())
        }
        fn start(&mut self, id: &str) -> Result<(), RuntimeError> {
            let mut states = lock(&self.states);
            let st = states
                .get_mut(id)
                .ok_or_else(|| RuntimeError::NotFound(id.into()))?;
            st.status = ContainerStatus::Running;
            st.pid = 100;
            Ok(())
        }
        fn exec(&mut self, _: &str, _: &ExecSpec) -> Result<(u32, ProcessIo), RuntimeError> {
            Ok((200, fake_io()))
        }
        fn signal(&mut self, _: &str, _: i32) -> Result<(), RuntimeError> {
            Ok(())
        }
        fn state(&self, id: &str) -> Result<ContainerState, RuntimeError> {
            lock(&self.states)
                .get(id)
                .cloned()
                .ok_or_else(|| RuntimeError::NotFound(id.into()))
        }
        fn list(&self) -> Vec<ContainerState> {
            lock(&self.states).values().cloned().collect()
        }
        fn on_child_exit(&mut self, _: u32, _: i32) -> Option<Reaped> {
            None
        }
        fn delete(&mut self, id: &str) -> Result<(), RuntimeError> {
            lock(&self.states)
                .remove(id)
                .map(drop)
                .ok_or_else(|| RuntimeError::NotFound(id.into()))
        }
    }

    fn exit(code: i32) -> ExitInfo {
        ExitInfo {
            code,
            reason: ExitReason::Exited,
            signal: None,
            started_at_ms: 1,
            finished_at_ms: 2,
        }
    }

    fn code(r: Outcome) -> ErrorCode {
        match r {
            Err(e) => e.code,
            Ok(_) => panic!("expected an error"),
        }
    }

    fn ok(r: Outcome) -> Reply {
        match r {
            Ok(Action::Reply(r)) => r,
            Ok(_) => panic!("expected a plain reply"),
            Err(e) => panic!("unexpected error {e}"),
        }
    }

    fn c(name: &str) -> String {
        name.into()
    }

    #[test]
    fn lifecycle_rules_and_codes() {
        let fake = FakeRuntime::default();
        let sh = Shared::new(Box::new(fake.clone()), false);
        let spec = ContainerSpec::default();
        let create = || RequestBody::Create {
            container: c("a"),
            spec: spec.clone(),
        };
        assert_eq!(ok(handle(&sh, create())), Reply::Done);
        assert_eq!(code(handle(&sh, create())), ErrorCode::AlreadyExists);
        let attach = |exec_pid| RequestBody::Attach {
            container: c("a"),
            exec_pid,
        };
        assert!(matches!(handle(&sh, attach(None)), Ok(Action::Attach(_))));
        assert_eq!(code(handle(&sh, attach(None))), ErrorCode::AlreadyAttached);
        let exec = || RequestBody::Exec {
            container: c("a"),
            spec: ExecSpec::default(),
        };
        assert_eq!(code(handle(&sh, exec())), ErrorCode::InvalidState);
        assert_eq!(
            ok(handle(&sh, RequestBody::Start { container: c("a") })),
            Reply::Done
        );
        assert_eq!(
            code(handle(&sh, RequestBody::Start { container: c("a") })),
            ErrorCode::InvalidState
        );
        assert_eq!(ok(handle(&sh, exec())), Reply::Exec { exec_pid: 200 });
        assert_eq!(code(handle(&sh, attach(Some(7)))), ErrorCode::NotFound);

        // The exec ends; a wait then answers at once, an unknown pid is not found.
        sh.record_exit(Reaped {
            container: c("a"),
            exec_pid: Some(200),
            exit: exit(4),
        });
        let wait = |exec_pid| RequestBody::Wait {
            container: c("a"),
            exec_pid,
        };
        assert_eq!(ok(handle(&sh, wait(Some(200)))), Reply::Exit(exit(4)));
        assert_eq!(code(handle(&sh, wait(Some(7)))), ErrorCode::NotFound);

        assert_eq!(
            ok(handle(&sh, RequestBody::Delete { container: c("a") })),
            Reply::Done
        );
        assert_eq!(
            code(handle(&sh, RequestBody::State { container: c("a") })),
            ErrorCode::NotFound
        );
        assert_eq!(code(handle(&sh, wait(Some(200)))), ErrorCode::NotFound);
        assert!(lock(&sh.stdio).is_empty() && lock(&sh.exits).is_empty());
    }

    #[test]
    fn wait_wakes_when_the_container_ends() {
        let fake = FakeRuntime::default();
        let sh = Arc::new(Shared::new(Box::new(fake.clone()), false));
        let spec = ContainerSpec::default();
        ok(handle(
            &sh,
            RequestBody::Create {
                container: c("w"),
                spec,
            },
        ));
        ok(handle(&sh, RequestBody::Start { container: c("w") }));
        let waiter = {
            let sh = sh.clone();
            std::thread::spawn(move || {
                ok(handle(
                    &sh,
                    RequestBody::Wait {
                        container: c("w"),
                        exec_pid: None,
                    },
                ))
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(!waiter.is_finished());
        // What the reaper does: the runtime learns the exit, then the table does.
        {
            let mut states = lock(&fake.states);
            let st = states.get_mut("w").unwrap();
            st.status = ContainerStatus::Exited;
            st.exit = Some(exit(9));
        }
        sh.record_exit(Reaped {
            container: c("w"),
            exec_pid: None,
            exit: exit(9),
        });
        assert_eq!(waiter.join().unwrap(), Reply::Exit(exit(9)));
    }

    #[test]
    fn hello_checks_the_version() {
        let sh = Shared::new(Box::new(FakeRuntime::default()), false);
        let Reply::Hello(info) = ok(handle(
            &sh,
            RequestBody::Hello {
                protocol_version: PROTOCOL_VERSION,
            },
        )) else {
            panic!("not a hello reply");
        };
        assert!(!info.pid1 && info.sandbox_id.is_none());
        let wrong = RequestBody::Hello {
            protocol_version: PROTOCOL_VERSION + 1,
        };
        assert_eq!(code(handle(&sh, wrong)), ErrorCode::VersionMismatch);
    }

    #[test]
    fn container_names() {
        for good in ["c1", "a.b-c_d", &"x".repeat(64)] {
            assert!(valid_name(good).is_ok(), "{good}");
        }
        for bad in ["", ".", "..", "a/b", "a b", &"x".repeat(65), "é"] {
            assert_eq!(
                valid_name(bad).unwrap_err().code,
                ErrorCode::BadRequest,
                "{bad}"
            );
        }
    }

    #[test]
    fn engine_errors_keep_their_cause() {
        let e = RuntimeError::Failed(
            "mount rootfs".into(),
            Box::new(std::io::Error::other("EPERM")),
        );
        let r = engine(e);
        assert_eq!(r.code, ErrorCode::Engine);
        assert_eq!(r.message, "mount rootfs: EPERM");
        assert_eq!(
            engine(RuntimeError::NotFound("x".into())).code,
            ErrorCode::NotFound
        );
    }
}
