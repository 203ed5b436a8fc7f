//! Builds the read-only filesystem image of an unpacked rootfs, with Debian's
//! `mkfs.erofs` (erofs-utils) or `mkfs.ext4 -d` (e2fsprogs), and tells the two apart
//! by their superblock magic.
//!
//! Owns invoking the tools; which format the store uses is `STORE_FORMAT`, chosen
//! from the figures `measure.rs` prints (see the note there).

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The format the store builds. erofs: smaller, faster to build and to read
/// cold, and read-only by design (no journal, nothing to replay or fsck).
pub const STORE_FORMAT: FsFormat = FsFormat::Erofs;

const EROFS_MAGIC: u32 = 0xE0F5_E1E2;
const EXT4_MAGIC: u16 = 0xEF53;

/// Why an image could not be built or recognised.
#[derive(Debug, thiserror::Error)]
pub enum FsImageError {
    #[error("{tool} not found — install Debian's {package} (apt-get install {package})")]
    ToolMissing {
        tool: &'static str,
        package: &'static str,
    },
    #[error("{tool} failed: {stderr}")]
    ToolFailed { tool: &'static str, stderr: String },
    #[error("cannot size or write {0:?}")]
    Io(PathBuf, #[source] io::Error),
    #[error("{0:?} holds neither an erofs nor an ext4 filesystem")]
    Unknown(PathBuf),
}

/// A read-only filesystem format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsFormat {
    Erofs,
    Ext4,
}

impl FsFormat {
    /// The name `mount(2)` knows it by; also the store's file extension.
    pub fn fstype(self) -> &'static str {
        match self {
            FsFormat::Erofs => "erofs",
            FsFormat::Ext4 => "ext4",
        }
    }
}

/// Builds `out` from the directory `src` (owners, modes, xattrs, links kept).
pub fn build(format: FsFormat, src: &Path, out: &Path) -> Result<(), FsImageError> {
    match format {
        FsFormat::Erofs => build_erofs(src, out),
        FsFormat::Ext4 => build_ext4(src, out),
    }
}

fn build_erofs(src: &Path, out: &Path) -> Result<(), FsImageError> {
    // Uncompressed: reads are page-cache hits shared by every clone, with no
    // decompression on the guest's side.
    let mut cmd = Command::new("mkfs.erofs");
    cmd.arg(out).arg(src);
    run(cmd, "mkfs.erofs", "erofs-utils")
}

fn build_ext4(src: &Path, out: &Path) -> Result<(), FsImageError> {
    let (bytes, inodes) = tree_usage(src).map_err(|e| FsImageError::Io(src.to_path_buf(), e))?;
    // Data blocks + inode tables (256 B each) + 10% + 16 MiB for metadata; mke2fs
    // fails cleanly when that is short, and the next try doubles it.
    let mut size = (bytes + inodes * 256) / 10 * 11 + (16 << 20);
    let inode_count = (inodes + inodes / 4 + 64).to_string();
    loop {
        let file = File::create(out).map_err(|e| FsImageError::Io(out.to_path_buf(), e))?;
        file.set_len(size)
            .map_err(|e| FsImageError::Io(out.to_path_buf(), e))?;
        drop(file);
        let mut cmd = Command::new("mkfs.ext4");
        cmd.args(["-q", "-F", "-b", "4096", "-m", "0", "-N", &inode_count])
            .args([
                "-O",
                "^has_journal,^resize_inode",
                "-E",
                "lazy_itable_init=0",
            ])
            .arg("-d")
            .arg(src)
            .arg(out);
        match run(cmd, "mkfs.ext4", "e2fsprogs") {
            Err(FsImageError::ToolFailed { stderr, .. })
                if size < (1 << 40) && stderr.contains("Could not allocate") =>
            {
                size *= 2;
            }
            other => return other,
        }
    }
}

/// Bytes in 4 KiB blocks and inode count of a tree, not following symlinks.
pub fn tree_usage(dir: &Path) -> io::Result<(u64, u64)> {
    let (mut bytes, mut inodes) = (4096, 1);
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_dir() {
            let (b, i) = tree_usage(&entry.path())?;
            bytes += b;
            inodes += i;
        } else {
            bytes += meta.size().div_ceil(4096) * 4096;
            inodes += 1;
        }
    }
    Ok((bytes, inodes))
}

fn run(mut cmd: Command, tool: &'static str, package: &'static str) -> Result<(), FsImageError> {
    let output = cmd.output().map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => FsImageError::ToolMissing { tool, package },
        _ => FsImageError::Io(PathBuf::from(tool), e),
    })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
        return Err(FsImageError::ToolFailed { tool, stderr });
    }
    Ok(())
}

/// The format of the filesystem in `image`, from its superblock (both put it at
/// byte 1024: erofs its magic first, ext4 its magic 56 bytes in).
pub fn detect(image: &Path) -> Result<FsFormat, FsImageError> {
    let io_err = |e| FsImageError::Io(image.to_path_buf(), e);
    let mut file = File::open(image).map_err(io_err)?;
    let mut sb = [0u8; 64];
    file.seek(SeekFrom::Start(1024)).map_err(io_err)?;
    file.read_exact(&mut sb)
        .map_err(|_| FsImageError::Unknown(image.to_path_buf()))?;
    if u32::from_le_bytes([sb[0], sb[1], sb[2], sb[3]]) == EROFS_MAGIC {
        Ok(FsFormat::Erofs)
    } else if u16::from_le_bytes([sb[56], sb[57]]) == EXT4_MAGIC {
        Ok(FsFormat::Ext4)
    } else {
        Err(FsImageError::Unknown(image.to_path_buf()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("spore-fsimage-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("src/sub")).unwrap();
        fs::write(dir.join("src/sub/file"), b"content").unwrap();
        dir
    }

    #[test]
    fn builds_and_detects_both_formats() {
        let dir = scratch("both");
        for format in [FsFormat::Erofs, FsFormat::Ext4] {
            let out = dir.join(format.fstype());
            build(format, &dir.join("src"), &out).unwrap();
            assert_eq!(detect(&out).unwrap(), format);
        }
        fs::write(dir.join("junk"), [0u8; 4096]).unwrap();
        assert!(matches!(
            detect(&dir.join("junk")),
            Err(FsImageError::Unknown(_))
        ));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tree_usage_counts_blocks_and_inodes() {
        let dir = scratch("usage");
        let (bytes, inodes) = tree_usage(&dir.join("src")).unwrap();
        assert_eq!(inodes, 3);
        assert_eq!(bytes, 3 * 4096);
        fs::remove_dir_all(&dir).unwrap();
    }
}
