//! The Linux "zero page" (struct boot_params): e820 memory map, command line and
//! initrd location, as the 64-bit boot protocol expects them at `rsi`.
//!
//! See Documentation/arch/x86/boot.rst. Owns the e820 map and the initrd
//! placement rule; the kernel loader fills in nothing here.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::{EBDA_START, HIMEM_START, MMIO_GAP_END, MMIO_GAP_START, ZERO_PAGE_START};

/// e820 type for usable RAM.
pub const E820_RAM: u32 = 1;
/// "HdrS": the setup header's magic.
const HDR_MAGIC: u32 = 0x5372_6448;
const BOOT_FLAG_MAGIC: u16 = 0xaa55;
/// "Undefined" boot loader id (boot.rst: 0xff).
const LOADER_UNDEFINED: u8 = 0xff;
/// Alignment the kernel may relocate itself to.
const KERNEL_ALIGNMENT: u32 = 0x0100_0000;
const PAGE_SIZE: u64 = 4096;

/// Errors from building or writing the zero page.
#[derive(Debug, thiserror::Error)]
pub enum BootParamsError {
    #[error("the e820 map has more than {0} entries")]
    TooManyE820Entries(usize),
    #[error("initrd of {size} bytes does not fit in guest RAM between {min:#x} and {max:#x}")]
    InitrdTooBig { size: u64, min: u64, max: u64 },
    #[error("writing the zero page failed")]
    Write(#[source] vm_memory::GuestMemoryError),
}

/// Where the command line and initrd are, for the zero page.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BootInputs {
    pub cmdline_addr: u64,
    /// Length including the terminating NUL.
    pub cmdline_size: u32,
    /// (guest address, size) of the initrd.
    pub initrd: Option<(u64, u64)>,
}

/// The e820 map for `mem_size` bytes of guest RAM as (start, length, type):
/// conventional memory below the EBDA, RAM from 1 MiB to the MMIO hole, and the
/// rest above 4 GiB.
pub fn e820_map(mem_size: u64) -> Vec<(u64, u64, u32)> {
    let mut map = vec![(0, EBDA_START, E820_RAM)];
    let low_end = mem_size.min(MMIO_GAP_START);
    if low_end > HIMEM_START {
        map.push((HIMEM_START, low_end - HIMEM_START, E820_RAM));
    }
    if mem_size > MMIO_GAP_START {
        map.push((MMIO_GAP_END, mem_size - MMIO_GAP_START, E820_RAM));
    }
    map
}

/// Where an initrd of `size` bytes goes: page-aligned, as high as possible in the
/// RAM below the MMIO hole, above `kernel_end`.
pub fn initrd_address(
    kernel_end: u64,
    low_ram_end: u64,
    size: u64,
) -> Result<u64, BootParamsError> {
    let too_big = BootParamsError::InitrdTooBig {
        size,
        min: kernel_end,
        max: low_ram_end,
    };
    let start = low_ram_end.checked_sub(size).ok_or(too_big)? & !(PAGE_SIZE - 1);
    if start < kernel_end {
        return Err(BootParamsError::InitrdTooBig {
            size,
            min: kernel_end,
            max: low_ram_end,
        });
    }
    Ok(start)
}

/// Builds the zero page. `header` is the bzImage's setup header when there is one
/// (an ELF vmlinux has none, so a minimal header is made up).
pub fn build(
    header: Option<setup_header>,
    mem_size: u64,
    inputs: &BootInputs,
) -> Result<boot_params, BootParamsError> {
    let mut params = boot_params::default();
    if let Some(header) = header {
        params.hdr = header;
    }
    params.hdr.type_of_loader = LOADER_UNDEFINED;
    params.hdr.boot_flag = BOOT_FLAG_MAGIC;
    params.hdr.header = HDR_MAGIC;
    params.hdr.kernel_alignment = KERNEL_ALIGNMENT;
    params.hdr.cmd_line_ptr = inputs.cmdline_addr as u32;
    params.hdr.cmdline_size = inputs.cmdline_size;
    if let Some((addr, size)) = inputs.initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    let map = e820_map(mem_size);
    if map.len() > params.e820_table.len() {
        return Err(BootParamsError::TooManyE820Entries(params.e820_table.len()));
    }
    for (slot, &(addr, size, kind)) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr,
            size,
            r#type: kind,
        };
    }
    params.e820_entries = map.len() as u8;
    Ok(params)
}

/// Writes the zero page at `ZERO_PAGE_START`.
pub fn write(mem: &GuestMemoryMmap<()>, params: &boot_params) -> Result<(), BootParamsError> {
    mem.write_obj(*params, GuestAddress(ZERO_PAGE_START))
        .map_err(BootParamsError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e820_small_guest() {
        let map = e820_map(128 << 20);
        assert_eq!(
            map,
            vec![
                (0, EBDA_START, E820_RAM),
                (HIMEM_START, (128 << 20) - HIMEM_START, E820_RAM)
            ]
        );
    }

    #[test]
    fn e820_guest_above_the_hole() {
        let size = 4u64 << 30;
        let map = e820_map(size);
        assert_eq!(map.len(), 3);
        assert_eq!(
            map[1],
            (HIMEM_START, MMIO_GAP_START - HIMEM_START, E820_RAM)
        );
        assert_eq!(map[2], (MMIO_GAP_END, size - MMIO_GAP_START, E820_RAM));
        // The RAM reported adds up to the RAM the guest has, minus the legacy hole.
        let total: u64 = map.iter().map(|e| e.1).sum();
        assert_eq!(total, size - (HIMEM_START - EBDA_START));
    }

    #[test]
    fn initrd_goes_page_aligned_to_the_top() {
        let addr = initrd_address(0x200_0000, 128 << 20, 10_000).unwrap();
        assert_eq!(addr % PAGE_SIZE, 0);
        assert!(addr + 10_000 <= 128 << 20);
        assert!((128 << 20) - addr < 10_000 + PAGE_SIZE);
        assert!(initrd_address(0x700_0000, 128 << 20, 32 << 20).is_err());
        assert!(initrd_address(0, 1 << 20, 2 << 20).is_err());
    }

    #[test]
    fn zero_page_fields() {
        let inputs = BootInputs {
            cmdline_addr: 0x20000,
            cmdline_size: 42,
            initrd: Some((0x700_0000, 0x1234)),
        };
        let p = build(None, 256 << 20, &inputs).unwrap();
        assert_eq!({ p.hdr.boot_flag }, 0xaa55);
        assert_eq!({ p.hdr.header }, HDR_MAGIC);
        assert_eq!({ p.hdr.type_of_loader }, 0xff);
        assert_eq!({ p.hdr.cmd_line_ptr }, 0x20000);
        assert_eq!({ p.hdr.cmdline_size }, 42);
        assert_eq!({ p.hdr.ramdisk_image }, 0x700_0000);
        assert_eq!({ p.hdr.ramdisk_size }, 0x1234);
        assert_eq!(p.e820_entries, 2);
        let e = p.e820_table[1];
        assert_eq!(
            ({ e.addr }, { e.size }, { e.r#type }),
            (HIMEM_START, (256 << 20) - HIMEM_START, 1)
        );
    }

    #[test]
    fn zero_page_keeps_bzimage_header_fields() {
        let header = setup_header {
            version: 0x20f,
            ..Default::default()
        };
        let p = build(Some(header), 64 << 20, &BootInputs::default()).unwrap();
        assert_eq!({ p.hdr.version }, 0x20f);
        assert_eq!({ p.hdr.ramdisk_size }, 0);
    }
}
