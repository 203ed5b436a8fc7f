//! Machine-wide requests: the clone fixup (fresh entropy, wall clock, hostname,
//! sandbox id) and shutdown. Only a guest agent (PID 1) changes the machine; a
//! host-mode agent must never touch its host's clock, hostname or power.

use super::{lock, os, Shared};
use crate::protocol::messages::{CloneFixup, ErrorCode, ErrorReply};

/// Applies a clone fixup, in the order a fresh clone needs it: entropy first, so
/// nothing after it draws on the template's RNG state.
pub(crate) fn apply(shared: &Shared, f: &CloneFixup) -> Result<(), ErrorReply> {
    validate(f)?;
    if !shared.pid1 {
        return Err(ErrorReply::new(
            ErrorCode::Unsupported,
            "clone fixup changes the machine's clock, hostname and RNG; only the guest agent (PID 1) applies it",
        ));
    }
    let sys = |e: os::OsError| ErrorReply::new(ErrorCode::System, crate::error_chain(&e));
    if !f.entropy.is_empty() {
        os::add_entropy(&f.entropy).map_err(sys)?;
    }
    if let Some(ns) = f.realtime_ns {
        os::set_realtime(ns).map_err(sys)?;
    }
    if let Some(h) = &f.hostname {
        os::set_hostname(h).map_err(sys)?;
    }
    if let Some(id) = &f.sandbox_id {
        *lock(&shared.sandbox_id) = Some(id.clone());
    }
    Ok(())
}

/// Refuses a fixup that could not be applied whole, before changing anything.
fn validate(f: &CloneFixup) -> Result<(), ErrorReply> {
    let bad = |m: &str| Err(ErrorReply::new(ErrorCode::BadRequest, m));
    if f.entropy.len() > 4096 {
        return bad("entropy: at most 4096 bytes");
    }
    if let Some(h) = &f.hostname {
        if h.is_empty() || h.len() > 64 || h.contains('\0') {
            return bad("hostname: 1-64 bytes, no NUL");
        }
    }
    Ok(())
}

/// Ends the machine (guest) or the agent (host mode), deleting every container
/// first so no process outlives the agent.
pub(crate) fn shutdown(shared: &Shared) -> ! {
    {
        let mut rt = shared.runtime();
        for c in rt.list() {
            if let Err(e) = rt.delete(&c.id) {
                eprintln!(
                    "spore-agent: shutdown: delete {}: {}",
                    c.id,
                    crate::error_chain(&e)
                );
            }
        }
    }
    if shared.pid1 {
        eprintln!("spore-agent: powering off");
        let e = os::power_off();
        eprintln!("spore-agent: {}", crate::error_chain(&e));
        // PID 1 must not exit (the kernel would panic); park for ever.
        loop {
            std::thread::park();
        }
    }
    eprintln!("spore-agent: shutting down");
    std::process::exit(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        assert!(validate(&CloneFixup::default()).is_ok());
        let big = CloneFixup {
            entropy: vec![0; 4097],
            ..Default::default()
        };
        assert_eq!(validate(&big).unwrap_err().code, ErrorCode::BadRequest);
        let host = CloneFixup {
            hostname: Some(String::new()),
            ..Default::default()
        };
        assert_eq!(validate(&host).unwrap_err().code, ErrorCode::BadRequest);
    }
}
