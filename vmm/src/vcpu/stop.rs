//! How a VM ends: the `VmExit` reason, and the latch that records the first reason
//! and kicks every vCPU thread out of KVM_RUN.
//!
//! A kick is a real-time signal whose handler sets the interrupted thread's
//! `kvm_run.immediate_exit`: if the signal lands just before KVM_RUN, KVM returns
//! at once instead of sleeping, so no kick is lost.

use std::cell::Cell;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, Once};
use std::time::Duration;

use kvm_bindings::kvm_run;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

/// Why a VM ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmExit {
    /// The guest powered off (exit port 0, or a KVM shutdown event).
    PowerOff,
    /// The guest reset itself (i8042 reset, `reboot=k`).
    Reboot,
    /// The guest kernel panicked (exit port 1).
    Panic,
    /// Triple fault (KVM_EXIT_SHUTDOWN).
    TripleFault,
    /// KVM's instruction emulator met an instruction it cannot run.
    EmulationFailure { rip: u64, bytes: Vec<u8> },
    /// The guest wrote another value to the exit port (test guests report with it).
    GuestError(u8),
    /// The host asked the VM to stop.
    Stopped,
    /// The VMM failed.
    Error(String),
}

impl fmt::Display for VmExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmExit::PowerOff => write!(f, "guest powered off"),
            VmExit::Reboot => write!(f, "guest rebooted"),
            VmExit::Panic => write!(f, "guest kernel panicked"),
            VmExit::TripleFault => write!(f, "guest triple-faulted"),
            VmExit::EmulationFailure { rip, bytes } => {
                write!(f, "KVM could not emulate the instruction at {rip:#x}:")?;
                if bytes.is_empty() {
                    write!(f, " (bytes not reported)")?;
                }
                for b in bytes {
                    write!(f, " {b:02x}")?;
                }
                Ok(())
            }
            VmExit::GuestError(code) => write!(f, "guest reported error code {code}"),
            VmExit::Stopped => write!(f, "stopped by the host"),
            VmExit::Error(e) => write!(f, "VMM error: {e}"),
        }
    }
}

thread_local! {
    /// This thread's vCPU run structure, for the kick signal handler.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// CLOCK_MONOTONIC in nanoseconds: comparable between processes on one host
/// (clone latency is measured from an order in one process to a vCPU in another).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `ts`, which lives on our stack.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The real-time signal used to kick vCPU threads.
fn kick_signal() -> i32 {
    SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let _ = KVM_RUN.try_with(|run| {
        let run = run.get();
        if !run.is_null() {
            // SAFETY: the pointer was set by this thread from its own VcpuFd's
            // mmapped kvm_run, and is cleared before that VcpuFd is dropped.
            unsafe { std::ptr::write_volatile(&mut (*run).immediate_exit, 1) };
        }
    });
}

/// The first reason to stop, and the vCPU threads to kick when it arrives.
#[derive(Default)]
pub struct StopLatch {
    stopping: AtomicBool,
    reason: Mutex<Option<VmExit>>,
    done: Condvar,
    /// Threads inside a vCPU loop; a thread leaves the list before it exits.
    threads: Mutex<Vec<libc::pthread_t>>,
    /// Written once the VM is stopping, to wake threads that poll (the event loop).
    wakers: Mutex<Vec<EventFd>>,
    /// Set while the host wants the vCPUs parked outside KVM_RUN.
    paused: Mutex<bool>,
    resumed: Condvar,
    /// CLOCK_MONOTONIC (ns) when a vCPU first entered KVM_RUN.
    running_since: Mutex<Option<u64>>,
    running: Condvar,
}

impl StopLatch {
    pub fn new() -> StopLatch {
        Self::default()
    }

    /// Records `reason` unless one is already there, and kicks every vCPU.
    /// Returns whether this call's reason was recorded.
    pub fn request(&self, reason: VmExit) -> bool {
        let first = {
            let mut slot = self.reason.lock().expect("stop latch poisoned");
            let first = slot.is_none();
            if first {
                log::debug!("VM stopping: {reason}");
                *slot = Some(reason);
            }
            first
        };
        self.stopping.store(true, Ordering::SeqCst);
        self.done.notify_all();
        // Parked vCPUs must see the stop too (take the lock so none misses it).
        drop(self.paused.lock().expect("stop latch poisoned"));
        self.resumed.notify_all();
        self.kick_all();
        self.wake_all();
        first
    }

    /// Has `waker` written when the VM starts stopping (at once if it already has).
    pub fn add_waker(&self, waker: EventFd) {
        self.wakers.lock().expect("stop latch poisoned").push(waker);
        if self.is_stopping() {
            self.wake_all();
        }
    }

    fn wake_all(&self) {
        for waker in self.wakers.lock().expect("stop latch poisoned").iter() {
            if let Err(e) = waker.write(1) {
                log::warn!("cannot wake a VM thread: {e}");
            }
        }
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// The reason, once there is one.
    pub fn reason(&self) -> Option<VmExit> {
        self.reason.lock().expect("stop latch poisoned").clone()
    }

    /// Waits for a reason, up to `timeout` (forever when None).
    pub fn wait(&self, timeout: Option<Duration>) -> Option<VmExit> {
        let slot = self.reason.lock().expect("stop latch poisoned");
        let slot = match timeout {
            None => self
                .done
                .wait_while(slot, |r| r.is_none())
                .expect("stop latch poisoned"),
            Some(t) => {
                self.done
                    .wait_timeout_while(slot, t, |r| r.is_none())
                    .expect("stop latch poisoned")
                    .0
            }
        };
        slot.clone()
    }

    /// Parks every vCPU outside KVM_RUN (they wait in `wait_while_paused`) until
    /// `resume` or a stop; the vCPUs are kicked out of the guest at once.
    pub fn pause(&self) {
        *self.paused.lock().expect("stop latch poisoned") = true;
        self.kick_all();
    }

    /// Lets parked vCPUs run again.
    pub fn resume(&self) {
        *self.paused.lock().expect("stop latch poisoned") = false;
        self.resumed.notify_all();
    }

    /// Called by a vCPU thread between two KVM_RUNs: blocks while paused.
    pub fn wait_while_paused(&self) {
        let paused = self.paused.lock().expect("stop latch poisoned");
        let _unpaused = self
            .resumed
            .wait_while(paused, |p| *p && !self.is_stopping())
            .expect("stop latch poisoned");
    }

    /// Records, once, that a vCPU is about to enter the guest.
    pub fn mark_running(&self) {
        let mut since = self.running_since.lock().expect("stop latch poisoned");
        if since.is_none() {
            *since = Some(monotonic_ns());
            self.running.notify_all();
        }
    }

    /// CLOCK_MONOTONIC (ns) when a vCPU first entered the guest, waiting up to
    /// `timeout` for it.
    pub fn wait_running(&self, timeout: Duration) -> Option<u64> {
        let since = self.running_since.lock().expect("stop latch poisoned");
        *self
            .running
            .wait_timeout_while(since, timeout, |s| s.is_none())
            .expect("stop latch poisoned")
            .0
    }

    /// Registers the calling thread as running `run`'s vCPU loop.
    pub fn enter_vcpu(&self, run: *mut kvm_run) {
        static HANDLER: Once = Once::new();
        HANDLER.call_once(|| {
            if let Err(e) = register_signal_handler(kick_signal(), on_kick) {
                log::error!("cannot install the vCPU kick signal handler: {e}");
            }
        });
        KVM_RUN.with(|r| r.set(run));
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        self.threads.lock().expect("stop latch poisoned").push(me);
    }

    /// Unregisters the calling thread; call before its VcpuFd is dropped.
    pub fn leave_vcpu(&self) {
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        self.threads
            .lock()
            .expect("stop latch poisoned")
            .retain(|t| *t != me);
        KVM_RUN.with(|r| r.set(std::ptr::null_mut()));
    }

    /// Signals every registered vCPU thread out of KVM_RUN.
    pub fn kick_all(&self) {
        let threads = self.threads.lock().expect("stop latch poisoned");
        for thread in threads.iter() {
            // SAFETY: a thread stays in the list (under this lock) only while it is
            // alive in its vCPU loop, so the pthread_t is valid.
            unsafe { libc::pthread_kill(*thread, kick_signal()) };
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn first_reason_wins() {
        let latch = StopLatch::new();
        assert!(!latch.is_stopping());
        assert!(latch.request(VmExit::Panic));
        assert!(!latch.request(VmExit::Stopped));
        assert!(latch.is_stopping());
        assert_eq!(latch.reason(), Some(VmExit::Panic));
    }

    #[test]
    fn wait_times_out_then_sees_reason_from_another_thread() {
        let latch = Arc::new(StopLatch::new());
        assert_eq!(latch.wait(Some(Duration::from_millis(10))), None);
        let l = latch.clone();
        let t = std::thread::spawn(move || l.request(VmExit::PowerOff));
        assert_eq!(latch.wait(None), Some(VmExit::PowerOff));
        assert!(t.join().unwrap());
    }

    #[test]
    fn stopping_writes_the_wakers() {
        let latch = StopLatch::new();
        let before = EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap();
        latch.add_waker(before.try_clone().unwrap());
        assert!(before.read().is_err(), "not written before the stop");
        latch.request(VmExit::Stopped);
        assert_eq!(before.read().unwrap(), 1);
        let after = EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap();
        latch.add_waker(after.try_clone().unwrap());
        assert_eq!(after.read().unwrap(), 1);
    }

    #[test]
    fn pause_parks_until_resume_or_stop() {
        let latch = Arc::new(StopLatch::new());
        latch.pause();
        let l = latch.clone();
        let t = std::thread::spawn(move || l.wait_while_paused());
        std::thread::sleep(Duration::from_millis(20));
        assert!(!t.is_finished(), "a paused vCPU waits");
        latch.resume();
        t.join().unwrap();
        latch.pause();
        let l = latch.clone();
        let t = std::thread::spawn(move || l.wait_while_paused());
        latch.request(VmExit::Stopped);
        t.join().unwrap();
    }

    #[test]
    fn running_is_recorded_once() {
        let latch = StopLatch::new();
        assert_eq!(latch.wait_running(Duration::from_millis(5)), None);
        let before = monotonic_ns();
        latch.mark_running();
        let first = latch.wait_running(Duration::ZERO).unwrap();
        latch.mark_running();
        assert_eq!(latch.wait_running(Duration::ZERO), Some(first));
        assert!(first >= before && first <= monotonic_ns());
    }

    #[test]
    fn display_names_emulation_bytes() {
        let e = VmExit::EmulationFailure {
            rip: 0x10,
            bytes: vec![0xdb, 0xe2],
        };
        assert_eq!(
            e.to_string(),
            "KVM could not emulate the instruction at 0x10: db e2"
        );
    }
}
