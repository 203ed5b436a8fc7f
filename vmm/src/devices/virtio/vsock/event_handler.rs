//! Event-loop glue for virtio-vsock: queue notifications, the wake eventfd, the unix
//! listener and every host stream, and keeping epoll's interest in each stream in
//! step with its connection.

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::device::{Vsock, EVENT_QUEUE, RX_QUEUE, TX_QUEUE};

// Event tokens: the queue indices, then ours.
const TOKEN_WAKE: u32 = 3;
const TOKEN_LISTENER: u32 = 4;
/// A host stream, client or connection, found by its fd.
const TOKEN_STREAM: u32 = 5;

impl Vsock {
    /// Brings epoll in line with the host side: new streams in, changed interest
    /// modified, closed streams out (before their fds are closed and reused).
    fn sync_interest(&mut self, ops: &mut EventOps) {
        for (stream, registered) in self.host.dead.drain(..) {
            if registered {
                let _ = ops.remove(Events::empty(&stream));
            }
        }
        for client in self.host.clients.values_mut() {
            if !client.registered {
                let ev = Events::with_data(&client.stream, TOKEN_STREAM, EventSet::IN);
                client.registered = ops.add(ev).is_ok();
            }
        }
        for c in self.host.conns.values_mut() {
            let want = c.interest();
            if want == c.registered {
                continue;
            }
            let result = match (c.registered, want) {
                (None, Some(set)) => ops.add(Events::with_data(&c.stream, TOKEN_STREAM, set)),
                (Some(_), Some(set)) => ops.modify(Events::with_data(&c.stream, TOKEN_STREAM, set)),
                (Some(_), None) => ops.remove(Events::empty(&c.stream)),
                (None, None) => Ok(()),
            };
            match result {
                Ok(()) => c.registered = want,
                Err(e) => log::error!("vsock: epoll update for port {}: {e}", c.host_port),
            }
        }
    }
}

impl MutEventSubscriber for Vsock {
    fn init(&mut self, ops: &mut EventOps) {
        let mut watch = |ev| {
            if let Err(e) = ops.add(ev) {
                log::error!("vsock: cannot watch an fd: {e}");
            }
        };
        for (i, evt) in self.queue_evts.iter().enumerate() {
            watch(Events::with_data(evt, i as u32, EventSet::IN));
        }
        watch(Events::with_data(&self.wake_evt, TOKEN_WAKE, EventSet::IN));
        watch(Events::with_data(
            &self.host.listener,
            TOKEN_LISTENER,
            EventSet::IN,
        ));
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let token = events.data();
        let result = match token {
            TOKEN_WAKE | 0..=2 => {
                let evt = match token {
                    TOKEN_WAKE => Some(&self.wake_evt),
                    i => self.queue_evts.get(i as usize),
                };
                // Nonblocking: an empty counter just means a spurious wakeup.
                let _ = evt.map(|e| e.read());
                match token as usize {
                    TX_QUEUE => self.process_tx(),
                    EVENT_QUEUE => self.process_event_queue(),
                    RX_QUEUE => Ok(()),
                    _ => self.transport_reset_if_requested().map(|old| {
                        if let Some(old) = old {
                            let _ = ops.remove(Events::empty(&old));
                            let new = Events::with_data(
                                &self.host.listener,
                                TOKEN_LISTENER,
                                EventSet::IN,
                            );
                            if let Err(e) = ops.add(new) {
                                log::error!("vsock: cannot watch the new listener: {e}");
                            }
                        }
                    }),
                }
            }
            TOKEN_LISTENER => {
                self.host.accept_clients();
                Ok(())
            }
            TOKEN_STREAM => {
                let fd = events.fd();
                if self.host.clients.contains_key(&fd) {
                    self.host.client_readable(fd);
                } else {
                    self.host.conn_event(fd, events.event_set());
                }
                Ok(())
            }
            other => {
                log::warn!("vsock: unexpected event token {other}");
                Ok(())
            }
        };
        if let Err(e) = result.and_then(|()| self.process_rx()) {
            log::error!("vsock: {e}");
        }
        self.sync_interest(ops);
    }
}
