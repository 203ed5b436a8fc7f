//! Snapshot state of virtio-vsock: the guest CID and the host socket path.
//!
//! Connections are never captured: a restored device starts with none, and a
//! restored *active* device gets a transport reset (virtio 1.2 section 5.10.6.7),
//! which makes the guest drop the connections it still believes in and reread its
//! CID. The restore binds its own host socket: a clone must not take over the
//! template's path, which the template process still owns.

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::host::HostSide;
use super::{Vsock, VsockError};
use crate::devices::virtio::device::IrqTrigger;

/// virtio-vsock's own state (its queues live in the transport's state).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockState {
    pub cid: u64,
    /// The host socket at capture time (informational: restores choose their own).
    pub uds_path: PathBuf,
}

impl Vsock {
    pub fn save(&self) -> VsockState {
        VsockState {
            cid: self.guest_cid(),
            uds_path: self.uds_path().to_owned(),
        }
    }

    /// A new, inactive device with the saved CID and no connections, listening at
    /// `uds_path`; the transport's restore activates it.
    pub fn restore(
        mem: GuestMemoryMmap,
        irq: Arc<IrqTrigger>,
        queue_evts: Vec<EventFd>,
        wake_evt: EventFd,
        state: &VsockState,
        uds_path: &Path,
    ) -> Result<Self, VsockError> {
        Vsock::new(mem, irq, queue_evts, wake_evt, state.cid, uds_path)
    }

    /// Like `restore`, on a listener already bound at `uds_path`.
    pub fn restore_bound(
        mem: GuestMemoryMmap,
        irq: Arc<IrqTrigger>,
        queue_evts: Vec<EventFd>,
        wake_evt: EventFd,
        state: &VsockState,
        (listener, uds_path): (UnixListener, &Path),
    ) -> Self {
        let host = HostSide::with_listener(listener, uds_path, state.cid);
        Vsock::with_host(mem, irq, queue_evts, wake_evt, host)
    }
}

#[cfg(test)]
mod tests {
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    use super::*;
    use crate::devices::virtio::test_utils::guest_memory;
    use crate::devices::virtio::VirtioDevice;

    fn path(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("spore-vsock-persist-{tag}-{}", std::process::id()))
    }

    fn evt() -> EventFd {
        EventFd::new(EFD_NONBLOCK).unwrap()
    }

    #[test]
    fn restore_keeps_the_cid_and_listens_on_its_own_socket() {
        let (a, b) = (path("a"), path("b"));
        let mem = guest_memory();
        let irq = || Arc::new(IrqTrigger::new(evt()));
        let v = Vsock::new(mem.clone(), irq(), vec![], evt(), 7, &a).unwrap();
        let s = v.save();
        assert_eq!(
            s,
            VsockState {
                cid: 7,
                uds_path: a.clone()
            }
        );
        // The template's socket stays; the restored device binds another one.
        let r = Vsock::restore(mem.clone(), irq(), vec![], evt(), &s, &b).unwrap();
        assert_eq!((r.guest_cid(), r.uds_path()), (7, b.as_path()));
        assert!(a.exists() && b.exists());
        assert!(r.queues().is_empty());
        assert!(r.host.conns.is_empty() && r.host.clients.is_empty());
        // Restoring onto a path in use fails instead of stealing it.
        assert!(Vsock::restore(mem, irq(), vec![], evt(), &s, &a).is_err());
        drop((v, r));
        assert!(!a.exists() && !b.exists());
    }
}
