//! Reaching the agent inside a guest: a protocol [`Client`] over the guest's
//! hybrid-vsock unix socket, retried until the agent listens.
//!
//! The client itself (`spore_agent::protocol::client`) connects once; while the
//! guest is still booting the vsock backend accepts and then resets the unix
//! connection, so this module retries, asking the VM between attempts whether it is
//! still running.

use std::io;
use std::time::{Duration, Instant};

use spore_agent::protocol::client::{Client, Endpoint};
use spore_agent::protocol::AGENT_VSOCK_PORT;

use crate::qemu::Qemu;

/// Connects a protocol client to the agent in `vm` on [`AGENT_VSOCK_PORT`].
pub fn connect_agent(vm: &mut Qemu, timeout: Duration) -> io::Result<Client> {
    let endpoint = Endpoint::HybridVsock {
        path: vm.vsock_path(),
        port: AGENT_VSOCK_PORT,
    };
    let deadline = Instant::now() + timeout;
    loop {
        let last = match Client::connect(endpoint.clone()) {
            Ok(client) => return Ok(client),
            Err(e) => spore_agent::error_chain(&e),
        };
        vm.check_alive().map_err(|e| vm.failure(&e.to_string()))?;
        if Instant::now() >= deadline {
            return Err(vm.failure(&format!(
                "agent not reachable on vsock port {AGENT_VSOCK_PORT} after {timeout:?} (last: {last})"
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
