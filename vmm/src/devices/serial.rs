//! COM1: a 16550A UART (vm-superio) whose output goes to the console writer and
//! whose interrupt is an EventFd the builder registers as irqfd on `SERIAL_IRQ`.
//!
//! There is no guest input yet.

use std::io::{self, Write};

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::bus::BusDevice;

/// Errors from creating the serial device.
#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    #[error("creating the serial interrupt eventfd failed")]
    EventFd(#[source] io::Error),
}

/// Raises the serial IRQ by writing the irqfd.
pub struct IrqEvent(EventFd);

impl Trigger for IrqEvent {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// The COM1 device.
pub struct SerialDevice {
    uart: Serial<IrqEvent, NoEvents, Box<dyn Write + Send>>,
}

impl SerialDevice {
    /// A UART writing to `out`, and the eventfd to register as its irqfd.
    pub fn new(out: Box<dyn Write + Send>) -> Result<(SerialDevice, EventFd), SerialError> {
        let irq = EventFd::new(EFD_NONBLOCK).map_err(SerialError::EventFd)?;
        let trigger = irq.try_clone().map_err(SerialError::EventFd)?;
        let uart = Serial::new(IrqEvent(trigger), out);
        Ok((SerialDevice { uart }, irq))
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let Some(b) = data.first_mut() {
            *b = self.uart.read(offset as u8);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some(b) = data.first() {
            if let Err(e) = self.uart.write(offset as u8, *b) {
                log::warn!("serial write failed: {e:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn transmitted_bytes_reach_the_writer() {
        let sink = Sink::default();
        let (mut dev, _irq) = SerialDevice::new(Box::new(sink.clone())).unwrap();
        for b in b"hi\n" {
            dev.write(0, &[*b]);
        }
        assert_eq!(&*sink.0.lock().unwrap(), b"hi\n");
    }

    #[test]
    fn thr_empty_interrupt_fires_the_eventfd() {
        let (mut dev, irq) = SerialDevice::new(Box::new(io::sink())).unwrap();
        // IER: enable "transmitter holding register empty" interrupts.
        dev.write(1, &[0x02]);
        dev.write(0, b"x");
        assert!(irq.read().unwrap() >= 1);
        // LSR says the transmitter is empty.
        let mut lsr = [0u8];
        dev.read(5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0);
    }
}
