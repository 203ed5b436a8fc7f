//! The template process's pieces that run without a guest: the slot, reply
//! parsing, and the daemon's side of the protocol against a fake template
//! process (a script speaking the same lines).

use spore_vmm::devices::virtio::block::Disk;

use super::*;

#[test]
fn replies_parse_and_errors_carry_the_message() {
    assert_eq!(
        parse_cloned("CLONED 42 1500 /run/t/clone-42.vsock"),
        Some((42, 1500, PathBuf::from("/run/t/clone-42.vsock")))
    );
    assert_eq!(parse_cloned("CLONED 42 1500 -"), None);
    assert_eq!(parse_cloned("CLONED x 1 /p"), None);
    let mut r = BufReader::new(&b"ERR no clone worker: fork failed\n"[..]);
    match read_reply(&mut r, || VmError::HostProtocol("gone".into())) {
        Err(VmError::HostFailed(m)) => assert_eq!(m, "no clone worker: fork failed"),
        other => panic!("{other:?}"),
    }
    let mut r = BufReader::new(&b""[..]);
    assert!(matches!(
        read_reply(&mut r, || VmError::HostProtocol("gone".into())),
        Err(VmError::HostProtocol(_))
    ));
}

#[test]
fn the_slot_points_where_told_and_back() {
    let dir = std::env::temp_dir().join(format!("spore-slot-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let slot = dir.join("slot");
    let image = dir.join("image.erofs");
    fs::write(&image, vec![7u8; 4096]).unwrap();
    point_slot(&slot, Path::new(EMPTY_SLOT)).unwrap();
    assert_eq!(fs::metadata(&slot).unwrap().len(), 0);
    point_slot(&slot, &image).unwrap();
    assert_eq!(fs::read_link(&slot).unwrap(), image);
    assert_eq!(fs::metadata(&slot).unwrap().len(), 4096);
    // What a clone's restore does with the captured block state: reopen the
    // *slot* by path. It sees the image's capacity (so it announces a config
    // change to the guest) and keeps the slot's path, so the next clone's
    // restore reopens the slot again rather than this image.
    let disk = Disk::open(&slot, true).unwrap();
    assert_eq!(disk.sectors(), 8);
    assert_eq!(disk.path(), slot);
    point_slot(&slot, Path::new(EMPTY_SLOT)).unwrap();
    assert_eq!(fs::read_link(&slot).unwrap(), Path::new(EMPTY_SLOT));
    fs::remove_dir_all(&dir).unwrap();
}

/// A fake `spore template-host`: a script speaking the protocol, whose clones
/// are `sleep` processes.
fn fake_host(dir: &Path, script: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    fs::create_dir_all(dir).unwrap();
    let path = dir.join("fake-host.sh");
    fs::write(&path, format!("#!/bin/sh\n{script}\n")).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn spec() -> TemplateSpec {
    TemplateSpec {
        kernel: "/k".into(),
        initrd: "/i".into(),
        memory_mib: 128,
        vcpus: 1,
        pool: 2,
    }
}

#[test]
fn the_daemon_side_follows_progress_orders_and_releases_clones() {
    let root = std::env::temp_dir().join(format!("spore-fakehost-{}", std::process::id()));
    let exe = fake_host(
        &root,
        r#"echo "PROGRESS booting the guest kernel and agent"
echo "PROGRESS agent ready after 5 ms; capturing"
echo "READY 134217728"
while read cmd a b; do
  case "$cmd" in
    CLONE) sleep 60 & echo "CLONED $! 1500 /run/t/clone-$!.vsock image=$b" ;;
    RELEASE) kill -9 "$a"; wait "$a" 2>/dev/null; echo OK ;;
    *) echo "ERR unknown command $cmd" ;;
  esac
done"#,
    );
    let mut seen = Vec::new();
    let host =
        TemplateHost::start_program(&exe, &spec(), &root.join("t"), |l| seen.push(l.to_owned()))
            .unwrap();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen[1].starts_with("agent ready"));
    assert_eq!(host.memory_bytes, 128 << 20);
    let vm = host.order(Path::new("/images/busybox.erofs")).unwrap();
    assert_eq!(vm.latency, Duration::from_nanos(1500));
    match &vm.endpoint {
        spore_agent::protocol::client::Endpoint::HybridVsock { path, port } => {
            let want = format!("/run/t/clone-{}.vsock image=/images/busybox.erofs", vm.pid);
            assert_eq!(path, Path::new(&want));
            assert_eq!(*port, spore_agent::protocol::AGENT_VSOCK_PORT);
        }
        other => panic!("{other:?}"),
    }
    assert!(Path::new(&format!("/proc/{}", vm.pid)).exists());
    host.release(vm.pid);
    assert!(!Path::new(&format!("/proc/{}", vm.pid)).exists());
    assert!(host.alive());
    // Dropping the handle ends the template process.
    let pid = host.pid();
    drop(host);
    assert!(!Path::new(&format!("/proc/{pid}/status")).exists());
    fs::remove_dir_all(&root).unwrap();
}

#[test]
fn a_template_process_that_fails_or_dies_is_an_error_with_the_reason() {
    let root = std::env::temp_dir().join(format!("spore-fakehost2-{}", std::process::id()));
    let failing = fake_host(
        &root.join("a"),
        "echo 'PROGRESS booting'\necho 'ERR kernel not found'\nexit 1",
    );
    match TemplateHost::start_program(&failing, &spec(), &root.join("a/t"), |_| {}) {
        Err(VmError::HostFailed(m)) => assert_eq!(m, "kernel not found"),
        other => panic!("{other:?}"),
    }
    let dying = fake_host(&root.join("b"), "echo 'something went wrong' >&2\nexit 3");
    match TemplateHost::start_program(&dying, &spec(), &root.join("b/t"), |_| {}) {
        Err(VmError::HostGone(status, log)) => {
            assert!(status.contains('3'), "{status}");
            let text = fs::read_to_string(log).unwrap();
            assert!(text.contains("something went wrong"), "{text}");
        }
        other => panic!("{other:?}"),
    }
    // A template process that dies after it was ready: no longer alive, and an
    // order says it is gone.
    let short = fake_host(&root.join("c"), "echo 'READY 4096'\nexit 0");
    let host = TemplateHost::start_program(&short, &spec(), &root.join("c/t"), |_| {}).unwrap();
    let start = std::time::Instant::now();
    while host.alive() && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(!host.alive());
    let err = host.order(Path::new("/i.erofs")).unwrap_err();
    assert!(
        matches!(err, VmError::HostGone(..) | VmError::HostIo(_)),
        "{err:?}"
    );
    fs::remove_dir_all(&root).unwrap();
}
