//! A small blocking host-side client: connect, `hello`, one method per request,
//! attach streams and a `run` helper that runs a container and collects its output.
//!
//! Used by the control plane and the test harnesses. Plain std I/O; no threads
//! except where stdin and output must flow at the same time (the caller's choice).

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use super::frame::{read_frame, write_frame, FrameError};
use super::messages::{
    AttachFrame, CloneFixup, ErrorReply, HelloInfo, MessagesError, Outcome, Reply, Request,
    RequestBody, Response, Stream, PROTOCOL_VERSION,
};
use super::spec::{ContainerSpec, ContainerState, ExecSpec, ExitInfo};

/// Errors a client call can end in.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to the agent at {0}")]
    Connect(String, #[source] io::Error),
    #[error("hybrid vsock handshake refused: {0:?}")]
    Handshake(String),
    #[error("agent connection")]
    Frame(#[from] FrameError),
    #[error("agent connection")]
    Io(#[from] io::Error),
    #[error("agent refused the request: {0}")]
    Agent(ErrorReply),
    #[error("agent sent an unreadable reply")]
    BadReply(#[source] serde_json::Error),
    #[error("agent sent a bad attach frame")]
    BadAttachFrame(#[from] MessagesError),
    #[error("agent answered with {0}")]
    Unexpected(String),
}

/// Where the agent listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// Host mode: `spore-agent --listen unix:PATH`.
    Unix(PathBuf),
    /// A guest's vsock port behind the VMM's unix socket (`CONNECT <port>\n`).
    HybridVsock { path: PathBuf, port: u32 },
}

impl Endpoint {
    /// Opens one stream to the agent.
    pub fn connect(&self) -> Result<UnixStream, ClientError> {
        match self {
            Endpoint::Unix(path) => UnixStream::connect(path)
                .map_err(|e| ClientError::Connect(path.display().to_string(), e)),
            Endpoint::HybridVsock { path, port } => {
                let mut s = UnixStream::connect(path)
                    .map_err(|e| ClientError::Connect(path.display().to_string(), e))?;
                s.write_all(format!("CONNECT {port}\n").as_bytes())?;
                // Read the answer byte by byte: nothing after the newline is ours.
                let mut line = Vec::new();
                let mut reader = BufReader::with_capacity(1, &s);
                reader.read_until(b'\n', &mut line)?;
                let line = String::from_utf8_lossy(&line).trim().to_owned();
                if !line.starts_with("OK ") {
                    return Err(ClientError::Handshake(line));
                }
                Ok(s)
            }
        }
    }
}

/// A control connection.
pub struct Client {
    endpoint: Endpoint,
    stream: UnixStream,
    next_id: u64,
}

impl Client {
    pub fn connect(endpoint: Endpoint) -> Result<Client, ClientError> {
        let stream = endpoint.connect()?;
        Ok(Client {
            endpoint,
            stream,
            next_id: 1,
        })
    }

    /// Bounds every later read on this connection (`None`: block for ever).
    pub fn set_timeout(&self, t: Option<Duration>) -> Result<(), ClientError> {
        self.stream.set_read_timeout(t)?;
        Ok(())
    }

    /// Sends an arbitrary frame and reads one reply (tests use it for garbage).
    pub fn call_raw(&mut self, payload: &[u8]) -> Result<Response, ClientError> {
        write_frame(&mut self.stream, payload)?;
        self.read_response()
    }

    /// The underlying stream, for callers that need to write odd bytes.
    pub fn stream(&mut self) -> &mut UnixStream {
        &mut self.stream
    }

    /// Reads one reply frame.
    pub fn read_response(&mut self) -> Result<Response, ClientError> {
        let frame = read_frame(&mut self.stream)?;
        serde_json::from_slice(&frame).map_err(ClientError::BadReply)
    }

    /// Sends a request and returns its successful reply.
    pub fn call(&mut self, body: RequestBody) -> Result<Reply, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let bytes = serde_json::to_vec(&Request { id, body }).map_err(ClientError::BadReply)?;
        let resp = self.call_raw(&bytes)?;
        if resp.id != id {
            return Err(ClientError::Unexpected(format!(
                "reply id {} for {id}",
                resp.id
            )));
        }
        match resp.outcome {
            Outcome::Ok(reply) => Ok(reply),
            Outcome::Error(e) => Err(ClientError::Agent(e)),
        }
    }

    fn call_done(&mut self, body: RequestBody) -> Result<(), ClientError> {
        match self.call(body)? {
            Reply::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    pub fn hello(&mut self) -> Result<HelloInfo, ClientError> {
        match self.call(RequestBody::Hello {
            protocol_version: PROTOCOL_VERSION,
        })? {
            Reply::Hello(info) => Ok(info),
            other => Err(unexpected(other)),
        }
    }

    pub fn create(&mut self, container: &str, spec: &ContainerSpec) -> Result<(), ClientError> {
        self.call_done(RequestBody::Create {
            container: container.into(),
            spec: spec.clone(),
        })
    }

    pub fn start(&mut self, container: &str) -> Result<(), ClientError> {
        self.call_done(RequestBody::Start {
            container: container.into(),
        })
    }

    /// Blocks until the container's init (or the exec process) has ended.
    pub fn wait(
        &mut self,
        container: &str,
        exec_pid: Option<u32>,
    ) -> Result<ExitInfo, ClientError> {
        match self.call(RequestBody::Wait {
            container: container.into(),
            exec_pid,
        })? {
            Reply::Exit(exit) => Ok(exit),
            other => Err(unexpected(other)),
        }
    }

    pub fn signal(&mut self, container: &str, signal: i32) -> Result<(), ClientError> {
        self.call_done(RequestBody::Signal {
            container: container.into(),
            signal,
        })
    }

    /// Starts a process in a running container; returns its pid.
    pub fn exec(&mut self, container: &str, spec: &ExecSpec) -> Result<u32, ClientError> {
        match self.call(RequestBody::Exec {
            container: container.into(),
            spec: spec.clone(),
        })? {
            Reply::Exec { exec_pid } => Ok(exec_pid),
            other => Err(unexpected(other)),
        }
    }

    pub fn state(&mut self, container: &str) -> Result<ContainerState, ClientError> {
        match self.call(RequestBody::State {
            container: container.into(),
        })? {
            Reply::State(s) => Ok(s),
            other => Err(unexpected(other)),
        }
    }

    pub fn list(&mut self) -> Result<Vec<ContainerState>, ClientError> {
        match self.call(RequestBody::List)? {
            Reply::List { containers } => Ok(containers),
            other => Err(unexpected(other)),
        }
    }

    pub fn delete(&mut self, container: &str) -> Result<(), ClientError> {
        self.call_done(RequestBody::Delete {
            container: container.into(),
        })
    }

    pub fn fixup(&mut self, fixup: &CloneFixup) -> Result<(), ClientError> {
        self.call_done(RequestBody::Fixup(fixup.clone()))
    }

    pub fn shutdown(&mut self) -> Result<(), ClientError> {
        self.call_done(RequestBody::Shutdown)
    }

    /// Opens a second connection and attaches it to a process's stdio.
    pub fn attach(&self, container: &str, exec_pid: Option<u32>) -> Result<Attach, ClientError> {
        let mut c = Client::connect(self.endpoint.clone())?;
        match c.call(RequestBody::Attach {
            container: container.into(),
            exec_pid,
        })? {
            Reply::Attached { tty } => Ok(Attach {
                stream: c.stream,
                tty,
            }),
            other => Err(unexpected(other)),
        }
    }

    /// create → attach → start → collect output → wait. Leaves the container in
    /// place (exited) for the caller to inspect or delete.
    pub fn run(&mut self, container: &str, spec: &ContainerSpec) -> Result<RunOutput, ClientError> {
        self.create(container, spec)?;
        let mut attach = self.attach(container, None)?;
        self.start(container)?;
        let (stdout, stderr) = attach.collect()?;
        let exit = self.wait(container, None)?;
        Ok(RunOutput {
            stdout,
            stderr,
            exit,
        })
    }
}

fn unexpected(reply: Reply) -> ClientError {
    ClientError::Unexpected(format!("{reply:?}"))
}

/// What [`Client::run`] returns.
#[derive(Debug)]
pub struct RunOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit: ExitInfo,
}

/// An attach connection: a process's stdio.
#[derive(Debug)]
pub struct Attach {
    stream: UnixStream,
    tty: bool,
}

impl Attach {
    /// True if output is one pseudo-terminal stream (no separate stderr).
    pub fn tty(&self) -> bool {
        self.tty
    }

    pub fn write_stdin(&mut self, data: &[u8]) -> Result<(), ClientError> {
        for chunk in data.chunks(super::messages::MAX_CHUNK) {
            self.send(&AttachFrame::Stdin(chunk.to_vec()))?;
        }
        Ok(())
    }

    pub fn close_stdin(&mut self) -> Result<(), ClientError> {
        self.send(&AttachFrame::CloseStdin)
    }

    pub fn resize(&mut self, rows: u16, cols: u16) -> Result<(), ClientError> {
        self.send(&AttachFrame::Resize { rows, cols })
    }

    fn send(&mut self, frame: &AttachFrame) -> Result<(), ClientError> {
        write_frame(&mut self.stream, &frame.encode())?;
        Ok(())
    }

    /// Next frame from the agent; `None` when the agent closed the connection.
    pub fn next_frame(&mut self) -> Result<Option<AttachFrame>, ClientError> {
        match read_frame(&mut self.stream) {
            Ok(f) => Ok(Some(AttachFrame::decode(&f)?)),
            Err(FrameError::Closed) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads output until every stream has ended; returns (stdout, stderr).
    pub fn collect(&mut self) -> Result<(Vec<u8>, Vec<u8>), ClientError> {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut open = if self.tty { 1 } else { 2 };
        while open > 0 {
            match self.next_frame()? {
                Some(AttachFrame::Output(Stream::Stdout, d)) => out.extend_from_slice(&d),
                Some(AttachFrame::Output(Stream::Stderr, d)) => err.extend_from_slice(&d),
                Some(AttachFrame::Eof(_)) => open -= 1,
                Some(other) => return Err(ClientError::Unexpected(format!("{other:?}"))),
                None => return Err(FrameError::Closed.into()),
            }
        }
        Ok((out, err))
    }

    /// A second handle on the same connection (e.g. a stdin-writing thread).
    pub fn try_clone(&self) -> Result<Attach, ClientError> {
        Ok(Attach {
            stream: self.stream.try_clone()?,
            tty: self.tty,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hybrid_vsock_handshake() {
        let dir = std::env::temp_dir().join(format!("spore-client-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("v.sock");
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            for answer in ["OK 5\n", "NO\n"] {
                let (mut s, _) = listener.accept().unwrap();
                let mut line = String::new();
                BufReader::new(&s).read_line(&mut line).unwrap();
                assert_eq!(line, "CONNECT 1024\n");
                s.write_all(answer.as_bytes()).unwrap();
            }
        });
        let ep = Endpoint::HybridVsock {
            path: path.clone(),
            port: 1024,
        };
        assert!(ep.connect().is_ok());
        assert!(matches!(ep.connect(), Err(ClientError::Handshake(l)) if l == "NO"));
        server.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
