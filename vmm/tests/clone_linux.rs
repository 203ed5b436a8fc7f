//! Clones of the real guest kernel (needs /dev/kvm and target/guest/vmlinux).
//!
//! ONE boot: the kernel with spore's vsock and rng runs the spinning `/init` of
//! `resources/build-spin-init.sh` (user mode, no syscalls, so it runs on a kvm_pvm
//! host too), is captured as a template once `/init` runs, and is cloned twice,
//! each clone in its own process. Each clone must keep running — its kernel's
//! `jiffies`, read through the clone's own memory, advances, so its vCPU keeps
//! taking timer interrupts — and stay isolated from the template and the other
//! clone. About 2 minutes on kvm_pvm (the boot is emulated), seconds elsewhere.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use spore_vmm::clone::{CloneOrder, Template, Worker, WorkerOptions};
use spore_vmm::test_guests::{spinning_linux, SerialLog, SpinningLinux};
use spore_vmm::HostKvm;

const MEM_MIB: u32 = 256;
const BOOT_TIMEOUT: Duration = Duration::from_secs(420);
/// Where the kernel's image is mapped (`__START_KERNEL_map`): physical = virtual
/// minus this, for symbols in the kernel image.
const START_KERNEL_MAP: u64 = 0xffff_ffff_8000_0000;
/// A page well inside guest RAM that the test writes in one clone.
const POKE_ADDR: u64 = 200 << 20;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The guest-physical address of `jiffies_64`, from the kernel's symbol table.
fn jiffies_addr(kernel: &Path) -> Option<u64> {
    let out = Command::new("nm").arg(kernel).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.ends_with(" jiffies_64"))?;
    let vaddr = u64::from_str_radix(line.split_whitespace().next()?, 16).ok()?;
    Some(vaddr - START_KERNEL_MAP)
}

fn template_u64(template: &Template, addr: u64) -> u64 {
    let mut b = [0u8; 8];
    template.memory().read_exact_at(&mut b, addr).unwrap();
    u64::from_le_bytes(b)
}

#[test]
fn linux_clones_keep_taking_timer_interrupts_and_stay_isolated() {
    let kernel = repo().join("target/guest/vmlinux");
    if !HostKvm::detect().usable || !kernel.exists() {
        eprintln!("skipped: needs /dev/kvm and target/guest/vmlinux (`make kernel`)");
        return;
    }
    let jiffies = jiffies_addr(&kernel).expect("jiffies_64 in the kernel's symbols (nm)");
    let build = Command::new(repo().join("resources/build-spin-init.sh"))
        .output()
        .unwrap();
    assert!(build.status.success(), "{build:?}");
    let initrd = PathBuf::from(String::from_utf8_lossy(&build.stdout).trim());
    let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();

    // 1. Boot to the spinning /init and capture.
    let booted = Instant::now();
    let log = SerialLog::default();
    let guest = SpinningLinux {
        kernel: &kernel,
        initrd: &initrd,
        mem_mib: MEM_MIB,
        vsock_uds: &dir.as_path().join("template.vsock"),
        log: log.clone(),
    };
    let vm = spinning_linux(guest, BOOT_TIMEOUT, Duration::from_secs(2)).unwrap();
    eprintln!("booted to /init in {:?}", booted.elapsed());
    let template = Template::capture(vm).unwrap();
    let captured = template_u64(&template, jiffies);
    let poked_before = template_u64(&template, POKE_ADDR);
    assert!(
        captured > 0,
        "jiffies_64 at {jiffies:#x} is 0: wrong address?"
    );

    // 2. Two clones, each in its own process with its own vsock identity.
    // Clone 0 uses the socket its worker bound ahead of time; clone 1 is told
    // another path, bound when its order arrives.
    let options = WorkerOptions {
        vsock_dir: Some(dir.as_path().to_owned()),
        ..WorkerOptions::default()
    };
    let mut clones: Vec<Worker> = (0..2)
        .map(|_| Worker::spawn(&template, &options).unwrap())
        .collect();
    for (i, w) in clones.iter_mut().enumerate() {
        w.wait_ready().unwrap();
        let uds = match i {
            0 => w.vsock_path().expect("a pre-bound socket").to_owned(),
            _ => dir.as_path().join(format!("clone{i}.vsock")),
        };
        let order = CloneOrder {
            vsock: Some((10 + i as u64, uds.clone())),
        };
        let started = w.start(&order).unwrap();
        eprintln!(
            "clone {i}: {} µs order → vCPU in guest",
            started.latency_ns() / 1000
        );
        assert!(uds.exists(), "the clone listens on its own vsock socket");
    }

    // 3. Each clone's jiffies advance: its timer interrupts arrive.
    let deadline = Instant::now() + Duration::from_secs(60);
    for (i, w) in clones.iter_mut().enumerate() {
        let first = w.peek(jiffies).unwrap();
        assert!(first >= captured, "clone {i} went back in time");
        loop {
            let now = w.peek(jiffies).unwrap();
            if now > first + 2 {
                eprintln!("clone {i}: jiffies {captured} → {first} → {now}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "clone {i}'s jiffies stuck at {now}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    // 4. Isolation: a write in clone 0 is seen neither by clone 1 nor the template,
    //    and the clones' ticks never reached the template's memory.
    clones[0].poke(POKE_ADDR, 0x5350_4f52_4531).unwrap();
    assert_eq!(clones[0].peek(POKE_ADDR).unwrap(), 0x5350_4f52_4531);
    assert_eq!(clones[1].peek(POKE_ADDR).unwrap(), poked_before);
    assert_eq!(template_u64(&template, POKE_ADDR), poked_before);
    assert_eq!(template_u64(&template, jiffies), captured);

    // 5. Killing clone 0 leaves clone 1 ticking.
    clones[0].kill();
    let before = clones[1].peek(jiffies).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while clones[1].peek(jiffies).unwrap() <= before {
        assert!(Instant::now() < deadline, "clone 1 stopped with clone 0");
        std::thread::sleep(Duration::from_millis(100));
    }
}
