//! spore's integration-test harness: starts the real binaries and guests the tests
//! drive, and always kills and cleans up what it started (on drop, also when a test
//! panics).
//!
//! - [`qemu`]: the real guest image (vmlinux + initramfs) under QEMU's software
//!   emulation (TCG) with a vhost-user vsock backend — tier 4 of the test plan.
//! - [`agent`]: a protocol client connected to the agent in a guest.
//! - [`guest_exit`]: how the guest ended (power-off, panic) under QEMU.
//! - [`vsock`]: the host side of a vsock connection through a unix socket
//!   (`CONNECT <port>` handshake).
//! - [`skip`]: [`skip_unless!`] for prerequisites, which fails instead of skipping
//!   in CI for what `resources/install-deps.sh` provides.
//! - [`image`]: the busybox container rootfs as an erofs disk image.
//! - [`fixtures`]: small guest inits for testing the harness itself.
//! - [`host`]: what kind of KVM this host has, and its TSC frequency.
//! - [`paths`]: where built artifacts and tools live.
//! - [`process`] and [`tempdir`]: child processes killed on drop, temp dirs removed
//!   on drop.
//!
//! The guest kernel, agent and initramfs are built by `guest-kernel/build.sh` and
//! `resources/*.sh`, not here; the harness only packs test fixtures and disk images.

pub mod agent;
pub mod fixtures;
pub mod guest_exit;
pub mod host;
pub mod image;
pub mod paths;
pub mod process;
pub mod qemu;
pub mod skip;
pub mod tempdir;
pub mod vsock;
