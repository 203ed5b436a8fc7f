//! The `vm` isolation backend through the real daemon (`spore serve`, vm being
//! the default isolation) and the CLI.
//!
//! On a host whose KVM cannot run a standard guest's user space (kvm_pvm, as
//! detected by `spore_vmm::HostKvm`, or no usable KVM): creating a template and
//! running a vm sandbox are refused with the reason and the `--isolation process`
//! command. Elsewhere (hardware virtualization): `echo hello` runs in a clone of
//! the default template, two sandboxes get their own hostname and random bytes,
//! deleting one leaves no clone process, and a clone whose VMM dies fails its
//! sandbox. Each test runs only on the kind of host it is about and says so
//! when it skips.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{spore_bin, Daemon};
use serde_json::{json, Value};
use spore_vmm::HostKvm;

/// True (after saying why) when this host cannot run guest user space, i.e.
/// when the vm backend must refuse.
fn vm_refused_here() -> bool {
    let host = HostKvm::detect();
    !host.usable || !host.can_run_guest_user_space()
}

/// Skips a hardware-KVM test on a host that cannot run it.
fn skip_without_hardware_kvm() -> bool {
    let host = HostKvm::detect();
    if vm_refused_here() {
        eprintln!(
            "skipped: this host's KVM ({:?}{}) cannot run a standard guest's user space \
             (kvm_pvm breaks the guest's `syscall`; notes/kvm-pvm.md), so no clone's agent \
             can run; needs hardware virtualization",
            host.kind,
            if host.is_pvm() {
                ", kvm_pvm detected"
            } else {
                ""
            }
        );
        return true;
    }
    let guest = spore_bin().with_file_name("../guest");
    for file in ["vmlinux", "initramfs.cpio", "rootfs.erofs"] {
        assert!(
            guest.join(file).exists(),
            "{} missing — run `make` (kernel, initramfs, rootfs)",
            guest.join(file).display()
        );
    }
    false
}

/// A daemon whose default isolation is vm (the product default).
fn vm_daemon(tag: &str) -> Daemon {
    Daemon::start_in(common::temp_dir(tag), &[])
}

/// Runs `spore ARGS` against the daemon in `dir`.
fn spore(dir: &Path, args: &[&str]) -> Output {
    Command::new(spore_bin())
        .args(args)
        .env("SPORE_RUN_DIR", dir)
        .env("SPORE_AGENT", common::agent_bin())
        .env_remove("SPORE_SOCKET")
        .output()
        .expect("running spore")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn template_creation_is_refused_with_the_reason_where_guests_cannot_run() {
    if !vm_refused_here() {
        eprintln!("skipped: this host runs microVMs; template creation is tested below");
        return;
    }
    let d = vm_daemon("vm-tpl");
    let (status, body) = d.json("POST", "/v1/templates", Some(r#"{"name":"t"}"#));
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["code"], "vm_unavailable");
    let msg = body["message"].as_str().unwrap_or_default();
    assert!(msg.contains("--isolation process"), "{msg}");
    if HostKvm::detect().is_pvm() {
        assert!(msg.contains("kvm_pvm"), "{msg}");
    }
    // Nothing was created: no such template, no template process.
    let (status, _) = d.json("GET", "/v1/templates/t", None);
    assert_eq!(status, 404);
    assert!(!d.dir.join("templates").exists());
    // The default template is listed, not built, with the host's status.
    let (status, list) = d.json("GET", "/v1/templates", None);
    assert_eq!(status, 200);
    let default = &list.as_array().unwrap()[0];
    assert_eq!(default["name"], "default");
    assert_eq!(default["state"], "not_built");
    assert!(default["vm_status"]
        .as_str()
        .unwrap()
        .contains("--isolation process"));
    // A bad request is still a 400 here, before the host is asked.
    let (status, _) = d.json("POST", "/v1/templates", Some(r#"{"name":"a/b"}"#));
    assert_eq!(status, 400);
}

#[test]
fn run_under_default_isolation_is_refused_naming_isolation_process() {
    if !vm_refused_here() {
        eprintln!("skipped: this host runs microVMs; vm runs are tested below");
        return;
    }
    let d = vm_daemon("vm-run-refused");
    let o = spore(&d.dir, &["run", "busybox", "echo", "hello"]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(125), "{err}");
    assert_eq!(text(&o.stdout), "", "nothing ran");
    assert!(
        err.contains("spore run --isolation process busybox echo hello"),
        "{err}"
    );
    let why = match HostKvm::detect().is_pvm() {
        true => "kvm_pvm",
        false => "KVM is not usable",
    };
    assert!(err.contains(why), "{err}");
    // No sandbox was left behind.
    assert!(d.sandbox_ids().is_empty());
}

#[test]
fn vm_run_echo_hello() {
    if skip_without_hardware_kvm() {
        return;
    }
    let d = vm_daemon("vm-hello");
    let o = spore(&d.dir, &["run", "--rm", "busybox", "echo", "hello"]);
    assert_eq!(text(&o.stdout), "hello\n", "{}", text(&o.stderr));
    assert_eq!(o.status.code(), Some(0));
    // The default template was created on first use and is ready now.
    let (_, t) = d.json("GET", "/v1/templates/default", None);
    assert_eq!(t["state"], "ready", "{t}");
    assert!(t["memory_bytes"].as_u64().unwrap() > 0);
}

#[test]
fn two_vm_sandboxes_get_their_own_hostname_and_random_bytes() {
    if skip_without_hardware_kvm() {
        return;
    }
    let d = vm_daemon("vm-identity");
    let script = "hostname; head -c 16 /dev/urandom | od -An -tx1";
    let outs: Vec<String> = (0..2)
        .map(|_| {
            let o = spore(&d.dir, &["run", "--rm", "busybox", "sh", "-c", script]);
            assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
            text(&o.stdout)
        })
        .collect();
    let lines: Vec<Vec<&str>> = outs.iter().map(|o| o.lines().collect()).collect();
    assert_eq!(lines[0].len(), 2, "{outs:?}");
    assert_ne!(lines[0][0], lines[1][0], "same hostname: {outs:?}");
    assert_eq!(lines[0][1].split_whitespace().count(), 16, "{outs:?}");
    assert_ne!(lines[0][1], lines[1][1], "same random bytes: {outs:?}");
}

/// Creates a long-running vm sandbox; returns its id and its clone's pid.
fn sleeping_sandbox(d: &Daemon) -> (String, u32) {
    let spec = json!({"image": "busybox", "argv": ["sleep", "600"]}).to_string();
    let (status, rec) = d.json("POST", "/v1/sandboxes", Some(&spec));
    assert_eq!(status, 201, "{rec}");
    assert_eq!(rec["isolation"], "vm");
    let pid = rec["agent_pid"].as_u64().expect("the clone's pid") as u32;
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    (rec["id"].as_str().unwrap().to_owned(), pid)
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(10), "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn deleting_a_vm_sandbox_leaves_no_clone_process() {
    if skip_without_hardware_kvm() {
        return;
    }
    let d = vm_daemon("vm-delete");
    let (id, pid) = sleeping_sandbox(&d);
    let (status, _) = d.request("DELETE", &format!("/v1/sandboxes/{id}?force=1"), None);
    assert_eq!(status, 204);
    wait_for("the clone process is gone", || {
        !Path::new(&format!("/proc/{pid}")).exists()
    });
    let socket = d.dir.join(format!("templates/default/clone-{pid}.vsock"));
    assert!(!socket.exists(), "{} left behind", socket.display());
}

#[test]
fn a_vm_sandbox_whose_clone_dies_fails_and_is_cleaned_up() {
    if skip_without_hardware_kvm() {
        return;
    }
    let d = vm_daemon("vm-dies");
    let (id, pid) = sleeping_sandbox(&d);
    // SAFETY: kill takes plain integers; the pid is the clone the daemon reported.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let mut rec = Value::Null;
    wait_for("the sandbox is failed", || {
        rec = d.json("GET", &format!("/v1/sandboxes/{id}"), None).1;
        rec["state"] == "failed"
    });
    assert!(
        rec["error"].as_str().unwrap_or_default().contains("clone"),
        "{rec}"
    );
    wait_for("the dead clone is reaped", || {
        !Path::new(&format!("/proc/{pid}")).exists()
    });
}

#[test]
fn the_template_process_reports_why_it_cannot_boot_on_its_protocol() {
    // Runs on every host: the kernel is checked before any VM is created.
    let dir = common::temp_dir("vm-host");
    let o = Command::new(spore_bin())
        .arg("template-host")
        .arg("--dir")
        .arg(dir.join("t"))
        .args([
            "--kernel",
            "/nonexistent/vmlinux",
            "--initrd",
            "/nonexistent/initrd",
        ])
        .args(["--memory-mib", "128", "--vcpus", "1"])
        .output()
        .expect("running spore template-host");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    let last = out.lines().last().unwrap_or_default();
    assert!(last.starts_with("ERR "), "{out}");
    assert!(last.contains("/nonexistent/vmlinux"), "{out}");
    // The empty disk slot was made before the boot was tried.
    let slot = std::fs::read_link(dir.join("t/slot")).unwrap();
    assert_eq!(slot, Path::new("/dev/null"));
    let _ = std::fs::remove_dir_all(&dir);
}
