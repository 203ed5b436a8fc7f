//! A PVH entry point, only in the `qemu` build: lets QEMU's `-M microvm -kernel`
//! boot the same guest, to check the drivers against QEMU's virtio devices.
//!
//! PVH enters in 32-bit protected mode with paging off (x86 PVH boot ABI). This
//! code builds identity page tables for the first 4 GiB (2 MiB pages), the same
//! map spore's VMM provides, turns on long mode and jumps to `_start`. spore's own
//! build has no PVH note, so its loader always uses the ELF entry.

use core::arch::global_asm;

global_asm!(
    // XEN_ELFNOTE_PHYS32_ENTRY (18): the 32-bit entry address, as a quad for ELF64.
    ".section .note.pvh, \"a\", @note",
    ".balign 4",
    ".long 4",
    ".long 8",
    ".long 18",
    ".asciz \"Xen\"",
    ".balign 4",
    ".quad pvh_start",
    // null, 64-bit code (0x08), flat data (0x10)
    ".section .rodata.pvh, \"a\"",
    ".balign 8",
    "pvh_gdt:",
    ".quad 0",
    ".quad 0x00af9a000000ffff",
    ".quad 0x00cf92000000ffff",
    "pvh_gdt_ptr:",
    ".word 23",
    ".long pvh_gdt",
    // Outside .bss: `_start` clears .bss while these tables are live.
    ".section .pvh_tables, \"aw\", @nobits",
    ".balign 4096",
    "pvh_pml4: .skip 4096",
    "pvh_pdpt: .skip 4096",
    "pvh_pd: .skip 4 * 4096",
    ".section .text.pvh, \"ax\"",
    ".code32",
    ".global pvh_start",
    "pvh_start:",
    "    cli",
    "    cld",
    "    movl $pvh_pml4, %edi",
    "    movl $(6 * 4096 / 4), %ecx",
    "    xorl %eax, %eax",
    "    rep stosl",
    "    movl $pvh_pdpt, %eax",
    "    orl $3, %eax",
    "    movl %eax, pvh_pml4",
    // PDPT[i] -> PD i, for the four GiB
    "    movl $pvh_pdpt, %edi",
    "    movl $pvh_pd, %eax",
    "    orl $3, %eax",
    "    movl $4, %ecx",
    "1:  movl %eax, (%edi)",
    "    addl $4096, %eax",
    "    addl $8, %edi",
    "    decl %ecx",
    "    jnz 1b",
    // PD entries: present, writable, 2 MiB page
    "    movl $pvh_pd, %edi",
    "    movl $0x83, %eax",
    "    movl $2048, %ecx",
    "2:  movl %eax, (%edi)",
    "    addl $0x200000, %eax",
    "    addl $8, %edi",
    "    decl %ecx",
    "    jnz 2b",
    "    movl $pvh_pml4, %eax",
    "    movl %eax, %cr3",
    "    movl %cr4, %eax",
    "    orl $0x20, %eax", // PAE
    "    movl %eax, %cr4",
    "    movl $0xc0000080, %ecx", // EFER
    "    rdmsr",
    "    orl $0x100, %eax", // LME
    "    wrmsr",
    "    movl %cr0, %eax",
    "    orl $0x80000001, %eax", // PG | PE
    "    movl %eax, %cr0",
    "    lgdt pvh_gdt_ptr",
    "    movw $0x10, %ax",
    "    movw %ax, %ds",
    "    movw %ax, %es",
    "    movw %ax, %ss",
    "    ljmp $0x08, $_start",
    ".code64",
    options(att_syntax),
);
