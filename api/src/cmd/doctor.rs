//! `spore doctor [--boot] [--json]`: what this host can do, and how far a guest gets.

use std::time::Duration;

use clap::Args;
use serde::Serialize;

use crate::boot::{self, BootProgress};
use crate::cmd::vm::{microvm_refusal, GuestArgs};
use crate::guest_image;
use crate::host_report::HostReport;

#[derive(Args)]
pub struct DoctorArgs {
    /// Boot the guest with every device attached and report the milestones.
    #[arg(long)]
    pub boot: bool,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Seconds to let the boot run.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
    #[command(flatten)]
    pub guest: GuestArgs,
}

#[derive(Serialize)]
struct FileReport {
    path: String,
    built: bool,
}

#[derive(Serialize)]
struct Report {
    kvm: String,
    kvm_usable: bool,
    guest_user_space: bool,
    microvms: String,
    host: HostReport,
    kernel: FileReport,
    initramfs: FileReport,
    #[serde(flatten)]
    boot: Option<BootProgress>,
}

pub fn run(args: DoctorArgs) -> anyhow::Result<i32> {
    let host = HostReport::collect();
    let opts = args.guest.boot_options();
    let refusal = microvm_refusal(&host.kvm);
    let boot = if args.boot {
        Some(boot::boot_and_watch(
            &opts,
            Duration::from_secs(args.timeout),
            host.guest_user_space,
        )?)
    } else {
        None
    };
    let report = Report {
        kvm: serde_json::to_value(host.kvm.kind)?
            .as_str()
            .unwrap_or("unknown")
            .to_owned(),
        kvm_usable: host.kvm.usable,
        guest_user_space: host.guest_user_space,
        microvms: refusal.unwrap_or_else(|| "supported".into()),
        kernel: FileReport {
            built: guest_image::check_kernel(&opts.kernel).is_ok(),
            path: opts.kernel.display().to_string(),
        },
        initramfs: FileReport {
            built: guest_image::check_initrd(&opts.initrd).is_ok(),
            path: opts.initrd.display().to_string(),
        },
        host,
        boot,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_human(&report);
    }
    Ok(0)
}

fn print_human(r: &Report) {
    println!(
        "KVM:              {} ({})",
        r.kvm,
        if r.kvm_usable { "usable" } else { "not usable" }
    );
    println!(
        "guest user space: {}",
        if r.guest_user_space { "yes" } else { "no" }
    );
    println!("microVMs:         {}", r.microvms);
    let cg = &r.host.cgroups;
    println!(
        "cgroups:          {} (v2 at {}: [{}]; v1: [{}])",
        cg.mode,
        cg.v2_mount.as_deref().unwrap_or("-"),
        cg.v2_controllers.join(" "),
        cg.v1_controllers.join(" ")
    );
    for (what, f) in [("kernel", &r.kernel), ("initramfs", &r.initramfs)] {
        let state = if f.built {
            "ok"
        } else {
            "missing or invalid — run `make guest`"
        };
        println!("{:<17} {} ({state})", format!("{what}:"), f.path);
    }
    if let Some(b) = &r.boot {
        let ms = |v: Option<u64>| v.map_or("-".into(), |v| format!("{v} ms"));
        println!("boot:");
        println!("  kernel running: {}", ms(b.ms_to_console));
        for (name, at) in &b.ms_to_devices {
            println!("  {name} probed: {at} ms");
        }
        println!("  init started:   {}", ms(b.ms_to_init));
        println!("  agent hello:    {}", ms(b.ms_to_hello));
        println!("  outcome:        {}", b.outcome);
    }
}
