//! `spore template ls|create|rm`: the microVM templates vm sandboxes are cloned
//! from. Creating and removing them lands with issue 4; the daemon says so.

use clap::{Args, Subcommand};
use serde_json::json;

use super::run::DaemonArgs;

#[derive(Subcommand)]
pub enum TemplateCommand {
    /// List templates.
    Ls(TemplateLsArgs),
    /// Boot a template VM and capture it.
    Create(TemplateCreateArgs),
    /// Delete a template.
    Rm(TemplateRmArgs),
    /// Boot and capture a template here (no daemon) and save it to a directory.
    Save(super::template_persist::TemplateSaveArgs),
    /// Load a saved template, check it, and start clones of it.
    Load(super::template_persist::TemplateLoadArgs),
}

#[derive(Args)]
pub struct TemplateLsArgs {
    /// Print the API's JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub daemon: DaemonArgs,
}

#[derive(Args)]
pub struct TemplateCreateArgs {
    pub name: String,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 128)]
    pub memory_mib: u32,
    #[arg(long, default_value_t = 1)]
    pub vcpus: u8,
    #[command(flatten)]
    pub daemon: DaemonArgs,
}

#[derive(Args)]
pub struct TemplateRmArgs {
    pub name: String,
    #[command(flatten)]
    pub daemon: DaemonArgs,
}

pub fn run(command: TemplateCommand) -> anyhow::Result<i32> {
    match command {
        TemplateCommand::Save(args) => super::template_persist::save(args),
        TemplateCommand::Load(args) => super::template_persist::load(args),
        TemplateCommand::Ls(args) => {
            let list = args.daemon.client()?.call("GET", "/v1/templates", None)?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(0);
            }
            println!("NAME        STATE       MEMORY  VCPUS  VM ISOLATION");
            for t in list.as_array().into_iter().flatten() {
                println!(
                    "{:<12}{:<12}{:<8}{:<7}{}",
                    t["name"].as_str().unwrap_or(""),
                    t["state"].as_str().unwrap_or(""),
                    format!("{}M", t["memory_mib"]),
                    t["vcpus"],
                    t["vm_status"]
                        .as_str()
                        .unwrap_or("")
                        .lines()
                        .next()
                        .unwrap_or("")
                );
            }
            Ok(0)
        }
        TemplateCommand::Create(args) => {
            let body =
                json!({"name": args.name, "memory_mib": args.memory_mib, "vcpus": args.vcpus});
            let t = args
                .daemon
                .client()?
                .call("POST", "/v1/templates", Some(&body))?;
            println!("{}", t["name"].as_str().unwrap_or(""));
            Ok(0)
        }
        TemplateCommand::Rm(args) => {
            let path = format!("/v1/templates/{}", args.name);
            args.daemon.client()?.call("DELETE", &path, None)?;
            println!("{}", args.name);
            Ok(0)
        }
    }
}
