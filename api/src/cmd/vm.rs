//! `spore vm run`: boot the guest, wait for the agent's hello, print it, shut down.

use std::path::PathBuf;
use std::time::Duration;

use std::io::Write;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use spore_agent::protocol::client::Client;
use spore_agent::protocol::messages::{AttachFrame, Stream};
use spore_agent::protocol::spec::{ContainerSpec, RootfsSpec};
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
            disk: None,
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
    /// Container root filesystem image (erofs or ext4) for CMD. Default: the
    /// built busybox image.
    #[arg(long)]
    pub rootfs: Option<PathBuf>,
    /// Run CMD in a container in the guest, stream its output, exit with its code.
    #[arg(last = true)]
    pub command: Vec<String>,
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
    let mut opts = args.guest.boot_options();
    if !args.command.is_empty() {
        let rootfs = args
            .rootfs
            .clone()
            .unwrap_or_else(guest_image::default_rootfs);
        guest_image::check_rootfs(&rootfs)?;
        opts.disk = Some(rootfs);
    }
    let host = HostKvm::detect();
    if let Some(why) = microvm_refusal(&host) {
        if !args.force || !host.usable {
            bail!("{why}");
        }
        eprintln!("spore: --force: booting anyway; expect no agent hello on this host");
    }
    let guest = Guest::boot(&opts).context("booting the guest")?;
    let mut agent = guest.wait_for_agent(Duration::from_secs(args.timeout))?;
    let hello = agent.hello().context("agent hello")?;
    let code = if args.command.is_empty() {
        println!("{}", serde_json::to_string(&hello)?);
        0
    } else {
        run_in_guest(&mut agent, &args.command).context("running the command in the guest")?
    };
    let exit = boot::shutdown(guest, agent);
    eprintln!("spore: VM ended: {exit}");
    Ok(code)
}

/// Runs `command` in a busybox container whose rootfs is the guest's `/dev/vda`,
/// streaming its output; returns its docker-style exit code.
fn run_in_guest(agent: &mut Client, command: &[String]) -> anyhow::Result<i32> {
    const ID: &str = "main";
    let spec = ContainerSpec {
        argv: command.to_vec(),
        rootfs: RootfsSpec {
            lower: PathBuf::from("/dev/vda"),
        },
        ..ContainerSpec::default()
    };
    agent.create(ID, &spec)?;
    let mut attach = agent.attach(ID, None)?;
    agent.start(ID)?;
    let (mut stdout, mut stderr) = (std::io::stdout(), std::io::stderr());
    let mut open = if attach.tty() { 1 } else { 2 };
    while open > 0 {
        match attach.next_frame()? {
            Some(AttachFrame::Output(Stream::Stdout, data)) => stdout.write_all(&data)?,
            Some(AttachFrame::Output(Stream::Stderr, data)) => stderr.write_all(&data)?,
            Some(AttachFrame::Eof(_)) => open -= 1,
            Some(_) => {}
            None => break,
        }
    }
    stdout.flush()?;
    let exit = agent.wait(ID, None)?;
    agent.delete(ID)?;
    Ok(exit.code)
}
