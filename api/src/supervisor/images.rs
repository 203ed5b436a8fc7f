//! Image names to root filesystems. Until OCI images land (issue 6) there is one
//! image, `busybox`: the tree `resources/build-rootfs.sh` builds at
//! `target/guest/rootfs`, found next to the `spore` binary
//! (`target/<profile>/spore` → `target/guest/rootfs`) or at `$SPORE_BUSYBOX_ROOTFS`.

use std::io;
use std::path::PathBuf;

use super::SupervisorError;

/// The names `busybox` answers to.
const BUSYBOX: &[&str] = &["busybox", "busybox:latest", "docker.io/library/busybox"];

/// The rootfs directory of image `name`.
pub fn resolve(name: &str) -> Result<PathBuf, SupervisorError> {
    if !BUSYBOX.contains(&name) {
        return Err(SupervisorError::UnknownImage(name.into()));
    }
    let path = busybox_rootfs();
    if path.join("bin/busybox").exists() {
        Ok(path)
    } else {
        Err(SupervisorError::ImageNotBuilt(
            name.into(),
            io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "{} has no bin/busybox — run `make rootfs` (resources/build-rootfs.sh) \
                     or set SPORE_BUSYBOX_ROOTFS",
                    path.display()
                ),
            ),
        ))
    }
}

/// Where the busybox tree is expected.
pub fn busybox_rootfs() -> PathBuf {
    if let Some(p) = std::env::var_os("SPORE_BUSYBOX_ROOTFS") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/spore, or target/<profile>/deps/<test> in unit tests.
    exe.ancestors()
        .skip(1)
        .map(|d| d.join("guest/rootfs"))
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("target/guest/rootfs"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_busybox_is_known() {
        assert!(matches!(
            resolve("alpine"),
            Err(SupervisorError::UnknownImage(n)) if n == "alpine"
        ));
        match resolve("busybox") {
            Ok(p) => assert!(p.join("bin/busybox").exists()),
            Err(e) => assert!(matches!(e, SupervisorError::ImageNotBuilt(..))),
        }
    }
}
