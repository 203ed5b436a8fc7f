//! The host ↔ agent wire protocol. The host side (`spore-api`) uses this module.
//!
//! Owns framing ([`frame`]), the container spec ([`spec`]) and the request and
//! response messages ([`messages`]). It does no I/O beyond reading and writing
//! frames on a stream it is given.

pub mod frame;
pub mod messages;
pub mod spec;

/// The vsock port the agent listens on inside the guest.
pub const AGENT_VSOCK_PORT: u32 = 1024;
