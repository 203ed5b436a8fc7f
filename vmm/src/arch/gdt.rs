//! The boot GDT and the special registers of a vCPU that starts in 64-bit long
//! mode (paging on, identity-mapped by `paging`).
//!
//! The GDT holds a null entry, a 64-bit code segment (selector 0x08), a flat data
//! segment (0x10) and a TSS (0x18). KVM takes segment state from KVM_SET_SREGS,
//! so the descriptors in memory only matter if the guest reloads a selector.

use kvm_bindings::{kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::{BOOT_GDT_START, BOOT_IDT_START, PML4_START};

pub const CODE_SELECTOR: u16 = 0x08;
pub const DATA_SELECTOR: u16 = 0x10;
pub const TSS_SELECTOR: u16 = 0x18;

const CR0_PE: u64 = 1 << 0;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// Errors from writing the GDT and IDT.
#[derive(Debug, thiserror::Error)]
pub enum GdtError {
    #[error("writing the boot GDT/IDT failed")]
    Write(#[source] vm_memory::GuestMemoryError),
}

/// A segment descriptor from its flags (type, S, DPL, P in bits 0..7; AVL, L,
/// D/B, G in bits 12..15), base and 20-bit limit.
pub const fn descriptor(flags: u16, base: u32, limit: u32) -> u64 {
    let flags = flags as u64;
    let base = base as u64;
    let limit = limit as u64;
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
}

/// The boot GDT, indexed by selector / 8.
pub const GDT: [u64; 4] = [
    0,
    descriptor(0xa09b, 0, 0xfffff), // code: present, L, G, execute/read, accessed
    descriptor(0xc093, 0, 0xfffff), // data: present, D/B, G, read/write, accessed
    descriptor(0x808b, 0, 0xfffff), // TSS: present, G, 32/64-bit busy TSS
];

/// KVM's view of descriptor `entry` loaded with `selector`.
pub fn segment(selector: u16, entry: u64) -> kvm_segment {
    let limit = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    kvm_segment {
        base: ((entry >> 16) & 0xff_ffff) | ((entry >> 32) & 0xff00_0000),
        limit: if g == 1 { (limit << 12) | 0xfff } else { limit },
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: 0,
        padding: 0,
    }
}

/// Writes the GDT at `BOOT_GDT_START` and an empty IDT at `BOOT_IDT_START`.
pub fn write(mem: &GuestMemoryMmap<()>) -> Result<(), GdtError> {
    for (i, entry) in GDT.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(BOOT_GDT_START + i as u64 * 8))
            .map_err(GdtError::Write)?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(GdtError::Write)
}

/// Sets `sregs` up for 64-bit long mode on the boot GDT and page tables.
pub fn set_long_mode(sregs: &mut kvm_sregs) {
    let code = segment(CODE_SELECTOR, GDT[1]);
    let data = segment(DATA_SELECTOR, GDT[2]);
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (GDT.len() * 8 - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(TSS_SELECTOR, GDT[3]);
    sregs.cr0 = CR0_PE | CR0_ET | CR0_PG;
    sregs.cr3 = PML4_START;
    sregs.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT;
    sregs.efer = EFER_LME | EFER_LMA;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_segment_is_64_bit_flat() {
        let cs = segment(CODE_SELECTOR, GDT[1]);
        assert_eq!((cs.l, cs.db, cs.s, cs.present, cs.dpl), (1, 0, 1, 1, 0));
        assert_eq!(cs.type_, 0xb);
        assert_eq!((cs.base, cs.limit, cs.g), (0, 0xffff_ffff, 1));
    }

    #[test]
    fn data_and_tss_segments() {
        let ds = segment(DATA_SELECTOR, GDT[2]);
        assert_eq!((ds.type_, ds.db, ds.l, ds.s), (3, 1, 0, 1));
        let tr = segment(TSS_SELECTOR, GDT[3]);
        assert_eq!((tr.type_, tr.s, tr.present), (0xb, 0, 1));
    }

    #[test]
    fn descriptor_round_trips_base_and_limit() {
        let seg = segment(0x28, descriptor(0x4093, 0x1234_5678, 0xabcde));
        assert_eq!(seg.base, 0x1234_5678);
        assert_eq!(seg.limit, 0xabcde);
        assert_eq!((seg.g, seg.db), (0, 1));
    }

    #[test]
    fn long_mode_sregs() {
        let mut sregs = kvm_sregs::default();
        set_long_mode(&mut sregs);
        assert_eq!(sregs.cr0 & 0x8000_0011, 0x8000_0011);
        assert_eq!(sregs.cr3, PML4_START);
        assert_ne!(sregs.cr4 & CR4_PAE, 0);
        assert_eq!(sregs.efer, EFER_LME | EFER_LMA);
        assert_eq!(sregs.cs.selector, CODE_SELECTOR);
        assert_eq!(sregs.ss.selector, DATA_SELECTOR);
        assert_eq!(sregs.gdt.limit, 31);
    }

    #[test]
    fn gdt_lands_in_memory() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        write(&mem).unwrap();
        let code: u64 = mem.read_obj(GuestAddress(BOOT_GDT_START + 8)).unwrap();
        assert_eq!(code, 0x00af_9b00_0000_ffff);
    }
}
