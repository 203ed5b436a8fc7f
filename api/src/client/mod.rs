//! The CLI's side of the API: HTTP/1.1 requests over the daemon's unix socket,
//! JSON replies, streamed frames, and starting a daemon in the background when
//! none answers.
//!
//! One connection per request (`Connection: close`): the CLI makes few requests,
//! and this keeps response framing trivial. Not here: what commands do with the
//! answers (`cmd/*`).

mod response;
pub mod tty;

use std::fs::OpenOptions;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::server::http::FrameKind;
use response::Response;

/// How long a freshly started daemon may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// Errors of API calls.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the spore daemon at {0}")]
    Connect(String, #[source] io::Error),
    #[error("started a daemon (log: {0}) but it did not listen within {1:?}")]
    StartTimeout(String, Duration),
    #[error("cannot start a daemon")]
    Start(#[source] io::Error),
    #[error("talking to the daemon")]
    Io(#[from] io::Error),
    #[error("the daemon sent a malformed response: {0}")]
    Protocol(String),
    /// The API answered with an error body.
    #[error("{message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
}

/// A connection factory for one daemon.
#[derive(Clone, Debug)]
pub struct DaemonClient {
    pub socket: PathBuf,
}

impl DaemonClient {
    /// A client for the daemon on `socket`; starts `spore serve` in the background
    /// first if nothing answers there.
    pub fn connect_or_start(socket: &Path) -> Result<DaemonClient, ClientError> {
        let client = DaemonClient {
            socket: socket.to_owned(),
        };
        if UnixStream::connect(socket).is_ok() {
            return Ok(client);
        }
        client.start_daemon()?;
        Ok(client)
    }

    fn start_daemon(&self) -> Result<(), ClientError> {
        let dir = self
            .socket
            .parent()
            .map(Path::to_owned)
            .unwrap_or_else(|| PathBuf::from("."));
        std::fs::create_dir_all(&dir).map_err(ClientError::Start)?;
        let log_path = dir.join("spore.log");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(ClientError::Start)?;
        let exe = std::env::current_exe().map_err(ClientError::Start)?;
        eprintln!(
            "spore: no daemon on {}; starting one (log: {})",
            self.socket.display(),
            log_path.display()
        );
        let mut cmd = Command::new(exe);
        cmd.arg("serve")
            .arg("--socket")
            .arg(&self.socket)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(ClientError::Start)?)
            .stderr(log);
        // SAFETY: setsid only moves the child into its own session (no memory is
        // touched), so the daemon outlives this CLI and its terminal.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(ClientError::Start)?;
        let start = Instant::now();
        while start.elapsed() < START_TIMEOUT {
            if UnixStream::connect(&self.socket).is_ok() {
                // The daemon runs on; nobody waits for it. Reaping here is not
                // possible without blocking, and this CLI exits soon anyway.
                return Ok(());
            }
            if let Ok(Some(status)) = child.try_wait() {
                let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
                return Err(ClientError::Protocol(format!(
                    "the daemon exited ({status}): {}",
                    tail.lines().last().unwrap_or("")
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err(ClientError::StartTimeout(
            log_path.display().to_string(),
            START_TIMEOUT,
        ))
    }

    fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Response, ClientError> {
        let mut stream = UnixStream::connect(&self.socket)
            .map_err(|e| ClientError::Connect(self.socket.display().to_string(), e))?;
        let body = body
            .map(|b| serde_json::to_vec(b).unwrap_or_default())
            .unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: spore\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes())?;
        stream.write_all(&body)?;
        Response::read(BufReader::new(stream))
    }

    /// Upgrades a `POST path` to a two-way frame stream (`attach`); returns the
    /// reading and writing ends.
    pub fn upgrade(&self, path: &str) -> Result<(BufReader<UnixStream>, UnixStream), ClientError> {
        let mut stream = UnixStream::connect(&self.socket)
            .map_err(|e| ClientError::Connect(self.socket.display().to_string(), e))?;
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: spore\r\nConnection: Upgrade\r\n\
             Upgrade: spore-stream\r\nContent-Length: 0\r\n\r\n"
        );
        stream.write_all(head.as_bytes())?;
        let writer = stream.try_clone()?;
        let mut reader = BufReader::new(stream);
        let mut status_line = String::new();
        reader.read_line(&mut status_line)?;
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| ClientError::Protocol(format!("status line {status_line:?}")))?;
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
        }
        if status == 101 {
            return Ok((reader, writer));
        }
        let mut body = vec![0; length.min(1 << 20)];
        reader.read_exact(&mut body)?;
        Err(api_error(status, &body))
    }

    /// A JSON request; API errors become [`ClientError::Api`]. A 204 gives `null`.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let mut resp = self.send(method, path, body)?;
        let bytes = resp.body_bytes()?;
        if resp.status >= 400 {
            return Err(api_error(resp.status, &bytes));
        }
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// A streamed request: `on_frame` gets every frame until the stream ends.
    pub fn stream(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        on_frame: &mut dyn FnMut(FrameKind, &[u8]) -> io::Result<()>,
    ) -> Result<(), ClientError> {
        let mut resp = self.send(method, path, body)?;
        if resp.status >= 400 {
            let bytes = resp.body_bytes()?;
            return Err(api_error(resp.status, &bytes));
        }
        resp.frames(on_frame)
    }
}

fn api_error(status: u16, body: &[u8]) -> ClientError {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    ClientError::Api {
        status,
        code: v["code"].as_str().unwrap_or("unknown").to_owned(),
        message: v["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned()),
    }
}

/// Writes stdout/stderr frames to this process's stdout/stderr.
pub fn print_output(kind: FrameKind, data: &[u8]) -> io::Result<()> {
    match kind {
        FrameKind::Stdout => {
            let mut out = io::stdout().lock();
            out.write_all(data)?;
            out.flush()
        }
        FrameKind::Stderr => {
            let mut err = io::stderr().lock();
            err.write_all(data)?;
            err.flush()
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_errors_keep_code_and_message() {
        let e = api_error(404, br#"{"code":"not_found","message":"no sandbox \"x\""}"#);
        match e {
            ClientError::Api {
                status,
                code,
                message,
            } => {
                assert_eq!((status, code.as_str()), (404, "not_found"));
                assert_eq!(message, "no sandbox \"x\"");
            }
            other => panic!("{other:?}"),
        }
        let raw = api_error(500, b"plain text");
        assert_eq!(raw.to_string(), "plain text");
    }

    #[test]
    fn unreachable_daemon_is_reported() {
        let c = DaemonClient {
            socket: PathBuf::from("/nonexistent/spore.sock"),
        };
        assert!(matches!(
            c.call("GET", "/v1/health", None),
            Err(ClientError::Connect(..))
        ));
    }
}
