//! `spore vm run`: boot the guest, wait for the agent's hello, print it, shut down.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use spore_vmm::host::HostKvm;

use crate::boot::{self, BootOptions, Guest};
use crate::guest_image;

#[derive(Subcommand)]
pub enum VmCommand {
    /// Boot the guest, print the agent's hello as one JSON line, shut it down.
    Run(VmRunArgs),
}

/// Flags shared by every command that boots the guest image.
#[derive(Args, Clone, Debug)]
pub struct GuestArgs {
    /// Guest kernel (vmlinux or bzImage). Default: the built one.
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Guest initramfs (uncompressed newc cpio). Default: the built one.
    #[arg(long)]
    pub initrd: Option<PathBuf>,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 256)]
    pub mem_mib: u32,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=8))]
    pub vcpus: u8,
    /// Copy the guest console to stderr.
    #[arg(long)]
    pub console: bool,
}

impl GuestArgs {
    pub fn boot_options(&self) -> BootOptions {
        BootOptions {
            kernel: self
                .kernel
                .clone()
                .unwrap_or_else(guest_image::default_kernel),
            initrd: self
                .initrd
                .clone()
                .unwrap_or_else(guest_image::default_initrd),
            mem_mib: self.mem_mib,
            vcpus: self.vcpus,
            echo_console: self.console,
        }
    }
}

#[derive(Args)]
pub struct VmRunArgs {
    #[command(flatten)]
    pub guest: GuestArgs,
    /// Boot even on a host that cannot run a guest's user space (diagnostics).
    #[arg(long)]
    pub force: bool,
    /// Seconds to wait for the agent's hello.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
}

pub fn run(command: VmCommand) -> anyhow::Result<i32> {
    match command {
        VmCommand::Run(args) => vm_run(args),
    }
}

/// Explains why microVMs cannot run here, or returns None when they can.
pub fn microvm_refusal(host: &HostKvm) -> Option<String> {
    if !host.usable {
        return Some(format!(
            "KVM is not usable on this host ({}). spore runs each container in a KVM microVM; \
             use a host with KVM, or `--isolation process` for trusted workloads.",
            host.problem.as_deref().unwrap_or("unknown reason")
        ));
    }
    (!host.can_run_guest_user_space()).then(|| {
        "this host's /dev/kvm is kvm_pvm: a standard Linux guest's kernel runs in KVM's \
         instruction emulator (~1000x slower) and its user space cannot run at all (a guest \
         `syscall` arrives at the kernel still in user mode), so spore's microVMs cannot run \
         here. Use a host with hardware virtualization (VT-x/AMD-V, bare metal or nested), \
         or `--isolation process` for trusted workloads. `spore doctor --boot` shows how far \
         a guest gets here; `--force` boots anyway."
            .to_string()
    })
}

fn vm_run(args: VmRunArgs) -> anyhow::Result<i32> {
    let host = HostKvm::detect();
    if let Some(why) = microvm_refusal(&host) {
        if !args.force || !host.usable {
            bail!("{why}");
        }
        eprintln!("spore: --force: booting anyway; expect no agent hello on this host");
    }
    let opts = args.guest.boot_options();
    let guest = Guest::boot(&opts).context("booting the guest")?;
    let mut agent = guest.wait_for_agent(Duration::from_secs(args.timeout))?;
    let hello = agent.hello().context("agent hello")?;
    println!("{}", serde_json::to_string(&hello)?);
    let exit = boot::shutdown(guest, agent);
    eprintln!("spore: VM ended: {exit}");
    Ok(0)
}
