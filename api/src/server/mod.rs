//! `spore serve`: the REST API over HTTP/1.1 with JSON bodies, on a unix socket
//! (default [`DEFAULT_SOCKET`], mode 0600) and, when asked, on TCP where every
//! request needs `Authorization: Bearer <token>`.
//!
//! One thread per connection, keep-alive, bounded requests (see [`http`]). Routes
//! are in [`routes`] and documented in `api/openapi.yaml`; errors map to statuses
//! in [`error`]. Not here: what the routes do (`supervisor`).

pub mod error;
pub mod http;
mod routes;

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;

use crate::supervisor::{Supervisor, SupervisorError};
use error::ApiError;
use http::{HttpError, Request};

/// How long a connection may sit idle (or dribble a request head) before the
/// server drops it, so idle clients cannot pin threads for ever.
pub const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Where the daemon listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/spore/spore.sock";
/// Where the daemon keeps its state unless `$SPORE_RUN_DIR` says otherwise.
pub const DEFAULT_RUN_DIR: &str = "/run/spore";

/// Errors that stop the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {0}")]
    Bind(String, #[source] std::io::Error),
    #[error(
        "another daemon already listens on {0} — use it, or stop it first \
         (or pass --socket for a second one)"
    )]
    InUse(String),
    #[error("cannot open the state directory")]
    Supervisor(#[from] SupervisorError),
    #[error("--tcp needs --token (the API runs containers: never expose it unauthenticated)")]
    TcpWithoutToken,
}

/// What `spore serve` was asked to do.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub socket: PathBuf,
    pub tcp: Option<SocketAddr>,
    pub token: Option<String>,
}

/// The run directory: `$SPORE_RUN_DIR` or [`DEFAULT_RUN_DIR`].
pub fn run_dir() -> PathBuf {
    std::env::var_os("SPORE_RUN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_RUN_DIR))
}

/// The socket: `$SPORE_SOCKET`, else `spore.sock` in the run directory.
pub fn default_socket() -> PathBuf {
    if let Some(p) = std::env::var_os("SPORE_SOCKET") {
        return PathBuf::from(p);
    }
    match std::env::var_os("SPORE_RUN_DIR") {
        Some(d) => PathBuf::from(d).join("spore.sock"),
        None => PathBuf::from(DEFAULT_SOCKET),
    }
}

/// Binds the listeners, then serves until the process is killed. Sandboxes
/// outlive the daemon; the next one re-adopts them.
pub fn serve(sup: Arc<Supervisor>, config: ServeConfig) -> Result<(), ServerError> {
    if config.tcp.is_some() && config.token.is_none() {
        return Err(ServerError::TcpWithoutToken);
    }
    let unix = bind_unix(&config.socket)?;
    eprintln!("spore: listening on unix:{}", config.socket.display());
    if let Some(addr) = config.tcp {
        let tcp = TcpListener::bind(addr).map_err(|e| ServerError::Bind(addr.to_string(), e))?;
        eprintln!("spore: listening on tcp:{addr} (bearer token required)");
        let (sup, token) = (sup.clone(), config.token.clone());
        thread::spawn(move || {
            for conn in tcp.incoming().flatten() {
                let (sup, token) = (sup.clone(), token.clone());
                let _ = conn.set_nodelay(true);
                thread::spawn(move || serve_conn(&sup, conn, token.as_deref()));
            }
        });
    }
    for conn in unix.incoming() {
        match conn {
            Ok(conn) => {
                let sup = sup.clone();
                thread::spawn(move || serve_conn(&sup, conn, None));
            }
            Err(e) => eprintln!("spore: accept: {e}"),
        }
    }
    Ok(())
}

/// Blocks SIGTERM and SIGINT in the calling thread and in every thread started
/// after it, so that [`on_termination`] can take them with `sigwait`. Call it
/// before any other thread starts. Processes the daemon spawns reset the mask.
pub fn block_termination_signals() {
    // SAFETY: the sigset lives on this stack for the calls; the calls only read
    // or write it and this thread's signal mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Runs `f` on a helper thread when SIGTERM or SIGINT arrives, then exits.
pub fn on_termination(f: impl FnOnce() + Send + 'static) {
    std::thread::spawn(move || {
        let mut sig = 0;
        // SAFETY: the sigset and `sig` live on this stack for the calls; sigwait
        // only reads the set and writes `sig`.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::sigaddset(&mut set, libc::SIGINT);
            libc::sigwait(&set, &mut sig);
        }
        eprintln!("spore: signal {sig}: stopping idle agents; sandboxes keep running");
        f();
        std::process::exit(0);
    });
}

/// Binds the unix socket with mode 0600, replacing a stale socket file but never
/// a live daemon's.
fn bind_unix(path: &Path) -> Result<UnixListener, ServerError> {
    let shown = path.display().to_string();
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| ServerError::Bind(shown.clone(), e))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ServerError::InUse(shown));
        }
        let _ = std::fs::remove_file(path);
    }
    let listener = UnixListener::bind(path).map_err(|e| ServerError::Bind(shown.clone(), e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| ServerError::Bind(shown, e))?;
    Ok(listener)
}

/// A connection we can clone into a reader and a writer.
trait Conn: Read + Write + Send + Sized + 'static {
    fn split(&self) -> std::io::Result<Self>;
    fn shutdown_both(&self);
    fn shutdown_write(&self);
    fn read_timeout(&self, t: Option<std::time::Duration>);
}

impl Conn for std::os::unix::net::UnixStream {
    fn split(&self) -> std::io::Result<Self> {
        self.try_clone()
    }

    fn shutdown_write(&self) {
        let _ = self.shutdown(std::net::Shutdown::Write);
    }

    fn read_timeout(&self, t: Option<std::time::Duration>) {
        let _ = self.set_read_timeout(t);
    }

    fn shutdown_both(&self) {
        let _ = self.shutdown(std::net::Shutdown::Both);
    }
}

impl Conn for std::net::TcpStream {
    fn split(&self) -> std::io::Result<Self> {
        self.try_clone()
    }

    fn shutdown_write(&self) {
        let _ = self.shutdown(std::net::Shutdown::Write);
    }

    fn read_timeout(&self, t: Option<std::time::Duration>) {
        let _ = self.set_read_timeout(t);
    }

    fn shutdown_both(&self) {
        let _ = self.shutdown(std::net::Shutdown::Both);
    }
}

/// Serves requests on one connection until it closes or a request is malformed.
fn serve_conn<C: Conn>(sup: &Arc<Supervisor>, conn: C, token: Option<&str>) {
    let Ok(mut writer) = conn.split() else {
        return;
    };
    // The timeout is on the socket: it bounds reading requests; an attached
    // client's stdin (after an upgrade) may be idle as long as it likes.
    conn.read_timeout(Some(IDLE_TIMEOUT));
    let mut reader = BufReader::new(conn);
    loop {
        let req = match http::read_request(&mut reader) {
            Ok(req) => req,
            Err(HttpError::Closed) | Err(HttpError::Io(_)) => return,
            Err(e) => {
                // The stream is out of sync: answer, then close.
                let err = ApiError::from(e);
                let _ = http::write_json(&mut writer, err.status().0, &err.body(), true);
                linger_close(&writer, reader);
                return;
            }
        };
        let close = req.wants_close();
        let result = authorize(&req, token).and_then(|()| routes::handle(sup, &req));
        let written = match result {
            Ok(routes::Reply::Upgrade(f)) => {
                // The connection now carries frames both ways until the end.
                let head = "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\
                            Upgrade: spore-stream\r\n\r\n";
                writer.read_timeout(None);
                let closer = writer.split();
                if writer.write_all(head.as_bytes()).is_ok() {
                    f(Box::new(reader), Box::new(writer));
                }
                // Unblocks whatever still reads the client's side (its stdin copier).
                if let Ok(c) = closer {
                    c.shutdown_both();
                }
                return;
            }
            Ok(reply) => reply.write(&mut writer, close),
            Err(err) => http::write_json(&mut writer, err.status().0, &err.body(), close),
        };
        if written.is_err() || close {
            return;
        }
    }
}

/// How much of an unread request (e.g. a body over the limit) is read and
/// discarded after the error reply, and for how long.
const LINGER_BYTES: u64 = 16 << 20;
const LINGER_TIME: std::time::Duration = std::time::Duration::from_secs(2);

/// Closes a connection whose request was refused before it was read whole.
/// Closing with unread bytes in the socket would make the kernel reset the
/// connection, and the client could lose the error reply it has not read yet;
/// so: end our side, then read and drop what the client still sends (bounded).
fn linger_close<C: Conn>(writer: &C, reader: BufReader<C>) {
    writer.shutdown_write();
    writer.read_timeout(Some(LINGER_TIME));
    let _ = std::io::copy(&mut reader.take(LINGER_BYTES), &mut std::io::sink());
}

/// TCP connections carry a bearer token; unix ones are guarded by the socket's mode.
fn authorize(req: &Request, token: Option<&str>) -> Result<(), ApiError> {
    let Some(token) = token else {
        return Ok(());
    };
    let given = req
        .header("authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // Compare in time independent of where the first difference is.
    let same = given.len() == token.len()
        && given
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if same {
        Ok(())
    } else {
        Err(ApiError::Unauthorized)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens() {
        let req = |auth: Option<&str>| Request {
            headers: auth
                .map(|a| vec![("Authorization".to_owned(), a.to_owned())])
                .unwrap_or_default(),
            ..Request::default()
        };
        assert!(authorize(&req(None), None).is_ok());
        assert!(authorize(&req(Some("Bearer s3cret")), Some("s3cret")).is_ok());
        assert!(authorize(&req(Some("Bearer s3creT")), Some("s3cret")).is_err());
        assert!(authorize(&req(Some("s3cret")), Some("s3cret")).is_err());
        assert!(authorize(&req(None), Some("s3cret")).is_err());
    }

    #[test]
    fn stale_sockets_are_replaced_live_ones_are_not() {
        let dir = std::env::temp_dir().join(format!("spore-bind-{}", std::process::id()));
        let path = dir.join("s.sock");
        let first = bind_unix(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(bind_unix(&path), Err(ServerError::InUse(_))));
        drop(first);
        assert!(bind_unix(&path).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
