//! Putting a Linux kernel into guest memory for the 64-bit boot protocol: the
//! image (ELF vmlinux, or bzImage), the initrd, the command line and the zero page.
//!
//! Does not decide what goes on the command line beyond spore's base options and
//! the order of the parts; the builder supplies device entries and extras.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::{load_cmdline, BzImage, Elf, KernelLoader, KernelLoaderResult};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::arch::boot_params::{self, BootInputs, BootParamsError};
use crate::arch::Quirks;
use crate::layout::{CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START};
use crate::memory::low_ram_end;

/// spore's own kernel command line, before devices, quirks and the user's extra.
pub const BASE_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 nomodule spore.exit_port=0xf4";
/// Offset of the 64-bit entry point in a bzImage's protected-mode code.
const BZIMAGE_ENTRY_64: u64 = 0x200;

/// Errors from loading the kernel and its boot data.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("cannot open kernel image {0}")]
    Open(PathBuf, #[source] std::io::Error),
    #[error("kernel image {path} is neither a loadable ELF vmlinux ({elf}) nor a bzImage ({bzimage}) — rebuild it with `make kernel`")]
    Format {
        path: PathBuf,
        elf: String,
        bzimage: String,
    },
    #[error("cannot read initramfs {0}")]
    Initrd(PathBuf, #[source] std::io::Error),
    #[error("writing the initramfs into guest memory failed")]
    InitrdWrite(#[source] vm_memory::GuestMemoryError),
    #[error("kernel command line")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    #[error("writing the kernel command line failed")]
    LoadCmdline(#[source] linux_loader::loader::Error),
    #[error("boot parameters")]
    BootParams(#[from] BootParamsError),
}

/// The kernel command line: base options, one entry per virtio device, the
/// host quirks' options, then the caller's extra.
pub fn cmdline(virtio_entries: &[String], quirks: Quirks, extra: &str) -> String {
    let mut parts = vec![BASE_CMDLINE];
    parts.extend(virtio_entries.iter().map(String::as_str));
    parts.push(quirks.cmdline());
    parts.push(extra.trim());
    parts.retain(|p| !p.is_empty());
    parts.join(" ")
}

/// Loads an ELF vmlinux, or failing that a bzImage, at 1 MiB and up.
pub fn load(mem: &GuestMemoryMmap<()>, path: &Path) -> Result<KernelLoaderResult, KernelError> {
    let mut file = File::open(path).map_err(|e| KernelError::Open(path.into(), e))?;
    let himem = Some(GuestAddress(HIMEM_START));
    let elf = match Elf::load(mem, None, &mut file, himem) {
        Ok(result) => return Ok(result),
        Err(e) => e.to_string(),
    };
    file.seek(SeekFrom::Start(0))
        .map_err(|e| KernelError::Open(path.into(), e))?;
    BzImage::load(mem, None, &mut file, himem).map_err(|bz| KernelError::Format {
        path: path.into(),
        elf,
        bzimage: bz.to_string(),
    })
}

/// An ELF's entry is its 64-bit entry; a bzImage's is 0x200 into its code.
pub fn entry(kernel: &KernelLoaderResult) -> u64 {
    match kernel.setup_header {
        Some(_) => kernel.kernel_load.0 + BZIMAGE_ENTRY_64,
        None => kernel.kernel_load.0,
    }
}

/// Puts the initrd, if there is one, at the top of low RAM; returns (address, size).
pub fn load_initrd(
    mem: &GuestMemoryMmap<()>,
    mem_size: u64,
    kernel: &KernelLoaderResult,
    path: Option<&Path>,
) -> Result<Option<(u64, u64)>, KernelError> {
    let Some(path) = path else {
        return Ok(None);
    };
    let bytes = std::fs::read(path).map_err(|e| KernelError::Initrd(path.into(), e))?;
    let size = bytes.len() as u64;
    let addr = boot_params::initrd_address(kernel.kernel_end, low_ram_end(mem_size), size)?;
    mem.write_slice(&bytes, GuestAddress(addr))
        .map_err(KernelError::InitrdWrite)?;
    Ok(Some((addr, size)))
}

/// Writes the command line and the zero page that points at it and the initrd.
pub fn write_boot_data(
    mem: &GuestMemoryMmap<()>,
    mem_size: u64,
    kernel: &KernelLoaderResult,
    text: &str,
    initrd: Option<(u64, u64)>,
) -> Result<(), KernelError> {
    let mut cmdline = Cmdline::new(CMDLINE_MAX_SIZE).map_err(KernelError::Cmdline)?;
    cmdline.insert_str(text).map_err(KernelError::Cmdline)?;
    load_cmdline(mem, GuestAddress(CMDLINE_START), &cmdline).map_err(KernelError::LoadCmdline)?;
    let inputs = BootInputs {
        cmdline_addr: CMDLINE_START,
        cmdline_size: text.len() as u32 + 1,
        initrd,
    };
    let params = boot_params::build(kernel.setup_header, mem_size, &inputs)?;
    boot_params::write(mem, &params)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use linux_loader::loader::bootparam::boot_params;

    use super::*;
    use crate::layout::ZERO_PAGE_START;

    #[test]
    fn cmdline_has_base_devices_quirks_and_extra_in_order() {
        let entries = vec![
            "virtio_mmio.device=4K@0xd0000000:5".to_string(),
            "virtio_mmio.device=4K@0xd0001000:6".to_string(),
        ];
        let line = cmdline(&entries, Quirks { pvm: true }, " quiet ");
        assert_eq!(
            line,
            "console=ttyS0 reboot=k panic=-1 nomodule spore.exit_port=0xf4 \
             virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6 \
             noxsave clearcpuid=popcnt,smap quiet"
        );
    }

    #[test]
    fn cmdline_without_quirks_or_devices_is_the_base() {
        assert_eq!(cmdline(&[], Quirks::NONE, ""), BASE_CMDLINE);
        assert!(!cmdline(&[], Quirks::NONE, "").contains("noxsave"));
    }

    #[test]
    fn exit_port_in_cmdline_matches_layout() {
        let port = format!("spore.exit_port={:#x}", crate::layout::EXIT_PORT);
        assert!(BASE_CMDLINE.contains(&port));
    }

    #[test]
    fn corrupt_or_missing_kernel_is_a_clear_error() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        let path = std::env::temp_dir().join(format!("spore-bad-kernel-{}", std::process::id()));
        std::fs::write(&path, b"not a kernel at all").unwrap();
        let err = load(&mem, &path).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(err, KernelError::Format { .. }), "{err:?}");
        assert!(err.to_string().contains("make kernel"), "{err}");
        let missing = load(&mem, Path::new("/nonexistent/vmlinux")).unwrap_err();
        assert!(matches!(missing, KernelError::Open(..)));
    }

    #[test]
    fn boot_data_points_at_cmdline_and_initrd() {
        let size = 64 << 20;
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), size)]).unwrap();
        let kernel = KernelLoaderResult {
            kernel_end: 0x200_0000,
            ..Default::default()
        };
        let text = cmdline(&[], Quirks::NONE, "");
        write_boot_data(&mem, size as u64, &kernel, &text, Some((0x300_0000, 77))).unwrap();
        let params: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        assert_eq!({ params.hdr.cmd_line_ptr } as u64, CMDLINE_START);
        assert_eq!({ params.hdr.ramdisk_image }, 0x300_0000);
        let mut written = vec![0u8; text.len() + 1];
        mem.read_slice(&mut written, GuestAddress(CMDLINE_START))
            .unwrap();
        assert_eq!(&written[..text.len()], text.as_bytes());
        assert_eq!(written[text.len()], 0);
    }
}
