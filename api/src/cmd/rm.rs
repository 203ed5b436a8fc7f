//! `spore rm`: delete sandboxes; running ones only with `-f` (killed first).

use clap::Args;

use super::run::{error_chain, DaemonArgs};

#[derive(Args)]
pub struct RmArgs {
    /// Kill running sandboxes and delete them.
    #[arg(short, long)]
    pub force: bool,
    #[command(flatten)]
    pub daemon: DaemonArgs,
    /// Sandbox ids (or unique prefixes).
    #[arg(required = true)]
    pub sandboxes: Vec<String>,
}

pub fn run(args: RmArgs) -> anyhow::Result<i32> {
    let client = args.daemon.client()?;
    let force = if args.force { "?force=1" } else { "" };
    let mut code = 0;
    for id in &args.sandboxes {
        match client.call("DELETE", &format!("/v1/sandboxes/{id}{force}"), None) {
            Ok(_) => println!("{id}"),
            Err(e) => {
                eprintln!("spore: {id}: {}", error_chain(&e));
                code = 1;
            }
        }
    }
    Ok(code)
}
