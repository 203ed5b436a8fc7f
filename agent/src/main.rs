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

use spore_agent::engine::{self, Engine, EngineConfig, EngineError};
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
    #[error("cannot start the container engine")]
    Engine(#[from] EngineError),
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
    /// `None`: the guest's, or the host's default in host mode.
    cgroup_root: Option<PathBuf>,
    runtime: RuntimeKind,
}

/// Parses the flags. As PID 1 (`lenient`), words the kernel passed on from its
/// command line are not ours: they are reported and skipped, never fatal.
fn parse_args(args: &[String], lenient: bool) -> Result<Args, MainError> {
    let mut a = Args {
        listen: None,
        run_dir: PathBuf::from("/run/spore"),
        cgroup_root: None,
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
            "--cgroup-root" => a.cgroup_root = Some(value()?.into()),
            "--runtime" => {
                a.runtime = match value()?.as_str() {
                    "engine" => RuntimeKind::Engine,
                    "plain" => RuntimeKind::Plain,
                    other => return Err(MainError::Usage(format!("unknown runtime {other:?}"))),
                }
            }
            "-h" | "--help" => return Err(MainError::Usage(String::new())),
            other if lenient => eprintln!("spore-agent: ignoring argument {other:?}"),
            other => return Err(MainError::Usage(format!("unknown argument {other:?}"))),
        }
    }
    Ok(a)
}

fn make_runtime(a: &Args, pid1: bool) -> Result<Box<dyn Runtime>, MainError> {
    if a.runtime == RuntimeKind::Plain {
        eprintln!(
            "spore-agent: runtime plain: containers are plain host processes (no isolation; tests only)"
        );
        return Ok(Box::new(PlainRuntime::default()));
    }
    let cgroup_root = match (&a.cgroup_root, pid1) {
        (Some(c), _) => c.clone(),
        (None, true) => PathBuf::from(init::GUEST_CGROUP_ROOT),
        (None, false) => init::default_host_cgroup_root(),
    };
    // The guest's tree was prepared by PID 1 setup. On a host, do what the host
    // allows; the engine refuses limits it cannot enforce.
    if !pid1 {
        match init::prepare_host_cgroup(&cgroup_root) {
            Ok(c) if c.is_empty() => eprintln!(
                "spore-agent: no cgroup v2 controllers at {}: containers cannot have limits",
                cgroup_root.display()
            ),
            Ok(_) => {}
            Err(e) => eprintln!("spore-agent: warning: {}", spore_agent::error_chain(&e)),
        }
    }
    let cfg = EngineConfig {
        run_dir: a.run_dir.clone(),
        cgroup_root,
    };
    Ok(Box::new(Engine::new(cfg)?))
}

fn run(pid1: bool) -> Result<(), MainError> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = parse_args(&argv, pid1)?;
    if pid1 {
        init::setup_pid1()?;
    } else {
        init::setup_host()?;
    }
    let runtime = make_runtime(&args, pid1)?;
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
    // The engine re-executes this binary to set a container up; that helper
    // must not run any of the agent's own setup.
    if std::env::args().nth(1).as_deref() == Some(engine::STAGE2_ARG) {
        engine::stage2_main();
    }
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
        let a = parse_args(
            &strings(&[
                "--listen",
                "unix:/tmp/s",
                "--run-dir",
                "/r",
                "--runtime",
                "plain",
            ]),
            false,
        )
        .unwrap();
        assert_eq!(a.listen, Some(ListenAddr::Unix("/tmp/s".into())));
        assert_eq!(a.run_dir, PathBuf::from("/r"));
        assert_eq!(a.runtime, RuntimeKind::Plain);
        assert_eq!(a.cgroup_root, None);
        assert!(matches!(
            parse_args(&strings(&["--listen"]), false),
            Err(MainError::Usage(_))
        ));
        assert!(matches!(
            parse_args(&strings(&["--bogus"]), false),
            Err(MainError::Usage(_))
        ));
        assert!(matches!(
            parse_args(&strings(&["--listen", "tcp:1"]), false),
            Err(MainError::Listen(_))
        ));
        // As PID 1, stray kernel command-line words are skipped.
        let a = parse_args(&strings(&["nokaslr", "--runtime", "plain"]), true).unwrap();
        assert_eq!(a.runtime, RuntimeKind::Plain);
    }
}
