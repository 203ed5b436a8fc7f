//! `spore`: run containers in their own microVMs.

mod backend;
mod boot;
mod client;
mod cmd;
mod console;
mod guest_image;
mod host_report;
mod image;
mod server;
mod supervisor;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "spore",
    version,
    about = "Run every container in its own microVM"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot and drive single microVMs directly (no daemon).
    Vm {
        #[command(subcommand)]
        command: cmd::vm::VmCommand,
    },
    /// Report what this host can do; with --boot, boot the guest and time it.
    Doctor(cmd::doctor::DoctorArgs),
    /// Benchmarks that print figures.
    Bench {
        #[command(subcommand)]
        command: cmd::bench::BenchCommand,
    },
    /// Run a command in a new sandbox.
    Run(cmd::run::RunArgs),
    /// List sandboxes.
    Ps(cmd::ps::PsArgs),
    /// Run a further command in a running sandbox.
    Exec(cmd::exec::ExecArgs),
    /// Show a sandbox's output.
    Logs(cmd::logs::LogsArgs),
    /// Delete sandboxes.
    Rm(cmd::rm::RmArgs),
    /// Import, list, inspect and remove OCI images.
    Image {
        #[command(subcommand)]
        command: cmd::image::ImageCommand,
    },
    /// Manage the microVM templates sandboxes are cloned from.
    Template {
        #[command(subcommand)]
        command: cmd::template::TemplateCommand,
    },
    /// Run the daemon: the REST API on a unix socket (and optionally TCP).
    Serve(cmd::serve::ServeArgs),
    /// The process holding one template and forking its clones (started by the
    /// daemon).
    #[command(hide = true)]
    TemplateHost(backend::vm::HostArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Vm { command } => cmd::vm::run(command),
        Command::Doctor(args) => cmd::doctor::run(args),
        Command::Bench { command } => cmd::bench::run(command),
        Command::Run(args) => cmd::run::run(args),
        Command::Ps(args) => cmd::ps::run(args),
        Command::Exec(args) => cmd::exec::run(args),
        Command::Logs(args) => cmd::logs::run(args),
        Command::Rm(args) => cmd::rm::run(args),
        Command::Image { command } => cmd::image::run(command),
        Command::Template { command } => cmd::template::run(command),
        Command::Serve(args) => cmd::serve::run(args),
        Command::TemplateHost(args) => Ok(backend::vm::host::serve(args)),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(err) => {
            // The whole cause chain, once, at the top.
            eprintln!("spore: {err:#}");
            std::process::exit(1);
        }
    }
}
