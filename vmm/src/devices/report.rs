//! The report port of spore's test guests: a guest writes 32-bit values to
//! `REPORT_PORT + 4 * n` (n < `REPORT_SLOTS`) and the host reads, per slot, the
//! first and the last value and how many arrived.
//!
//! Only test guests and clone benchmarks attach it; a Linux guest never sees it.

use std::sync::{Arc, Mutex};

use crate::bus::BusDevice;

/// First port of the device.
pub const REPORT_PORT: u16 = 0xe0;
/// Number of 32-bit slots (ports `REPORT_PORT`, +4, +8, ...).
pub const REPORT_SLOTS: usize = 4;

/// What one slot has seen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Slot {
    pub first: Option<u32>,
    pub last: Option<u32>,
    pub count: u64,
}

/// The device; clone the `Arc` to read it while the guest writes.
#[derive(Default)]
pub struct ReportPort {
    slots: [Slot; REPORT_SLOTS],
}

impl ReportPort {
    pub fn shared() -> Arc<Mutex<ReportPort>> {
        Arc::new(Mutex::new(ReportPort::default()))
    }

    pub fn slot(&self, n: usize) -> Slot {
        self.slots.get(n).copied().unwrap_or_default()
    }

    /// Bus length to insert the device with.
    pub fn len() -> u64 {
        (REPORT_SLOTS * 4) as u64
    }
}

impl BusDevice for ReportPort {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut word = [0u8; 4];
        let n = data.len().min(4);
        word[..n].copy_from_slice(&data[..n]);
        let value = u32::from_le_bytes(word);
        if let Some(slot) = self.slots.get_mut(offset as usize / 4) {
            slot.first.get_or_insert(value);
            slot.last = Some(value);
            slot.count += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_keep_first_last_and_count() {
        let mut port = ReportPort::default();
        port.write(0, &7u32.to_le_bytes());
        port.write(0, &9u32.to_le_bytes());
        port.write(4, &[0x11]);
        port.write(64, &[1]);
        assert_eq!(
            port.slot(0),
            Slot {
                first: Some(7),
                last: Some(9),
                count: 2
            }
        );
        assert_eq!(port.slot(1).last, Some(0x11));
        assert_eq!(port.slot(2), Slot::default());
        assert_eq!(port.slot(99), Slot::default());
    }
}
