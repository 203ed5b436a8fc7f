//! `spore template save NAME DIR` and `spore template load DIR`: a template on
//! disk, without the daemon. `save` builds and captures a template (the real
//! guest kernel on its spinning /init, or the tiny counting guest) and writes its
//! state file and sparse memory file; `load` checks them, then clones the loaded
//! template in clone processes that map the memory file `MAP_PRIVATE` (sharing
//! the host page cache) and reports how they started.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use spore_vmm::clone::{private_split_kib, CloneOrder, Template, Worker, WorkerOptions};
use spore_vmm::snapshot::FORMAT_VERSION;
use spore_vmm::test_guests::COUNTER;

use crate::cmd::clone_bench::{make_template, TemplateKind};

/// spore's own note in a template directory: "NAME\nKIND\n".
const NAME_FILE: &str = "name";

#[derive(Args)]
pub struct TemplateSaveArgs {
    pub name: String,
    pub dir: PathBuf,
    /// What to boot and capture.
    #[arg(long, value_enum, default_value_t = TemplateKind::Linux)]
    pub template: TemplateKind,
    #[arg(long, default_value_t = 256)]
    pub mem_mib: u32,
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    #[arg(long)]
    pub initrd: Option<PathBuf>,
}

#[derive(Args)]
pub struct TemplateLoadArgs {
    pub dir: PathBuf,
    /// Clones to start from the loaded template (0: only check it).
    #[arg(long, default_value_t = 2)]
    pub clones: usize,
}

pub fn save(args: TemplateSaveArgs) -> anyhow::Result<i32> {
    // 1. Boot and capture.
    let template = make_template(args.template, args.mem_mib, args.kernel, args.initrd)?;
    // 2. State and sparse memory files.
    let data = template
        .save(&args.dir)
        .with_context(|| format!("saving the template to {}", args.dir.display()))?;
    // 3. The name and kind, for `load`.
    let kind = format!("{:?}", args.template).to_lowercase();
    std::fs::write(args.dir.join(NAME_FILE), format!("{}\n{kind}\n", args.name))?;
    println!(
        "saved template {} ({kind}, {} MiB, {} vCPU, state format {FORMAT_VERSION}) to {}: {} KiB of memory data in a sparse file",
        args.name,
        template.mem_size() >> 20,
        template.state.vcpus.len(),
        args.dir.display(),
        data / 1024
    );
    Ok(0)
}

pub fn load(args: TemplateLoadArgs) -> anyhow::Result<i32> {
    // 1. Check and open (a damaged template fails here, saying why).
    let note = std::fs::read_to_string(args.dir.join(NAME_FILE)).unwrap_or_default();
    let mut lines = note.lines();
    let name = lines.next().unwrap_or("(unnamed)").to_string();
    let tiny = lines.next() == Some("tiny");
    let template = Template::load(&args.dir)
        .with_context(|| format!("loading the template in {}", args.dir.display()))?;
    println!(
        "template {name}: {} MiB, {} vCPU, {} virtio devices, state format {FORMAT_VERSION}",
        template.mem_size() >> 20,
        template.state.vcpus.len(),
        template.state.devices.virtio.len()
    );
    // 2. Clones, each in its own process.
    let options = WorkerOptions {
        console: None,
        report_port: tiny,
        vsock_dir: None,
    };
    let mut workers = (0..args.clones)
        .map(|_| Worker::spawn(&template, &options))
        .collect::<Result<Vec<_>, _>>()?;
    let vsock_dir =
        std::env::temp_dir().join(format!("spore-template-load-{}", std::process::id()));
    std::fs::create_dir_all(&vsock_dir)?;
    for (i, w) in workers.iter_mut().enumerate() {
        w.wait_ready()?;
        let order = CloneOrder {
            vsock: (!tiny).then(|| (100 + i as u64, vsock_dir.join(format!("clone{i}.vsock")))),
        };
        let started = w.start(&order)?;
        std::thread::sleep(Duration::from_millis(200));
        let detail = match tiny {
            true => format!("counter at {}", w.peek(COUNTER)?),
            false => "running".to_string(),
        };
        // The Linux template's clones spin: park them once they ran.
        if !tiny {
            w.park()?;
        }
        let (total, guest) = private_split_kib(w.pid(), template.mem_size() / 1024)?;
        println!(
            "clone {i} (pid {}): {} µs order → guest, {detail}, private {total} KiB ({guest} KiB guest pages)",
            w.pid(),
            started.latency_ns() / 1000
        );
    }
    drop(workers);
    let _ = std::fs::remove_dir_all(&vsock_dir);
    Ok(0)
}
