//! Where the tests find built artifacts and external tools.
//!
//! Artifacts come from the build scripts: `guest-kernel/build.sh` →
//! `target/guest/vmlinux`, `resources/build-agent.sh` + `resources/build-initramfs.sh`
//! → `target/guest/initramfs.cpio`. Tools come from `resources/install-deps.sh`.
//! Environment variables override each location.

use std::path::{Path, PathBuf};

/// The vhost-device-vsock version `resources/install-deps.sh` installs.
pub const VHOST_VSOCK_VERSION: &str = "0.3.0";

/// The repository root (the workspace directory above `tests/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// `target/guest/`, where the guest image's parts are linked.
pub fn guest_dir() -> PathBuf {
    std::env::var_os("SPORE_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/guest"))
}

/// The guest kernel (ELF vmlinux).
pub fn vmlinux() -> PathBuf {
    guest_dir().join("vmlinux")
}

/// The guest initramfs (uncompressed cpio, agent as /init).
pub fn initramfs() -> PathBuf {
    guest_dir().join("initramfs.cpio")
}

/// spore's cache directory (`$SPORE_CACHE`, default `/var/cache/spore`).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("SPORE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/spore"))
}

/// The vhost-device-vsock binary: `$SPORE_VHOST_VSOCK`, else the install script's
/// cached build, else the first one on `PATH`. `None` if there is none.
pub fn vhost_device_vsock() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SPORE_VHOST_VSOCK") {
        return Some(PathBuf::from(p));
    }
    let cached = cache_dir()
        .join(format!("tools/vhost-device-vsock-{VHOST_VSOCK_VERSION}"))
        .join("bin/vhost-device-vsock");
    if cached.is_file() {
        return Some(cached);
    }
    find_in_path("vhost-device-vsock")
}

/// The QEMU x86_64 system emulator, if installed.
pub fn qemu_system() -> Option<PathBuf> {
    find_in_path("qemu-system-x86_64")
}

/// The first executable called `name` on `PATH`.
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_root_is_the_workspace() {
        assert!(repo_root().join("Cargo.toml").is_file());
        assert!(repo_root().join("tests/harness/paths.rs").is_file());
    }

    #[test]
    fn find_in_path_finds_sh() {
        assert!(find_in_path("sh").is_some());
        assert!(find_in_path("no-such-tool-spore-test").is_none());
    }
}
