//! PID 1 duties in the guest: mount the kernel file systems, give the agent a
//! console for fds 0-2, and prepare the cgroup v2 tree the engine puts containers
//! in. In host mode the agent only becomes a child subreaper.
//!
//! Reaping children is the server's reaper (it must route every exit to the
//! engine); nothing here calls waitpid.

use std::fs;
use std::io;
use std::os::fd::IntoRawFd;
use std::path::{Path, PathBuf};

use crate::server::os::{self, OsError};

/// Errors of PID 1 setup.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("cannot mount {0}")]
    Mount(&'static str, #[source] OsError),
    #[error("cannot create {0}")]
    Mkdir(String, #[source] io::Error),
    #[error("cannot enable cgroup controllers in {0}")]
    Cgroup(String, #[source] io::Error),
    #[error("cannot become a child subreaper")]
    Subreaper(#[source] OsError),
}

/// One kernel file system PID 1 mounts.
struct Mount {
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: libc::c_ulong,
    data: &'static str,
}

const NOSUID_NODEV_NOEXEC: libc::c_ulong = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;

/// In mount order: /dev before /dev/pts and /dev/shm, /sys before its cgroup.
const MOUNTS: &[Mount] = &[
    Mount {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
    },
    Mount {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
    },
    Mount {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: libc::MS_NOSUID,
        data: "mode=0755",
    },
    Mount {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: libc::MS_NOSUID | libc::MS_NOEXEC,
        data: "newinstance,ptmxmode=0666,mode=0620",
    },
    Mount {
        source: "shm",
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: libc::MS_NOSUID | libc::MS_NODEV,
        data: "mode=1777",
    },
    Mount {
        source: "cgroup2",
        target: "/sys/fs/cgroup",
        fstype: "cgroup2",
        flags: NOSUID_NODEV_NOEXEC,
        data: "nsdelegate",
    },
    Mount {
        source: "tmpfs",
        target: "/tmp",
        fstype: "tmpfs",
        flags: libc::MS_NOSUID | libc::MS_NODEV,
        data: "mode=1777",
    },
];

/// The cgroup controllers containers get limits from.
pub const CONTROLLERS: &[&str] = &["cpu", "cpuset", "memory", "pids"];

/// Where the engine's containers live in the guest's cgroup tree.
pub const GUEST_CGROUP_ROOT: &str = "/sys/fs/cgroup/spore";

/// statfs magic numbers of the file systems an initramfs root can be.
const RAMFS_MAGIC: i64 = 0x8584_58f6;
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// Guest PID 1 setup, in order. Mount failures are fatal: a guest without /proc
/// or cgroups cannot run containers.
pub fn setup_pid1() -> Result<(), InitError> {
    leave_initramfs()?;
    for m in MOUNTS {
        mkdir(m.target)?;
        os::mount(m.source, m.target, m.fstype, m.flags, m.data)
            .map_err(|e| InitError::Mount(m.target, e))?;
    }
    console_fds();
    enable_controllers(Path::new("/sys/fs/cgroup"), Path::new(GUEST_CGROUP_ROOT))
}

/// Moves the root onto a fresh tmpfs when the agent runs from the initramfs.
///
/// The initramfs is the root of the whole mount tree, and pivot_root(2) cannot
/// move that root away, so containers could then only be chroot'ed (weaker: a
/// chroot is escapable with CAP_SYS_CHROOT). After `switch_root`'s dance — mount
/// a tmpfs, move it over `/`, chroot into it — the root is an ordinary mount and
/// every container gets a real pivot_root. The agent binary stays mapped; nothing
/// else from the initramfs is needed.
fn leave_initramfs() -> Result<(), InitError> {
    let on_initramfs = matches!(os::fs_type("/"), Ok(RAMFS_MAGIC | TMPFS_MAGIC))
        && !Path::new(SWITCHED_MARKER).exists();
    if !on_initramfs {
        return Ok(());
    }
    const NEW_ROOT: &str = "/.spore-root";
    mkdir(NEW_ROOT)?;
    os::mount("tmpfs", NEW_ROOT, "tmpfs", libc::MS_NOSUID, "mode=0755")
        .map_err(|e| InitError::Mount(NEW_ROOT, e))?;
    std::env::set_current_dir(NEW_ROOT).map_err(|e| InitError::Mkdir(NEW_ROOT.into(), e))?;
    os::mount(".", "/", "", libc::MS_MOVE, "").map_err(|e| InitError::Mount("/", e))?;
    os::chroot(".").map_err(|e| InitError::Mount("/ (chroot)", e))?;
    std::env::set_current_dir("/").map_err(|e| InitError::Mkdir("/".into(), e))?;
    fs::write(SWITCHED_MARKER, b"").map_err(|e| InitError::Mkdir(SWITCHED_MARKER.into(), e))
}

/// Left in the new root so a restarted agent does not switch twice.
const SWITCHED_MARKER: &str = "/.spore-switched-root";

/// Host mode: adopt orphaned descendants so the reaper sees their exits.
pub fn setup_host() -> Result<(), InitError> {
    os::set_child_subreaper().map_err(InitError::Subreaper)
}

fn mkdir(path: &str) -> Result<(), InitError> {
    fs::create_dir_all(path).map_err(|e| InitError::Mkdir(path.into(), e))
}

/// The kernel starts init with fds 0-2 on /dev/console only if the initramfs has
/// that node. Without them, the first sockets the agent opens would land on 0-2
/// and leak into children as stdio; fill the gaps now.
fn console_fds() {
    for fd in 0..3 {
        if os::fd_is_open(fd) {
            continue;
        }
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/console")
            .or_else(|_| {
                fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open("/dev/null")
            });
        // The lowest free descriptor is `fd`; keep it open for the agent's life.
        if let Ok(f) = file {
            let _ = f.into_raw_fd();
        }
    }
}

/// cgroup v2 delegates controllers one level at a time: enable them in the
/// root's `cgroup.subtree_control`, create `sub`, and enable them in its
/// `cgroup.subtree_control` so each container cgroup below it gets them. `sub`
/// stays empty of processes (the no-internal-process rule).
pub fn enable_controllers(root: &Path, sub: &Path) -> Result<(), InitError> {
    let line = controller_line(CONTROLLERS);
    let write = |dir: &Path| {
        let f = dir.join("cgroup.subtree_control");
        fs::write(&f, &line).map_err(|e| InitError::Cgroup(f.display().to_string(), e))
    };
    write(root)?;
    fs::create_dir_all(sub).map_err(|e| InitError::Mkdir(sub.display().to_string(), e))?;
    write(sub)
}

/// Host mode's default engine cgroup root: `spore` under the host's cgroup v2
/// mount (`/sys/fs/cgroup` on a pure v2 host, `/sys/fs/cgroup/unified` on a
/// hybrid one).
pub fn default_host_cgroup_root() -> PathBuf {
    let unified = Path::new("/sys/fs/cgroup/unified");
    if !Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
        && unified.join("cgroup.procs").exists()
    {
        return unified.join("spore");
    }
    PathBuf::from(GUEST_CGROUP_ROOT)
}

/// Host mode: prepare `sub` as the engine's cgroup root below `parent` with
/// whichever of [`CONTROLLERS`] the parent offers (a hybrid host's cgroup v2 may
/// offer none; the engine then refuses limits rather than ignoring them).
/// Returns the controllers enabled.
pub fn prepare_host_cgroup(sub: &Path) -> Result<Vec<&'static str>, InitError> {
    let parent = sub.parent().unwrap_or(Path::new("/"));
    let offered = fs::read_to_string(parent.join("cgroup.controllers")).unwrap_or_default();
    let usable: Vec<&str> = CONTROLLERS
        .iter()
        .copied()
        .filter(|c| offered.split_whitespace().any(|o| o == *c))
        .collect();
    if usable.is_empty() {
        fs::create_dir_all(sub).map_err(|e| InitError::Mkdir(sub.display().to_string(), e))?;
        return Ok(usable);
    }
    let line = controller_line(&usable);
    let write = |dir: &Path| {
        let f = dir.join("cgroup.subtree_control");
        fs::write(&f, &line).map_err(|e| InitError::Cgroup(f.display().to_string(), e))
    };
    write(parent)?;
    fs::create_dir_all(sub).map_err(|e| InitError::Mkdir(sub.display().to_string(), e))?;
    write(sub)?;
    Ok(usable)
}

/// `"+cpu +memory"` from `["cpu", "memory"]`.
fn controller_line(controllers: &[&str]) -> String {
    controllers
        .iter()
        .map(|c| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_order_puts_parents_first() {
        for (i, m) in MOUNTS.iter().enumerate() {
            let parent = Path::new(m.target).parent().unwrap();
            if parent != Path::new("/") {
                let pos = MOUNTS
                    .iter()
                    .position(|p| Path::new(m.target).starts_with(p.target) && p.target != m.target)
                    .unwrap_or_else(|| panic!("{} has no parent mount", m.target));
                assert!(pos < i, "{} mounted before its parent", m.target);
            }
        }
        let pts = MOUNTS.iter().find(|m| m.target == "/dev/pts").unwrap();
        assert!(pts.data.contains("newinstance") && pts.data.contains("ptmxmode=0666"));
    }

    #[test]
    fn controllers_are_enabled_at_both_levels() {
        let dir = std::env::temp_dir().join(format!("spore-init-{}", std::process::id()));
        let sub = dir.join("spore");
        fs::create_dir_all(&dir).unwrap();
        enable_controllers(&dir, &sub).unwrap();
        let expect = "+cpu +cpuset +memory +pids";
        assert_eq!(
            fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap(),
            expect
        );
        assert_eq!(
            fs::read_to_string(sub.join("cgroup.subtree_control")).unwrap(),
            expect
        );
        fs::remove_dir_all(&dir).unwrap();
        assert!(enable_controllers(&dir.join("missing/x"), &sub).is_err());
    }

    #[test]
    fn host_cgroup_uses_only_offered_controllers() {
        let dir = std::env::temp_dir().join(format!("spore-init-host-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("cgroup.controllers"), "cpu io memory\n").unwrap();
        let sub = dir.join("spore");
        assert_eq!(prepare_host_cgroup(&sub).unwrap(), vec!["cpu", "memory"]);
        assert_eq!(
            fs::read_to_string(sub.join("cgroup.subtree_control")).unwrap(),
            "+cpu +memory"
        );
        fs::write(dir.join("cgroup.controllers"), "").unwrap();
        let bare = dir.join("bare");
        assert!(prepare_host_cgroup(&bare).unwrap().is_empty());
        assert!(bare.is_dir());
        fs::remove_dir_all(&dir).unwrap();
    }
}
