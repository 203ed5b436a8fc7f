//! End to end on hardware KVM: the real guest (kernel + agent) booted to the
//! agent's hello is captured as a template and cloned twice, each clone in its own
//! process with its own vsock CID and socket. After the clone fixup each clone
//! answers `hello` with its own sandbox id, and 16 random bytes read in the two
//! clones differ (the fixup's entropy reseeded each guest's RNG).
//!
//! Skipped with a message on a kvm_pvm host, where a standard guest kernel cannot
//! run user space (notes/kvm-pvm.md), so there is no agent to clone.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use spore_agent::protocol::client::{Client, Endpoint};
use spore_agent::protocol::messages::CloneFixup;
use spore_agent::protocol::spec::{ContainerSpec, RootfsSpec};
use spore_agent::protocol::AGENT_VSOCK_PORT;
use spore_tests::paths;
use spore_tests::tempdir::TempDir;
use spore_vmm::clone::{CloneOrder, Template, Worker, WorkerOptions};
use spore_vmm::config::{Console, DiskConfig, VmConfig, VsockConfig};
use spore_vmm::HostKvm;

const AGENT_TIMEOUT: Duration = Duration::from_secs(120);

/// Connects to the agent behind `uds` and says hello, retrying until `timeout`.
fn agent(uds: &std::path::Path, timeout: Duration) -> Client {
    let deadline = Instant::now() + timeout;
    loop {
        let endpoint = Endpoint::HybridVsock {
            path: uds.to_owned(),
            port: AGENT_VSOCK_PORT,
        };
        if let Ok(mut client) = Client::connect(endpoint) {
            client.set_timeout(Some(Duration::from_secs(10))).unwrap();
            if client.hello().is_ok() {
                return client;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no agent behind {}",
            uds.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn random_bytes(client: &mut Client, name: &str) -> String {
    let spec = ContainerSpec {
        argv: ["sh", "-c", "head -c 16 /dev/urandom | od -An -tx1"]
            .map(String::from)
            .to_vec(),
        rootfs: RootfsSpec {
            lower: PathBuf::from("/dev/vda"),
        },
        ..ContainerSpec::default()
    };
    let out = client.run(name, &spec).unwrap();
    assert_eq!(out.exit.code, 0, "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn agent_ready_template_clones_get_their_own_identity() {
    let host = HostKvm::detect();
    if !host.usable || !host.can_run_guest_user_space() {
        eprintln!(
            "skipped: this host's KVM ({:?}) cannot run a standard guest's user space, so \
             there is no agent to clone (needs hardware virtualization)",
            host.kind
        );
        return;
    }
    let rootfs = paths::guest_dir().join("rootfs.erofs");
    assert!(
        rootfs.exists(),
        "{} missing — run `make rootfs`",
        rootfs.display()
    );
    let dir = TempDir::new("clone-agent").unwrap();
    let template_uds = dir.path().join("template.vsock");

    // 1. The template: boot to the agent's hello, then capture.
    let mut config = VmConfig::new(paths::vmlinux());
    config.initrd = Some(paths::initramfs());
    config.mem_mib = 256;
    config.console = Console::File(dir.path().join("template.log"));
    config.rng = true;
    config.vsock = Some(VsockConfig {
        cid: 3,
        uds_path: template_uds.clone(),
    });
    config.disks.push(DiskConfig {
        path: rootfs,
        read_only: true,
    });
    let vm = spore_vmm::start(config).unwrap();
    drop(agent(&template_uds, AGENT_TIMEOUT));
    let template = Template::capture(vm).unwrap();

    // 2. Two clones, each fixed up as its own machine.
    let mut workers = Vec::new();
    let mut seen = Vec::new();
    for i in 0..2u64 {
        let mut w = Worker::spawn(&template, &WorkerOptions::default()).unwrap();
        w.wait_ready().unwrap();
        let uds = dir.path().join(format!("clone{i}.vsock"));
        w.start(&CloneOrder {
            vsock: Some((10 + i, uds.clone())),
        })
        .unwrap();
        let mut client = agent(&uds, Duration::from_secs(30));
        let id = format!("sandbox-{i}");
        let fixup = CloneFixup {
            entropy: (0..64).map(|b| (b as u64 * 7 + i * 131) as u8).collect(),
            realtime_ns: None,
            hostname: Some(format!("clone-{i}")),
            sandbox_id: Some(id.clone()),
        };
        client.fixup(&fixup).unwrap();
        assert_eq!(client.hello().unwrap().sandbox_id, Some(id));
        seen.push(random_bytes(&mut client, "rand"));
        workers.push(w);
    }
    assert_eq!(seen[0].split_whitespace().count(), 16, "{seen:?}");
    assert_ne!(seen[0], seen[1], "two clones read the same random bytes");
}
