//! `spore bench run`: end-to-end run latency (request → output → exit code) of
//! `echo hello` in busybox through the daemon's `POST /v1/run`, side by side with
//! `crun run` of the same command on the same rootfs, in the same invocation.
//!
//! crun refuses this host's hybrid cgroups, so each crun run gets a private mount
//! namespace with a fresh cgroup2 mount on /sys/fs/cgroup and runs with
//! `--cgroup-manager=disabled`; the namespace is set up in the forked child
//! before exec, so its cost (well under a millisecond) is inside the timing.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use serde::Serialize;
use serde_json::{json, Value};

use super::bench::percentile;
use super::run::DaemonArgs;
use crate::backend::Isolation;
use crate::supervisor::images;

#[derive(Args)]
pub struct BenchRunArgs {
    /// Isolation of the measured sandboxes.
    #[arg(long, default_value = "vm")]
    pub isolation: Isolation,
    /// Runs per side.
    #[arg(long, default_value_t = 50)]
    pub count: usize,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Skip the crun side.
    #[arg(long)]
    pub no_crun: bool,
    #[command(flatten)]
    pub daemon: DaemonArgs,
}

#[derive(Serialize)]
struct RunBench {
    isolation: Isolation,
    count: usize,
    p50_ms: f64,
    p99_ms: f64,
    /// The daemon's part: request to running process.
    create_p50_ms: f64,
    /// Its steps (process isolation: agent_start, container_create, attach_start).
    create_phases_p50_ms: BTreeMap<String, f64>,
    crun_p50_ms: Option<f64>,
    crun_p99_ms: Option<f64>,
    /// p50 / crun_p50.
    ratio_p50: Option<f64>,
}

pub fn run(args: BenchRunArgs) -> anyhow::Result<i32> {
    anyhow::ensure!(args.count > 0, "--count must be at least 1");
    let client = args.daemon.client()?;
    let spec = json!({
        "image": "busybox",
        "argv": ["echo", "hello"],
        "isolation": args.isolation,
    });
    // One warm-up run each, so page cache and binaries are hot on both sides.
    let (mut total_us, mut create_us) = (vec![], vec![]);
    let mut phases_us: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for i in 0..=args.count {
        let t0 = Instant::now();
        let out = client.call("POST", "/v1/run", Some(&spec))?;
        let us = t0.elapsed().as_micros() as u64;
        check_output(&out).with_context(|| format!("spore run {i}"))?;
        if i > 0 {
            total_us.push(us);
            create_us.push((out["create_ms"].as_f64().unwrap_or(0.0) * 1000.0) as u64);
            for (name, ms) in out["create_phases_ms"].as_object().into_iter().flatten() {
                let us = (ms.as_f64().unwrap_or(0.0) * 1000.0) as u64;
                phases_us.entry(name.clone()).or_default().push(us);
            }
        }
    }
    let crun = if args.no_crun {
        None
    } else {
        Some(crun_latencies(args.count)?)
    };
    let ms = |v: &[u64], p| percentile(v, p) as f64 / 1000.0;
    let p50 = ms(&total_us, 50.0);
    let crun_p50 = crun.as_ref().map(|c| ms(c, 50.0));
    let result = RunBench {
        isolation: args.isolation,
        count: args.count,
        p50_ms: p50,
        p99_ms: ms(&total_us, 99.0),
        create_p50_ms: ms(&create_us, 50.0),
        create_phases_p50_ms: phases_us
            .iter()
            .map(|(k, v)| (k.clone(), ms(v, 50.0)))
            .collect(),
        crun_p50_ms: crun_p50,
        crun_p99_ms: crun.as_ref().map(|c| ms(c, 99.0)),
        ratio_p50: crun_p50.filter(|c| *c > 0.0).map(|c| p50 / c),
    };
    if args.json {
        println!("{}", serde_json::to_string(&result)?);
        return Ok(0);
    }
    println!(
        "spore run ({} isolation), echo hello in busybox, {} runs: p50 {:.2} ms, p99 {:.2} ms \
         (daemon to running process p50 {:.2} ms)",
        result.isolation, result.count, result.p50_ms, result.p99_ms, result.create_p50_ms
    );
    let phases: Vec<String> = result
        .create_phases_p50_ms
        .iter()
        .map(|(k, v)| format!("{k} {v:.2} ms"))
        .collect();
    if !phases.is_empty() {
        println!("  of which (p50): {}", phases.join(", "));
    }
    if let (Some(c50), Some(c99), Some(r)) =
        (result.crun_p50_ms, result.crun_p99_ms, result.ratio_p50)
    {
        println!("crun run, same command and rootfs:            p50 {c50:.2} ms, p99 {c99:.2} ms");
        println!("ratio p50 spore/crun: {r:.2}");
    }
    Ok(0)
}

fn check_output(out: &Value) -> anyhow::Result<()> {
    if out["exit_code"].as_i64() != Some(0) || out["stdout"].as_str() != Some("hello\n") {
        bail!("unexpected result: {out}");
    }
    Ok(())
}

/// Times `count` (+1 warm-up) `crun run`s of `echo hello` on the busybox rootfs.
fn crun_latencies(count: usize) -> anyhow::Result<Vec<u64>> {
    let rootfs = images::resolve("busybox")?;
    let bundle = std::env::temp_dir().join(format!("spore-bench-crun-{}", std::process::id()));
    write_bundle(&bundle, &rootfs)?;
    let result = (|| {
        let mut us = Vec::with_capacity(count);
        for i in 0..=count {
            let id = format!("spore-bench-{}-{i}", std::process::id());
            let t0 = Instant::now();
            let out = crun_command(&bundle, &id)?
                .output()
                .context("running crun (is Debian's crun installed?)")?;
            let elapsed = t0.elapsed().as_micros() as u64;
            if !out.status.success() || out.stdout != b"hello\n" {
                bail!(
                    "crun run {i} failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            if i > 0 {
                us.push(elapsed);
            }
        }
        Ok(us)
    })();
    let _ = std::fs::remove_dir_all(&bundle);
    result
}

/// An OCI bundle: `crun spec`'s defaults with our rootfs (read-only), command,
/// and no terminal.
fn write_bundle(bundle: &Path, rootfs: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(bundle)?;
    let status = Command::new("crun")
        .args(["spec", "--rootless"])
        .current_dir(bundle)
        .status()
        .context("running `crun spec` (is Debian's crun installed?)")?;
    anyhow::ensure!(status.success(), "`crun spec` failed: {status}");
    let path = bundle.join("config.json");
    let mut config: Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    config["root"] = json!({"path": rootfs, "readonly": true});
    config["process"]["args"] = json!(["echo", "hello"]);
    config["process"]["terminal"] = json!(false);
    // Run as root in the host's user namespace, like spore's process backend.
    if let Some(ns) = config["linux"]["namespaces"].as_array_mut() {
        ns.retain(|n| n["type"] != "user");
        ns.push(json!({"type": "pid"}));
        ns.push(json!({"type": "ipc"}));
        ns.push(json!({"type": "uts"}));
    }
    if let Some(obj) = config["linux"].as_object_mut() {
        obj.remove("uidMappings");
        obj.remove("gidMappings");
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&config)?)?;
    Ok(())
}

/// `crun --cgroup-manager=disabled run`, in a private mount namespace whose
/// /sys/fs/cgroup is a fresh cgroup2 mount.
fn crun_command(bundle: &Path, id: &str) -> anyhow::Result<Command> {
    let none = CString::new("none")?;
    let root = CString::new("/")?;
    let target = CString::new("/sys/fs/cgroup")?;
    let fstype = CString::new("cgroup2")?;
    let mut cmd = Command::new("crun");
    cmd.arg("--cgroup-manager=disabled")
        .arg("run")
        .arg("--bundle")
        .arg(bundle)
        .arg(id)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: runs in the forked child before exec: unshare and mount are
    // async-signal-safe system calls, and every pointer passed is to a CString
    // moved into the closure, alive until exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let private = libc::MS_REC | libc::MS_PRIVATE;
            let (no_type, no_data) = (std::ptr::null(), std::ptr::null());
            if libc::mount(none.as_ptr(), root.as_ptr(), no_type, private, no_data) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::mount(none.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, no_data) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_check() {
        assert!(check_output(&json!({"exit_code": 0, "stdout": "hello\n"})).is_ok());
        assert!(check_output(&json!({"exit_code": 1, "stdout": "hello\n"})).is_err());
        assert!(check_output(&json!({"exit_code": 0, "stdout": "bye\n"})).is_err());
    }
}
