//! The vsock device's virtio logic: config space (guest CID), the RX, TX and event
//! queues (virtio 1.2 section 5.10.2), and the transport-reset event (5.10.6.7).
//!
//! Packet meaning and host sockets are in `host.rs`; event-loop glue in
//! `event_handler.rs`.

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use virtio_queue::{Queue, QueueOwnedT, QueueT, Writer};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::host::{listen, HostError, HostSide};
use super::packet::{read_packet, PacketError, RxBuffer, MAX_PAYLOAD};
use crate::devices::virtio::device::{
    check_queues, read_config_bytes, DeviceError, IrqTrigger, VirtioDevice, TYPE_VSOCK,
    VIRTIO_F_RING_INDIRECT_DESC, VIRTIO_F_VERSION_1,
};

pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
pub const EVENT_QUEUE: usize = 2;
const QUEUE_SIZES: &[u16] = &[256, 256, 256];
/// `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET` (5.10.6.7).
const EVENT_TRANSPORT_RESET: u32 = 0;

#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("vsock host socket")]
    Host(#[from] HostError),
    #[error("cannot return a buffer to the used ring")]
    Queue(#[source] virtio_queue::Error),
}

/// What a transport reset changes besides dropping connections.
#[derive(Debug, Default)]
struct ResetRequest {
    cid: Option<u64>,
    listener: Option<(UnixListener, PathBuf)>,
}

/// The virtio-vsock device.
pub struct Vsock {
    mem: GuestMemoryMmap,
    pub(super) irq: Arc<IrqTrigger>,
    pub(super) queue_evts: Vec<EventFd>,
    /// Wakes the event loop for work started off it (reset, transport reset).
    pub(super) wake_evt: EventFd,
    pub(super) host: HostSide,
    queues: Vec<Queue>,
    /// A transport reset was asked for.
    reset_requested: Option<ResetRequest>,
    /// A transport-reset event waits for an event-queue buffer.
    reset_event_pending: bool,
    scratch: Vec<u8>,
}

impl Vsock {
    pub fn new(
        mem: GuestMemoryMmap,
        irq: Arc<IrqTrigger>,
        queue_evts: Vec<EventFd>,
        wake_evt: EventFd,
        cid: u64,
        uds_path: &Path,
    ) -> Result<Self, VsockError> {
        let host = HostSide::bind(uds_path, cid)?;
        Ok(Self::with_host(mem, irq, queue_evts, wake_evt, host))
    }

    pub(super) fn with_host(
        mem: GuestMemoryMmap,
        irq: Arc<IrqTrigger>,
        queue_evts: Vec<EventFd>,
        wake_evt: EventFd,
        host: HostSide,
    ) -> Self {
        Self {
            mem,
            irq,
            queue_evts,
            wake_evt,
            host,
            queues: Vec::new(),
            reset_requested: None,
            reset_event_pending: false,
            scratch: Vec::with_capacity(MAX_PAYLOAD),
        }
    }

    pub fn guest_cid(&self) -> u64 {
        self.host.guest_cid
    }

    pub fn uds_path(&self) -> &Path {
        self.host.uds_path()
    }

    /// Asks the event loop to drop every connection and send the guest a
    /// TRANSPORT_RESET event (5.10.6.7), first switching to `new_cid` and to a new
    /// host socket at `new_uds_path` if given: what a clone needs for its own
    /// identity (Linux rereads the CID on this event). Callable from any thread; the
    /// new socket is bound here so its errors are reported here.
    pub fn request_transport_reset(
        &mut self,
        new_cid: Option<u64>,
        new_uds_path: Option<&Path>,
    ) -> Result<(), VsockError> {
        let listener = match new_uds_path {
            Some(p) => Some((listen(p)?, p.to_owned())),
            None => None,
        };
        self.reset_requested = Some(ResetRequest {
            cid: new_cid,
            listener,
        });
        if let Err(e) = self.wake_evt.write(1) {
            log::error!("vsock: cannot wake the event loop: {e}");
        }
        Ok(())
    }

    /// Does a requested transport reset (on the event-loop thread). Returns the
    /// replaced listener, for the caller to take out of epoll.
    pub fn transport_reset_if_requested(&mut self) -> Result<Option<UnixListener>, VsockError> {
        let Some(req) = self.reset_requested.take() else {
            return Ok(None);
        };
        self.host.reset_all();
        if let Some(cid) = req.cid.filter(|&c| c != self.host.guest_cid) {
            self.host.guest_cid = cid;
            if self.is_active() {
                self.irq.config_changed();
            }
        }
        let old = req
            .listener
            .map(|(listener, path)| self.host.replace_listener(listener, path));
        self.reset_event_pending = true;
        self.process_event_queue()?;
        Ok(old)
    }

    fn is_active(&self) -> bool {
        !self.queues.is_empty()
    }

    /// Posts a pending transport-reset event if the guest gave us a buffer.
    pub fn process_event_queue(&mut self) -> Result<(), VsockError> {
        if !self.reset_event_pending || !self.is_active() {
            return Ok(());
        }
        let queue = &mut self.queues[EVENT_QUEUE];
        let Some(chain) = queue.pop_descriptor_chain(&self.mem) else {
            return Ok(());
        };
        let head = chain.head_index();
        let len = match Writer::<()>::new(&self.mem, chain) {
            Ok(mut w) if w.available_bytes() >= 4 => {
                w.write_obj(EVENT_TRANSPORT_RESET.to_le()).map_or(0, |()| 4)
            }
            _ => 0,
        };
        queue
            .add_used(&self.mem, head, len)
            .map_err(VsockError::Queue)?;
        // A buffer too small or unmapped does not carry the event; wait for another.
        self.reset_event_pending = len == 0;
        self.irq.used_ring();
        Ok(())
    }

    /// Takes every packet the guest sent, then answers whatever that produced.
    pub fn process_tx(&mut self) -> Result<(), VsockError> {
        if !self.is_active() {
            return Ok(());
        }
        let mut used = false;
        while let Some(chain) = self.queues[TX_QUEUE].pop_descriptor_chain(&self.mem) {
            let head = chain.head_index();
            match read_packet(&self.mem, chain) {
                Ok((hdr, payload)) => self.host.on_guest_packet(&hdr, &payload),
                Err(PacketError::BadLength { hdr, .. }) => {
                    log::warn!("vsock: packet length beyond its buffer");
                    self.host.reset_connection(&hdr);
                }
                Err(e) => log::warn!("vsock: dropping guest packet: {e}"),
            }
            self.queues[TX_QUEUE]
                .add_used(&self.mem, head, 0)
                .map_err(VsockError::Queue)?;
            used = true;
        }
        if used {
            self.irq.used_ring();
        }
        self.process_rx()
    }

    /// Fills guest receive buffers with control packets and host data.
    pub fn process_rx(&mut self) -> Result<(), VsockError> {
        if !self.is_active() {
            return Ok(());
        }
        let mut used = false;
        let queue = &mut self.queues[RX_QUEUE];
        while let Some(chain) = queue.pop_descriptor_chain(&self.mem) {
            let head = chain.head_index();
            let rx = match RxBuffer::new(&self.mem, chain) {
                Ok(rx) => rx,
                Err(e) => {
                    log::warn!("vsock: unusable receive buffer: {e}");
                    queue
                        .add_used(&self.mem, head, 0)
                        .map_err(VsockError::Queue)?;
                    used = true;
                    continue;
                }
            };
            let Some(hdr) = self.host.next_packet(rx.payload_room(), &mut self.scratch) else {
                // Nothing to send: leave the buffer to the next packet.
                queue.go_to_previous_position();
                break;
            };
            let len = rx.write(hdr, &self.scratch).unwrap_or_else(|e| {
                log::warn!("vsock: {e}");
                0
            });
            queue
                .add_used(&self.mem, head, len)
                .map_err(VsockError::Queue)?;
            used = true;
        }
        if used {
            self.irq.used_ring();
        }
        Ok(())
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }

    fn avail_features(&self) -> u64 {
        // Stream sockets only: no VIRTIO_VSOCK_F_SEQPACKET (5.10.3).
        1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_F_RING_INDIRECT_DESC
    }

    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_vsock_config { le64 guest_cid; } (5.10.4)
        read_config_bytes(&self.host.guest_cid.to_le_bytes(), offset, data);
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        log::warn!("vsock: config write at {offset:#x} ignored");
    }

    fn activate(&mut self, queues: Vec<Queue>, _acked_features: u64) -> Result<(), DeviceError> {
        check_queues(&queues, QUEUE_SIZES.len())?;
        self.queues = queues;
        Ok(())
    }

    fn reset(&mut self) {
        self.queues.clear();
        self.host.reset_all();
        self.reset_event_pending = false;
        // Let the event loop take the closed sockets out of epoll.
        let _ = self.wake_evt.write(1);
    }

    fn queues(&self) -> &[Queue] {
        &self.queues
    }
}
