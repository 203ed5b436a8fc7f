//! The container's root filesystem: overlayfs over the image, the system
//! mounts, a minimal /dev, and pivot_root.
//!
//! Runs in the container's fresh mount namespace (stage 2's init), so nothing
//! mounted here is visible on the host: every mount dies with the namespace.
//! Owns the layout of the per-container run directory; does not choose the
//! image (the engine passes `lower`).

use std::fs::{self, File};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{symlink, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use libc::{MS_BIND, MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_PRIVATE, MS_RDONLY, MS_REC, MS_REMOUNT};

use crate::sys;

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("rootfs {0} not found")]
    LowerMissing(PathBuf, #[source] io::Error),
    #[error("rootfs {0} is neither a directory, a block device nor an image file")]
    LowerKind(PathBuf),
    #[error("cannot mount {what} on {target}")]
    Mount {
        what: String,
        target: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot create {0}")]
    Create(PathBuf, #[source] io::Error),
    #[error("cannot attach image {0} to a loop device")]
    Loop(PathBuf, #[source] io::Error),
    #[error("rootfs path {0} contains ',' or ':', which overlayfs options cannot carry")]
    UnsafePath(PathBuf),
    #[error("pivot_root into {0} failed")]
    Pivot(PathBuf, #[source] io::Error),
}

/// One filesystem mounted below the new root.
struct Mount {
    target: &'static str,
    fstype: &'static str,
    flags: libc::c_ulong,
    data: &'static str,
}

/// System mounts, in order (a parent before what is mounted inside it).
const MOUNTS: &[Mount] = &[
    Mount {
        target: "proc",
        fstype: "proc",
        flags: MS_NOSUID | MS_NODEV | MS_NOEXEC,
        data: "",
    },
    Mount {
        target: "dev",
        fstype: "tmpfs",
        flags: MS_NOSUID | MS_NODEV,
        data: "mode=755,size=65536k",
    },
    Mount {
        target: "dev/pts",
        fstype: "devpts",
        flags: MS_NOSUID | MS_NOEXEC,
        data: "newinstance,ptmxmode=0666,mode=0620,gid=5",
    },
    Mount {
        target: "dev/shm",
        fstype: "tmpfs",
        flags: MS_NOSUID | MS_NODEV | MS_NOEXEC,
        data: "mode=1777,size=65536k",
    },
    Mount {
        target: "dev/mqueue",
        fstype: "mqueue",
        flags: MS_NOSUID | MS_NODEV | MS_NOEXEC,
        data: "",
    },
    Mount {
        target: "sys",
        fstype: "sysfs",
        flags: MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY,
        data: "",
    },
];

/// Character devices in /dev: (name, major, minor), all mode 0666.
const DEVICES: &[(&str, u32, u32)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// Symlinks in /dev: (name, target).
const DEV_LINKS: &[(&str, &str)] = &[
    ("ptmx", "pts/ptmx"),
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
];

/// Kernel interfaces hidden from the container (OCI maskedPaths, docker's list).
const MASKED: &[&str] = &[
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
];

/// Kernel interfaces made read-only (OCI readonlyPaths, docker's list).
const READONLY: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

fn mount_err(what: impl Into<String>, target: &Path) -> impl FnOnce(io::Error) -> RootfsError + '_ {
    let what = what.into();
    move |source| RootfsError::Mount {
        what,
        target: target.to_owned(),
        source,
    }
}

fn mkdir(path: &Path) -> Result<(), RootfsError> {
    fs::create_dir_all(path).map_err(|e| RootfsError::Create(path.to_owned(), e))
}

/// Build the overlay root in `run_dir` and return where it is mounted.
pub fn prepare(run_dir: &Path, lower: &Path) -> Result<PathBuf, RootfsError> {
    // Nothing mounted from here on may propagate back to the host.
    sys::mount(None, Path::new("/"), None, MS_REC | MS_PRIVATE, None)
        .map_err(mount_err("private /", Path::new("/")))?;
    sys::mount(
        Some(Path::new("tmpfs")),
        run_dir,
        Some("tmpfs"),
        MS_NOSUID | MS_NODEV,
        Some("mode=755"),
    )
    .map_err(mount_err("tmpfs", run_dir))?;
    let [upper, work, merged] = ["upper", "work", "merged"].map(|d| run_dir.join(d));
    for dir in [&upper, &work, &merged] {
        mkdir(dir)?;
    }
    let lower = lower_dir(run_dir, lower)?;
    for path in [&lower, &upper, &work] {
        if path.to_string_lossy().contains([',', ':']) {
            return Err(RootfsError::UnsafePath(path.clone()));
        }
    }
    // The overlay's root directory takes the upper directory's owner and
    // mode: make them the image's, not those of a fresh directory.
    let meta = fs::metadata(&lower).map_err(|e| RootfsError::LowerMissing(lower.clone(), e))?;
    fs::set_permissions(&upper, meta.permissions())
        .map_err(|e| RootfsError::Create(upper.clone(), e))?;
    std::os::unix::fs::chown(&upper, Some(meta.uid()), Some(meta.gid()))
        .map_err(|e| RootfsError::Create(upper.clone(), e))?;
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    // nodev: see mount_system; the real device nodes are bind mounts.
    sys::mount(
        Some(Path::new("overlay")),
        &merged,
        Some("overlay"),
        MS_NODEV,
        Some(&data),
    )
    .map_err(mount_err("overlay", &merged))?;
    Ok(merged)
}

/// The lower layer as a directory: `lower` itself, or the filesystem on the
/// block device or image file `lower`, mounted read-only in `run_dir/lower`.
fn lower_dir(run_dir: &Path, lower: &Path) -> Result<PathBuf, RootfsError> {
    let kind = fs::metadata(lower)
        .map_err(|e| RootfsError::LowerMissing(lower.to_owned(), e))?
        .file_type();
    // `_loop_dev` holds an auto-clearing loop device until it is mounted.
    let (device, _loop_dev) = if kind.is_dir() {
        return Ok(lower.to_owned());
    } else if kind.is_block_device() {
        wait_for_media(lower);
        (lower.to_owned(), None)
    } else if kind.is_file() {
        let image = File::open(lower).map_err(|e| RootfsError::Loop(lower.to_owned(), e))?;
        let (path, dev) = sys::loop_attach_readonly(image.as_fd())
            .map_err(|e| RootfsError::Loop(lower.to_owned(), e))?;
        (path, Some(dev))
    } else {
        return Err(RootfsError::LowerKind(lower.to_owned()));
    };
    let target = run_dir.join("lower");
    mkdir(&target)?;
    let mut last = None;
    for fstype in ["erofs", "ext4"] {
        match sys::mount(Some(&device), &target, Some(fstype), MS_RDONLY, None) {
            Ok(()) => return Ok(target),
            Err(e) => last = Some(e),
        }
    }
    let err = last.unwrap_or_else(|| io::ErrorKind::Unsupported.into());
    Err(mount_err(
        format!("{} (erofs or ext4)", lower.display()),
        &target,
    )(err))
}

/// How long a block device lower may take to show its media.
const MEDIA_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// A cloned VM gets its image put into an empty disk slot just before it
/// resumes; the guest learns the new capacity from a config-change interrupt
/// that may still be in flight. Wait (bounded) until the device has a size; the
/// mount that follows reports the error if it never does.
fn wait_for_media(device: &Path) {
    let deadline = std::time::Instant::now() + MEDIA_WAIT;
    let size = || {
        File::open(device)
            .and_then(|mut f| io::Seek::seek(&mut f, io::SeekFrom::End(0)))
            .unwrap_or(0)
    };
    while size() == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Mount /proc, /dev (with its devices and links), /sys and friends under `root`.
pub fn mount_system(run_dir: &Path, root: &Path) -> Result<(), RootfsError> {
    for m in MOUNTS {
        let target = root.join(m.target);
        mkdir(&target)?;
        let data = (!m.data.is_empty()).then_some(m.data);
        sys::mount(
            Some(Path::new(m.fstype)),
            &target,
            Some(m.fstype),
            m.flags,
            data,
        )
        .map_err(mount_err(m.fstype, &target))?;
    }
    // The device nodes are made on a staging tmpfs of their own and bound
    // into /dev one by one: the root and /dev are mounted nodev, so a node
    // the container makes itself (it keeps CAP_MKNOD) opens nothing.
    let staging = run_dir.join("devices");
    mkdir(&staging)?;
    sys::mount(
        Some(Path::new("tmpfs")),
        &staging,
        Some("tmpfs"),
        MS_NOSUID,
        Some("mode=755"),
    )
    .map_err(mount_err("tmpfs", &staging))?;
    let dev = root.join("dev");
    for &(name, major, minor) in DEVICES {
        bind_device(&staging.join(name), &dev.join(name), major, minor)?;
    }
    for &(name, target) in DEV_LINKS {
        let link = dev.join(name);
        symlink(target, &link).map_err(|e| RootfsError::Create(link, e))?;
    }
    Ok(())
}

/// mknod `node` and bind it onto `target`; where mknod is not allowed (a
/// host whose device cgroup forbids it), bind the host's node instead.
fn bind_device(node: &Path, target: &Path, major: u32, minor: u32) -> Result<(), RootfsError> {
    let source = match sys::mknod_char(node, 0o666, major, minor) {
        Ok(()) => node.to_owned(),
        Err(_) => Path::new("/dev").join(node.file_name().unwrap_or_default()),
    };
    File::create(target).map_err(|e| RootfsError::Create(target.to_owned(), e))?;
    sys::mount(Some(&source), target, None, MS_BIND, None)
        .map_err(mount_err(source.display().to_string(), target))
}

/// Make `root` the root directory and detach the old root entirely.
///
/// pivot_root cannot leave an initramfs (the namespace's root mount has no
/// parent: EINVAL); then, or when `no_pivot` asks for it, [`move_root`].
pub fn pivot(root: &Path, no_pivot: bool) -> Result<(), RootfsError> {
    let fail = |e| RootfsError::Pivot(root.to_owned(), e);
    std::env::set_current_dir(root).map_err(fail)?;
    // pivot_root(".", ".") stacks the old root on top of the new one; the
    // detach then removes it without needing a put_old directory.
    let pivoted = if no_pivot {
        Err(io::Error::from_raw_os_error(libc::EINVAL))
    } else {
        sys::pivot_root(Path::new("."), Path::new("."))
    };
    match pivoted {
        Ok(()) => sys::umount2(Path::new("."), libc::MNT_DETACH).map_err(fail)?,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => move_root(root)?,
        Err(e) => return Err(fail(e)),
    }
    std::env::set_current_dir("/").map_err(fail)
}

/// runc's `--no-pivot` way: detach every mount that is neither `root`, below
/// it, nor one of its ancestors, move `root` over `/`, and chroot into it.
/// Weaker than pivot_root (the ancestors stay in the mount table, hidden
/// below the new root), so it is only the fallback.
fn move_root(root: &Path) -> Result<(), RootfsError> {
    let fail = |e| RootfsError::Pivot(root.to_owned(), e);
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").map_err(fail)?;
    for target in foreign_mounts(&mountinfo, root) {
        // A mount below one detached earlier is already gone.
        let _ = sys::umount2(&target, libc::MNT_DETACH);
    }
    sys::mount(
        Some(Path::new(".")),
        Path::new("/"),
        None,
        libc::MS_MOVE,
        None,
    )
    .map_err(fail)?;
    sys::chroot(Path::new(".")).map_err(fail)
}

/// Mount points of a mountinfo listing unrelated to `root`, deepest first.
fn foreign_mounts(mountinfo: &str, root: &Path) -> Vec<PathBuf> {
    let mut targets: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|t| PathBuf::from(unescape_mountinfo(t)))
        .filter(|t| !t.starts_with(root) && !root.starts_with(t))
        .collect();
    targets.sort_by_key(|t| std::cmp::Reverse(t.components().count()));
    targets.dedup();
    targets
}

/// mountinfo writes space, tab, newline and backslash as `\ooo` octal.
fn unescape_mountinfo(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut rest = field;
    while let Some(pos) = rest.find('\\') {
        out.push_str(&rest[..pos]);
        let code = rest
            .get(pos + 1..pos + 4)
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(c) => {
                out.push(char::from(c));
                rest = &rest[pos + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[pos + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// /etc/hostname and /etc/hosts naming `hostname`, as docker provides them
/// (after pivot: they land in the overlay's upper layer, the image is
/// untouched). Images without /etc get none.
pub fn write_identity_files(hostname: &str) -> Result<(), RootfsError> {
    let etc = Path::new("/etc");
    if !etc.is_dir() {
        return Ok(());
    }
    let hosts = format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n"
    );
    for (name, content) in [("hostname", format!("{hostname}\n")), ("hosts", hosts)] {
        let path = etc.join(name);
        // Stage 2 runs with umask 0: set the mode a new file should have.
        fs::write(&path, content)
            .and_then(|()| fs::set_permissions(&path, fs::Permissions::from_mode(0o644)))
            .map_err(|e| RootfsError::Create(path, e))?;
    }
    Ok(())
}

/// Hide and write-protect the kernel interfaces docker hides (after pivot).
pub fn restrict_kernel_interfaces() -> Result<(), RootfsError> {
    for path in MASKED.iter().map(Path::new).filter(|p| p.exists()) {
        let result = if path.is_dir() {
            sys::mount(
                Some(Path::new("tmpfs")),
                path,
                Some("tmpfs"),
                MS_RDONLY,
                None,
            )
        } else {
            sys::mount(Some(Path::new("/dev/null")), path, None, MS_BIND, None)
        };
        result.map_err(mount_err("mask", path))?;
    }
    for path in READONLY.iter().map(Path::new).filter(|p| p.exists()) {
        sys::mount(Some(path), path, None, MS_BIND | MS_REC, None)
            .map_err(mount_err("bind", path))?;
        let flags = MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC;
        sys::mount(None, path, None, flags, None).map_err(mount_err("read-only", path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_come_after_their_parents() {
        for (i, m) in MOUNTS.iter().enumerate() {
            if let Some((parent, _)) = m.target.rsplit_once('/') {
                let pos = MOUNTS.iter().position(|p| p.target == parent);
                assert!(
                    pos.is_some_and(|p| p < i),
                    "{} before its parent {parent}",
                    m.target
                );
            }
        }
    }

    #[test]
    fn sys_is_read_only_and_devpts_is_private() {
        let sys = MOUNTS.iter().find(|m| m.target == "sys").unwrap();
        assert_ne!(sys.flags & MS_RDONLY, 0);
        let pts = MOUNTS.iter().find(|m| m.fstype == "devpts").unwrap();
        assert!(pts.data.contains("newinstance"));
    }

    #[test]
    fn the_dev_basics_are_there() {
        for name in ["null", "zero", "full", "random", "urandom", "tty"] {
            assert!(DEVICES.iter().any(|d| d.0 == name), "{name}");
        }
        assert!(DEV_LINKS.contains(&("ptmx", "pts/ptmx")));
    }

    #[test]
    fn only_unrelated_mounts_are_detached_deepest_first() {
        let info = "1 0 0:1 / / rw - rootfs rootfs rw\n\
                    2 1 0:2 / /proc rw - proc proc rw\n\
                    3 1 0:3 / /run rw - tmpfs tmpfs rw\n\
                    4 3 0:4 / /run/c1 rw - tmpfs tmpfs rw\n\
                    5 4 0:5 / /run/c1/merged rw - overlay overlay rw\n\
                    6 5 0:6 / /run/c1/merged/proc rw - proc proc rw\n\
                    7 2 0:7 / /proc/sys/fs/binfmt_misc rw - binfmt binfmt rw\n\
                    8 1 0:8 / /my\\040disk rw - ext4 /dev/vdb rw\n";
        let got = foreign_mounts(info, Path::new("/run/c1/merged"));
        let want: Vec<PathBuf> = ["/proc/sys/fs/binfmt_misc", "/proc", "/my disk"]
            .iter()
            .map(PathBuf::from)
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn mountinfo_escapes_decode() {
        assert_eq!(unescape_mountinfo("a\\040b\\011c\\134d"), "a b\tc\\d");
        assert_eq!(unescape_mountinfo("plain\\x"), "plain\\x");
    }

    #[test]
    fn a_missing_lower_is_named() {
        let err = lower_dir(Path::new("/tmp"), Path::new("/nonexistent/rootfs")).unwrap_err();
        assert_eq!(err.to_string(), "rootfs /nonexistent/rootfs not found");
    }
}
