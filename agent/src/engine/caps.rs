//! Capabilities: docker's default set, applied to every container process.
//!
//! Owns the list and the order of the capability syscalls around a uid change;
//! the syscalls themselves are in [`crate::sys`].

use crate::sys;

/// Docker's default capabilities (moby `oci/caps/defaults.go`), as bit numbers
/// from <linux/capability.h>.
pub const DEFAULT_CAPS: &[(u32, &str)] = &[
    (0, "CAP_CHOWN"),
    (1, "CAP_DAC_OVERRIDE"),
    (3, "CAP_FOWNER"),
    (4, "CAP_FSETID"),
    (5, "CAP_KILL"),
    (6, "CAP_SETGID"),
    (7, "CAP_SETUID"),
    (8, "CAP_SETPCAP"),
    (10, "CAP_NET_BIND_SERVICE"),
    (13, "CAP_NET_RAW"),
    (18, "CAP_SYS_CHROOT"),
    (27, "CAP_MKNOD"),
    (29, "CAP_AUDIT_WRITE"),
    (31, "CAP_SETFCAP"),
];

/// Highest capability number tried when /proc/sys/kernel/cap_last_cap is unreadable.
const FALLBACK_LAST_CAP: u32 = 40;

#[derive(Debug, thiserror::Error)]
pub enum CapsError {
    #[error("cannot drop capability {0} from the bounding set")]
    Bounding(u32, #[source] std::io::Error),
    #[error("cannot set the capability sets")]
    Capset(#[source] std::io::Error),
    #[error("cannot clear ambient capabilities")]
    Ambient(#[source] std::io::Error),
    #[error("cannot keep capabilities across the uid change")]
    KeepCaps(#[source] std::io::Error),
}

/// The default set as a mask, as `/proc/<pid>/status` prints it.
pub fn default_mask() -> u64 {
    DEFAULT_CAPS
        .iter()
        .fold(0, |mask, (bit, _)| mask | 1 << bit)
}

/// Step 1, while still fully privileged: shrink the bounding set, and keep
/// the permitted set across the coming uid change.
pub fn limit_bounding_set() -> Result<(), CapsError> {
    let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(FALLBACK_LAST_CAP);
    let keep = default_mask();
    for cap in (0..=last).filter(|c| keep & (1 << c) == 0) {
        match sys::drop_bounding_cap(cap) {
            // Beyond what the kernel knows: nothing to drop.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            other => other.map_err(|e| CapsError::Bounding(cap, e))?,
        }
    }
    sys::set_keep_caps(true).map_err(CapsError::KeepCaps)
}

/// Step 2, after the uid change: effective = permitted = the default set,
/// nothing inheritable or ambient. execve then recomputes them (a non-root
/// user ends with none, root with the bounding set).
pub fn apply_default_set() -> Result<(), CapsError> {
    sys::set_keep_caps(false).map_err(CapsError::KeepCaps)?;
    let mask = default_mask();
    sys::capset(mask, mask, 0).map_err(CapsError::Capset)?;
    sys::clear_ambient_caps().map_err(CapsError::Ambient)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_mask_is_dockers() {
        assert_eq!(default_mask(), 0x0000_0000_a804_25fb);
        assert_eq!(DEFAULT_CAPS.len(), 14);
    }
}
