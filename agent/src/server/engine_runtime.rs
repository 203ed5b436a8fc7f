//! The real container engine behind the server's [`Runtime`] seam: a thin
//! mapping of types and errors, no behaviour of its own.

use super::runtime::{ProcessIo, Reaped, Runtime, RuntimeError};
use crate::engine::{ContainerIo, Engine, EngineError};
use crate::protocol::spec::{ContainerSpec, ContainerState, ExecSpec};

fn io(c: ContainerIo) -> ProcessIo {
    ProcessIo {
        stdin: c.stdin,
        stdout: c.stdout,
        stderr: c.stderr,
    }
}

fn map(what: &'static str) -> impl FnOnce(EngineError) -> RuntimeError {
    move |e| match e {
        EngineError::UnknownId(id) => RuntimeError::NotFound(id),
        other => RuntimeError::Failed(what.into(), Box::new(other)),
    }
}

impl Runtime for Engine {
    fn create(&mut self, id: &str, spec: &ContainerSpec) -> Result<ProcessIo, RuntimeError> {
        Engine::create(self, id, spec)
            .map(io)
            .map_err(map("create"))
    }

    fn start(&mut self, id: &str) -> Result<(), RuntimeError> {
        Engine::start(self, id).map_err(map("start"))
    }

    fn exec(&mut self, id: &str, spec: &ExecSpec) -> Result<(u32, ProcessIo), RuntimeError> {
        Engine::exec(self, id, spec)
            .map(|(pid, c)| (pid, io(c)))
            .map_err(map("exec"))
    }

    fn signal(&mut self, id: &str, sig: i32) -> Result<(), RuntimeError> {
        Engine::signal(self, id, sig).map_err(map("signal"))
    }

    fn state(&self, id: &str) -> Result<ContainerState, RuntimeError> {
        Engine::state(self, id).map_err(map("state"))
    }

    fn list(&self) -> Vec<ContainerState> {
        Engine::list(self)
    }

    fn on_child_exit(&mut self, pid: u32, wait_status: i32) -> Option<Reaped> {
        Engine::on_child_exit(self, pid, wait_status).map(|c| Reaped {
            container: c.container,
            exec_pid: c.exec_pid,
            exit: c.exit,
        })
    }

    fn delete(&mut self, id: &str) -> Result<(), RuntimeError> {
        Engine::delete(self, id).map_err(map("delete"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_ids_map_to_not_found() {
        assert!(matches!(
            map("state")(EngineError::UnknownId("x".into())),
            RuntimeError::NotFound(id) if id == "x"
        ));
        let e = map("start")(EngineError::AlreadyStarted("x".into()));
        assert_eq!(
            crate::error_chain(&e),
            "start: container x was already started"
        );
    }
}
