//! Identity page tables for the first 4 GiB with 2 MiB pages, so a vCPU can start
//! in long mode with paging on. Linux replaces them early; test guests keep them.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::{PDE_COUNT, PDE_START, PDPTE_START, PML4_START};

/// Present | writable.
const PRESENT_RW: u64 = 0x3;
/// Present | writable | page size (a 2 MiB leaf in a page directory).
const PRESENT_RW_HUGE: u64 = 0x83;
const ENTRIES_PER_TABLE: u64 = 512;
const HUGE_PAGE: u64 = 2 << 20;

/// Errors from writing the page tables.
#[derive(Debug, thiserror::Error)]
pub enum PagingError {
    #[error("writing the boot page tables failed")]
    Write(#[source] vm_memory::GuestMemoryError),
}

/// The page-table entries to write, as (guest address, value).
pub fn entries() -> Vec<(u64, u64)> {
    let mut out = vec![(PML4_START, PDPTE_START | PRESENT_RW)];
    for dir in 0..PDE_COUNT {
        out.push((
            PDPTE_START + dir * 8,
            (PDE_START + dir * 0x1000) | PRESENT_RW,
        ));
    }
    for page in 0..PDE_COUNT * ENTRIES_PER_TABLE {
        out.push((PDE_START + page * 8, (page * HUGE_PAGE) | PRESENT_RW_HUGE));
    }
    out
}

/// Writes the tables; CR3 must then point at `PML4_START`.
pub fn write(mem: &GuestMemoryMmap<()>) -> Result<(), PagingError> {
    for (addr, value) in entries() {
        mem.write_obj(value, GuestAddress(addr))
            .map_err(PagingError::Write)?;
    }
    Ok(())
}

/// Walks the tables in guest memory the way the MMU does for a 2 MiB page.
#[cfg(test)]
fn translate(mem: &GuestMemoryMmap<()>, va: u64) -> Option<u64> {
    let read = |a: u64| mem.read_obj::<u64>(GuestAddress(a)).ok();
    let pml4e = read(PML4_START + ((va >> 39) & 0x1ff) * 8)?;
    let pdpte = read((pml4e & !0xfff) + ((va >> 30) & 0x1ff) * 8)?;
    let pde = read((pdpte & !0xfff) + ((va >> 21) & 0x1ff) * 8)?;
    ((pml4e & pdpte & pde & 1) == 1 && pde & 0x80 != 0)
        .then_some((pde & !0x1f_ffff) + (va & 0x1f_ffff))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_maps_first_4_gib() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write(&mem).unwrap();
        for va in [
            0u64,
            0x1000,
            0x20_0123,
            0x7fff_ffff,
            0xd000_0050,
            0xffff_ffff,
        ] {
            assert_eq!(translate(&mem, va), Some(va), "va {va:#x}");
        }
        // Nothing is mapped beyond 4 GiB.
        assert_eq!(translate(&mem, 0x1_0000_0000), None);
        let last_pde: u64 = mem
            .read_obj(GuestAddress(PDE_START + (PDE_COUNT * 512 - 1) * 8))
            .unwrap();
        assert_eq!(last_pde, 0xffe0_0000 | 0x83);
    }
}
