//! x86_64 machine setup: what a vCPU and guest memory must hold before the first
//! KVM_RUN (boot params, page tables, GDT, registers, MP table, CPUID).
//!
//! Everything here is a pure function over plain data or a write into guest
//! memory; the ioctls that apply the results live in `vcpu` and `builder`.

pub mod boot_params;
pub mod cpuid;
pub mod gdt;
pub mod kernel;
pub mod mptable;
pub mod paging;
pub mod regs;
pub mod vm;

pub use cpuid::Quirks;
