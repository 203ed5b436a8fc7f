//! The real guest image (spore's kernel + initramfs with the agent as /init) under
//! QEMU software emulation (TCG), driven over vsock exactly as spore drives it.
//!
//! Needs qemu-system-x86_64 and vhost-device-vsock (`resources/install-deps.sh`),
//! `target/guest/vmlinux` (`guest-kernel/build.sh`) and
//! `target/guest/initramfs.cpio` (`resources/build-agent.sh`,
//! `resources/build-initramfs.sh`). Skips without them, fails without them in CI.

use spore_tests::qemu::{Qemu, QemuConfig, TcgTools, BOOT_TIMEOUT};
use spore_tests::skip_unless;

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
    assert!(!log.contains("Kernel panic") || log.find("Kernel panic") > log.find("Run /init"));
}
