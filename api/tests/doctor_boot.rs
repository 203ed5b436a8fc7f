//! `spore doctor --boot --json` boots the real guest kernel with every spore
//! device attached. On a kvm_pvm host it must reach `Run /init` with vsock, block
//! and rng probed by the guest's drivers; where guest user space runs, the agent
//! must answer its hello too.

use std::path::Path;
use std::process::Command;

fn guest_file(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/guest")
        .join(name)
}

#[test]
fn doctor_boot_reaches_init_with_devices_probed() {
    if !Path::new("/dev/kvm").exists() {
        assert!(std::env::var("CI").is_err(), "CI hosts must have /dev/kvm");
        eprintln!("skipped: no /dev/kvm on this host");
        return;
    }
    for f in ["vmlinux", "initramfs.cpio"] {
        assert!(
            guest_file(f).exists(),
            "{f} missing — run `make guest` first"
        );
    }
    let out = Command::new(env!("CARGO_BIN_EXE_spore"))
        .args(["doctor", "--boot", "--json", "--timeout", "400"])
        .args(["--kernel".as_ref(), guest_file("vmlinux").as_os_str()])
        .args([
            "--initrd".as_ref(),
            guest_file("initramfs.cpio").as_os_str(),
        ])
        .output()
        .expect("run spore doctor");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    eprintln!("{report:#}");
    assert_eq!(report["kernel_running"], true);
    assert_eq!(report["reached_init"], true, "{}", report["outcome"]);
    assert!(report["ms_to_init"].as_u64().unwrap() > 0);
    let probed: Vec<&str> = report["devices_probed"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d.as_str())
        .collect();
    for device in ["vsock", "block", "rng"] {
        assert!(probed.contains(&device), "{device} not probed: {probed:?}");
    }
    if report["guest_user_space"] == true {
        let hello = &report["agent_hello"];
        assert_eq!(hello["pid1"], true, "no agent hello: {}", report["outcome"]);
        assert!(hello["kernel_release"]
            .as_str()
            .unwrap()
            .ends_with("-spore"));
    } else {
        assert_eq!(report["kvm"], "kvm_pvm");
        assert!(report["agent_hello"].is_null());
    }
}

#[test]
fn vm_run_refuses_on_hosts_without_guest_user_space_and_reports_bad_images() {
    let kvm_pvm = Path::new("/sys/module/kvm_pvm").exists();
    let spore = env!("CARGO_BIN_EXE_spore");
    if kvm_pvm {
        let out = Command::new(spore).args(["vm", "run"]).output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("kvm_pvm") && err.contains("--isolation process"),
            "{err}"
        );
    }
    // A missing kernel and a corrupt one give clear messages and a non-zero exit
    // before any VM is created (with --force so kvm_pvm hosts get that far).
    let junk = std::env::temp_dir().join(format!("spore-junk-kernel-{}", std::process::id()));
    std::fs::write(&junk, b"this is not a kernel").unwrap();
    for (kernel, expect) in [
        (Path::new("/nonexistent/vmlinux"), "not found"),
        (junk.as_path(), "not a x86-64 vmlinux"),
    ] {
        let out = Command::new(spore)
            .args(["vm", "run", "--force", "--kernel"])
            .arg(kernel)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expect), "{err}");
    }
    std::fs::remove_file(junk).unwrap();
}
