//! `spore logs`: a sandbox's output so far, or with `-f` until its process ends.

use clap::Args;

use super::run::{report_error_frame, DaemonArgs};
use crate::client::print_output;
use crate::server::http::FrameKind;

#[derive(Args)]
pub struct LogsArgs {
    /// Keep streaming until the sandbox's process ends.
    #[arg(short, long)]
    pub follow: bool,
    #[command(flatten)]
    pub daemon: DaemonArgs,
    /// Sandbox id (or a unique prefix).
    pub sandbox: String,
}

pub fn run(args: LogsArgs) -> anyhow::Result<i32> {
    let client = args.daemon.client()?;
    let follow = if args.follow { "?follow=1" } else { "" };
    let path = format!("/v1/sandboxes/{}/logs{follow}", args.sandbox);
    let mut code = 0;
    client.stream("GET", &path, None, &mut |kind, data| {
        if kind == FrameKind::Error {
            code = report_error_frame(data);
            return Ok(());
        }
        print_output(kind, data)
    })?;
    Ok(code)
}
