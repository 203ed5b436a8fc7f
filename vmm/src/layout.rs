//! The guest's physical address map and the x86 I/O ports spore's devices use.
//!
//! Everything that names a guest address or an interrupt line lives here, so the
//! boot code, the device manager and the test guest agree on one map.

/// The GDT the vCPU boots with.
pub const BOOT_GDT_START: u64 = 0x500;
/// An empty IDT; Linux installs its own before enabling interrupts.
pub const BOOT_IDT_START: u64 = 0x520;
/// Linux boot parameters ("zero page").
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer of the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity page tables: one PML4, one PDPT, four page directories (2 MiB pages)
/// covering the first 4 GiB, so the MMIO hole is mapped for test guests too.
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
/// Number of page directories after `PDE_START` (one per GiB).
pub const PDE_COUNT: u64 = 4;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
pub const CMDLINE_MAX_SIZE: usize = 4096;
/// Intel MP table (lets a kernel without ACPI find the vCPUs and IOAPIC).
pub const MPTABLE_START: u64 = 0x9fc00;
/// End of conventional memory reported in e820 (the EBDA starts at MPTABLE_START).
pub const EBDA_START: u64 = 0x9fc00;
/// Where the kernel is loaded and high memory starts.
pub const HIMEM_START: u64 = 0x10_0000;

/// The 32-bit MMIO hole: guest RAM above this address continues at 4 GiB.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;

/// virtio-mmio devices: one 4 KiB window each, from this address up.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// First IOAPIC pin handed to virtio-mmio devices (one pin each).
pub const VIRTIO_IRQ_BASE: u32 = 5;
/// Most virtio-mmio devices one VM can have (IOAPIC pins 5..=23 minus the serial's 4).
pub const VIRTIO_MAX_DEVICES: u32 = 16;

/// IOAPIC and LAPIC addresses (the architectural defaults).
pub const IOAPIC_START: u64 = 0xfec0_0000;
pub const APIC_START: u64 = 0xfee0_0000;

/// COM1.
pub const SERIAL_PORT: u16 = 0x3f8;
pub const SERIAL_PORT_LEN: u16 = 8;
pub const SERIAL_IRQ: u32 = 4;
/// i8042 keyboard controller: data and command ports.
pub const I8042_DATA_PORT: u16 = 0x60;
pub const I8042_COMMAND_PORT: u16 = 0x64;
/// spore's exit port: the guest writes a reason byte here to end the VM
/// (guest-kernel/patches/0002-spore-exit-port.patch; test guests write it directly).
pub const EXIT_PORT: u16 = 0xf4;

/// KVM's three-page TSS area and one-page identity map (used by VMX for real mode
/// emulation), placed in the MMIO hole below the IOAPIC where nothing else lives.
pub const KVM_TSS_START: u64 = 0xfffb_d000;
pub const KVM_IDENTITY_MAP_START: u64 = 0xfffb_c000;
