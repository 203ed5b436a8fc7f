//! The real guest image (spore's kernel + initramfs with the agent as /init) under
//! QEMU software emulation (TCG), driven over vsock exactly as spore drives it.
//!
//! Needs qemu-system-x86_64 and vhost-device-vsock (`resources/install-deps.sh`),
//! `target/guest/vmlinux` (`guest-kernel/build.sh`) and
//! `target/guest/initramfs.cpio` (`resources/build-agent.sh`,
//! `resources/build-initramfs.sh`). Skips without them, fails without them in CI.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use spore_agent::protocol::client::{Client, ClientError};
use spore_agent::protocol::messages::{CloneFixup, ErrorCode, PROTOCOL_VERSION};
use spore_agent::protocol::spec::{ContainerSpec, ContainerStatus, ExitReason, RootfsSpec};
use spore_tests::agent::connect_agent;
use spore_tests::qemu::{GuestExit, Qemu, QemuConfig, TcgTools, BOOT_TIMEOUT};
use spore_tests::skip_unless;
use spore_tests::tempdir::TempDir;
use spore_tests::{fixtures, image};

/// The guest kernel boots to user space: the kernel hands over to /init and the
/// virtio-mmio vsock device QEMU put on the command line is probed.
#[test]
fn guest_kernel_runs_init() {
    let tools = skip_unless!(TcgTools::find());
    let mut vm = Qemu::boot(&QemuConfig::new(tools).verbose()).expect("boot");
    let t = vm
        .wait_for_serial("Run /init as init process", BOOT_TIMEOUT)
        .expect("kernel reaches /init");
    eprintln!("guest_tcg: QEMU start to \"Run /init\": {t:.2?}");
    let log = vm.serial_log();
    assert!(
        log.contains("virtio_mmio.device="),
        "QEMU added no virtio-mmio devices:\n{log}"
    );
    assert!(
        log.contains("NET: Registered PF_VSOCK"),
        "no vsock in the guest:\n{log}"
    );
}

/// The harness's vsock path on its own: a guest whose /init is a tiny vsock echo
/// server (not the agent), reached through vhost-device-vsock's unix socket.
#[test]
fn vsock_echo_through_the_backend() {
    let tools = skip_unless!(TcgTools::find());
    let scratch = TempDir::new("spore-echo").expect("temp dir");
    let initramfs = fixtures::vsock_echo_initramfs(scratch.path()).expect("echo initramfs");
    let config = QemuConfig::new(TcgTools { initramfs, ..tools });
    let mut vm = Qemu::boot(&config).expect("boot");
    let mut stream = vm.connect(fixtures::ECHO_PORT).expect("vsock connect");
    let t = vm.started().elapsed();
    eprintln!("guest_tcg: QEMU start to vsock connected (echo init): {t:.2?}");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    for msg in ["ping\n", "a second line\n"] {
        stream.write_all(msg.as_bytes()).unwrap();
        let mut back = vec![0u8; msg.len()];
        stream.read_exact(&mut back).unwrap();
        assert_eq!(back, msg.as_bytes());
    }
    // Once the first connection is closed, a new one to the same port works.
    drop(stream);
    let mut again = vm.connect(fixtures::ECHO_PORT).expect("second connect");
    again
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    again.write_all(b"x").unwrap();
    let mut b = [0u8; 1];
    again.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"x");
    assert!(vm
        .serial_log()
        .contains("vsock-echo: listening on port 1024"));

    // 8 MiB each way, the guest echoing in writes of up to 64 KiB.
    const BULK: usize = 8 << 20;
    let mut writer = again.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let data: Vec<u8> = (0..BULK).map(|i| (i % 251) as u8).collect();
        writer.write_all(&data).unwrap();
    });
    let t = Instant::now();
    let mut back = vec![0u8; BULK];
    again.read_exact(&mut back).expect("bulk echo");
    eprintln!(
        "guest_tcg: 8 MiB echoed through the guest in {:.2?}",
        t.elapsed()
    );
    sender.join().unwrap();
    assert!(back.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
}

/// The agent, as the guest's PID 1, answers `hello` over vsock port 1024, and
/// `shutdown` powers the guest off.
#[test]
fn agent_answers_hello_and_shuts_down() {
    let tools = skip_unless!(TcgTools::find());
    let mut config = QemuConfig::new(tools);
    // Bare words on the kernel command line become init's arguments. The plain
    // runtime is enough for hello.
    config.cmdline_extra = vec!["--runtime".into(), "plain".into()];
    let mut vm = Qemu::boot(&config).expect("boot");
    let mut client = connect_agent(&mut vm, BOOT_TIMEOUT).expect("agent connection");
    client.set_timeout(Some(Duration::from_secs(30))).unwrap();
    let hello = client.hello().expect("hello");
    let t = vm.started().elapsed();
    eprintln!(
        "guest_tcg: QEMU start to agent hello: {t:.2?} (guest uptime {} ms)",
        hello.uptime_ms
    );
    assert_eq!(hello.protocol_version, PROTOCOL_VERSION);
    assert!(hello.pid1, "the agent should be PID 1 in the guest");
    assert!(
        hello.kernel_release.ends_with("-spore"),
        "guest kernel is {:?}, not spore's",
        hello.kernel_release
    );
    assert!(hello.uptime_ms > 0 && u128::from(hello.uptime_ms) < t.as_millis() + 1000);
    assert_eq!(hello.sandbox_id, None);

    // `shutdown` powers the guest off; the kernel reports it on the exit port.
    // The agent powers off right after writing `done`, which can still be in the
    // vsock queue then (the likely cause of one failure in ~13 runs): a lost reply (connection closed or
    // read timeout) is tolerated, an error answer is not. The exit status decides.
    client.set_timeout(Some(Duration::from_secs(10))).unwrap();
    match client.shutdown() {
        Ok(()) => {}
        Err(e @ (ClientError::Frame(_) | ClientError::Io(_))) => eprintln!(
            "guest_tcg: shutdown reply lost as the guest powered off: {}",
            spore_agent::error_chain(&e)
        ),
        Err(e) => panic!("shutdown: {}", spore_agent::error_chain(&e)),
    }
    let exit = vm
        .wait_exit(Duration::from_secs(30))
        .expect("wait for QEMU");
    assert_eq!(exit, Some(GuestExit::PowerOff), "{}", vm.serial_log());
}

// ---- Containers in the guest: the agent's engine with the busybox rootfs on
// ---- /dev/vda (an erofs image attached as the virtio-blk disk).

/// A guest booted with the busybox rootfs disk, and a client to its agent.
struct Guest {
    vm: Qemu,
    client: Client,
}

impl Guest {
    fn boot(tools: TcgTools, rootfs_image: PathBuf) -> Guest {
        let mut vm = Qemu::boot(&QemuConfig::new(tools).disk(rootfs_image)).expect("boot");
        let client = connect_agent(&mut vm, BOOT_TIMEOUT).expect("agent connection");
        client.set_timeout(Some(Duration::from_secs(120))).unwrap();
        Guest { vm, client }
    }
}

/// Boots a guest with the rootfs disk, or skips the test when a prerequisite is
/// missing.
macro_rules! guest_with_rootfs {
    () => {{
        let tools = skip_unless!(TcgTools::find());
        let image = skip_unless!(image::busybox_rootfs_image());
        Guest::boot(tools, image)
    }};
}

/// A container running `sh -c script` on the busybox rootfs disk.
fn sh(script: &str) -> ContainerSpec {
    ContainerSpec {
        argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
        env: vec!["PATH=/bin:/sbin:/usr/bin:/usr/sbin".into()],
        rootfs: RootfsSpec {
            lower: GUEST_DISK.into(),
        },
        ..ContainerSpec::default()
    }
}

/// The guest's virtio-blk disk.
const GUEST_DISK: &str = "/dev/vda";

#[test]
fn container_output_and_exit_code() {
    let mut g = guest_with_rootfs!();
    let t = Instant::now();
    let out = g
        .client
        .run("c1", &sh("echo hello; echo oops >&2; exit 3"))
        .expect("run");
    eprintln!("guest_tcg: container create→exit: {:.2?}", t.elapsed());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "oops\n");
    assert_eq!(out.exit.code, 3);
    assert_eq!(out.exit.reason, ExitReason::Exited);
    assert_eq!(out.exit.signal, None);
    assert_eq!(
        g.client.state("c1").unwrap().status,
        ContainerStatus::Exited
    );
}

#[test]
fn memory_limit_ends_in_oom() {
    let mut g = guest_with_rootfs!();
    let mut spec = sh("dd if=/dev/zero of=/dev/null bs=96M count=1; echo survived");
    spec.limits.memory_bytes = Some(24 << 20);
    let out = g.client.run("oom", &spec).expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("survived") || out.exit.reason == ExitReason::Oom);
    assert_eq!(
        out.exit.reason,
        ExitReason::Oom,
        "exit {:?}, stdout {stdout:?}",
        out.exit
    );
    // The guest is fine afterwards.
    let again = g
        .client
        .run("after", &sh("echo ok"))
        .expect("run after oom");
    assert_eq!(again.stdout, b"ok\n");
    g.vm.check_alive().expect("the guest survived the OOM kill");
}

#[test]
fn pids_limit_contains_a_fork_bomb() {
    let mut g = guest_with_rootfs!();
    // pids.max is what stops the forks: the same script passes without it.
    let twenty = "for i in $(seq 20); do sleep 30 & done; echo all-started";
    let free = g
        .client
        .run("free", &sh(twenty))
        .expect("run without limit");
    assert_eq!(free.stdout, b"all-started\n");
    let mut limited = sh(twenty);
    limited.limits.pids = Some(8);
    let out = g
        .client
        .run("limited", &limited)
        .expect("run with pids.max");
    assert_ne!(out.exit.code, 0);
    assert!(
        out.stdout.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("fork"));

    let mut bomb = sh("b() { b | b & }; b; sleep 1000");
    bomb.limits.pids = Some(32);
    g.client.create("bomb", &bomb).expect("create bomb");
    g.client.start("bomb").expect("start bomb");
    std::thread::sleep(Duration::from_secs(3));
    // Other containers still start and finish while the bomb is running.
    let t = Instant::now();
    let out = g
        .client
        .run("alive", &sh("echo alive"))
        .expect("run beside the bomb");
    assert_eq!(out.stdout, b"alive\n");
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "took {:?}",
        t.elapsed()
    );
    g.client.delete("bomb").expect("delete bomb");
    let ids: Vec<String> = g.client.list().unwrap().into_iter().map(|c| c.id).collect();
    assert!(!ids.contains(&"bomb".to_string()), "{ids:?}");
    g.vm.check_alive().expect("the guest survived the bomb");
}

#[test]
fn ten_mib_of_stdout_arrives_complete() {
    let Guest { mut vm, mut client } = guest_with_rootfs!();
    const LEN: usize = 10 << 20;
    let spec = sh(&format!("yes 0123456789abcdef | head -c {LEN}"));
    // A lost end-of-stream would block the client for ever: run it on a thread and
    // fail after a deadline (dropping the VM then unblocks the thread).
    let t = Instant::now();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(client.run("big", &spec));
    });
    let out = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(result) => result.expect("run"),
        Err(_) => panic!("no result after 60 s; guest alive: {:?}", vm.check_alive()),
    };
    eprintln!("guest_tcg: 10 MiB of stdout in {:.2?}", t.elapsed());
    assert_eq!(out.exit.code, 0);
    assert_eq!(out.stdout.len(), LEN, "stdout truncated");
    let line = b"0123456789abcdef\n";
    assert!(out.stdout.chunks(line.len()).all(|c| c == &line[..c.len()]));
}

#[test]
fn delete_removes_a_running_container() {
    let mut g = guest_with_rootfs!();
    // The container fills its writable layer (tmpfs) with 48 MiB, which shows in
    // the guest's Shmem until the layer is unmounted and its processes are gone.
    let base = shmem_kib(&mut g.client, "probe0");
    let fill = "head -c 50331648 /dev/zero > /tmp/fill && sleep 1000";
    g.client.create("d", &sh(fill)).expect("create");
    g.client.start("d").expect("start");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut n = 0;
    while shmem_kib(&mut g.client, &format!("probe{}", n + 1)) < base + 40 * 1024 {
        n += 1;
        assert!(
            Instant::now() < deadline,
            "the container never filled its /tmp"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let state = g.client.state("d").unwrap();
    assert_eq!(state.status, ContainerStatus::Running);
    assert!(state.pid > 1);

    g.client.delete("d").expect("delete");
    assert!(g.client.state("d").is_err(), "state of a deleted container");
    let after = shmem_kib(&mut g.client, "probe-after");
    assert!(
        after < base + 8 * 1024,
        "Shmem {base} KiB before, {after} KiB after delete"
    );
    // Only the exited probes are left; the same id can be used again.
    let live: Vec<String> = g.client.list().unwrap().into_iter().map(|c| c.id).collect();
    assert!(!live.contains(&"d".to_string()), "{live:?}");
    let out = g
        .client
        .run("d", &sh("echo again"))
        .expect("re-create the same id");
    assert_eq!(out.stdout, b"again\n");
}

/// The guest's Shmem (tmpfs and shared memory) in KiB, read by a container named
/// `id` (/proc/meminfo is not namespaced).
fn shmem_kib(client: &mut Client, id: &str) -> u64 {
    let out = client
        .run(id, &sh("grep '^Shmem:' /proc/meminfo"))
        .expect("meminfo");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no Shmem in {text:?}"))
}

#[test]
fn clone_fixup_sets_the_identity() {
    let mut g = guest_with_rootfs!();
    // 2030-01-01T00:00:00Z
    let realtime_ns = 1_893_456_000u64 * 1_000_000_000;
    let fixup = CloneFixup {
        entropy: (0..64u8).collect(),
        realtime_ns: Some(realtime_ns),
        hostname: Some("clone-7".into()),
        sandbox_id: Some("sb-7".into()),
    };
    // A fixup that cannot be applied whole is refused before anything changes.
    let bad = CloneFixup {
        hostname: Some("h".repeat(65)),
        ..fixup.clone()
    };
    match g.client.fixup(&bad) {
        Err(ClientError::Agent(e)) => assert_eq!(e.code, ErrorCode::BadRequest),
        other => panic!("bad fixup accepted: {other:?}"),
    }
    let before = g.client.hello().unwrap();
    assert_eq!(before.sandbox_id, None);
    assert_ne!(before.hostname, "clone-7");
    // The fixup fails as a whole if RNDADDENTROPY or RNDRESEEDCRNG fails, so
    // its success is the reseed.
    g.client.fixup(&fixup).expect("fixup");
    let hello = g.client.hello().expect("hello after fixup");
    assert_eq!(hello.sandbox_id.as_deref(), Some("sb-7"));
    assert_eq!(hello.hostname, "clone-7");
    let out = g.client.run("t", &sh("date -u +%Y")).expect("run");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2030");
}
