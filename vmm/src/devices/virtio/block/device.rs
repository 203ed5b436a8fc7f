//! The block device's virtio logic: features, configuration space, the request queue
//! and swapping the backing file (announced with a config-change interrupt).
//!
//! Request parsing and file I/O are in `request.rs`; event-loop glue in
//! `event_handler.rs`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::request::{execute, Disk};
use crate::devices::virtio::device::{
    check_queues, read_config_bytes, DeviceError, IrqTrigger, VirtioDevice, TYPE_BLOCK,
    VIRTIO_F_RING_INDIRECT_DESC, VIRTIO_F_VERSION_1,
};

// Feature bits, virtio 1.2 section 5.2.3.
pub const VIRTIO_BLK_F_SEG_MAX: u32 = 2;
pub const VIRTIO_BLK_F_RO: u32 = 5;
pub const VIRTIO_BLK_F_FLUSH: u32 = 9;

const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: &[u16] = &[QUEUE_SIZE];
/// Data segments per request: the queue minus the header and status descriptors.
const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;

#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("cannot open disk image {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot return a request to the used ring")]
    Queue(#[source] virtio_queue::Error),
}

/// The virtio-blk device.
pub struct Block {
    mem: GuestMemoryMmap,
    pub(super) irq: Arc<IrqTrigger>,
    pub(super) queue_evts: Vec<EventFd>,
    pub(super) disk: Disk,
    /// Fixed at creation: the feature bit the guest negotiated cannot change later.
    pub(super) read_only_feature: bool,
    queue: Option<Queue>,
}

impl Block {
    pub fn new(
        mem: GuestMemoryMmap,
        irq: Arc<IrqTrigger>,
        queue_evts: Vec<EventFd>,
        path: &Path,
        read_only: bool,
    ) -> Result<Self, BlockError> {
        let disk = open(path, read_only)?;
        Ok(Self {
            mem,
            irq,
            queue_evts,
            disk,
            read_only_feature: read_only,
            queue: None,
        })
    }

    pub fn disk(&self) -> &Disk {
        &self.disk
    }

    /// Puts another file behind the disk and tells a running guest that the
    /// configuration (capacity) changed, the way a resize is announced (5.2.2).
    pub fn set_backing(&mut self, path: &Path, read_only: bool) -> Result<(), BlockError> {
        self.disk = open(path, read_only)?;
        if self.queue.is_some() {
            self.irq.config_changed();
        }
        Ok(())
    }

    /// Serves every pending request; interrupts the guest if any was served.
    pub fn process_queue(&mut self) -> Result<(), BlockError> {
        let Some(queue) = self.queue.as_mut() else {
            return Ok(());
        };
        let mut used = false;
        while let Some(chain) = queue.pop_descriptor_chain(&self.mem) {
            let head = chain.head_index();
            let len = execute(&self.mem, chain, &self.disk);
            queue
                .add_used(&self.mem, head, len)
                .map_err(BlockError::Queue)?;
            used = true;
        }
        if used {
            self.irq.used_ring();
        }
        Ok(())
    }

    /// `struct virtio_blk_config` up to seg_max: capacity, size_max, seg_max (5.2.4).
    fn config(&self) -> [u8; 16] {
        let mut c = [0u8; 16];
        c[0..8].copy_from_slice(&self.disk.sectors().to_le_bytes());
        c[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        c
    }
}

fn open(path: &Path, read_only: bool) -> Result<Disk, BlockError> {
    Disk::open(path, read_only).map_err(|source| BlockError::Open {
        path: path.to_owned(),
        source,
    })
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn avail_features(&self) -> u64 {
        let ro = if self.read_only_feature {
            1 << VIRTIO_BLK_F_RO
        } else {
            0
        };
        1 << VIRTIO_F_VERSION_1
            | 1 << VIRTIO_F_RING_INDIRECT_DESC
            | 1 << VIRTIO_BLK_F_SEG_MAX
            | 1 << VIRTIO_BLK_F_FLUSH
            | ro
    }

    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config(), offset, data);
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        // Only writeback (F_CONFIG_WCE) has a writable field; we do not offer it.
        log::warn!("virtio-blk: config write at {offset:#x} ignored");
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
#[path = "tests.rs"]
mod tests;
