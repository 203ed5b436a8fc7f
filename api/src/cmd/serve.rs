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
}

pub fn run(args: ServeArgs) -> anyhow::Result<i32> {
    let run_dir = server::run_dir();
    let sup = Supervisor::open(SupervisorConfig {
        run_dir: run_dir.clone(),
        default_isolation: args.isolation,
    })
    .with_context(|| format!("opening the state directory {}", run_dir.display()))?;
    let config = ServeConfig {
        socket: args.socket.unwrap_or_else(server::default_socket),
        tcp: args.tcp,
        token: args.token.or_else(|| std::env::var("SPORE_TOKEN").ok()),
    };
    eprintln!(
        "spore: state in {}, default isolation {}; {} sandbox(es) found",
        run_dir.display(),
        args.isolation,
        sup.list().len()
    );
    server::serve(sup, config)?;
    Ok(0)
}
