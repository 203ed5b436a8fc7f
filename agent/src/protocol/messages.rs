//! Requests and responses (owned by the agent-server work; see mod.rs).
