//! The request server: accepts connections (vsock in a guest, a unix socket on the
//! host), serves each on its own thread, and owns the state shared between them:
//! the [`Runtime`] behind one mutex, the exit table `wait` sleeps on, the stdio
//! waiting to be attached, and the sandbox identity.
//!
//! Not here: message definitions (`protocol`), how containers are built (the
//! engine), PID 1 mounts (`init`).

mod attach;
mod conn;
mod dispatch;
mod engine_runtime;
mod fixup;
pub mod listen;
pub mod os;
pub mod plain;
mod reaper;
pub mod runtime;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;

use crate::protocol::spec::ExitInfo;
use listen::{ListenAddr, Listener};
pub use runtime::{ProcessIo, Reaped, Runtime, RuntimeError};

/// Errors that stop the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {0}")]
    Listen(String, #[source] listen::ListenError),
    #[error("cannot start the child reaper")]
    Reaper(#[source] os::OsError),
    #[error("accepting a connection failed")]
    Accept(#[source] listen::ListenError),
}

/// A process: a container's init (`None`) or one of its exec processes.
pub(crate) type ProcKey = (String, Option<u32>);

/// Stdio of a process, waiting for an `attach`.
pub(crate) struct PendingIo {
    pub io: ProcessIo,
    pub tty: bool,
}

/// State shared by all connection threads and the reaper.
pub(crate) struct Shared {
    runtime: Mutex<Box<dyn Runtime>>,
    /// Ended processes; `exited` is notified on every insert.
    exits: Mutex<HashMap<ProcKey, ExitInfo>>,
    exited: Condvar,
    /// Exec processes started and not deleted, so `wait` can tell unknown from
    /// still running.
    execs: Mutex<HashSet<ProcKey>>,
    stdio: Mutex<HashMap<ProcKey, PendingIo>>,
    sandbox_id: Mutex<Option<String>>,
    /// True in a guest: the agent is PID 1 and may change the machine.
    pid1: bool,
}

/// Locks a mutex, ignoring poisoning: a panicked connection thread must not take
/// the agent down with it.
pub(crate) fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn new(runtime: Box<dyn Runtime>, pid1: bool) -> Shared {
        Shared {
            runtime: Mutex::new(runtime),
            exits: Mutex::new(HashMap::new()),
            exited: Condvar::new(),
            execs: Mutex::new(HashSet::new()),
            stdio: Mutex::new(HashMap::new()),
            sandbox_id: Mutex::new(None),
            pid1,
        }
    }

    pub(crate) fn runtime(&self) -> MutexGuard<'_, Box<dyn Runtime>> {
        lock(&self.runtime)
    }

    /// Records an ended process and wakes every `wait`.
    pub(crate) fn record_exit(&self, reaped: Reaped) {
        lock(&self.exits).insert((reaped.container, reaped.exec_pid), reaped.exit);
        self.exited.notify_all();
    }

    /// Forgets everything about a deleted container.
    pub(crate) fn forget(&self, container: &str) {
        lock(&self.exits).retain(|k, _| k.0 != container);
        lock(&self.execs).retain(|k| k.0 != container);
        lock(&self.stdio).retain(|k, _| k.0 != container);
        self.exited.notify_all();
    }
}

/// A bound server, ready to serve.
pub struct Server {
    listener: Listener,
    shared: Arc<Shared>,
}

impl Server {
    /// Binds `addr` and starts the reaper. `pid1` enables machine-wide requests
    /// (clone fixup, power-off).
    pub fn bind(
        addr: &ListenAddr,
        runtime: Box<dyn Runtime>,
        pid1: bool,
    ) -> Result<Server, ServerError> {
        let listener =
            Listener::bind(addr).map_err(|e| ServerError::Listen(addr.to_string(), e))?;
        let shared = Arc::new(Shared::new(runtime, pid1));
        reaper::spawn(shared.clone()).map_err(ServerError::Reaper)?;
        Ok(Server { listener, shared })
    }

    /// Accepts connections for ever, one thread each.
    pub fn serve(self) -> Result<(), ServerError> {
        loop {
            let stream = self.listener.accept().map_err(ServerError::Accept)?;
            let shared = self.shared.clone();
            let spawned = thread::Builder::new()
                .name("conn".into())
                .spawn(move || conn::serve(&shared, stream));
            if let Err(e) = spawned {
                eprintln!("spore-agent: cannot start a connection thread: {e}");
            }
        }
    }
}
