//! `spore run`: run a command in a new sandbox, docker style. Output streams as
//! it comes, the exit code is the command's (125 when spore itself failed, as
//! docker does). With `--rm` it is the API's one-call `run`; without, the sandbox
//! stays for `spore ps -a` / `spore logs` until `spore rm`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use clap::Args;
use serde_json::{json, Value};

use crate::backend::Isolation;
use crate::client::tty::{window_size, RawMode};
use crate::client::{print_output, ClientError, DaemonClient};
use crate::server::http::{encode_frame, FrameKind};

/// Exit code when spore, not the command, failed (docker's convention).
pub const SPORE_FAILED: i32 = 125;

/// Flags shared by the commands that talk to the daemon.
#[derive(Args, Clone)]
pub struct DaemonArgs {
    /// The daemon's socket [default: $SPORE_SOCKET, else $SPORE_RUN_DIR/spore.sock,
    /// else /run/spore/spore.sock]. A daemon is started there if none answers.
    #[arg(long, global = true)]
    pub socket: Option<PathBuf>,
}

impl DaemonArgs {
    pub fn client(&self) -> Result<DaemonClient, ClientError> {
        let socket = self
            .socket
            .clone()
            .unwrap_or_else(crate::server::default_socket);
        DaemonClient::connect_or_start(&socket)
    }
}

#[derive(Args)]
pub struct RunArgs {
    /// Remove the sandbox when the command ends.
    #[arg(long)]
    pub rm: bool,
    /// Run in the background and print the sandbox id.
    #[arg(short, long)]
    pub detach: bool,
    /// Keep the command's standard input open and connected to ours.
    #[arg(short, long)]
    pub interactive: bool,
    /// Give the command a pseudo-terminal (one output stream).
    #[arg(short, long)]
    pub tty: bool,
    /// Environment variable KEY=VALUE (repeatable).
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Working directory inside the container.
    #[arg(short, long)]
    pub workdir: Option<String>,
    /// uid[:gid] or user[:group] inside the container.
    #[arg(short, long)]
    pub user: Option<String>,
    /// Replace the image's entrypoint (and drop its default command); "" for none.
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// Memory limit, e.g. 256m.
    #[arg(short, long)]
    pub memory: Option<String>,
    /// CPU limit in CPUs, e.g. 0.5.
    #[arg(long)]
    pub cpus: Option<f64>,
    /// Process-count limit.
    #[arg(long)]
    pub pids_limit: Option<i64>,
    /// Kill the command after this many seconds.
    #[arg(long)]
    pub timeout: Option<f64>,
    /// vm (the default: its own microVM) or process (the agent's namespaces on
    /// this host; trusted workloads only).
    #[arg(long)]
    pub isolation: Option<Isolation>,
    #[command(flatten)]
    pub daemon: DaemonArgs,
    /// An imported image (`spore image ls`) or the built-in `busybox`.
    pub image: String,
    /// Command and arguments (replace the image's default command).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

impl RunArgs {
    fn spec(&self) -> anyhow::Result<Value> {
        let mut limits = serde_json::Map::new();
        if let Some(m) = &self.memory {
            limits.insert("memory".into(), json!(m));
        }
        if let Some(c) = self.cpus {
            limits.insert("cpus".into(), json!(c));
        }
        if let Some(p) = self.pids_limit {
            limits.insert("pids".into(), json!(p));
        }
        let mut spec = json!({
            "image": self.image,
            "argv": self.command,
            "env": self.env,
            "limits": limits,
            "tty": self.tty,
        });
        let optional = [
            ("cwd", self.workdir.as_ref().map(|w| json!(w))),
            ("user", self.user.as_ref().map(|u| json!(u))),
            ("entrypoint", self.entrypoint.as_ref().map(|e| json!([e]))),
            ("timeout", self.timeout.map(|t| json!(t))),
            ("isolation", self.isolation.map(|i| json!(i))),
        ];
        for (key, value) in optional {
            if let Some(v) = value {
                spec[key] = v;
            }
        }
        if self.interactive {
            spec["interactive"] = json!(true);
        }
        Ok(spec)
    }
}

pub fn run(args: RunArgs) -> anyhow::Result<i32> {
    let spec = args.spec()?;
    let client = args.daemon.client()?;
    let result = if args.interactive && !args.detach {
        run_attached(&client, &spec, args.rm, args.tty)
    } else if args.rm && !args.detach {
        run_and_remove(&client, &spec)
    } else {
        run_and_keep(&client, &spec, args.detach)
    };
    match result {
        Ok(code) => Ok(code),
        Err(e) => {
            eprintln!("spore: {}", error_chain(&e));
            Ok(SPORE_FAILED)
        }
    }
}

/// `POST /v1/run?stream=1`: output as it comes, then the exit.
fn run_and_remove(client: &DaemonClient, spec: &Value) -> Result<i32, ClientError> {
    let mut code = None;
    client.stream("POST", "/v1/run?stream=1", Some(spec), &mut |kind, data| {
        match kind {
            FrameKind::Exit => code = Some(exit_code_of(data)),
            FrameKind::Error => code = Some(report_error_frame(data)),
            _ => print_output(kind, data)?,
        }
        Ok(())
    })?;
    Ok(code.unwrap_or_else(|| {
        eprintln!("spore: the daemon ended the stream without an exit code");
        SPORE_FAILED
    }))
}

/// `-i`: create it waiting, attach (our stdin → its stdin, raw terminal with
/// `-t`), read output until the exit frame.
fn run_attached(
    client: &DaemonClient,
    spec: &Value,
    rm: bool,
    tty: bool,
) -> Result<i32, ClientError> {
    let path = if rm {
        "/v1/sandboxes?rm=1"
    } else {
        "/v1/sandboxes"
    };
    let created = client.call("POST", path, Some(spec))?;
    let id = created["id"].as_str().unwrap_or_default().to_owned();
    let (mut from, to) = client.upgrade(&format!("/v1/sandboxes/{id}/attach"))?;
    // Frames from two threads (stdin, resizes): one writer at a time.
    let to = Arc::new(Mutex::new(to));
    let raw = if tty { RawMode::enable(0)? } else { None };
    if raw.is_some() {
        send_window_size(&to);
        follow_window_size(&to);
    }
    // Our stdin → its stdin, on a helper thread; the end of ours closes its.
    std::thread::spawn(move || {
        let send = |frame: Vec<u8>| {
            to.lock()
                .map_err(|_| std::io::ErrorKind::Other.into())
                .and_then(|mut w| w.write_all(&frame))
        };
        let mut buf = [0u8; 16 * 1024];
        let mut stdin = std::io::stdin().lock();
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = send(encode_frame(FrameKind::CloseStdin, &[]));
                    return;
                }
                Ok(n) => {
                    if send(encode_frame(FrameKind::Stdin, &buf[..n])).is_err() {
                        return;
                    }
                }
            }
        }
    });
    let mut code = None;
    let mut header = [0u8; 8];
    while code.is_none() && from.read_exact(&mut header).is_ok() {
        let len = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
        let mut payload = vec![0; len];
        from.read_exact(&mut payload)?;
        match FrameKind::from_u8(header[0]) {
            Some(FrameKind::Exit) => code = Some(exit_code_of(&payload)),
            Some(FrameKind::Error) => code = Some(report_error_frame(&payload)),
            Some(kind) => print_output(kind, &payload)?,
            None => {}
        }
    }
    drop(raw);
    Ok(code.unwrap_or_else(|| {
        eprintln!("spore: the attach stream ended without an exit code");
        SPORE_FAILED
    }))
}

/// Sends our terminal's size as a resize frame.
fn send_window_size(to: &Mutex<UnixStream>) {
    if let Some((rows, cols)) = window_size(0) {
        let mut size = rows.to_be_bytes().to_vec();
        size.extend_from_slice(&cols.to_be_bytes());
        if let Ok(mut w) = to.lock() {
            let _ = w.write_all(&encode_frame(FrameKind::Resize, &size));
        }
    }
}

/// Forwards every later change of our terminal's size (SIGWINCH).
fn follow_window_size(to: &Arc<Mutex<UnixStream>>) {
    // SAFETY: the sigset lives on this stack; the calls only edit it and this
    // thread's signal mask. Blocking SIGWINCH (ignored by default anyway) lets
    // the helper thread take it with sigwait.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGWINCH);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    let to = to.clone();
    std::thread::spawn(move || loop {
        let mut sig = 0;
        // SAFETY: `set` and `sig` are valid for the call, which only reads the
        // set and writes `sig`.
        if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
            return;
        }
        send_window_size(&to);
    });
}

/// Create, follow its logs, then its exit code; the sandbox stays.
fn run_and_keep(client: &DaemonClient, spec: &Value, detach: bool) -> Result<i32, ClientError> {
    let created = client.call("POST", "/v1/sandboxes", Some(spec))?;
    let id = created["id"].as_str().unwrap_or_default().to_owned();
    if detach {
        println!("{id}");
        return Ok(0);
    }
    client.stream(
        "GET",
        &format!("/v1/sandboxes/{id}/logs?follow=1"),
        None,
        &mut |kind, data| print_output(kind, data),
    )?;
    let rec = client.call("POST", &format!("/v1/sandboxes/{id}/wait"), None)?;
    Ok(record_exit_code(&rec))
}

/// The exit code a finished sandbox record stands for.
pub fn record_exit_code(rec: &Value) -> i32 {
    if let Some(code) = rec["exit_code"].as_i64() {
        return code as i32;
    }
    if let Some(err) = rec["error"].as_str() {
        eprintln!("spore: sandbox failed: {err}");
    }
    SPORE_FAILED
}

fn exit_code_of(data: &[u8]) -> i32 {
    let v: Value = serde_json::from_slice(data).unwrap_or(Value::Null);
    record_exit_code(&v)
}

/// Prints an error frame's message; returns the exit code for it.
pub fn report_error_frame(data: &[u8]) -> i32 {
    let v: Value = serde_json::from_slice(data).unwrap_or(Value::Null);
    eprintln!(
        "spore: {}",
        v["message"]
            .as_str()
            .unwrap_or("the daemon reported an error")
    );
    SPORE_FAILED
}

/// The error and its causes on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    #[test]
    fn flags_become_a_spec() {
        let cli = Cli::parse_from([
            "run",
            "--rm",
            "-e",
            "A=1",
            "--memory",
            "256m",
            "--cpus",
            "1",
            "--isolation",
            "process",
            "busybox",
            "sh",
            "-c",
            "echo hi",
        ]);
        let spec = cli.run.spec().unwrap();
        assert_eq!(spec["image"], "busybox");
        assert_eq!(spec["argv"], json!(["sh", "-c", "echo hi"]));
        assert_eq!(spec["env"], json!(["A=1"]));
        assert_eq!(spec["limits"]["memory"], "256m");
        assert_eq!(spec["limits"]["cpus"], 1.0);
        assert_eq!(spec["isolation"], "process");
        assert!(spec.get("cwd").is_none());
        assert!(cli.run.rm);
    }

    #[test]
    fn exit_codes() {
        assert_eq!(record_exit_code(&json!({"exit_code": 3})), 3);
        assert_eq!(
            record_exit_code(&json!({"error": "agent died"})),
            SPORE_FAILED
        );
        assert_eq!(exit_code_of(br#"{"exit_code":0}"#), 0);
    }
}
