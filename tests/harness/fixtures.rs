//! Guest images built for the harness's own tests, independent of the agent.
//!
//! [`vsock_echo_initramfs`] compiles `fixtures/vsock_echo_init.rs` with `rustc` as
//! a static binary and packs it as `/init` with `resources/build-initramfs.sh`.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::paths;

/// The vsock port the echo init listens on.
pub const ECHO_PORT: u32 = 1024;

/// Builds the vsock echo initramfs in `dir`; returns its path.
pub fn vsock_echo_initramfs(dir: &Path) -> io::Result<PathBuf> {
    let src = paths::repo_root().join("tests/harness/fixtures/vsock_echo_init.rs");
    let bin = dir.join("vsock-echo-init");
    run(Command::new("rustc")
        .args([
            "--edition",
            "2021",
            "-O",
            "-C",
            "target-feature=+crt-static",
        ])
        .args(["--target", "x86_64-unknown-linux-gnu", "-o"])
        .arg(&bin)
        .arg(&src))?;
    let out = dir.join("echo-initramfs.cpio");
    run(
        Command::new(paths::repo_root().join("resources/build-initramfs.sh"))
            .arg(&bin)
            .arg(&out),
    )?;
    Ok(out)
}

fn run(cmd: &mut Command) -> io::Result<()> {
    let output = cmd.output()?;
    if output.status.success() {
        return Ok(());
    }
    Err(io::Error::other(format!(
        "{:?} failed ({}): {}",
        cmd,
        output.status,
        String::from_utf8_lossy(&output.stderr)
    )))
}
