//! Guest RAM: a memfd mapped into the VMM, split around the 32-bit MMIO hole.
//!
//! Owns the memfd and its mappings. A template's RAM is mapped `MAP_SHARED` and can
//! be sealed; a clone maps the sealed memfd `MAP_PRIVATE` (copy-on-write). This is
//! one of the few modules with raw syscalls. It does not register memory with KVM
//! (the builder does).

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};

use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

use crate::layout::{MMIO_GAP_END, MMIO_GAP_START};

/// Errors from creating or sealing guest RAM.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("guest RAM size {0:#x} is zero or not page-aligned")]
    BadSize(u64),
    #[error("memfd_create failed")]
    Memfd(#[source] io::Error),
    #[error("sizing the guest RAM memfd failed")]
    Truncate(#[source] io::Error),
    #[error("duplicating the guest RAM memfd failed")]
    Dup(#[source] io::Error),
    #[error("mapping guest RAM failed")]
    Mmap(#[source] vm_memory::mmap::MmapRegionError),
    #[error("guest RAM regions overlap")]
    Regions(#[source] vm_memory::GuestRegionCollectionError),
    #[error("sealing the guest RAM memfd failed")]
    Seal(#[source] io::Error),
    #[error("the memfd is {actual:#x} bytes, not the {expected:#x} the guest needs")]
    SizeMismatch { expected: u64, actual: u64 },
}

const PAGE_SIZE: u64 = 4096;

/// Guest RAM backed by one memfd.
pub struct GuestRam {
    memory: GuestMemoryMmap<()>,
    file: File,
    size: u64,
}

impl GuestRam {
    /// Creates `size` bytes of zeroed guest RAM in a fresh, sealable memfd,
    /// mapped `MAP_SHARED`.
    pub fn new(size: u64) -> Result<GuestRam, MemoryError> {
        check_size(size)?;
        let file = memfd_create(c"spore-guest-ram")?;
        file.set_len(size).map_err(MemoryError::Truncate)?;
        let memory = map(&file, size, libc::MAP_SHARED)?;
        Ok(GuestRam { memory, file, size })
    }

    /// Maps an existing (usually sealed) memfd `MAP_PRIVATE`: the guest's writes
    /// go to private copies of the pages and never reach the file.
    pub fn from_memfd_private(file: File, size: u64) -> Result<GuestRam, MemoryError> {
        check_size(size)?;
        let actual = file.metadata().map_err(MemoryError::Dup)?.len();
        if actual != size {
            return Err(MemoryError::SizeMismatch {
                expected: size,
                actual,
            });
        }
        let memory = map(&file, size, libc::MAP_PRIVATE)?;
        Ok(GuestRam { memory, file, size })
    }

    /// Forbids any further write, growth or shrink of the memfd. The kernel
    /// refuses (EBUSY) while a writable `MAP_SHARED` mapping exists, so this works
    /// on a private (clone) mapping; a template uses `into_sealed_file`.
    pub fn seal(&self) -> Result<(), MemoryError> {
        seal_fd(&self.file)
    }

    /// Unmaps this RAM and seals its memfd, for clones to map `MAP_PRIVATE`.
    /// Every other handle on the mapping (device copies of the memory) must be
    /// dropped first, or sealing fails with EBUSY.
    pub fn into_sealed_file(self) -> Result<File, MemoryError> {
        let GuestRam { memory, file, .. } = self;
        drop(memory);
        seal_fd(&file)?;
        Ok(file)
    }

    pub fn memory(&self) -> &GuestMemoryMmap<()> {
        &self.memory
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    pub fn size(&self) -> u64 {
        self.size
    }
}

/// The guest-physical ranges of `size` bytes of RAM: below the MMIO hole, then
/// from 4 GiB up. Each range is (guest address, offset in the memfd, length).
pub fn ram_ranges(size: u64) -> Vec<(u64, u64, u64)> {
    if size <= MMIO_GAP_START {
        return vec![(0, 0, size)];
    }
    vec![
        (0, 0, MMIO_GAP_START),
        (MMIO_GAP_END, MMIO_GAP_START, size - MMIO_GAP_START),
    ]
}

/// The end of the RAM below the MMIO hole.
pub fn low_ram_end(size: u64) -> u64 {
    size.min(MMIO_GAP_START)
}

fn check_size(size: u64) -> Result<(), MemoryError> {
    if size == 0 || size % PAGE_SIZE != 0 {
        return Err(MemoryError::BadSize(size));
    }
    Ok(())
}

fn memfd_create(name: &CStr) -> Result<File, MemoryError> {
    // SAFETY: `name` is a valid NUL-terminated string; the call only returns a new fd.
    let fd =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(MemoryError::Memfd(io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by memfd_create and nothing else owns it.
    Ok(unsafe { File::from_raw_fd(fd) })
}

fn seal_fd(file: &File) -> Result<(), MemoryError> {
    let seals = libc::F_SEAL_WRITE | libc::F_SEAL_GROW | libc::F_SEAL_SHRINK;
    // SAFETY: F_ADD_SEALS on a valid fd we own; it takes an int argument and
    // touches no memory of ours.
    let ret = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) };
    if ret < 0 {
        return Err(MemoryError::Seal(io::Error::last_os_error()));
    }
    Ok(())
}

fn map(file: &File, size: u64, flags: i32) -> Result<GuestMemoryMmap<()>, MemoryError> {
    let mut regions = Vec::new();
    for (guest, offset, len) in ram_ranges(size) {
        let fd = file.try_clone().map_err(MemoryError::Dup)?;
        let region = MmapRegion::build(
            Some(FileOffset::new(fd, offset)),
            len as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            flags | libc::MAP_NORESERVE,
        )
        .map_err(MemoryError::Mmap)?;
        let region =
            GuestRegionMmap::new(region, GuestAddress(guest)).ok_or(MemoryError::BadSize(size))?;
        regions.push(region);
    }
    GuestMemoryMmap::from_regions(regions).map_err(MemoryError::Regions)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;

    use vm_memory::{Bytes, GuestMemoryBackend};

    use super::*;

    #[test]
    fn ranges_split_around_the_mmio_hole() {
        assert_eq!(ram_ranges(128 << 20), vec![(0, 0, 128 << 20)]);
        let five_gib = 5u64 << 30;
        let r = ram_ranges(five_gib);
        assert_eq!(r[0], (0, 0, MMIO_GAP_START));
        assert_eq!(
            r[1],
            (MMIO_GAP_END, MMIO_GAP_START, five_gib - MMIO_GAP_START)
        );
        assert_eq!(low_ram_end(five_gib), MMIO_GAP_START);
    }

    #[test]
    fn rejects_unaligned_size() {
        assert!(matches!(
            GuestRam::new(4097),
            Err(MemoryError::BadSize(4097))
        ));
        assert!(matches!(GuestRam::new(0), Err(MemoryError::BadSize(0))));
    }

    #[test]
    fn shared_ram_writes_reach_the_memfd() {
        let ram = GuestRam::new(2 << 20).unwrap();
        ram.memory()
            .write_obj(0xabu8, GuestAddress(0x1234))
            .unwrap();
        let mut b = [0u8; 1];
        ram.file().read_exact_at(&mut b, 0x1234).unwrap();
        assert_eq!(b[0], 0xab);
        assert_eq!(ram.memory().num_regions(), 1);
    }

    #[test]
    fn sealed_memfd_refuses_writes() {
        let file = memfd_create(c"spore-test").unwrap();
        file.set_len(1 << 20).unwrap();
        seal_fd(&file).unwrap();
        let err = file.write_at(&[1], 0).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPERM));
        assert!(file.set_len(2 << 20).is_err());
    }

    #[test]
    fn private_mapping_write_stays_out_of_the_file() {
        let file = memfd_create(c"spore-test").unwrap();
        file.set_len(1 << 20).unwrap();
        file.write_at(&[100], 0x10).unwrap();
        seal_fd(&file).unwrap();
        let probe = file.try_clone().unwrap();
        let clone = GuestRam::from_memfd_private(file, 1 << 20).unwrap();
        let before: u8 = clone.memory().read_obj(GuestAddress(0x10)).unwrap();
        assert_eq!(before, 100);
        clone.memory().write_obj(101u8, GuestAddress(0x10)).unwrap();
        let mut b = [0u8; 1];
        probe.read_exact_at(&mut b, 0x10).unwrap();
        assert_eq!(b[0], 100);
        let after: u8 = clone.memory().read_obj(GuestAddress(0x10)).unwrap();
        assert_eq!(after, 101);
    }

    #[test]
    fn template_seals_after_unmapping_and_clones_see_its_bytes() {
        let ram = GuestRam::new(1 << 20).unwrap();
        ram.memory().write_obj(100u8, GuestAddress(0x10)).unwrap();
        // Still mapped shared and writable: the kernel refuses the write seal.
        assert!(matches!(ram.seal(), Err(MemoryError::Seal(_))));
        let file = ram.into_sealed_file().unwrap();
        assert_eq!(
            file.write_at(&[1], 0).unwrap_err().raw_os_error(),
            Some(libc::EPERM)
        );
        let clone = GuestRam::from_memfd_private(file, 1 << 20).unwrap();
        let byte: u8 = clone.memory().read_obj(GuestAddress(0x10)).unwrap();
        assert_eq!(byte, 100);
    }

    #[test]
    fn private_mapping_checks_size() {
        let file = memfd_create(c"spore-test").unwrap();
        file.set_len(1 << 20).unwrap();
        assert!(matches!(
            GuestRam::from_memfd_private(file, 2 << 20),
            Err(MemoryError::SizeMismatch { .. })
        ));
    }
}
