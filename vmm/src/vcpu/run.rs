//! The KVM_RUN loop of one vCPU thread: run, convert the exit, decide, apply.

use std::sync::Arc;

use kvm_bindings::KVM_EXIT_INTERNAL_ERROR;
use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::vcpu::exit::{handle_exit, Action, Buses, Data, Exit};
use crate::vcpu::stop::{StopLatch, VmExit};

/// The #BP exception vector.
const BP_VECTOR: u8 = 3;
/// Length of `int3`.
const INT3_LEN: u64 = 1;

/// Runs `vcpu` until the VM stops; every way out goes through `latch`. Returns
/// the vCPU, so that a stopped VM's state can still be captured.
pub fn run_vcpu(mut vcpu: VcpuFd, index: u8, buses: Arc<Buses>, latch: Arc<StopLatch>) -> VcpuFd {
    latch.enter_vcpu(vcpu.get_kvm_run());
    while !latch.is_stopping() {
        latch.wait_while_paused();
        latch.mark_running();
        let action = step(&mut vcpu, &buses);
        if let Err(reason) = apply(&mut vcpu, action) {
            latch.request(reason);
        }
    }
    latch.leave_vcpu();
    log::debug!("vCPU {index} left its run loop");
    vcpu
}

/// Completes what the last exit left pending inside KVM (an I/O instruction's
/// result, an MMIO read) with one KVM_RUN that returns before guest code runs,
/// so the registers are consistent for a capture.
pub fn settle(vcpu: &mut VcpuFd) -> Result<(), kvm_ioctls::Error> {
    vcpu.set_kvm_immediate_exit(1);
    let result = match vcpu.run() {
        Ok(_) => Ok(()),
        Err(e) if e.errno() == libc::EINTR => Ok(()),
        Err(e) => Err(e),
    };
    vcpu.set_kvm_immediate_exit(0);
    result
}

/// One KVM_RUN and the decision about its exit (device I/O happens here).
fn step(vcpu: &mut VcpuFd, buses: &Buses) -> Action {
    let exit = match vcpu.run() {
        Ok(VcpuExit::IoIn(port, data)) => {
            return complete(
                handle_exit(
                    &Exit::IoIn {
                        port,
                        len: data.len(),
                    },
                    buses,
                ),
                data,
            )
        }
        Ok(VcpuExit::MmioRead(addr, data)) => {
            return complete(
                handle_exit(
                    &Exit::MmioRead {
                        addr,
                        len: data.len(),
                    },
                    buses,
                ),
                data,
            )
        }
        Ok(VcpuExit::IoOut(port, data)) => Exit::IoOut {
            port,
            data: Data::new(data),
        },
        Ok(VcpuExit::MmioWrite(addr, data)) => Exit::MmioWrite {
            addr,
            data: Data::new(data),
        },
        Ok(VcpuExit::Hlt) => Exit::Hlt,
        Ok(VcpuExit::Shutdown) => Exit::Shutdown,
        Ok(VcpuExit::SystemEvent(kind, _)) => Exit::SystemEvent { kind },
        Ok(VcpuExit::FailEntry(reason, cpu)) => Exit::FailEntry { reason, cpu },
        Ok(VcpuExit::InternalError) => internal_error(vcpu),
        Ok(VcpuExit::Intr) => Exit::Interrupted,
        Ok(other) => Exit::Other(format!("{other:?}")),
        Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
            vcpu.set_kvm_immediate_exit(0);
            Exit::Interrupted
        }
        Err(e) => return Action::Stop(VmExit::Error(format!("KVM_RUN failed: {e}"))),
    };
    handle_exit(&exit, buses)
}

/// Copies a read's result into the guest's pending access.
fn complete(action: Action, data: &mut [u8]) -> Action {
    if let Action::CompleteRead(result) = &action {
        let n = data.len().min(result.as_slice().len());
        data[..n].copy_from_slice(&result.as_slice()[..n]);
        return Action::Continue;
    }
    action
}

fn internal_error(vcpu: &mut VcpuFd) -> Exit {
    let rip = vcpu.get_regs().map(|r| r.rip).unwrap_or(u64::MAX);
    let run = vcpu.get_kvm_run();
    debug_assert_eq!(run.exit_reason, KVM_EXIT_INTERNAL_ERROR);
    // SAFETY: exit_reason is KVM_EXIT_INTERNAL_ERROR, so `internal` is the union
    // member KVM filled in.
    let internal = unsafe { run.__bindgen_anon_1.internal };
    let ndata = (internal.ndata as usize).min(internal.data.len());
    Exit::InternalError {
        suberror: internal.suberror,
        data: internal.data[..ndata].to_vec(),
        rip,
    }
}

/// Carries out what the exit handler decided; an error ends the VM.
fn apply(vcpu: &mut VcpuFd, action: Action) -> Result<(), VmExit> {
    match action {
        Action::Continue | Action::CompleteRead(_) => Ok(()),
        Action::Stop(reason) => Err(reason),
        Action::InjectBreakpoint => inject_breakpoint(vcpu)
            .map_err(|e| VmExit::Error(format!("injecting #BP after int3 failed: {e}"))),
    }
}

/// #BP is a trap: the guest's handler sees RIP after the `int3`, so step over it
/// and inject the exception as KVM would have delivered it.
fn inject_breakpoint(vcpu: &mut VcpuFd) -> Result<(), kvm_ioctls::Error> {
    let mut regs = vcpu.get_regs()?;
    log::debug!("int3 at {:#x}: injecting #BP", regs.rip);
    regs.rip += INT3_LEN;
    vcpu.set_regs(&regs)?;
    let mut events = vcpu.get_vcpu_events()?;
    events.exception.injected = 1;
    events.exception.nr = BP_VECTOR;
    events.exception.has_error_code = 0;
    events.exception.error_code = 0;
    vcpu.set_vcpu_events(&events)
}
