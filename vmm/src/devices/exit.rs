//! spore's exit port (`layout::EXIT_PORT`): the guest writes one byte saying why it
//! stops (guest-kernel/patches/0002-spore-exit-port.patch; test guests write it
//! directly). Reads return 0.

use std::sync::Arc;

use crate::bus::BusDevice;
use crate::vcpu::{StopLatch, VmExit};

/// Values the patched kernel writes.
pub const EXIT_POWEROFF: u8 = 0;
pub const EXIT_PANIC: u8 = 1;

/// The reason a byte written to the exit port stands for.
pub fn reason(code: u8) -> VmExit {
    match code {
        EXIT_POWEROFF => VmExit::PowerOff,
        EXIT_PANIC => VmExit::Panic,
        other => VmExit::GuestError(other),
    }
}

/// The exit-port device.
pub struct ExitPort {
    latch: Arc<StopLatch>,
}

impl ExitPort {
    pub fn new(latch: Arc<StopLatch>) -> ExitPort {
        ExitPort { latch }
    }
}

impl BusDevice for ExitPort {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        if let Some(code) = data.first() {
            self.latch.request(reason(*code));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_reasons() {
        assert_eq!(reason(0), VmExit::PowerOff);
        assert_eq!(reason(1), VmExit::Panic);
        assert_eq!(reason(42), VmExit::GuestError(42));
    }

    #[test]
    fn write_stops_the_vm() {
        let latch = Arc::new(StopLatch::new());
        let mut port = ExitPort::new(latch.clone());
        let mut b = [9u8];
        port.read(0, &mut b);
        assert_eq!(b[0], 0);
        assert!(!latch.is_stopping());
        port.write(0, &[1]);
        assert_eq!(latch.reason(), Some(VmExit::Panic));
    }
}
