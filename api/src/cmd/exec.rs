//! `spore exec`: run a further command in a running sandbox; its output streams
//! and its exit code becomes ours.

use clap::Args;
use serde_json::json;

use super::run::{error_chain, record_exit_code, report_error_frame, DaemonArgs, SPORE_FAILED};
use crate::client::print_output;
use crate::server::http::FrameKind;

#[derive(Args)]
pub struct ExecArgs {
    /// Environment variable KEY=VALUE (repeatable).
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Working directory inside the container.
    #[arg(short, long)]
    pub workdir: Option<String>,
    /// uid[:gid] or user[:group].
    #[arg(short, long)]
    pub user: Option<String>,
    /// Give the command a pseudo-terminal.
    #[arg(short, long)]
    pub tty: bool,
    #[command(flatten)]
    pub daemon: DaemonArgs,
    /// Sandbox id (or a unique prefix).
    pub sandbox: String,
    /// Command and arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    pub command: Vec<String>,
}

pub fn run(args: ExecArgs) -> anyhow::Result<i32> {
    let client = args.daemon.client()?;
    let body = json!({
        "argv": args.command,
        "env": args.env,
        "cwd": args.workdir,
        "user": args.user,
        "tty": args.tty,
    });
    let path = format!("/v1/sandboxes/{}/exec?stream=1", args.sandbox);
    let mut code = None;
    let result = client.stream("POST", &path, Some(&body), &mut |kind, data| {
        match kind {
            FrameKind::Exit => {
                let v = serde_json::from_slice(data).unwrap_or_default();
                code = Some(record_exit_code(&v));
            }
            FrameKind::Error => code = Some(report_error_frame(data)),
            _ => print_output(kind, data)?,
        }
        Ok(())
    });
    if let Err(e) = result {
        eprintln!("spore: {}", error_chain(&e));
        return Ok(SPORE_FAILED);
    }
    Ok(code.unwrap_or(SPORE_FAILED))
}
