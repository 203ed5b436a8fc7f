//! `spore bench clone`: clone latency (order → the clone's vCPU entering the
//! guest), clones per second, and each idle clone's private memory, for a
//! template of the real guest kernel (default) or of a tiny counting guest.
//!
//! Every clone is its own process, forked from this one before it creates its
//! KVM VM and prepared ahead of its order (`spore_vmm::clone::Worker`). Also
//! builds the templates `spore template save` stores (`make_template`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use serde::Serialize;
use spore_vmm::builder::start_raw;
use spore_vmm::clone::{private_split_kib, CloneOrder, Started, Template, Worker, WorkerOptions};
use spore_vmm::devices::report::ReportPort;
use spore_vmm::test_guests::{self, spinning_linux, SerialLog, SpinningLinux};
use spore_vmm::HostKvm;

use crate::boot::{BootOptions, Guest};
use crate::cmd::bench::percentile;
use crate::guest_image;

/// The tiny template is captured once its counter passed this...
const TINY_CAPTURE_AT: u32 = 8 * 1024;
/// ...and each clone counts at most this much further, then halts (idle).
const TINY_RUN: u64 = 4 * 1024;
const BOOT_TIMEOUT: Duration = Duration::from_secs(420);
/// How long a Linux clone runs before the bench parks it (kvm_pvm hosts).
const LINUX_RUN_BEFORE_PARK: Duration = Duration::from_millis(100);

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TemplateKind {
    /// spore's counting test guest (hand-made machine code).
    Tiny,
    /// The real guest kernel, booted to its spinning /init.
    Linux,
}

#[derive(Args)]
pub struct BenchCloneArgs {
    /// Number of clones, all alive at once at the end.
    #[arg(long, default_value_t = 20)]
    pub count: usize,
    #[arg(long, value_enum, default_value_t = TemplateKind::Linux)]
    pub template: TemplateKind,
    /// Guest memory of the template in MiB.
    #[arg(long, default_value_t = 256)]
    pub mem_mib: u32,
    /// Guest kernel for `--template linux`. Default: the built one.
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Spinning-init initramfs (resources/build-spin-init.sh).
    #[arg(long)]
    pub initrd: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Clone a template saved by `spore template save` (of the `--template`
    /// kind) instead of booting one.
    #[arg(long)]
    pub from: Option<PathBuf>,
    /// Also print each clone's steps (µs) to stderr.
    #[arg(long)]
    pub each: bool,
}

#[derive(Serialize)]
struct CloneBench {
    template: &'static str,
    /// Where the template was captured: "spinning-init", "agent-ready", "counter".
    captured_at: &'static str,
    template_mib: u64,
    clones: usize,
    p50_us: u64,
    p90_us: u64,
    p99_us: u64,
    max_us: u64,
    clones_per_s: f64,
    private_kib_per_clone_median: u64,
    private_kib_guest_pages_median: u64,
    private_kib_vmm_median: u64,
    parked: bool,
    kvm_pvm: bool,
    /// Medians in µs of the steps after the order and of the preparation.
    breakdown_us: Breakdown,
}

#[derive(Serialize, Default)]
struct Breakdown {
    order_to_worker: u64,
    vm_state: u64,
    devices_create: u64,
    devices_wire: u64,
    vcpu_state: u64,
    threads: u64,
    to_first_kvm_run: u64,
    prep_fork: u64,
    prep_kvm_vm: u64,
    prep_memory: u64,
    prep_vcpus: u64,
    prep_total_in_worker: u64,
}

/// Builds and captures a template of `kind`.
pub fn make_template(
    kind: TemplateKind,
    mem_mib: u32,
    kernel: Option<PathBuf>,
    initrd: Option<PathBuf>,
) -> anyhow::Result<Template> {
    match kind {
        TemplateKind::Tiny => tiny_template(mem_mib),
        TemplateKind::Linux => linux_template(mem_mib, kernel, initrd),
    }
}

fn tiny_template(mem_mib: u32) -> anyhow::Result<Template> {
    let report = ReportPort::shared();
    let limit = TINY_CAPTURE_AT as u64 + TINY_RUN;
    let vm = start_raw(test_guests::counter(mem_mib, limit, &report))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while report
        .lock()
        .expect("report port")
        .slot(0)
        .last
        .unwrap_or(0)
        < TINY_CAPTURE_AT
    {
        if let Some(exit) = vm.wait_timeout(Duration::from_millis(2)) {
            anyhow::bail!("the tiny guest ended before its capture: {exit}");
        }
        anyhow::ensure!(Instant::now() < deadline, "the tiny guest does not count");
    }
    let template = Template::capture(vm)?;
    anyhow::ensure!(
        report.lock().expect("report port").slot(2).count == 0,
        "the tiny guest reached its limit before the capture"
    );
    Ok(template)
}

/// The real guest kernel: booted to the agent's hello where the host runs guest
/// user space (hardware KVM), to the spinning /init elsewhere (kvm_pvm).
fn linux_template(
    mem_mib: u32,
    kernel: Option<PathBuf>,
    initrd: Option<PathBuf>,
) -> anyhow::Result<Template> {
    if agent_ready_possible() {
        return agent_template(mem_mib, kernel, initrd);
    }
    let kernel = kernel.unwrap_or_else(guest_image::default_kernel);
    guest_image::check_kernel(&kernel)?;
    let initrd = initrd.unwrap_or_else(|| guest_image::guest_dir().join("spin-initramfs.cpio"));
    anyhow::ensure!(
        initrd.exists(),
        "spinning-init initramfs {} not found — run resources/build-spin-init.sh",
        initrd.display()
    );
    let dir = std::env::temp_dir().join(format!("spore-clone-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    eprintln!("booting the guest kernel to its spinning /init (about a minute on kvm_pvm)...");
    let started = Instant::now();
    let guest = SpinningLinux {
        kernel: &kernel,
        initrd: &initrd,
        mem_mib,
        vsock_uds: &dir.join("template.vsock"),
        log: SerialLog::default(),
    };
    let vm = spinning_linux(guest, BOOT_TIMEOUT, Duration::from_secs(1))?;
    eprintln!(
        "/init running after {:.1} s; capturing",
        started.elapsed().as_secs_f64()
    );
    Ok(Template::capture(vm)?)
}

/// Waits until a tiny clone reported that it reached its limit and halted.
fn wait_halted(w: &mut Worker) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while w.report(2)?.2 == 0 {
        anyhow::ensure!(Instant::now() < deadline, "clone {} never halted", w.pid());
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

fn agent_ready_possible() -> bool {
    HostKvm::detect().can_run_guest_user_space()
}

/// Boots the guest image (kernel + agent initramfs, the busybox rootfs as its
/// disk) to the agent's hello and captures it.
fn agent_template(
    mem_mib: u32,
    kernel: Option<PathBuf>,
    initrd: Option<PathBuf>,
) -> anyhow::Result<Template> {
    let opts = BootOptions {
        kernel: kernel.unwrap_or_else(guest_image::default_kernel),
        initrd: initrd.unwrap_or_else(guest_image::default_initrd),
        mem_mib,
        vcpus: 1,
        echo_console: false,
        // A disk that outlives the boot's run directory: clones reopen it by path.
        disk: Some(guest_image::default_rootfs()),
    };
    let guest = Guest::boot(&opts)?;
    let mut agent = guest.wait_for_agent(BOOT_TIMEOUT)?;
    let hello = agent.hello()?;
    drop(agent);
    eprintln!(
        "agent ready after {} ms (kernel {})",
        guest.ms(Instant::now()),
        hello.kernel_release
    );
    let vm = guest.vm;
    Ok(Template::capture(vm)?)
}

fn median(values: impl Iterator<Item = u64>) -> u64 {
    percentile(&values.collect::<Vec<_>>(), 50.0)
}

pub fn run(args: BenchCloneArgs) -> anyhow::Result<i32> {
    // 1. The template (this process has no other thread once it is captured).
    let template = match &args.from {
        Some(dir) => Template::load(dir)?,
        None => make_template(args.template, args.mem_mib, args.kernel, args.initrd)?,
    };
    let linux = args.template == TemplateKind::Linux;
    // A Linux clone of the spinning-init template keeps a host core busy (its
    // /init spins; on kvm_pvm its timer ticks are emulated too): park it. An
    // agent-ready clone idles by itself.
    let pvm = !agent_ready_possible();
    let park = linux && (pvm || args.from.is_some());
    let dir = std::env::temp_dir().join(format!("spore-clone-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let options = WorkerOptions {
        console: None,
        report_port: !linux,
        vsock_dir: linux.then(|| dir.clone()),
    };
    // 2. The pool: every clone process forked and prepared ahead of its order.
    let t0 = Instant::now();
    let mut workers = Vec::new();
    let mut fork_us = Vec::new();
    for _ in 0..args.count {
        let t = Instant::now();
        workers.push(Worker::spawn(&template, &options)?);
        fork_us.push(t.elapsed().as_micros() as u64);
    }
    for w in &mut workers {
        w.wait_ready()?;
    }
    let mut busy = t0.elapsed();
    // 3. The orders, one at a time, each once the previous clone is idle (halted
    //    or parked), so a clone's latency is not another clone's guest time.
    let mut started: Vec<Started> = Vec::new();
    for (i, w) in workers.iter_mut().enumerate() {
        // Each clone's own CID, on the socket its worker bound ahead of time.
        let uds = w.vsock_path().map(|p| p.to_owned());
        let order = CloneOrder {
            vsock: uds.map(|uds| (100 + i as u64, uds)),
        };
        let t = Instant::now();
        started.push(w.start(&order)?);
        busy += t.elapsed();
        if park {
            std::thread::sleep(LINUX_RUN_BEFORE_PARK);
            w.park()?;
        } else {
            wait_halted(w)?;
        }
    }
    // 4. Idle clones' memory (the tiny guest halts by itself).
    std::thread::sleep(Duration::from_millis(300));
    let ram_kib = template.mem_size() / 1024;
    let mem: Vec<(u64, u64)> = workers
        .iter()
        .map(|w| private_split_kib(w.pid(), ram_kib))
        .collect::<Result<_, _>>()?;
    let lat: Vec<u64> = started.iter().map(|s| s.latency_ns() / 1000).collect();
    if args.each {
        for (i, s) in started.iter().enumerate() {
            let t = &s.times;
            let us = |a: u64, b: u64| b.saturating_sub(a) / 1000;
            eprintln!(
                "clone {i}: {} µs = to worker {} + vm {} + devices {} + wiring {} + vcpus {} + threads {} + run {}",
                us(s.order, s.running),
                us(s.order, s.received),
                us(s.received, t.vm_state),
                us(t.vm_state, t.devices_created),
                us(t.devices_created, t.devices),
                us(t.devices, t.vcpus),
                us(t.vcpus, t.threads),
                us(t.threads, s.running)
            );
        }
    }
    let step = |f: fn(&Started) -> (u64, u64)| {
        median(started.iter().map(|s| {
            let (a, b) = f(s);
            b.saturating_sub(a) / 1000
        }))
    };
    let report = CloneBench {
        template: if linux { "linux" } else { "tiny" },
        captured_at: match (linux, park) {
            (false, _) => "counter",
            (true, true) => "spinning-init",
            (true, false) => "agent-ready",
        },
        template_mib: template.mem_size() >> 20,
        clones: args.count,
        p50_us: percentile(&lat, 50.0),
        p90_us: percentile(&lat, 90.0),
        p99_us: percentile(&lat, 99.0),
        max_us: percentile(&lat, 100.0),
        clones_per_s: args.count as f64 / busy.as_secs_f64(),
        private_kib_per_clone_median: median(mem.iter().map(|m| m.0)),
        private_kib_guest_pages_median: median(mem.iter().map(|m| m.1)),
        private_kib_vmm_median: median(mem.iter().map(|m| m.0 - m.1)),
        parked: park,
        kvm_pvm: pvm,
        breakdown_us: Breakdown {
            order_to_worker: step(|s| (s.order, s.received)),
            vm_state: step(|s| (s.received, s.times.vm_state)),
            devices_create: step(|s| (s.times.vm_state, s.times.devices_created)),
            devices_wire: step(|s| (s.times.devices_created, s.times.devices)),
            vcpu_state: step(|s| (s.times.devices, s.times.vcpus)),
            threads: step(|s| (s.times.vcpus, s.times.threads)),
            to_first_kvm_run: step(|s| (s.times.threads, s.running)),
            prep_fork: median(fork_us.iter().copied()),
            prep_kvm_vm: median(workers.iter().map(|w| w.prep.kvm_vm_us)),
            prep_memory: median(workers.iter().map(|w| w.prep.memory_us)),
            prep_vcpus: median(workers.iter().map(|w| w.prep.vcpus_us)),
            prep_total_in_worker: median(workers.iter().map(|w| w.prep.total_us)),
        },
    };
    drop(workers);
    let _ = std::fs::remove_dir_all(&dir);
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_report(&report);
    }
    Ok(0)
}

fn print_report(r: &CloneBench) {
    let b = &r.breakdown_us;
    println!(
        "template: {}, captured at {} ({} MiB, 1 vCPU), {} clones alive at once",
        r.template, r.captured_at, r.template_mib, r.clones
    );
    println!(
        "clone latency (order → clone vCPU in the guest): p50 {} µs, p90 {} µs, p99 {} µs, max {} µs",
        r.p50_us, r.p90_us, r.p99_us, r.max_us
    );
    println!(
        "clones per second (fork + prepare + order, back to back, guest time excluded): {:.0}",
        r.clones_per_s
    );
    println!(
        "private memory per idle clone process: median {} KiB ({} KiB guest pages it wrote, {} KiB VMM)",
        r.private_kib_per_clone_median, r.private_kib_guest_pages_median, r.private_kib_vmm_median
    );
    if r.parked {
        println!(
            "note: clones were PARKED (vCPUs paused) after running {} ms: a running clone of the spinning-init template keeps a host core busy{}",
            LINUX_RUN_BEFORE_PARK.as_millis(),
            if r.kvm_pvm { " (on this kvm_pvm host its timer ticks are emulated too)" } else { "" }
        );
    } else {
        println!(
            "note: not parked: each clone idles by itself ({} template)",
            r.captured_at
        );
    }
    println!(
        "after the order (median µs): to worker {}, VM state {}, devices created {}, devices wired {}, vCPU state {}, threads {}, to first KVM_RUN {}",
        b.order_to_worker, b.vm_state, b.devices_create, b.devices_wire, b.vcpu_state, b.threads, b.to_first_kvm_run
    );
    println!(
        "ahead of the order (median µs): fork {}, KVM VM + irqchip + PIT {}, map + register memory {}, vCPUs + CPUID {} (worker total {})",
        b.prep_fork, b.prep_kvm_vm, b.prep_memory, b.prep_vcpus, b.prep_total_in_worker
    );
}
