//! What a VM is made of (`VmConfig`) and the checks that run before anything is
//! created, with messages that say what to do.

use std::fs::File;
use std::io::{self, Write};
use std::path::PathBuf;

use crate::arch::mptable;
use crate::layout::{CMDLINE_MAX_SIZE, VIRTIO_MAX_DEVICES};

/// Smallest guest that boots the minimal kernel.
pub const MIN_MEM_MIB: u32 = 32;
/// Largest guest RAM accepted (64 GiB).
pub const MAX_MEM_MIB: u32 = 64 * 1024;
/// Lowest guest CID that is not reserved (0 hypervisor, 1 loopback, 2 host).
pub const MIN_GUEST_CID: u32 = 3;

/// Where the guest's serial console goes.
pub enum Console {
    Stdout,
    /// Created (truncated) when the VM starts.
    File(PathBuf),
    Writer(Box<dyn Write + Send>),
    Null,
}

impl Console {
    /// The writer the serial device writes to.
    pub fn into_writer(self) -> io::Result<Box<dyn Write + Send>> {
        Ok(match self {
            Console::Stdout => Box::new(io::stdout()),
            Console::File(path) => Box::new(File::create(path)?),
            Console::Writer(w) => w,
            Console::Null => Box::new(io::sink()),
        })
    }
}

/// A virtio-vsock device whose host side is a unix socket (hybrid vsock).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VsockConfig {
    pub cid: u32,
    pub uds_path: PathBuf,
}

/// A virtio-blk disk backed by a host file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskConfig {
    pub path: PathBuf,
    pub read_only: bool,
}

/// Everything needed to boot one VM.
pub struct VmConfig {
    /// vmlinux (ELF) or bzImage.
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// Appended to spore's own kernel command line.
    pub cmdline_extra: String,
    pub mem_mib: u32,
    pub vcpus: u8,
    pub console: Console,
    pub vsock: Option<VsockConfig>,
    pub disks: Vec<DiskConfig>,
    pub rng: bool,
}

/// A configuration that cannot work, and what to do about it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("kernel image {0} not found — run `make kernel` (or `make guest`)")]
    KernelMissing(PathBuf),
    #[error("initramfs {0} not found — run `make initramfs`")]
    InitrdMissing(PathBuf),
    #[error("disk image {0} not found — build or attach an existing image file")]
    DiskMissing(PathBuf),
    #[error("{0} MiB of guest memory is outside {MIN_MEM_MIB}..={MAX_MEM_MIB} MiB")]
    Memory(u32),
    #[error("{0} vCPUs is outside 1..={max}", max = mptable::max_cpus())]
    Vcpus(u8),
    #[error("vsock CID {0} is reserved — use {MIN_GUEST_CID} or higher")]
    Cid(u32),
    #[error("vsock socket directory {0} does not exist — create it first")]
    SocketDir(PathBuf),
    #[error("{0} virtio devices requested, at most {VIRTIO_MAX_DEVICES} fit")]
    TooManyDevices(usize),
    #[error("extra kernel command line is {0} bytes; keep it well under {CMDLINE_MAX_SIZE}")]
    CmdlineTooLong(usize),
}

impl VmConfig {
    /// One vCPU, 128 MiB, no devices but the console on stdout.
    pub fn new(kernel: impl Into<PathBuf>) -> VmConfig {
        VmConfig {
            kernel: kernel.into(),
            initrd: None,
            cmdline_extra: String::new(),
            mem_mib: 128,
            vcpus: 1,
            console: Console::Stdout,
            vsock: None,
            disks: Vec::new(),
            rng: false,
        }
    }

    /// Number of virtio-mmio devices this VM gets.
    pub fn virtio_count(&self) -> usize {
        self.vsock.iter().count() + self.disks.len() + usize::from(self.rng)
    }

    /// Checks everything that can be checked before creating the VM.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.kernel.is_file() {
            return Err(ConfigError::KernelMissing(self.kernel.clone()));
        }
        if let Some(initrd) = self.initrd.as_ref().filter(|p| !p.is_file()) {
            return Err(ConfigError::InitrdMissing(initrd.clone()));
        }
        if let Some(disk) = self.disks.iter().find(|d| !d.path.is_file()) {
            return Err(ConfigError::DiskMissing(disk.path.clone()));
        }
        if !(MIN_MEM_MIB..=MAX_MEM_MIB).contains(&self.mem_mib) {
            return Err(ConfigError::Memory(self.mem_mib));
        }
        if self.vcpus == 0 || self.vcpus > mptable::max_cpus() {
            return Err(ConfigError::Vcpus(self.vcpus));
        }
        if let Some(vsock) = &self.vsock {
            if vsock.cid < MIN_GUEST_CID {
                return Err(ConfigError::Cid(vsock.cid));
            }
            let dir = vsock
                .uds_path
                .parent()
                .filter(|d| !d.as_os_str().is_empty());
            if let Some(dir) = dir.filter(|d| !d.is_dir()) {
                return Err(ConfigError::SocketDir(dir.to_path_buf()));
            }
        }
        if self.virtio_count() > VIRTIO_MAX_DEVICES as usize {
            return Err(ConfigError::TooManyDevices(self.virtio_count()));
        }
        if self.cmdline_extra.len() > CMDLINE_MAX_SIZE / 2 {
            return Err(ConfigError::CmdlineTooLong(self.cmdline_extra.len()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config whose "kernel" is a file that exists.
    fn manifest_config() -> VmConfig {
        VmConfig::new(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
    }

    #[test]
    fn default_config_is_valid() {
        assert_eq!(manifest_config().validate(), Ok(()));
    }

    #[test]
    fn missing_kernel_says_how_to_build_it() {
        let c = VmConfig::new("/nonexistent/vmlinux");
        let err = c.validate().unwrap_err();
        assert_eq!(
            err,
            ConfigError::KernelMissing("/nonexistent/vmlinux".into())
        );
        assert!(err.to_string().contains("make kernel"), "{err}");
    }

    #[test]
    fn rejects_bad_sizes() {
        let mut c = manifest_config();
        c.mem_mib = 4;
        assert_eq!(c.validate(), Err(ConfigError::Memory(4)));
        c.mem_mib = 128;
        c.vcpus = 0;
        assert_eq!(c.validate(), Err(ConfigError::Vcpus(0)));
        c.vcpus = mptable::max_cpus() + 1;
        assert!(matches!(c.validate(), Err(ConfigError::Vcpus(_))));
    }

    #[test]
    fn rejects_missing_files_and_reserved_cid() {
        let mut c = manifest_config();
        c.initrd = Some("/nonexistent/initrd".into());
        assert!(matches!(c.validate(), Err(ConfigError::InitrdMissing(_))));
        c.initrd = None;
        c.disks.push(DiskConfig {
            path: "/nonexistent/disk".into(),
            read_only: true,
        });
        assert!(matches!(c.validate(), Err(ConfigError::DiskMissing(_))));
        c.disks.clear();
        c.vsock = Some(VsockConfig {
            cid: 2,
            uds_path: "/tmp/v.sock".into(),
        });
        assert_eq!(c.validate(), Err(ConfigError::Cid(2)));
        c.vsock = Some(VsockConfig {
            cid: 3,
            uds_path: "/nonexistent-dir/v.sock".into(),
        });
        assert!(matches!(c.validate(), Err(ConfigError::SocketDir(_))));
    }

    #[test]
    fn counts_virtio_devices() {
        let mut c = manifest_config();
        c.rng = true;
        c.vsock = Some(VsockConfig {
            cid: 3,
            uds_path: "v.sock".into(),
        });
        assert_eq!(c.virtio_count(), 2);
        assert_eq!(c.validate(), Ok(()));
    }
}
