//! The `spore-agent` binary: the guest's `/init`, or a host-mode agent.
//!
//! ```text
//! spore-agent [--listen unix:PATH|vsock:PORT] [--run-dir D] [--cgroup-root C] [--runtime engine|plain]
//! ```
//!
//! Steps: engine stage-2 dispatch (the container's re-exec'd helper) → PID 1 or
//! host setup → runtime → bind → "ready" line → serve. As PID 1 the agent never
//! exits: on a fatal error it powers the machine off.

use std::path::PathBuf;
use std::process::ExitCode;

use spore_agent::init;
use spore_agent::server::listen::{ListenAddr, ListenError};
use spore_agent::server::os;
use spore_agent::server::plain::PlainRuntime;
use spore_agent::server::{Runtime, Server, ServerError};

const USAGE: &str = "usage: spore-agent [--listen unix:PATH|vsock:PORT] [--run-dir DIR] \
                     [--cgroup-root DIR] [--runtime engine|plain]";

/// Errors of the binary's own steps.
#[derive(Debug, thiserror::Error)]
enum MainError {
    #[error("{0}\n{USAGE}")]
    Usage(String),
    #[error("bad --listen")]
    Listen(#[from] ListenError),
    #[error("PID 1 setup failed")]
    Init(#[from] init::InitError),
    #[error("server")]
    Server(#[from] ServerError),
    #[error("{0}")]
    Runtime(String),
}

/// Which runtime runs containers.
#[derive(Debug, PartialEq, Eq)]
enum RuntimeKind {
    Engine,
    /// Plain host processes, no isolation: for protocol tests only.
    Plain,
}

#[derive(Debug)]
struct Args {
    listen: Option<ListenAddr>,
    run_dir: PathBuf,
    cgroup_root: PathBuf,
    runtime: RuntimeKind,
}

fn parse_args(args: &[String]) -> Result<Args, MainError> {
    let mut a = Args {
        listen: None,
        run_dir: PathBuf::from("/run/spore"),
        cgroup_root: PathBuf::from(init::GUEST_CGROUP_ROOT),
        runtime: RuntimeKind::Engine,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| MainError::Usage(format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "--listen" => a.listen = Some(ListenAddr::parse(&value()?)?),
            "--run-dir" => a.run_dir = value()?.into(),
            "--cgroup-root" => a.cgroup_root = value()?.into(),
            "--runtime" => {
                a.runtime = match value()?.as_str() {
                    "engine" => RuntimeKind::Engine,
                    "plain" => RuntimeKind::Plain,
                    other => return Err(MainError::Usage(format!("unknown runtime {other:?}"))),
                }
            }
            "-h" | "--help" => return Err(MainError::Usage(String::new())),
            other => return Err(MainError::Usage(format!("unknown argument {other:?}"))),
        }
    }
    Ok(a)
}

fn make_runtime(a: &Args) -> Result<Box<dyn Runtime>, MainError> {
    match a.runtime {
        RuntimeKind::Plain => {
            eprintln!("spore-agent: runtime plain: containers are plain host processes (no isolation; tests only)");
            Ok(Box::new(PlainRuntime::default()))
        }
        RuntimeKind::Engine => {
            let _ = (&a.run_dir, &a.cgroup_root);
            Err(MainError::Runtime(
                "the container engine is not built into this agent yet; use --runtime plain for protocol tests".into(),
            ))
        }
    }
}

fn run(pid1: bool) -> Result<(), MainError> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = parse_args(&argv)?;
    if pid1 {
        init::setup_pid1()?;
    } else {
        init::setup_host()?;
    }
    let runtime = make_runtime(&args)?;
    let addr = match (&args.listen, pid1) {
        (Some(a), _) => a.clone(),
        (None, true) => ListenAddr::default(),
        (None, false) => {
            return Err(MainError::Usage(
                "--listen is required outside a guest".into(),
            ))
        }
    };
    let server = Server::bind(&addr, runtime, pid1)?;
    eprintln!("spore-agent: ready on {addr}");
    server.serve()?;
    Ok(())
}

fn main() -> ExitCode {
    let pid1 = std::process::id() == 1;
    let Err(e) = run(pid1) else {
        return ExitCode::SUCCESS;
    };
    eprintln!("spore-agent: {}", spore_agent::error_chain(&e));
    if pid1 {
        let e = os::power_off();
        eprintln!("spore-agent: {}", spore_agent::error_chain(&e));
        loop {
            std::thread::park();
        }
    }
    ExitCode::FAILURE
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_flags() {
        let a = parse_args(&strings(&[
            "--listen",
            "unix:/tmp/s",
            "--run-dir",
            "/r",
            "--runtime",
            "plain",
        ]))
        .unwrap();
        assert_eq!(a.listen, Some(ListenAddr::Unix("/tmp/s".into())));
        assert_eq!(a.run_dir, PathBuf::from("/r"));
        assert_eq!(a.runtime, RuntimeKind::Plain);
        assert_eq!(a.cgroup_root, PathBuf::from(init::GUEST_CGROUP_ROOT));
        assert!(matches!(
            parse_args(&strings(&["--listen"])),
            Err(MainError::Usage(_))
        ));
        assert!(matches!(
            parse_args(&strings(&["--bogus"])),
            Err(MainError::Usage(_))
        ));
        assert!(matches!(
            parse_args(&strings(&["--listen", "tcp:1"])),
            Err(MainError::Listen(_))
        ));
    }
}
