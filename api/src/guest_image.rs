//! Where spore finds the guest image (kernel, initramfs) and whether it looks sane.
//!
//! Owns default paths and cheap up-front checks, so a missing or corrupt file is
//! reported with what to do before a VM is created. It does not build anything.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Errors about the guest image files.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{what} {path} not found — run `make guest` (or pass --{flag})")]
    Missing {
        what: &'static str,
        flag: &'static str,
        path: PathBuf,
    },
    #[error("{what} {path} is not a {expected} (corrupt or wrong file?)")]
    Corrupt {
        what: &'static str,
        expected: &'static str,
        path: PathBuf,
    },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The directory holding the built guest files: `$SPORE_GUEST_DIR`, else
/// `<dir of the spore binary>/../guest` (i.e. `target/guest` for a cargo build).
pub fn guest_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SPORE_GUEST_DIR") {
        return PathBuf::from(dir);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().and_then(Path::parent).map(|p| p.join("guest")))
        .unwrap_or_else(|| PathBuf::from("target/guest"))
}

pub fn default_kernel() -> PathBuf {
    guest_dir().join("vmlinux")
}

pub fn default_initrd() -> PathBuf {
    guest_dir().join("initramfs.cpio")
}

fn head(path: &Path, what: &'static str, flag: &'static str) -> Result<Vec<u8>, ImageError> {
    let mut file = File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ImageError::Missing {
            what,
            flag,
            path: path.to_owned(),
        },
        _ => ImageError::Read {
            path: path.to_owned(),
            source: e,
        },
    })?;
    let mut buf = vec![0u8; 0x210];
    let mut got = 0;
    while got < buf.len() {
        match file.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) => {
                return Err(ImageError::Read {
                    path: path.to_owned(),
                    source: e,
                })
            }
        }
    }
    buf.truncate(got);
    Ok(buf)
}

pub fn default_rootfs() -> PathBuf {
    guest_dir().join("rootfs.erofs")
}

/// Checks that `path` is an erofs or ext4 file system image.
pub fn check_rootfs(path: &Path) -> Result<(), ImageError> {
    let mut file = File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ImageError::Missing {
            what: "rootfs image",
            flag: "rootfs",
            path: path.to_owned(),
        },
        _ => ImageError::Read {
            path: path.to_owned(),
            source: e,
        },
    })?;
    let mut sb = vec![0u8; 2048];
    let got = file.read(&mut sb).unwrap_or(0);
    sb.truncate(got);
    // erofs: magic 0xe0f5e1e2 at 1024; ext4: 0xef53 at 1024 + 56.
    let erofs = sb.get(1024..1028) == Some(&0xe0f5_e1e2u32.to_le_bytes()[..]);
    let ext4 = sb.get(1080..1082) == Some(&0xef53u16.to_le_bytes()[..]);
    if erofs || ext4 {
        Ok(())
    } else {
        Err(ImageError::Corrupt {
            what: "rootfs image",
            expected: "erofs or ext4 image",
            path: path.to_owned(),
        })
    }
}

/// Checks that `path` is an x86-64 ELF (vmlinux) or a bzImage.
pub fn check_kernel(path: &Path) -> Result<(), ImageError> {
    let h = head(path, "kernel image", "kernel")?;
    let elf64 = h.len() >= 20 && &h[..4] == b"\x7fELF" && h[4] == 2 && h[18] == 62;
    let bzimage = h.len() >= 0x206 && &h[0x202..0x206] == b"HdrS";
    if elf64 || bzimage {
        Ok(())
    } else {
        Err(ImageError::Corrupt {
            what: "kernel image",
            expected: "x86-64 vmlinux (ELF) or bzImage",
            path: path.to_owned(),
        })
    }
}

/// Checks that `path` is an uncompressed newc cpio archive.
pub fn check_initrd(path: &Path) -> Result<(), ImageError> {
    let h = head(path, "initramfs", "initrd")?;
    if h.starts_with(b"070701") || h.starts_with(b"070702") {
        Ok(())
    } else {
        Err(ImageError::Corrupt {
            what: "initramfs",
            expected: "newc cpio archive",
            path: path.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file(name: &str, bytes: &[u8]) -> PathBuf {
        let p = std::env::temp_dir().join(format!("spore-img-{}-{name}", std::process::id()));
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn kernel_checks() {
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[18] = 62;
        let good = temp_file("elf", &elf);
        assert!(check_kernel(&good).is_ok());
        let bad = temp_file("junk", b"garbage");
        let err = check_kernel(&bad).unwrap_err().to_string();
        assert!(err.contains("not a x86-64 vmlinux"), "{err}");
        let missing = check_kernel(Path::new("/nonexistent/vmlinux")).unwrap_err();
        assert!(missing.to_string().contains("make guest"), "{missing}");
        std::fs::remove_file(good).unwrap();
        std::fs::remove_file(bad).unwrap();
    }

    #[test]
    fn initrd_checks() {
        let good = temp_file("cpio", b"070701000000");
        assert!(check_initrd(&good).is_ok());
        let gz = temp_file("gz", &[0x1f, 0x8b, 8, 0]);
        assert!(check_initrd(&gz).is_err());
        std::fs::remove_file(good).unwrap();
        std::fs::remove_file(gz).unwrap();
    }
}
