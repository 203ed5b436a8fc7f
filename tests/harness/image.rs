//! Disk images for guests: the busybox container rootfs packed as a read-only
//! erofs image, attached to a TCG guest as its virtio-blk disk (`/dev/vda`).
//!
//! The tree comes from `resources/build-rootfs.sh` (`target/guest/rootfs`); the
//! image is cached next to it as `target/guest/rootfs.erofs` and rebuilt when the
//! tree's stamp is newer. It does not build the tree itself.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use crate::paths;
use crate::skip::{require_file, Missing};

/// Packs `src` into an erofs image at `out`, atomically (a temp file renamed into
/// place, so parallel tests never see half an image). Owners and modes are kept;
/// timestamps are fixed so equal trees give equal images.
pub fn erofs_image(src: &Path, out: &Path) -> io::Result<()> {
    let tmp = out.with_extension(format!(
        "tmp-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let output = Command::new("mkfs.erofs")
        .arg("--quiet")
        .arg("-T0")
        .arg(&tmp)
        .arg(src)
        .output()?;
    if !output.status.success() {
        let _ = std::fs::remove_file(&tmp);
        return Err(io::Error::other(format!(
            "mkfs.erofs {} failed ({}): {}",
            src.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    std::fs::rename(&tmp, out)
}

/// The busybox rootfs as an erofs image, built or refreshed as needed. Missing
/// when the tree or mkfs.erofs is absent (both provided by the scripts).
pub fn busybox_rootfs_image() -> Result<PathBuf, Missing> {
    let tree = paths::guest_dir().join("rootfs");
    let stamp = tree.join(".spore-rootfs");
    require_file(&stamp, "run resources/build-rootfs.sh")?;
    if paths::find_in_path("mkfs.erofs").is_none() {
        return Err(Missing::provided(
            "mkfs.erofs not found — run resources/install-deps.sh",
        ));
    }
    let image = paths::guest_dir().join("rootfs.erofs");
    if modified(&image) < modified(&stamp) {
        erofs_image(&tree, &image).expect("packing the busybox rootfs");
    }
    Ok(image)
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_a_tree_into_an_erofs_image() {
        if paths::find_in_path("mkfs.erofs").is_none() {
            eprintln!("SKIPPED: mkfs.erofs not installed");
            return;
        }
        let dir = crate::tempdir::TempDir::new("spore-image-test").unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("bin")).unwrap();
        std::fs::write(tree.join("bin/hello"), b"hello").unwrap();
        let image = dir.path().join("img.erofs");
        erofs_image(&tree, &image).unwrap();
        let bytes = std::fs::read(&image).unwrap();
        // The erofs superblock sits at offset 1024 and starts with its magic.
        assert_eq!(&bytes[1024..1028], &0xE0F5_E1E2u32.to_le_bytes());
        let err = erofs_image(&dir.path().join("missing"), &image).unwrap_err();
        assert!(err.to_string().contains("mkfs.erofs"));
    }
}
