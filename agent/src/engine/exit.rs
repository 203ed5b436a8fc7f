//! How a process ended, docker style: exit code or 128 + signal, and why.
//!
//! Pure: decodes a wait status handed over by the reaper; waits for nothing.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::protocol::spec::{ExitInfo, ExitReason};

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Decode `wait_status`; `oom` says the container's cgroup saw an OOM kill.
pub fn exit_info(wait_status: i32, oom: bool, started_at_ms: u64, finished_at_ms: u64) -> ExitInfo {
    let (code, reason, signal) = if libc::WIFSIGNALED(wait_status) {
        let sig = libc::WTERMSIG(wait_status);
        (128 + sig, ExitReason::Signaled, Some(sig))
    } else {
        (libc::WEXITSTATUS(wait_status), ExitReason::Exited, None)
    };
    let reason = if oom { ExitReason::Oom } else { reason };
    ExitInfo {
        code,
        reason,
        signal,
        started_at_ms,
        finished_at_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_status_is_the_code() {
        let e = exit_info(3 << 8, false, 1, 2);
        assert_eq!((e.code, e.reason, e.signal), (3, ExitReason::Exited, None));
        assert_eq!((e.started_at_ms, e.finished_at_ms), (1, 2));
    }

    #[test]
    fn a_signal_is_128_plus_its_number() {
        let e = exit_info(libc::SIGTERM, false, 0, 0);
        assert_eq!(
            (e.code, e.reason, e.signal),
            (143, ExitReason::Signaled, Some(libc::SIGTERM))
        );
    }

    #[test]
    fn oom_wins_over_the_signal() {
        let e = exit_info(libc::SIGKILL, true, 0, 0);
        assert_eq!((e.code, e.reason), (137, ExitReason::Oom));
    }

    #[test]
    fn clock_is_after_2020() {
        assert!(now_ms() > 1_577_836_800_000);
    }
}
