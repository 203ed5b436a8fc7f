//! The container's init (PID 1 of its pid namespace), from fork to exec.
//!
//! One straight list of steps, crun's `container_init_setup` order: rootfs →
//! mounts → pivot_root → network → hostname → stdio → user/env/argv → cwd and
//! credentials → report ready → wait for start → exec. Each step is one call
//! into the module that owns it.

use std::convert::Infallible;
use std::os::fd::{AsFd, OwnedFd};

use super::channel::Channel;
use super::config::{CreateConfig, Reply, Request};
use super::process;
use super::rootfs;
use super::stage2::Stage2Error;
use super::stdio;
use crate::sys;

/// Set the container up, wait for `Start`, exec. Returns only on failure.
pub fn run(
    chan: &Channel,
    cfg: CreateConfig,
    pipes: Vec<OwnedFd>,
) -> Result<Infallible, Stage2Error> {
    // 1-4. root filesystem: overlay, system mounts, pivot_root, masked paths
    let root = rootfs::prepare(&cfg.run_dir, &cfg.lower)?;
    rootfs::mount_system(&cfg.run_dir, &root)?;
    rootfs::pivot(&root, cfg.no_pivot)?;
    rootfs::restrict_kernel_interfaces()?;
    // 5-6. network and identity
    sys::loopback_up().map_err(Stage2Error::Loopback)?;
    sys::sethostname(&cfg.hostname).map_err(Stage2Error::Hostname)?;
    rootfs::write_identity_files(&cfg.hostname)?;
    // 7-9. the process: stdio, user/env/argv, cwd/credentials/capabilities
    let master = stdio::attach(cfg.process.tty, pipes)?;
    let prepared = process::prepare(&cfg.process)?;
    process::apply_credentials(&prepared)?;
    // 10-12. report, wait for start, exec
    report_ready(chan, master)?;
    wait_for_start(chan)?;
    Err(process::exec(&prepared).into())
}

/// Tell the engine we are set up, handing over the pty master if any; our
/// own copy is closed right after: only the engine holds it.
fn report_ready(chan: &Channel, master: Option<OwnedFd>) -> Result<(), Stage2Error> {
    let fds: Vec<_> = master.iter().map(|m| m.as_fd()).collect();
    chan.send(&Reply::Ready, &fds)?;
    Ok(())
}

/// Block until the engine says start. If the engine closes the socket
/// instead (the container was deleted before it started), just leave.
fn wait_for_start(chan: &Channel) -> Result<(), Stage2Error> {
    match chan.recv::<Request>()? {
        Some((Request::Start, _)) => Ok(()),
        None => sys::exit_now(0),
        Some(_) => Err(Stage2Error::Unexpected),
    }
}
