//! Event-loop glue for virtio-blk: a queue notification means "requests pending".

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::Block;

impl MutEventSubscriber for Block {
    fn init(&mut self, ops: &mut EventOps) {
        for (i, evt) in self.queue_evts.iter().enumerate() {
            if let Err(e) = ops.add(Events::with_data(evt, i as u32, EventSet::IN)) {
                log::error!("virtio-blk: cannot watch queue {i}: {e}");
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if let Some(evt) = self.queue_evts.get(events.data() as usize) {
            // Nonblocking: an empty counter just means a spurious wakeup.
            let _ = evt.read();
        }
        if let Err(e) = self.process_queue() {
            log::error!("virtio-blk: {e}");
        }
    }
}
