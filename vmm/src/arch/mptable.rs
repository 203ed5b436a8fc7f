//! Intel MultiProcessor table (MP spec 1.4): how a kernel without ACPI or PCI
//! finds the vCPUs, the IOAPIC and which ISA IRQ goes to which IOAPIC pin.
//!
//! Layout at `MPTABLE_START`: the 16-byte floating pointer ("_MP_"), then the
//! configuration table ("PCMP") with one processor entry per vCPU, one ISA bus, one
//! IOAPIC, an I/O interrupt entry per IOAPIC pin and the two local interrupt entries.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::{APIC_START, IOAPIC_START, MPTABLE_START};

/// IOAPIC pins the in-kernel KVM IOAPIC has.
pub const IOAPIC_PINS: u8 = 24;
/// The table must fit the last KiB of conventional memory, where Linux looks.
const MAX_SIZE: usize = 1024;
const SPEC_REV: u8 = 4;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BOOT_PROCESSOR: u8 = 2;
/// Family 6 signature and FPU|APIC feature flags; Linux only prints them.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
/// Polarity and trigger "conform to the bus" (ISA: active high, edge).
const INT_FLAGS_CONFORM: u16 = 0;
const ISA_BUS_ID: u8 = 0;
const ALL_LAPICS: u8 = 0xff;
const HEADER_SIZE: usize = 44;
const FLOATING_SIZE: usize = 16;

/// Errors from building or writing the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    #[error("{0} vCPUs do not fit in the MP table")]
    TooManyCpus(u8),
    #[error("writing the MP table failed")]
    Write(#[source] vm_memory::GuestMemoryError),
}

/// The most vCPUs the MP table can describe.
pub const fn max_cpus() -> u8 {
    let fixed = FLOATING_SIZE + HEADER_SIZE + 8 + 8 + 8 * IOAPIC_PINS as usize + 16;
    ((MAX_SIZE - fixed) / 20) as u8
}

/// The IOAPIC's id: right after the vCPUs' APIC ids.
pub fn ioapic_id(num_cpus: u8) -> u8 {
    num_cpus
}

/// The whole table, as it goes at `base` in guest memory.
pub fn build(num_cpus: u8, base: u64) -> Result<Vec<u8>, MptableError> {
    if num_cpus == 0 || num_cpus > max_cpus() {
        return Err(MptableError::TooManyCpus(num_cpus));
    }
    let ioapic = ioapic_id(num_cpus);
    let mut entries = Vec::new();
    let mut count: u16 = 0;
    for cpu in 0..num_cpus {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOT_PROCESSOR } else { 0 };
        entries.extend([ENTRY_PROCESSOR, cpu, APIC_VERSION, flags]);
        entries.extend(CPU_SIGNATURE.to_le_bytes());
        entries.extend(CPU_FEATURES.to_le_bytes());
        entries.extend([0u8; 8]);
        count += 1;
    }
    entries.extend([ENTRY_BUS, ISA_BUS_ID]);
    entries.extend(*b"ISA   ");
    entries.extend([ENTRY_IOAPIC, ioapic, IOAPIC_VERSION, 1]);
    entries.extend((IOAPIC_START as u32).to_le_bytes());
    count += 2;
    for pin in 0..IOAPIC_PINS {
        entries.extend([ENTRY_IO_INTERRUPT, INT_TYPE_INT]);
        entries.extend(INT_FLAGS_CONFORM.to_le_bytes());
        entries.extend([ISA_BUS_ID, pin, ioapic, pin]);
        count += 1;
    }
    for (int_type, lint) in [(INT_TYPE_EXTINT, 0u8), (INT_TYPE_NMI, 1u8)] {
        entries.extend([ENTRY_LOCAL_INTERRUPT, int_type]);
        entries.extend(INT_FLAGS_CONFORM.to_le_bytes());
        entries.extend([ISA_BUS_ID, 0, ALL_LAPICS, lint]);
        count += 1;
    }

    let table_addr = base + FLOATING_SIZE as u64;
    let mut floating = vec![0u8; FLOATING_SIZE];
    floating[0..4].copy_from_slice(b"_MP_");
    floating[4..8].copy_from_slice(&(table_addr as u32).to_le_bytes());
    floating[8] = 1; // length in 16-byte units
    floating[9] = SPEC_REV;
    floating[10] = checksum(&floating);

    let length = (HEADER_SIZE + entries.len()) as u16;
    let mut header = vec![0u8; HEADER_SIZE];
    header[0..4].copy_from_slice(b"PCMP");
    header[4..6].copy_from_slice(&length.to_le_bytes());
    header[6] = SPEC_REV;
    header[8..16].copy_from_slice(b"SPORE   ");
    header[16..28].copy_from_slice(b"MICROVM     ");
    header[34..36].copy_from_slice(&count.to_le_bytes());
    header[36..40].copy_from_slice(&(APIC_START as u32).to_le_bytes());
    let mut table = header;
    table.extend(entries);
    table[7] = checksum(&table);

    let mut out = floating;
    out.extend(table);
    Ok(out)
}

/// Writes the table for `num_cpus` vCPUs at `MPTABLE_START`.
pub fn write(mem: &GuestMemoryMmap<()>, num_cpus: u8) -> Result<(), MptableError> {
    let bytes = build(num_cpus, MPTABLE_START)?;
    mem.write_slice(&bytes, GuestAddress(MPTABLE_START))
        .map_err(MptableError::Write)
}

/// The byte that makes `bytes` sum to zero (mod 256).
fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    #[test]
    fn checksums_are_zero() {
        let t = build(4, MPTABLE_START).unwrap();
        assert_eq!(sum(&t[..16]), 0);
        let len = u16::from_le_bytes([t[20], t[21]]) as usize;
        assert_eq!(len, t.len() - 16);
        assert_eq!(sum(&t[16..16 + len]), 0);
    }

    #[test]
    fn pointer_and_counts() {
        let t = build(2, MPTABLE_START).unwrap();
        assert_eq!(&t[0..4], b"_MP_");
        let ptr = u32::from_le_bytes(t[4..8].try_into().unwrap()) as u64;
        assert_eq!(ptr, MPTABLE_START + 16);
        assert_eq!(&t[16..20], b"PCMP");
        let count = u16::from_le_bytes([t[16 + 34], t[16 + 35]]);
        assert_eq!(count, 2 + 2 + 24 + 2);
        // First entry is the boot processor with APIC id 0; the second is an AP.
        assert_eq!(&t[60..64], &[0, 0, APIC_VERSION, 3]);
        assert_eq!(&t[80..84], &[0, 1, APIC_VERSION, 1]);
        // Then the ISA bus and the IOAPIC whose id follows the vCPUs'.
        assert_eq!(&t[100..108], b"\x01\x00ISA   ");
        assert_eq!(&t[108..112], &[2, 2, IOAPIC_VERSION, 1]);
        // Pin 5 routes ISA IRQ 5 to IOAPIC pin 5.
        let pin5 = 116 + 5 * 8;
        assert_eq!(&t[pin5..pin5 + 8], &[3, 0, 0, 0, 0, 5, 2, 5]);
    }

    #[test]
    fn rejects_zero_and_too_many_cpus() {
        assert!(build(0, MPTABLE_START).is_err());
        assert!(build(max_cpus() + 1, MPTABLE_START).is_err());
        assert!(build(max_cpus(), MPTABLE_START).unwrap().len() <= MAX_SIZE);
    }
}
