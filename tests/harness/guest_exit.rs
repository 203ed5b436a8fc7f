//! How a guest under QEMU ended, or whether it stopped while QEMU still runs.
//!
//! The guest kernel has no ACPI: a plain power-off only halts the vCPUs. spore's
//! kernel reports power-off and panic on its exit port instead, where QEMU's
//! `isa-debug-exit` device ends QEMU with a status [`GuestExit`] reads back; a
//! kernel without that option only leaves the serial-log lines
//! [`guest_stopped`] looks for.

use std::process::ExitStatus;

/// How the guest ended, from QEMU's exit status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestExit {
    /// The guest powered off (exit port value 0; QEMU status 1).
    PowerOff,
    /// The guest kernel panicked (exit port value 1; QEMU status 3).
    Panic,
    /// QEMU ended some other way (its own error, a signal, a reset with
    /// `-no-reboot`): the raw status.
    Other(ExitStatus),
}

impl GuestExit {
    /// Classifies QEMU's exit status.
    pub fn from_status(status: ExitStatus) -> GuestExit {
        match status.code() {
            Some(1) => GuestExit::PowerOff,
            Some(3) => GuestExit::Panic,
            _ => GuestExit::Other(status),
        }
    }
}

/// Serial-log lines that mean the guest will do nothing more. The guest kernel has
/// no ACPI, so a power-off only halts it and QEMU keeps running: the log is the
/// only sign.
const STOP_MARKERS: &[&str] = &[
    "reboot: System halted",
    "System halted instead",
    "Kernel panic",
];

/// The first line of `log` showing that the guest stopped, if any.
pub fn guest_stopped(log: &str) -> Option<&str> {
    log.lines()
        .find(|line| STOP_MARKERS.iter().any(|m| line.contains(m)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_status_names_the_guest_exit() {
        use std::os::unix::process::ExitStatusExt;
        let status = |code: i32| ExitStatus::from_raw(code << 8);
        assert_eq!(GuestExit::from_status(status(1)), GuestExit::PowerOff);
        assert_eq!(GuestExit::from_status(status(3)), GuestExit::Panic);
        assert_eq!(
            GuestExit::from_status(status(0)),
            GuestExit::Other(status(0))
        );
        let killed = ExitStatus::from_raw(9);
        assert_eq!(GuestExit::from_status(killed), GuestExit::Other(killed));
    }

    #[test]
    fn halts_and_panics_are_noticed() {
        let log = "[ 0.9] Run /init as init process\nspore-agent: fatal\n\
                   [ 1.0] reboot: Power off not available: System halted instead\n";
        assert_eq!(
            guest_stopped(log),
            Some("[ 1.0] reboot: Power off not available: System halted instead")
        );
        assert!(guest_stopped("[ 1.1] Kernel panic - not syncing: x").is_some());
        assert_eq!(guest_stopped("[ 0.9] Run /init as init process\n"), None);
    }
}
