//! COM1: a 16550A UART (vm-superio) whose output goes to the console writer and
//! whose interrupt is an EventFd the builder registers as irqfd on `SERIAL_IRQ`.
//!
//! There is no guest input yet. `save`/`restore` carry the UART's registers
//! through a template (`SerialSnapshot`).

use std::io::{self, Write};

use serde::{Deserialize, Serialize};
use vm_superio::serial::{NoEvents, SerialState};
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::bus::BusDevice;

/// Errors from creating the serial device.
#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    #[error("creating the serial interrupt eventfd failed")]
    EventFd(#[source] io::Error),
    #[error("saved serial state does not fit the UART (receive FIFO overfull)")]
    BadState,
}

/// The UART's registers and receive FIFO, as `vm_superio::SerialState`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialSnapshot {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    pub in_buffer: Vec<u8>,
}

impl From<SerialState> for SerialSnapshot {
    fn from(s: SerialState) -> Self {
        Self {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }
}

impl From<&SerialSnapshot> for SerialState {
    fn from(s: &SerialSnapshot) -> Self {
        SerialState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer.clone(),
        }
    }
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

    /// A UART with the registers of `state` (a clone's), writing to `out`.
    pub fn restore(
        state: &SerialSnapshot,
        out: Box<dyn Write + Send>,
    ) -> Result<(SerialDevice, EventFd), SerialError> {
        let irq = EventFd::new(EFD_NONBLOCK).map_err(SerialError::EventFd)?;
        let trigger = irq.try_clone().map_err(SerialError::EventFd)?;
        let uart = Serial::from_state(&state.into(), IrqEvent(trigger), NoEvents, out)
            .map_err(|_| SerialError::BadState)?;
        Ok((SerialDevice { uart }, irq))
    }

    pub fn save(&self) -> SerialSnapshot {
        self.uart.state().into()
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
    fn registers_survive_save_and_restore() {
        let (mut dev, _irq) = SerialDevice::new(Box::new(io::sink())).unwrap();
        dev.write(7, &[0x5a]); // scratch
        dev.write(3, &[0x03]); // LCR: 8N1
        dev.write(1, &[0x02]); // IER: THR empty
        let saved = dev.save();
        let (mut back, _irq) = SerialDevice::restore(&saved, Box::new(io::sink())).unwrap();
        let mut b = [0u8];
        back.read(7, &mut b);
        assert_eq!(b[0], 0x5a);
        back.read(3, &mut b);
        assert_eq!(b[0], 0x03);
        assert_eq!(back.save(), saved);
        let overfull = SerialSnapshot {
            in_buffer: vec![0; 1000],
            ..saved
        };
        assert!(SerialDevice::restore(&overfull, Box::new(io::sink())).is_err());
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
