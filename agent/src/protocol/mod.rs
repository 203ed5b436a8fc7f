//! The host ↔ agent wire protocol. The host side (`spore-api`, test harnesses) uses
//! this module; it pulls in nothing beyond serde.
//!
//! Owns framing ([`frame`]), the container spec ([`spec`]), the request, reply and
//! attach messages ([`messages`]) and a small blocking host-side [`client`]. It does
//! no I/O beyond reading and writing frames on a stream it is given.
//!
//! # Sessions
//!
//! The host opens a stream to the agent (vsock port [`AGENT_VSOCK_PORT`] in a guest,
//! through the VMM's hybrid-vsock unix socket; a unix socket in host mode) and
//! exchanges frames: 4-byte big-endian length, then the payload (≤ 1 MiB).
//!
//! - A *control* connection carries JSON requests and replies, strictly one reply
//!   per request, in order. The first request should be `hello`, which checks
//!   [`messages::PROTOCOL_VERSION`]. Any number of control connections may be open;
//!   a `wait` blocks only its own connection.
//! - An *attach* connection starts as a control connection whose first request is
//!   `attach`; after the `attached` reply it carries binary
//!   [`messages::AttachFrame`]s: output chunks (≤ 64 KiB) in order per stream, one
//!   end-of-stream marker per stream, and from the host stdin bytes, stdin close and
//!   tty resizes.
//!
//! A container's life: `create` → `attach` (second connection) → `start` → read
//! output until end of stream → `wait` (the exit status) → `delete`.
//!
//! Every failure is a reply with an [`messages::ErrorCode`] and a message; a
//! malformed, oversized or unknown request gets one too and the connection goes on
//! (an oversized frame's payload is skipped, never buffered).

pub mod client;
pub mod frame;
pub mod messages;
pub mod spec;

/// The vsock port the agent listens on inside the guest.
pub const AGENT_VSOCK_PORT: u32 = 1024;
