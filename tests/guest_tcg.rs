//! The real guest image (spore's kernel + initramfs with the agent as /init) under
//! QEMU software emulation (TCG), driven over vsock exactly as spore drives it.
//!
//! Needs qemu-system-x86_64 and vhost-device-vsock (`resources/install-deps.sh`),
//! `target/guest/vmlinux` (`guest-kernel/build.sh`) and
//! `target/guest/initramfs.cpio` (`resources/build-agent.sh`,
//! `resources/build-initramfs.sh`). Skips without them, fails without them in CI.

use std::io::{Read, Write};
use std::time::Duration;

use spore_agent::protocol::messages::PROTOCOL_VERSION;
use spore_tests::agent::connect_agent;
use spore_tests::fixtures;
use spore_tests::qemu::{GuestExit, Qemu, QemuConfig, TcgTools, BOOT_TIMEOUT};
use spore_tests::skip_unless;
use spore_tests::tempdir::TempDir;

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
    client.shutdown().expect("shutdown");
    let exit = vm
        .wait_exit(Duration::from_secs(30))
        .expect("wait for QEMU");
    assert_eq!(exit, Some(GuestExit::PowerOff), "{}", vm.serial_log());
}
