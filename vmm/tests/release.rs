//! Dropping a `VmHandle` releases what the VM made: threads, file descriptors and
//! guest memory. Its own test binary, so no other test's VMs are counted.

use std::time::Duration;

use spore_vmm::builder::{start_raw, RawGuest};
use spore_vmm::config::Console;
use spore_vmm::VmExit;

fn count(dir: &str) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

/// Resident set size in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn dropping_a_running_vm_releases_threads_fds_and_memory() {
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        eprintln!("skipped: /dev/kvm is not usable by this user");
        return;
    }
    // Warm up once so lazily created process-wide state (signal handler) exists.
    let warm = RawGuest {
        mem_mib: 16,
        load: vec![(0x1000, vec![0xb0, 0x00, 0xe6, 0xf4, 0xf4])],
        entry: 0x1000,
        console: Console::Null,
        io_devices: Vec::new(),
        mmio_devices: Vec::new(),
    };
    assert_eq!(start_raw(warm).unwrap().wait(), VmExit::PowerOff);

    let (threads, fds, rss) = (count("/proc/self/task"), count("/proc/self/fd"), rss_kib());
    // A guest that touches 64 MiB of its RAM, then spins.
    let code = vec![
        0xbf, 0x00, 0x00, 0x10, 0x00, // mov edi, 0x100000
        0xb9, 0x00, 0x40, 0x00, 0x00, // mov ecx, 0x4000 (pages)
        0xc6, 0x07, 0x01, // again: mov byte [rdi], 1
        0x48, 0x81, 0xc7, 0x00, 0x10, 0x00, 0x00, // add rdi, 0x1000
        0xe2, 0xf4, // loop again
        0xb0, 0x07, 0xe6, 0xe0, // mov al, 7; out 0xe0, al  (unmapped: ignored)
        0xeb, 0xfe, // jmp $
    ];
    let guest = RawGuest {
        mem_mib: 128,
        load: vec![(0x1000, code)],
        entry: 0x1000,
        console: Console::Null,
        io_devices: Vec::new(),
        mmio_devices: Vec::new(),
    };
    let vm = start_raw(guest).unwrap();
    assert_eq!(vm.wait_timeout(Duration::from_millis(1500)), None);
    assert!(count("/proc/self/task") > threads, "VM threads are running");
    assert!(count("/proc/self/fd") > fds, "VM fds are open");
    assert!(rss_kib() > rss + 48 * 1024, "the guest dirtied its 64 MiB");
    drop(vm);

    assert_eq!(count("/proc/self/task"), threads, "threads left behind");
    assert_eq!(count("/proc/self/fd"), fds, "fds left behind");
    // The guest's dirtied pages are gone with the memfd (allow some allocator slack).
    assert!(rss_kib() < rss + 16 * 1024, "guest memory still resident");
}
