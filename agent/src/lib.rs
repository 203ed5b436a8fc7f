//! spore's guest agent.
//!
//! [`protocol`] is the wire protocol, shared with the host. The rest is the agent
//! itself: PID 1 duties, the request server and the container engine.

pub mod protocol;
