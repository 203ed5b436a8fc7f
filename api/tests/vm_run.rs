//! `spore vm run -- CMD`: a container in the guest, through spore's own VMM.
//! Needs a host whose KVM runs guest user space (hardware virtualization); on a
//! kvm_pvm host the guest's `syscall` is broken, so the test says so and skips.

use std::path::Path;
use std::process::Command;

fn guest_file(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/guest")
        .join(name)
}

#[test]
fn vm_run_command_prints_output_and_exits_with_its_code() {
    if Path::new("/sys/module/kvm_pvm").exists() || !Path::new("/dev/kvm").exists() {
        eprintln!(
            "skipped: this host's KVM (kvm_pvm or none) cannot run a guest's user space; \
             the in-guest path is tested under QEMU TCG (tests/guest_tcg.rs) here and runs \
             through spore's VMM on hosts with hardware virtualization"
        );
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_spore"))
        .args(["vm", "run", "--kernel"])
        .arg(guest_file("vmlinux"))
        .arg("--initrd")
        .arg(guest_file("initramfs.cpio"))
        .arg("--rootfs")
        .arg(guest_file("rootfs.erofs"))
        .args(["--", "/bin/sh", "-c", "echo hello; echo oops >&2; exit 3"])
        .output()
        .expect("run spore vm run");
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("oops"));
}

#[test]
fn vm_run_command_with_missing_rootfs_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_spore"))
        .args([
            "vm",
            "run",
            "--force",
            "--rootfs",
            "/nonexistent/rootfs.erofs",
            "--",
            "true",
        ])
        .output()
        .expect("run spore vm run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("rootfs image /nonexistent/rootfs.erofs not found"),
        "{err}"
    );
}
