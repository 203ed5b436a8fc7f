//! A minimal i8042 keyboard controller: enough for Linux's `reboot=k` (command
//! 0xFE pulses the CPU reset line, which ends the VM with `VmExit::Reboot`).
//!
//! Sits at `I8042_DATA_PORT` with a range reaching `I8042_COMMAND_PORT`; there is
//! no keyboard behind it, so the output buffer is always empty.

use std::sync::Arc;

use crate::bus::BusDevice;
use crate::layout::{I8042_COMMAND_PORT, I8042_DATA_PORT};
use crate::vcpu::{StopLatch, VmExit};

/// Offset of the command/status port from the data port.
const COMMAND_OFFSET: u64 = (I8042_COMMAND_PORT - I8042_DATA_PORT) as u64;
/// Bus range length covering data and command ports.
pub const I8042_RANGE: u64 = COMMAND_OFFSET + 1;
/// "Pulse output line 0": the CPU reset.
const CMD_RESET_CPU: u8 = 0xfe;
/// Status: output and input buffers empty, self-test passed (system flag).
const STATUS_IDLE: u8 = 0x04;

/// The i8042 device.
pub struct I8042 {
    latch: Arc<StopLatch>,
}

impl I8042 {
    pub fn new(latch: Arc<StopLatch>) -> I8042 {
        I8042 { latch }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = if offset == COMMAND_OFFSET {
            STATUS_IDLE
        } else {
            0
        };
        data.fill(value);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == COMMAND_OFFSET && data.first() == Some(&CMD_RESET_CPU) {
            self.latch.request(VmExit::Reboot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_is_idle() {
        let mut dev = I8042::new(Arc::new(StopLatch::new()));
        let mut b = [0xffu8];
        dev.read(COMMAND_OFFSET, &mut b);
        // Input buffer empty (bit 1) so Linux may write the reset command.
        assert_eq!(b[0] & 0x3, 0);
        dev.read(0, &mut b);
        assert_eq!(b[0], 0);
    }

    #[test]
    fn reset_command_reboots_other_commands_do_not() {
        let latch = Arc::new(StopLatch::new());
        let mut dev = I8042::new(latch.clone());
        dev.write(COMMAND_OFFSET, &[0xaa]);
        dev.write(0, &[CMD_RESET_CPU]);
        assert!(!latch.is_stopping());
        dev.write(COMMAND_OFFSET, &[CMD_RESET_CPU]);
        assert_eq!(latch.reason(), Some(VmExit::Reboot));
    }
}
