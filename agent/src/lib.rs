//! spore's guest agent.
//!
//! [`protocol`] is the wire protocol, shared with the host. The rest is the agent
//! itself: PID 1 duties ([`init`]), the request server ([`server`]) and the
//! container engine.

pub mod engine;
pub mod init;
pub mod protocol;
pub mod server;
pub mod sys;

/// An error and its causes on one line, `outer: inner: innermost`.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(c) = source {
        s.push_str(": ");
        s.push_str(&c.to_string());
        source = c.source();
    }
    s
}
