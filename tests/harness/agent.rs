//! Reaching the agent inside a guest: a protocol [`Client`] over the guest's
//! hybrid-vsock unix socket, retried until the agent listens.
//!
//! The client itself (`spore_agent::protocol::client`) connects once; while the
//! guest is still booting the vsock backend accepts and then resets the unix
//! connection, so this module waits until the agent listens, asking the VM between
//! attempts whether it is still running.

use std::io;
use std::time::Duration;

use spore_agent::protocol::client::{Client, Endpoint};
use spore_agent::protocol::AGENT_VSOCK_PORT;

use crate::qemu::Qemu;

/// Connects a protocol client to the agent in `vm` on [`AGENT_VSOCK_PORT`].
///
/// Readiness is probed first with the harness's own handshake, which has a read
/// timeout and checks the VM between attempts: the client's handshake has none, and
/// a guest that died after the backend accepted would leave it waiting for ever.
/// The probe connection is closed at once; the agent sees an empty session.
pub fn connect_agent(vm: &mut Qemu, timeout: Duration) -> io::Result<Client> {
    drop(vm.connect_timeout(AGENT_VSOCK_PORT, timeout)?);
    let endpoint = Endpoint::HybridVsock {
        path: vm.vsock_path(),
        port: AGENT_VSOCK_PORT,
    };
    Client::connect(endpoint).map_err(|e| vm.failure(&spore_agent::error_chain(&e)))
}
