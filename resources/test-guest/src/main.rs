//! spore's test guest: a tiny 64-bit kernel that drives spore's virtio devices
//! the way a driver does and reports each result on COM1 as a `SPORE-TEST` line.
//!
//! spore's VMM loads this ELF like a vmlinux and enters `_start` in long mode with
//! interrupts off and the first 4 GiB identity-mapped. The guest then runs the rng,
//! blk and vsock checks in turn, prints `SPORE-TEST done` and writes 0 to spore's
//! exit port, or prints `SPORE-TEST FAIL <what>` and writes 1. Everything polls; no
//! interrupts, no floating point, no SSE (the host's KVM emulates CPL0 code and
//! its emulator lacks many instructions). The memory helpers the compiler may call
//! are in `mem`.

#![no_std]
#![no_main]

mod blk;
mod io;
mod mem;
mod mmio;
#[cfg(feature = "qemu")]
mod pvh;
mod rng;
mod virtq;
mod vsock;

use core::arch::global_asm;
use core::panic::PanicInfo;

/// Bytes of stack; the VMM's boot stack at 0x8ff0 is too small to trust.
const STACK_SIZE: usize = 64 * 1024;

#[repr(C, align(16))]
struct Stack([u8; STACK_SIZE]);

static mut STACK: Stack = Stack([0; STACK_SIZE]);

// The entry point: clear .bss (the loader only copies file bytes), switch to our
// own stack and call `main`. Runs with whatever stack the VMM gave, touching it not.
global_asm!(
    ".section .text.entry, \"ax\"",
    ".global _start",
    "_start:",
    "    cli",
    "    cld",
    "    lea rdi, [rip + __bss_start]",
    "    lea rcx, [rip + __bss_end]",
    "    sub rcx, rdi",
    "    shr rcx, 3",
    "    xor eax, eax",
    "    rep stosq",
    "    lea rsp, [rip + {stack} + {stack_size}]",
    "    xor ebp, ebp",
    "    call {main}",
    "2:  cli",
    "    hlt",
    "    jmp 2b",
    stack = sym STACK,
    stack_size = const STACK_SIZE,
    main = sym main,
);

/// One check: its name for the report and the function that runs it.
type Check = (&'static [u8], fn() -> Result<(), &'static str>);

/// The checks, in order. vsock runs last: the host test connects to the guest's
/// listening port only once the VM is up, and a slow step before it would eat
/// into that wait.
const CHECKS: [Check; 3] = [
    (b"rng", rng::run),
    (b"blk", blk::run),
    (b"vsock", vsock::run),
];

extern "C" fn main() -> ! {
    io::print(b"SPORE-TEST start\n");
    let mut failed = false;
    for (name, check) in CHECKS {
        if let Err(what) = check() {
            io::print(b"SPORE-TEST FAIL ");
            if !what.as_bytes().starts_with(name) {
                io::print(name);
                io::print(b": ");
            }
            io::print(what.as_bytes());
            io::print(b"\n");
            failed = true;
        }
    }
    if failed {
        io::exit(1);
    }
    io::print(b"SPORE-TEST done\n");
    io::exit(0)
}

#[panic_handler]
fn panic(_info: &PanicInfo) -> ! {
    // No formatting: core::fmt would pull in code built with SSE.
    io::print(b"\nSPORE-TEST FAIL panic\n");
    io::exit(1)
}
