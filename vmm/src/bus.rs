//! Address buses: which device answers a guest access to a port or an MMIO address.
//!
//! A vCPU exit carries an address; the bus finds the device whose range holds it and
//! hands it the offset into that range. The bus owns no device state.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device that answers guest reads and writes on a bus.
pub trait BusDevice: Send {
    /// The guest reads `data.len()` bytes at `offset` into the device's range.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// The guest writes `data` at `offset` into the device's range.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Errors from building a bus.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("bus range {base:#x}+{len:#x} is empty or overlaps another device")]
    Overlap { base: u64, len: u64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Range {
    base: u64,
    len: u64,
}

/// A map from address ranges to devices (one for port I/O, one for MMIO).
#[derive(Clone, Default)]
pub struct Bus {
    devices: BTreeMap<Range, Arc<Mutex<dyn BusDevice>>>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `device` at `[base, base + len)`.
    pub fn insert(
        &mut self,
        device: Arc<Mutex<dyn BusDevice>>,
        base: u64,
        len: u64,
    ) -> Result<(), BusError> {
        let overlap = BusError::Overlap { base, len };
        let end = base.checked_add(len).ok_or(overlap.clone())?;
        if len == 0
            || self
                .devices
                .keys()
                .any(|r| base < r.base + r.len && r.base < end)
        {
            return Err(overlap);
        }
        self.devices.insert(Range { base, len }, device);
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<(u64, &Arc<Mutex<dyn BusDevice>>)> {
        let (range, dev) = self
            .devices
            .range(
                ..=Range {
                    base: addr,
                    len: u64::MAX,
                },
            )
            .next_back()?;
        (addr - range.base < range.len).then_some((addr - range.base, dev))
    }

    /// Dispatches a read; returns false when no device is at `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((offset, dev)) => {
                dev.lock().expect("bus device poisoned").read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Dispatches a write; returns false when no device is at `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr) {
            Some((offset, dev)) => {
                dev.lock().expect("bus device poisoned").write(offset, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(Vec<(u64, Vec<u8>)>);
    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatches_by_range_and_offset() {
        let dev = Arc::new(Mutex::new(Echo(vec![])));
        let mut bus = Bus::new();
        bus.insert(dev.clone(), 0x3f8, 8).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fa, &mut b));
        assert_eq!(b[0], 2);
        assert!(!bus.read(0x400, &mut b));
        assert!(!bus.read(0x3f7, &mut b));
        assert!(bus.write(0x3ff, &[9]));
        assert_eq!(dev.lock().unwrap().0, vec![(7, vec![9])]);
    }

    #[test]
    fn rejects_overlap_and_empty() {
        let mut bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(Echo(vec![]))), 0x100, 0x10)
            .unwrap();
        assert!(bus
            .insert(Arc::new(Mutex::new(Echo(vec![]))), 0x10f, 1)
            .is_err());
        assert!(bus
            .insert(Arc::new(Mutex::new(Echo(vec![]))), 0xf8, 9)
            .is_err());
        assert!(bus
            .insert(Arc::new(Mutex::new(Echo(vec![]))), 0x200, 0)
            .is_err());
        bus.insert(Arc::new(Mutex::new(Echo(vec![]))), 0x110, 1)
            .unwrap();
    }
}
