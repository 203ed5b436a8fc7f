//! Mounts a filesystem image read-only through a loop device — how the `process`
//! isolation backend gets its overlay lower layer. The mount is undone and the
//! loop device detached when the `Mount` is dropped.
//!
//! Owns the loop ioctls (`LOOP_CTL_GET_FREE`, `LOOP_CONFIGURE`, `LOOP_CLR_FD`; the
//! libc crate does not define them) and mount(2). Needs CAP_SYS_ADMIN.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::fsimage::{self, FsImageError};

// include/uapi/linux/loop.h
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LOOP_CLR_FD: libc::c_ulong = 0x4C01;
const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
/// Another process can take the free device between GET_FREE and CONFIGURE.
const ATTACH_TRIES: usize = 16;

#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// Why an image could not be mounted.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("cannot open {0:?}")]
    Open(PathBuf, #[source] io::Error),
    #[error("no free loop device (is the loop module loaded and /dev/loop-control present?)")]
    NoLoopDevice(#[source] io::Error),
    #[error("cannot attach {0:?} to a loop device")]
    Attach(PathBuf, #[source] io::Error),
    #[error("cannot mount {image:?} on {target:?} (needs root)")]
    Mount {
        image: PathBuf,
        target: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("unrecognised image")]
    Format(#[from] FsImageError),
}

/// A loop device backed by an image file, read-only; detached on drop.
pub struct LoopDevice {
    device: File,
    path: PathBuf,
}

impl LoopDevice {
    /// Attaches `image` read-only to a free loop device.
    pub fn attach_readonly(image: &Path) -> Result<LoopDevice, MountError> {
        let backing = File::open(image).map_err(|e| MountError::Open(image.to_path_buf(), e))?;
        let control = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/loop-control")
            .map_err(MountError::NoLoopDevice)?;
        let mut last = io::Error::from(io::ErrorKind::ResourceBusy);
        for _ in 0..ATTACH_TRIES {
            // SAFETY: LOOP_CTL_GET_FREE takes no argument and only returns a number.
            let n = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) };
            if n < 0 {
                return Err(MountError::NoLoopDevice(io::Error::last_os_error()));
            }
            let path = PathBuf::from(format!("/dev/loop{n}"));
            let device = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| MountError::Attach(image.to_path_buf(), e))?;
            let mut config = LoopConfig {
                fd: backing.as_raw_fd() as u32,
                block_size: 0,
                // SAFETY: LoopInfo64 is plain integers and byte arrays; all-zero is
                // its documented "nothing set" value.
                info: unsafe { std::mem::zeroed() },
                reserved: [0; 8],
            };
            config.info.lo_flags = LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR;
            let name = image.as_os_str().as_bytes();
            let len = name.len().min(63);
            config.info.lo_file_name[..len].copy_from_slice(&name[..len]);
            // SAFETY: `config` is a properly laid out `struct loop_config` that lives
            // across the call; the kernel only reads it. `backing` stays open until
            // after the call, and the kernel takes its own reference to the file.
            let rc = unsafe { libc::ioctl(device.as_raw_fd(), LOOP_CONFIGURE, &config) };
            if rc == 0 {
                return Ok(LoopDevice { device, path });
            }
            last = io::Error::last_os_error();
            if last.raw_os_error() != Some(libc::EBUSY) {
                break;
            }
        }
        Err(MountError::Attach(image.to_path_buf(), last))
    }

    /// `/dev/loopN`.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        // Auto-clear would detach on the last close anyway; clearing now makes the
        // device free at once. An error means it was already detached.
        // SAFETY: LOOP_CLR_FD takes no argument; `device` is an open loop device.
        let _ = unsafe { libc::ioctl(self.device.as_raw_fd(), LOOP_CLR_FD, 0) };
    }
}

/// A read-only mount of a filesystem image; unmounted and detached on drop.
pub struct Mount {
    target: PathBuf,
    /// Removed on drop when this mount created it.
    owned_target: bool,
    // Declared last: dropped after the unmount in `drop`.
    loop_device: LoopDevice,
}

impl Mount {
    pub fn target(&self) -> &Path {
        &self.target
    }

    pub fn device(&self) -> &Path {
        self.loop_device.path()
    }
}

/// Mounts `image` read-only on a fresh directory under the temp dir.
pub fn mount_readonly(image: &Path) -> Result<Mount, MountError> {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let target = std::env::temp_dir().join(format!("spore-mnt-{}-{n}", std::process::id()));
    fs::create_dir_all(&target).map_err(|e| MountError::Open(target.clone(), e))?;
    match mount_readonly_at(image, &target) {
        Ok(mut mount) => {
            mount.owned_target = true;
            Ok(mount)
        }
        Err(e) => {
            let _ = fs::remove_dir(&target);
            Err(e)
        }
    }
}

/// Mounts `image` (erofs or ext4, detected) read-only, nodev, on `target`.
pub fn mount_readonly_at(image: &Path, target: &Path) -> Result<Mount, MountError> {
    let format = fsimage::detect(image)?;
    let loop_device = LoopDevice::attach_readonly(image)?;
    let mount_err = |source| MountError::Mount {
        image: image.to_path_buf(),
        target: target.to_path_buf(),
        source,
    };
    let source = cstring(loop_device.path()).map_err(mount_err)?;
    let c_target = cstring(target).map_err(mount_err)?;
    let fstype = CString::new(format.fstype()).expect("no NUL in a constant");
    // SAFETY: all three strings are NUL-terminated and outlive the call; `data` is
    // null, which mount(2) accepts for no options.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            c_target.as_ptr(),
            fstype.as_ptr(),
            libc::MS_RDONLY | libc::MS_NODEV,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(mount_err(io::Error::last_os_error()));
    }
    Ok(Mount {
        target: target.to_path_buf(),
        owned_target: false,
        loop_device,
    })
}

fn cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Ok(target) = cstring(&self.target) {
            // SAFETY: `target` is a NUL-terminated path that outlives the call.
            let rc = unsafe { libc::umount2(target.as_ptr(), 0) };
            if rc != 0 {
                // Still in use (a process has its cwd there): detach lazily so the
                // loop device is freed when the last user goes.
                // SAFETY: as above.
                let _ = unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
            }
        }
        if self.owned_target {
            let _ = fs::remove_dir(&self.target);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loop_config_matches_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<LoopInfo64>(), 232);
        assert_eq!(std::mem::size_of::<LoopConfig>(), 304);
    }

    #[test]
    fn refuses_a_file_without_a_filesystem() {
        let path = std::env::temp_dir().join(format!("spore-mount-junk-{}", std::process::id()));
        fs::write(&path, [0u8; 8192]).unwrap();
        let err = mount_readonly(&path).err().unwrap();
        assert!(
            matches!(err, MountError::Format(FsImageError::Unknown(_))),
            "{err}"
        );
        fs::remove_file(path).unwrap();
    }
}
