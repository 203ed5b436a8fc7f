//! Snapshot state of virtio-blk: the backing file, how it is opened, the read-only
//! feature offered to the driver and the capacity the driver was told.
//!
//! The file itself is not captured: a restore reopens it by path. If its size
//! changed since the capture, the restored device announces the new capacity with
//! a config-change interrupt, as a resize would.

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::{Block, BlockError};
use crate::devices::virtio::device::{IrqTrigger, VirtioDevice};

/// virtio-blk's own state (its queue lives in the transport's state).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockState {
    /// The backing file at capture time.
    pub path: PathBuf,
    /// Whether the backing file is opened read-only.
    pub read_only: bool,
    /// Whether VIRTIO_BLK_F_RO is offered (fixed at creation, see `Block`).
    pub read_only_feature: bool,
    /// Capacity in 512-byte sectors, as the driver last saw it.
    pub sectors: u64,
}

impl Block {
    pub fn save(&self) -> BlockState {
        BlockState {
            path: self.disk.path().to_owned(),
            read_only: self.disk.read_only(),
            read_only_feature: self.read_only_feature,
            sectors: self.disk.sectors(),
        }
    }

    /// A new, inactive device on the saved backing file, offering the saved
    /// features; the transport's restore activates it.
    pub fn restore(
        mem: GuestMemoryMmap,
        irq: Arc<IrqTrigger>,
        queue_evts: Vec<EventFd>,
        state: &BlockState,
    ) -> Result<Self, BlockError> {
        let mut block = Block::new(mem, irq, queue_evts, &state.path, state.read_only)?;
        block.read_only_feature = state.read_only_feature;
        Ok(block)
    }

    /// After activation: tells the driver the capacity changed if the backing
    /// file's size differs from the one in `state`.
    pub fn announce_resize_since(&self, state: &BlockState) {
        if self.disk.sectors() != state.sectors && !self.queues().is_empty() {
            self.irq.config_changed();
        }
    }
}

#[cfg(test)]
mod tests {
    use vmm_sys_util::eventfd::EFD_NONBLOCK;
    use vmm_sys_util::tempfile::TempFile;

    use super::*;
    use crate::devices::virtio::block::device::VIRTIO_BLK_F_RO;
    use crate::devices::virtio::test_utils::*;

    fn irq() -> (Arc<IrqTrigger>, EventFd) {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        (Arc::new(IrqTrigger::new(evt.try_clone().unwrap())), evt)
    }

    #[test]
    fn save_then_restore_keeps_file_mode_features_and_capacity() {
        let img = TempFile::new().unwrap();
        img.as_file().set_len(8 * 512).unwrap();
        let mem = guest_memory();
        // Created writable without the RO feature, then switched to a read-only file.
        let mut b = Block::new(
            mem.clone(),
            irq().0,
            vec![],
            std::path::Path::new("/dev/null"),
            false,
        )
        .unwrap();
        b.set_backing(img.as_path(), true).unwrap();
        let s = b.save();
        assert_eq!(s.path, img.as_path());
        assert_eq!(
            (s.read_only, s.read_only_feature, s.sectors),
            (true, false, 8)
        );
        let json = serde_json::to_string(&s).unwrap();
        let back: BlockState = serde_json::from_str(&json).unwrap();
        let r = Block::restore(mem, irq().0, vec![], &back).unwrap();
        assert_eq!(r.save(), s);
        assert_eq!(r.avail_features() & (1 << VIRTIO_BLK_F_RO), 0);
        assert_eq!(r.avail_features(), b.avail_features());
    }

    #[test]
    fn restore_of_a_missing_file_fails_with_its_path() {
        let s = BlockState {
            path: "/nonexistent/spore-disk.img".into(),
            read_only: true,
            read_only_feature: true,
            sectors: 0,
        };
        let err = Block::restore(guest_memory(), irq().0, vec![], &s)
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("/nonexistent/spore-disk.img"),
            "{err}"
        );
    }

    #[test]
    fn a_resized_file_is_announced_only_to_an_active_driver() {
        let img = TempFile::new().unwrap();
        img.as_file().set_len(4 * 512).unwrap();
        let mem = guest_memory();
        let (trigger, evt) = irq();
        let mut b = Block::new(mem.clone(), trigger.clone(), vec![], img.as_path(), true).unwrap();
        let mut s = b.save();
        s.sectors = 2;
        b.announce_resize_since(&s);
        assert!(evt.read().is_err(), "inactive: nothing to announce");
        let q = TestQueue::new(&mem, 0x1_0000, 16);
        b.activate(vec![q.queue()], VERSION_1).unwrap();
        b.announce_resize_since(&b.save());
        assert!(evt.read().is_err(), "same size: nothing to announce");
        b.announce_resize_since(&s);
        assert_eq!(evt.read().unwrap(), 1);
        assert_eq!(trigger.config_generation(), 1);
    }
}
