//! `spore bench …`: benchmarks that print figures (medians, p99, memory).

use std::time::Duration;

use clap::{Args, Subcommand};
use serde::Serialize;
use spore_vmm::host::HostKvm;

use crate::boot;
use crate::cmd::vm::GuestArgs;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Time from VMM start to the furthest boot milestone this host allows.
    Boot(BenchBootArgs),
    /// End-to-end `run` latency of `echo hello` through the daemon, next to crun.
    Run(crate::cmd::bench_run::BenchRunArgs),
    /// Clone latency, clones per second and memory per clone of a template.
    Clone(crate::cmd::clone_bench::BenchCloneArgs),
}

#[derive(Args)]
pub struct BenchBootArgs {
    /// Number of boots.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Seconds to let each boot run.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
    #[command(flatten)]
    pub guest: GuestArgs,
}

#[derive(Serialize)]
struct BootBench {
    milestone: &'static str,
    runs: usize,
    ms: Vec<u64>,
    p50_ms: u64,
    p99_ms: u64,
    ms_to_console_p50: u64,
    vmm_overhead_kib_p50: u64,
}

pub fn run(command: BenchCommand) -> anyhow::Result<i32> {
    match command {
        BenchCommand::Boot(args) => bench_boot(args),
        BenchCommand::Run(args) => crate::cmd::bench_run::run(args),
        BenchCommand::Clone(args) => crate::cmd::clone_bench::run(args),
    }
}

/// The value at percentile `p` (0–100) of `values`, nearest-rank.
pub fn percentile(values: &[u64], p: f64) -> u64 {
    if values.is_empty() {
        return 0;
    }
    let mut v = values.to_vec();
    v.sort_unstable();
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

fn bench_boot(args: BenchBootArgs) -> anyhow::Result<i32> {
    let user_space = HostKvm::detect().can_run_guest_user_space();
    let milestone = if user_space {
        "agent_hello"
    } else {
        "run_init"
    };
    let opts = args.guest.boot_options();
    let (mut ms, mut console, mut overhead) = (vec![], vec![], vec![]);
    for run in 1..=args.runs {
        let p = boot::boot_and_watch(&opts, Duration::from_secs(args.timeout), user_space)?;
        let reached = if user_space {
            p.ms_to_hello
        } else {
            p.ms_to_init
        };
        let Some(t) = reached else {
            anyhow::bail!("run {run}: {milestone} not reached ({})", p.outcome);
        };
        if !args.json {
            eprintln!(
                "run {run}: {milestone} at {t} ms, VMM overhead {} KiB",
                p.vmm_overhead_kib
            );
        }
        ms.push(t);
        console.push(p.ms_to_console.unwrap_or_default());
        overhead.push(p.vmm_overhead_kib);
    }
    let result = BootBench {
        milestone,
        runs: args.runs,
        p50_ms: percentile(&ms, 50.0),
        p99_ms: percentile(&ms, 99.0),
        ms_to_console_p50: percentile(&console, 50.0),
        vmm_overhead_kib_p50: percentile(&overhead, 50.0),
        ms,
    };
    if args.json {
        println!("{}", serde_json::to_string(&result)?);
    } else {
        println!(
            "boot to {}: p50 {} ms, p99 {} ms over {} runs; first console output p50 {} ms; \
             VMM memory overhead p50 {} KiB",
            result.milestone,
            result.p50_ms,
            result.p99_ms,
            result.runs,
            result.ms_to_console_p50,
            result.vmm_overhead_kib_p50
        );
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn nearest_rank_percentiles() {
        let v = [5, 1, 4, 2, 3];
        assert_eq!(percentile(&v, 50.0), 3);
        assert_eq!(percentile(&v, 99.0), 5);
        assert_eq!(percentile(&v, 0.0), 1);
        assert_eq!(percentile(&[], 50.0), 0);
    }
}
