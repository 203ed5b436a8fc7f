//! Port I/O for the test guest: COM1 output, spore's exit port and a TSC clock.
//!
//! Owns everything that talks to the host outside virtio: the `SPORE-TEST` report
//! lines on the serial port, the final exit code, and the time base for bounded
//! polling. It does not know about virtio devices.

use core::arch::asm;
use core::sync::atomic::{AtomicBool, Ordering};

/// COM1 (vmm/src/layout.rs `SERIAL_PORT`).
const SERIAL_PORT: u16 = 0x3f8;
/// Line status register: bit 5 = transmit holding register empty.
const SERIAL_LSR: u16 = SERIAL_PORT + 5;
const LSR_THR_EMPTY: u8 = 1 << 5;
/// spore's exit port (vmm/src/layout.rs `EXIT_PORT`): 0 = power off, 1 = failure.
const EXIT_PORT: u16 = 0xf4;

/// TSC ticks per second assumed for timeouts. The true rate is unknown without a
/// calibration source; 2 GHz is within a factor ~2 of any x86 host, and every
/// timeout is generous enough for that.
pub const TICKS_PER_SEC: u64 = 2_000_000_000;

fn outb(port: u16, value: u8) {
    // SAFETY: port I/O to COM1 or spore's exit port only; it has no effect on
    // memory this program relies on.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    }
}

fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: reading COM1's line status register has no side effects on memory.
    unsafe {
        asm!("in al, dx", out("al") value, in("dx") port, options(nomem, nostack, preserves_flags))
    }
    value
}

/// The time-stamp counter; `rdtsc` is one of the instructions KVM's emulator knows.
pub fn now() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: rdtsc only reads the counter into edx:eax.
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) }
    (u64::from(hi) << 32) | u64::from(lo)
}

/// A deadline `secs` seconds (at `TICKS_PER_SEC`) from now.
pub fn deadline(secs: u64) -> u64 {
    now().wrapping_add(secs * TICKS_PER_SEC)
}

pub fn expired(deadline: u64) -> bool {
    now() >= deadline
}

/// Cleared when the line status register never reports an empty transmitter
/// (a UART model without LSR): then stop asking, instead of spinning per byte.
static LSR_WORKS: AtomicBool = AtomicBool::new(true);

fn putc(byte: u8) {
    // A bounded wait: spore's UART is always ready, a real one within microseconds.
    if LSR_WORKS.load(Ordering::Relaxed) && !(0..1000).any(|_| inb(SERIAL_LSR) & LSR_THR_EMPTY != 0)
    {
        LSR_WORKS.store(false, Ordering::Relaxed);
    }
    outb(SERIAL_PORT, byte);
}

pub fn print(bytes: &[u8]) {
    for &b in bytes {
        putc(b);
    }
}

pub fn print_hex_byte(byte: u8) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    putc(DIGITS[usize::from(byte >> 4)]);
    putc(DIGITS[usize::from(byte & 0xf)]);
}

pub fn print_hex(bytes: &[u8]) {
    for &b in bytes {
        print_hex_byte(b);
    }
}

pub fn print_dec(mut value: u64) {
    let mut digits = [0u8; 20];
    let mut n = 0;
    loop {
        digits[19 - n] = b'0' + (value % 10) as u8;
        n += 1;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    print(&digits[20 - n..]);
}

/// Ends the VM: 0 = clean power-off, anything else = failure.
pub fn exit(code: u8) -> ! {
    outb(EXIT_PORT, code);
    loop {
        // SAFETY: interrupts are off; hlt just parks the vCPU if the VMM goes on.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) }
    }
}
