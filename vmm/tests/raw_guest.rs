//! spore's VMM running hand-assembled 64-bit snippets (needs /dev/kvm and root).
//!
//! Each snippet starts in long mode at `CODE` with identity paging, and ends by
//! writing a byte to the exit port. The bytes are written out by hand with the
//! instruction next to them.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use spore_vmm::builder::{start_raw, ExtraDevice, RawGuest, VmHandle};
use spore_vmm::bus::BusDevice;
use spore_vmm::config::Console;
use spore_vmm::vcpu::VmExit;
use vm_memory::{Bytes, GuestAddress};

const CODE: u64 = 0x1000;
const HANDLER: u64 = 0x2000;
const IDT: u64 = 0x3000;
const IDTR: u64 = 0x3100;
const TEST_PORT: u64 = 0xe0;
const TEST_MMIO: u64 = 0xd100_0000;
/// Generous: supervisor code is emulated on kvm_pvm hosts.
const TIMEOUT: Duration = Duration::from_secs(20);

/// A device that records writes and answers reads with `offset + reply`.
#[derive(Default)]
struct Probe {
    reply: u8,
    writes: Vec<(u64, Vec<u8>)>,
}

impl BusDevice for Probe {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(self.reply.wrapping_add(offset as u8));
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        self.writes.push((offset, data.to_vec()));
    }
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn kvm_available() -> bool {
    let ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !ok {
        eprintln!("skipped: /dev/kvm is not usable by this user");
    }
    ok
}

fn guest(code: Vec<u8>) -> RawGuest {
    RawGuest {
        mem_mib: 16,
        load: vec![(CODE, code)],
        entry: CODE,
        console: Console::Null,
        io_devices: Vec::new(),
        mmio_devices: Vec::new(),
    }
}

fn extra(base: u64, len: u64, probe: &Arc<Mutex<Probe>>) -> ExtraDevice {
    ExtraDevice {
        base,
        len,
        device: probe.clone(),
    }
}

fn wait(vm: &VmHandle) -> VmExit {
    vm.wait_timeout(TIMEOUT)
        .expect("guest did not finish in time")
}

#[test]
fn exit_port_powers_off() {
    if !kvm_available() {
        return;
    }
    let code = vec![
        0xb0, 0x00, // mov al, 0
        0xe6, 0xf4, // out 0xf4, al
        0xf4, // hlt
    ];
    let vm = start_raw(guest(code)).unwrap();
    assert_eq!(wait(&vm), VmExit::PowerOff);
}

#[test]
fn port_io_out_and_in_reach_a_device() {
    if !kvm_available() {
        return;
    }
    let probe = Arc::new(Mutex::new(Probe {
        reply: 0x5a,
        ..Default::default()
    }));
    let code = vec![
        0x66, 0xba, 0xe0, 0x00, // mov dx, 0xe0
        0xb0, 0x42, // mov al, 0x42
        0xee, // out dx, al
        0xec, // in al, dx
        0xe6, 0xf4, // out 0xf4, al   (reports what `in` read)
        0xf4, // hlt
    ];
    let mut g = guest(code);
    g.io_devices.push(extra(TEST_PORT, 1, &probe));
    let vm = start_raw(g).unwrap();
    assert_eq!(wait(&vm), VmExit::GuestError(0x5a));
    assert_eq!(probe.lock().unwrap().writes, vec![(0, vec![0x42])]);
}

#[test]
fn mmio_write_and_read_reach_a_device() {
    if !kvm_available() {
        return;
    }
    let probe = Arc::new(Mutex::new(Probe {
        reply: 0x30,
        ..Default::default()
    }));
    let code = vec![
        0xbb, 0x00, 0x00, 0x00, 0xd1, // mov ebx, 0xd1000000
        0xc7, 0x03, 0x78, 0x56, 0x34, 0x12, // mov dword [rbx], 0x12345678
        0x8b, 0x43, 0x04, // mov eax, [rbx + 4]
        0xe6, 0xf4, // out 0xf4, al
        0xf4, // hlt
    ];
    let mut g = guest(code);
    g.mmio_devices.push(extra(TEST_MMIO, 0x1000, &probe));
    let vm = start_raw(g).unwrap();
    assert_eq!(wait(&vm), VmExit::GuestError(0x34));
    assert_eq!(
        probe.lock().unwrap().writes,
        vec![(0, vec![0x78, 0x56, 0x34, 0x12])]
    );
}

#[test]
fn guest_memory_writes_are_visible_to_the_host() {
    if !kvm_available() {
        return;
    }
    let code = vec![
        0xbb, 0x00, 0x00, 0x01, 0x00, // mov ebx, 0x10000
        0xc7, 0x03, 0xef, 0xbe, 0xad, 0xde, // mov dword [rbx], 0xdeadbeef
        0xb0, 0x00, // mov al, 0
        0xe6, 0xf4, // out 0xf4, al
        0xf4, // hlt
    ];
    let vm = start_raw(guest(code)).unwrap();
    assert_eq!(wait(&vm), VmExit::PowerOff);
    let value: u32 = vm.memory().read_obj(GuestAddress(0x10000)).unwrap();
    assert_eq!(value, 0xdead_beef);
}

#[test]
fn serial_output_reaches_the_console() {
    if !kvm_available() {
        return;
    }
    let console = Captured::default();
    let code = vec![
        0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xb0, b'o', // mov al, 'o'
        0xee, // out dx, al
        0xb0, b'k', // mov al, 'k'
        0xee, // out dx, al
        0xb0, 0x00, // mov al, 0
        0xe6, 0xf4, // out 0xf4, al
        0xf4, // hlt
    ];
    let mut g = guest(code);
    g.console = Console::Writer(Box::new(console.clone()));
    let vm = start_raw(g).unwrap();
    assert_eq!(wait(&vm), VmExit::PowerOff);
    assert_eq!(&*console.0.lock().unwrap(), b"ok");
}

#[test]
fn host_stop_ends_a_spinning_guest() {
    if !kvm_available() {
        return;
    }
    let code = vec![0xeb, 0xfe]; // jmp $
    let vm = start_raw(guest(code)).unwrap();
    assert_eq!(vm.wait_timeout(Duration::from_millis(300)), None);
    let asked = Instant::now();
    vm.stop();
    assert_eq!(vm.wait(), VmExit::Stopped);
    assert!(asked.elapsed() < Duration::from_secs(5));
}

/// A 64-bit interrupt gate to `handler` in the boot code segment.
fn idt_gate(handler: u64) -> [u8; 16] {
    let mut gate = [0u8; 16];
    gate[0..2].copy_from_slice(&(handler as u16).to_le_bytes());
    gate[2..4].copy_from_slice(&0x08u16.to_le_bytes());
    gate[5] = 0x8e; // present, DPL 0, 64-bit interrupt gate
    gate[6..8].copy_from_slice(&((handler >> 16) as u16).to_le_bytes());
    gate[8..12].copy_from_slice(&((handler >> 32) as u32).to_le_bytes());
    gate
}

/// IDT with a #BP gate, IDTR, and `main` that loads the IDT and runs `int3`.
fn int3_guest(handler: Vec<u8>, after_int3: Vec<u8>) -> (RawGuest, u64) {
    let mut idt = vec![0u8; 16 * 4];
    idt[3 * 16..4 * 16].copy_from_slice(&idt_gate(HANDLER));
    let mut idtr = ((idt.len() - 1) as u16).to_le_bytes().to_vec();
    idtr.extend(IDT.to_le_bytes());
    let mut main = vec![
        0xbb, 0x00, 0x31, 0x00, 0x00, // mov ebx, 0x3100
        0x0f, 0x01, 0x1b, // lidt [rbx]
        0xcc, // int3
    ];
    let after = CODE + main.len() as u64;
    main.extend(after_int3);
    let mut g = guest(main);
    g.load
        .extend([(HANDLER, handler), (IDT, idt), (IDTR, idtr)]);
    (g, after)
}

#[test]
fn int3_runs_the_guest_breakpoint_handler() {
    if !kvm_available() {
        return;
    }
    let probe = Arc::new(Mutex::new(Probe::default()));
    let handler = vec![
        0xb0, 0x77, // mov al, 0x77
        0xe6, 0xe0, // out 0xe0, al      (the handler ran)
        0x48, 0x8b, 0x04, 0x24, // mov rax, [rsp]   (RIP pushed by #BP)
        0xe6, 0xe1, // out 0xe1, al
        0xb0, 0x00, // mov al, 0
        0xe6, 0xf4, // out 0xf4, al
        0xf4, // hlt
    ];
    let (mut g, after) = int3_guest(handler, vec![0xb0, 0x99, 0xe6, 0xf4, 0xf4]);
    g.io_devices.push(extra(TEST_PORT, 2, &probe));
    let vm = start_raw(g).unwrap();
    assert_eq!(wait(&vm), VmExit::PowerOff);
    // The handler ran, and saw RIP just past the int3 (a trap, as on hardware).
    assert_eq!(
        probe.lock().unwrap().writes,
        vec![(0, vec![0x77]), (1, vec![after as u8])]
    );
}

#[test]
fn int3_handler_returns_with_iretq() {
    if !kvm_available() {
        return;
    }
    let handler = vec![
        0x48, 0xcf, // iretq
    ];
    let after = vec![
        0xb0, 0x55, // mov al, 0x55
        0xe6, 0xf4, // out 0xf4, al
        0xf4, // hlt
    ];
    let (g, _) = int3_guest(handler, after);
    let vm = start_raw(g).unwrap();
    assert_eq!(wait(&vm), VmExit::GuestError(0x55));
}

#[test]
fn i8042_reset_command_reboots() {
    if !kvm_available() {
        return;
    }
    let code = vec![
        0xe4, 0x64, // in al, 0x64     (status: input buffer empty)
        0xa8, 0x02, // test al, 2
        0x75, 0xfa, // jnz back to the `in`
        0xb0, 0xfe, // mov al, 0xfe
        0xe6, 0x64, // out 0x64, al    (pulse reset)
        0xf4, // hlt
    ];
    let vm = start_raw(guest(code)).unwrap();
    assert_eq!(wait(&vm), VmExit::Reboot);
}

#[test]
fn exception_without_an_idt_is_a_triple_fault() {
    if !kvm_available() {
        return;
    }
    // An IDTR with limit 0: the #BP from int3 cannot be delivered, nor the #GP
    // and #DF that follow.
    let code = vec![
        0xbb, 0x00, 0x31, 0x00, 0x00, // mov ebx, 0x3100
        0x0f, 0x01, 0x1b, // lidt [rbx]
        0xcc, // int3
        0xf4, // hlt
    ];
    let mut g = guest(code);
    g.load.push((IDTR, vec![0u8; 10]));
    let vm = start_raw(g).unwrap();
    assert_eq!(wait(&vm), VmExit::TripleFault);
}
