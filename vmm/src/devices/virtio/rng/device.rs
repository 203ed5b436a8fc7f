//! The entropy device's virtio logic: fill each request's writable buffers with bytes
//! from the host's getrandom(2). The event-loop glue is in `event_handler.rs`.

use std::io::Write;
use std::sync::Arc;

use virtio_queue::{Queue, QueueT, Writer};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::devices::virtio::device::{
    check_queues, DeviceError, IrqTrigger, VirtioDevice, TYPE_RNG, VIRTIO_F_RING_INDIRECT_DESC,
    VIRTIO_F_VERSION_1,
};

const QUEUE_SIZES: &[u16] = &[256];
/// Most bytes handed out per request, so one huge buffer cannot stall the event loop.
const MAX_REQUEST_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum RngError {
    #[error("getrandom failed")]
    GetRandom(#[source] std::io::Error),
    #[error("cannot write to the guest buffer")]
    GuestWrite(#[source] std::io::Error),
    #[error("cannot return the buffer to the used ring")]
    Queue(#[source] virtio_queue::Error),
}

/// The virtio-rng device.
pub struct Rng {
    mem: GuestMemoryMmap,
    pub(super) irq: Arc<IrqTrigger>,
    pub(super) queue_evts: Vec<EventFd>,
    queue: Option<Queue>,
}

/// Fills `buf` from the kernel's CSPRNG.
fn getrandom(buf: &mut [u8]) -> Result<(), RngError> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: `rest` is a valid, writable buffer of `rest.len()` bytes that
        // getrandom fills and does not keep.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(RngError::GetRandom(e));
        }
        done += n as usize;
    }
    Ok(())
}

impl Rng {
    pub fn new(mem: GuestMemoryMmap, irq: Arc<IrqTrigger>, queue_evts: Vec<EventFd>) -> Self {
        Self {
            mem,
            irq,
            queue_evts,
            queue: None,
        }
    }

    /// Serves every pending request; interrupts the guest if any was served.
    pub fn process_queue(&mut self) -> Result<(), RngError> {
        let Some(queue) = self.queue.as_mut() else {
            return Ok(());
        };
        let mut used = false;
        while let Some(chain) = queue.pop_descriptor_chain(&self.mem) {
            let head = chain.head_index();
            // A chain we cannot map is returned with nothing written.
            let len = match Writer::<()>::new(&self.mem, chain) {
                Ok(mut w) => {
                    let mut bytes = vec![0u8; w.available_bytes().min(MAX_REQUEST_BYTES)];
                    getrandom(&mut bytes)?;
                    w.write_all(&bytes).map_err(RngError::GuestWrite)?;
                    bytes.len() as u32
                }
                Err(e) => {
                    log::warn!("virtio-rng: bad descriptor chain: {e}");
                    0
                }
            };
            queue
                .add_used(&self.mem, head, len)
                .map_err(RngError::Queue)?;
            used = true;
        }
        if used {
            self.irq.used_ring();
        }
        Ok(())
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        TYPE_RNG
    }

    fn avail_features(&self) -> u64 {
        1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_F_RING_INDIRECT_DESC
    }

    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        // The entropy device has no configuration space (5.4.4).
        data.fill(0);
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        log::warn!("virtio-rng: config write at {offset:#x} ignored");
    }

    fn activate(
        &mut self,
        mut queues: Vec<Queue>,
        _acked_features: u64,
    ) -> Result<(), DeviceError> {
        check_queues(&queues, QUEUE_SIZES.len())?;
        self.queue = queues.pop();
        Ok(())
    }

    fn reset(&mut self) {
        self.queue = None;
    }

    fn queues(&self) -> &[Queue] {
        self.queue.as_slice()
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    use super::*;
    use crate::devices::virtio::test_utils::*;

    fn rng() -> (Rng, EventFd, GuestMemoryMmap) {
        let mem = guest_memory();
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let irq = Arc::new(IrqTrigger::new(evt.try_clone().unwrap()));
        (Rng::new(mem.clone(), irq, vec![]), evt, mem)
    }

    #[test]
    fn fills_writable_buffers() {
        let (mut dev, irq, mem) = rng();
        let mut q = TestQueue::new(&mem, 0x1_0000, 16);
        dev.activate(vec![q.queue()], VERSION_1).unwrap();
        q.add_chain(&[wo(0x10_0000, 64), wo(0x10_1000, 64)]);
        q.add_chain(&[ro(0x11_0000, 16)]);
        dev.process_queue().unwrap();
        assert_eq!(q.used_idx(), 2);
        assert_eq!(q.used_elem(0), (0, 128));
        // A read-only buffer gets nothing.
        assert_eq!(q.used_elem(1), (2, 0));
        let mut a = [0u8; 64];
        let mut b = [0u8; 64];
        mem.read_slice(&mut a, GuestAddress(0x10_0000)).unwrap();
        mem.read_slice(&mut b, GuestAddress(0x10_1000)).unwrap();
        assert_ne!(a, [0u8; 64]);
        assert_ne!(a, b);
        assert_eq!(irq.read().unwrap(), 1);
    }

    #[test]
    fn out_of_memory_buffer_is_returned_empty() {
        let (mut dev, _irq, mem) = rng();
        let mut q = TestQueue::new(&mem, 0x1_0000, 16);
        dev.activate(vec![q.queue()], VERSION_1).unwrap();
        q.add_chain(&[wo(MEM_SIZE as u64 - 8, 64)]);
        q.add_chain(&[wo(0x10_0000, 8)]);
        dev.process_queue().unwrap();
        assert_eq!(q.used_idx(), 2);
        assert_eq!(q.used_elem(0).1, 0);
        assert_eq!(q.used_elem(1).1, 8);
    }

    #[test]
    fn inactive_device_does_nothing() {
        let (mut dev, irq, _mem) = rng();
        dev.process_queue().unwrap();
        assert!(irq.read().is_err());
        assert!(dev.activate(vec![], VERSION_1).is_err());
    }
}
