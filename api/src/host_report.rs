//! What this host can do for spore: KVM kind, guest user space, cgroup layout.
//!
//! Owns the facts `spore doctor` prints about the host itself; booting a guest
//! is `boot.rs`'s job.

use std::path::Path;

use serde::Serialize;
use spore_vmm::host::HostKvm;

/// How the host's cgroups are mounted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CgroupLayout {
    /// "v2" (unified), "hybrid" (v1 controllers plus a cgroup2 mount), "v1" or "none".
    pub mode: String,
    /// Mount point of the cgroup2 hierarchy, if any.
    pub v2_mount: Option<String>,
    /// Controllers available in the cgroup2 hierarchy's root.
    pub v2_controllers: Vec<String>,
    /// Controllers mounted as cgroup v1 hierarchies.
    pub v1_controllers: Vec<String>,
}

/// cgroup v1 controller names (mount options that are not controllers are skipped).
const V1_CONTROLLERS: &[&str] = &[
    "blkio",
    "cpu",
    "cpuacct",
    "cpuset",
    "devices",
    "freezer",
    "hugetlb",
    "memory",
    "misc",
    "net_cls",
    "net_prio",
    "perf_event",
    "pids",
    "rdma",
];

/// Reads the cgroup layout from a mountinfo text (`/proc/self/mountinfo`) and a
/// function returning the contents of a file (for `cgroup.controllers`).
pub fn cgroup_layout(mountinfo: &str, read: impl Fn(&Path) -> Option<String>) -> CgroupLayout {
    let mut v2_mount = None;
    let mut v1_controllers = Vec::new();
    for line in mountinfo.lines() {
        // "<id> <parent> <maj:min> <root> <mount point> <opts> ... - <fstype> <source> <super opts>"
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mount_point = left.split(' ').nth(4).unwrap_or_default();
        let mut right = right.split(' ');
        let fstype = right.next().unwrap_or_default();
        let super_opts = right.nth(1).unwrap_or_default();
        match fstype {
            "cgroup2" if v2_mount.is_none() => v2_mount = Some(mount_point.to_owned()),
            "cgroup" => v1_controllers.extend(
                super_opts
                    .split(',')
                    .filter(|o| V1_CONTROLLERS.contains(o))
                    .map(str::to_owned),
            ),
            _ => {}
        }
    }
    let v2_controllers = v2_mount
        .as_deref()
        .and_then(|m| read(&Path::new(m).join("cgroup.controllers")))
        .map(|s| s.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    let mode = match (&v2_mount, v1_controllers.is_empty()) {
        (Some(m), true) if m == "/sys/fs/cgroup" => "v2",
        (Some(_), false) => "hybrid",
        (Some(_), true) => "v2",
        (None, false) => "v1",
        (None, true) => "none",
    };
    v1_controllers.sort();
    v1_controllers.dedup();
    CgroupLayout {
        mode: mode.to_owned(),
        v2_mount,
        v2_controllers,
        v1_controllers,
    }
}

/// The host part of `spore doctor`.
#[derive(Clone, Debug, Serialize)]
pub struct HostReport {
    pub kvm: HostKvm,
    pub guest_user_space: bool,
    pub cgroups: CgroupLayout,
}

impl HostReport {
    pub fn collect() -> Self {
        let kvm = HostKvm::detect();
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        HostReport {
            guest_user_space: kvm.can_run_guest_user_space(),
            kvm,
            cgroups: cgroup_layout(&mountinfo, |p| std::fs::read_to_string(p).ok()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
30 25 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
33 30 0:29 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
34 30 0:30 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct
35 30 0:31 / /sys/fs/cgroup/systemd rw,nosuid - cgroup cgroup rw,xattr,name=systemd";

    #[test]
    fn hybrid_layout() {
        let l = cgroup_layout(HYBRID, |p| {
            assert_eq!(p, Path::new("/sys/fs/cgroup/unified/cgroup.controllers"));
            Some("hugetlb\n".into())
        });
        assert_eq!(l.mode, "hybrid");
        assert_eq!(l.v2_mount.as_deref(), Some("/sys/fs/cgroup/unified"));
        assert_eq!(l.v2_controllers, vec!["hugetlb"]);
        assert_eq!(l.v1_controllers, vec!["cpu", "cpuacct", "memory"]);
    }

    #[test]
    fn unified_layout() {
        let l = cgroup_layout(
            "29 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate",
            |_| Some("cpuset cpu io memory pids".into()),
        );
        assert_eq!(l.mode, "v2");
        assert_eq!(l.v2_controllers.len(), 5);
        assert!(l.v1_controllers.is_empty());
    }

    #[test]
    fn no_cgroups() {
        assert_eq!(cgroup_layout("", |_| None).mode, "none");
    }
}
