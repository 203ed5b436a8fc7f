//! Snapshot state of virtio-rng: nothing beyond its transport. The device keeps no
//! state of its own, and a clone's fresh entropy comes from the host's getrandom(2)
//! on its next request.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::Rng;
use crate::devices::virtio::device::IrqTrigger;

/// virtio-rng's own state (empty: the queue lives in the transport's state).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {}

impl Rng {
    pub fn save(&self) -> RngState {
        RngState {}
    }

    /// A new, inactive device; the transport's restore activates it.
    pub fn restore(
        mem: GuestMemoryMmap,
        irq: Arc<IrqTrigger>,
        queue_evts: Vec<EventFd>,
        _state: &RngState,
    ) -> Self {
        Rng::new(mem, irq, queue_evts)
    }
}

#[cfg(test)]
mod tests {
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    use super::*;
    use crate::devices::virtio::test_utils::guest_memory;
    use crate::devices::virtio::VirtioDevice;

    #[test]
    fn restored_rng_is_inactive_until_its_transport_activates_it() {
        let irq = Arc::new(IrqTrigger::new(EventFd::new(EFD_NONBLOCK).unwrap()));
        let rng = Rng::restore(guest_memory(), irq, vec![], &RngState {});
        assert!(rng.queues().is_empty());
        assert_eq!(serde_json::to_string(&rng.save()).unwrap(), "{}");
    }
}
