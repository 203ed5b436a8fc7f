//! Snapshot state of a whole virtio-mmio device (transport + device) and the two
//! operations the VMM needs: `VirtioMmioDevice::save` and `restore`.
//!
//! Owns the pairing of each device kind with its persist code. It does not touch
//! KVM: a restored `VirtioMmioDevice` is wired exactly like a new one (MMIO bus,
//! ioeventfds, irqfd, event loop), by the builder.

use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::block::BlockState;
use super::mmio::{MmioPersistError, MmioTransportState};
use super::rng::RngState;
use super::vsock::{VsockError, VsockState};
use super::{assemble, Block, DeviceControl, Rng, VirtioError, VirtioMmioDevice, Vsock};

/// Errors from recreating a device from its saved state.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("recreating the {0} device")]
    Create(&'static str, #[source] VirtioError),
    #[error("restoring the {0} device's transport")]
    Transport(&'static str, #[source] MmioPersistError),
    #[error("requesting the restored vsock's transport reset")]
    VsockReset(#[source] VsockError),
}

/// What is behind the transport, by kind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceKindState {
    Rng(RngState),
    Block(BlockState),
    Vsock(VsockState),
}

/// One virtio-mmio device: its transport and its device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtioDeviceState {
    pub transport: MmioTransportState,
    pub device: DeviceKindState,
}

/// The vsock identity a restored VM gets (a clone's own CID and host socket).
#[derive(Clone, Copy, Debug)]
pub struct VsockIdentity<'a> {
    pub cid: u64,
    pub uds_path: &'a Path,
    /// A listener already bound at `uds_path` (bound ahead of the restore, off
    /// its critical path); `None` binds one.
    pub listener: Option<&'a UnixListener>,
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().expect("virtio device poisoned")
}

impl VirtioMmioDevice {
    /// Captures the transport, its queues' ring positions and the device. Call it
    /// with the vCPUs and the event loop stopped.
    pub fn save(&self) -> VirtioDeviceState {
        // Transport before device: the order every MMIO access takes the locks in.
        let transport = lock(&self.transport);
        let device = match &self.control {
            DeviceControl::Rng(d) => DeviceKindState::Rng(lock(d).save()),
            DeviceControl::Block(d) => DeviceKindState::Block(lock(d).save()),
            DeviceControl::Vsock(d) => DeviceKindState::Vsock(lock(d).save()),
        };
        VirtioDeviceState {
            transport: transport.save(),
            device,
        }
    }
}

/// Recreates a device on `mem` with the transport and queue state of `state`.
///
/// A device whose driver had set DRIVER_OK comes back activated on the saved
/// queues, with its queues kicked once and a pending interrupt re-raised (both only
/// reach the guest once the builder registers the eventfds with KVM). A block
/// device reopens its backing file by path. A vsock device starts with no
/// connections, listens on `vsock.uds_path` (the saved path if `None`), and, when
/// active, has a transport reset queued that switches the guest to `vsock.cid`:
/// it runs when its subscriber first goes through the event loop.
pub fn restore(
    mem: &GuestMemoryMmap,
    state: &VirtioDeviceState,
    vsock: Option<VsockIdentity>,
) -> Result<VirtioMmioDevice, PersistError> {
    let active = state.transport.is_active();
    let (name, device) = match &state.device {
        DeviceKindState::Rng(s) => ("rng", restore_rng(mem, s)),
        DeviceKindState::Block(s) => ("block", restore_block(mem, s)),
        DeviceKindState::Vsock(s) => ("vsock", restore_vsock(mem, s, vsock, active)),
    };
    let device = device.map_err(|e| PersistError::Create(name, e))?;
    lock(&device.transport)
        .restore(&state.transport)
        .map_err(|e| PersistError::Transport(name, e))?;
    match (&device.control, &state.device) {
        (DeviceControl::Block(b), DeviceKindState::Block(s)) => lock(b).announce_resize_since(s),
        (DeviceControl::Vsock(v), DeviceKindState::Vsock(_)) if active => lock(v)
            .request_transport_reset(vsock.map(|id| id.cid), None)
            .map_err(PersistError::VsockReset)?,
        _ => {}
    }
    Ok(device)
}

fn restore_rng(mem: &GuestMemoryMmap, s: &RngState) -> Result<VirtioMmioDevice, VirtioError> {
    let m = mem.clone();
    let make = |irq, evts| Ok(Rng::restore(m, irq, evts, s));
    assemble("rng", mem, 1, make, DeviceControl::Rng)
}

fn restore_block(mem: &GuestMemoryMmap, s: &BlockState) -> Result<VirtioMmioDevice, VirtioError> {
    let m = mem.clone();
    let make = |irq, evts| Ok(Block::restore(m, irq, evts, s)?);
    assemble("block", mem, 1, make, DeviceControl::Block)
}

/// An active device keeps the saved CID until its transport reset switches it (so
/// the guest gets a config change with the reset); an inactive one takes the new
/// CID at once, since its driver has not read it yet.
fn restore_vsock(
    mem: &GuestMemoryMmap,
    s: &VsockState,
    identity: Option<VsockIdentity>,
    active: bool,
) -> Result<VirtioMmioDevice, VirtioError> {
    let mut s = s.clone();
    let uds_path = identity.map_or(s.uds_path.clone(), |id| id.uds_path.to_owned());
    if let (Some(id), false) = (identity, active) {
        s.cid = id.cid;
    }
    let bound = match identity.and_then(|id| id.listener) {
        Some(l) => Some(l.try_clone().map_err(VirtioError::Listener)?),
        None => None,
    };
    let m = mem.clone();
    let make = |irq, evts| {
        let wake = EventFd::new(EFD_NONBLOCK).map_err(VirtioError::EventFd)?;
        Ok(match bound {
            Some(l) => Vsock::restore_bound(m, irq, evts, wake, &s, (l, &uds_path)),
            None => Vsock::restore(m, irq, evts, wake, &s, &uds_path)?,
        })
    };
    assemble("vsock", mem, 3, make, DeviceControl::Vsock)
}

#[cfg(test)]
#[path = "persist_tests.rs"]
mod tests;
