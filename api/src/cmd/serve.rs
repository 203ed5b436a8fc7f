//! `spore serve`: the daemon. Opens the state directory (re-adopting what a
//! previous daemon left), then serves the REST API until killed.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::backend::Isolation;
use crate::server::{self, ServeConfig};
use crate::supervisor::{Supervisor, SupervisorConfig};

#[derive(Args)]
pub struct ServeArgs {
    /// Unix socket to listen on (mode 0600) [default: $SPORE_SOCKET, else
    /// $SPORE_RUN_DIR/spore.sock, else /run/spore/spore.sock].
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Also listen on this TCP address (needs --token).
    #[arg(long)]
    pub tcp: Option<SocketAddr>,
    /// Bearer token TCP clients must send [default: $SPORE_TOKEN].
    #[arg(long)]
    pub token: Option<String>,
    /// Isolation for sandboxes whose spec names none. `process` is for trusted
    /// workloads and hosts that cannot run microVMs.
    #[arg(long, default_value = "vm")]
    pub isolation: Isolation,
    /// Idle agents kept started for process sandboxes (0: start one per sandbox).
    #[arg(long, default_value_t = 4)]
    pub agent_pool: usize,
}

pub fn run(args: ServeArgs) -> anyhow::Result<i32> {
    // 1. Signals go to one thread, set up before any other thread exists.
    server::block_termination_signals();
    // 2. State: re-adopt or reap what a previous daemon left.
    let run_dir = server::run_dir();
    let sup = Supervisor::open(SupervisorConfig {
        run_dir: run_dir.clone(),
        default_isolation: args.isolation,
        agent_pool: args.agent_pool,
    })
    .with_context(|| format!("opening the state directory {}", run_dir.display()))?;
    let config = ServeConfig {
        socket: args.socket.unwrap_or_else(server::default_socket),
        tcp: args.tcp,
        token: args.token.or_else(|| std::env::var("SPORE_TOKEN").ok()),
    };
    // 3. On SIGTERM/SIGINT: stop idle agents, remove the socket, exit.
    server::on_termination({
        let (sup, socket) = (sup.clone(), config.socket.clone());
        move || {
            sup.shutdown();
            let _ = std::fs::remove_file(socket);
        }
    });
    // 4. Serve.
    eprintln!(
        "spore: state in {}, default isolation {}; {} sandbox(es) found",
        run_dir.display(),
        args.isolation,
        sup.list().len()
    );
    server::serve(sup, config)?;
    Ok(0)
}
