//! The few raw syscalls the image code needs that std does not wrap: extended
//! attributes and timestamps on a path without following a final symlink, and
//! fifos. Everything else in the image module is safe Rust.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn cpath(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// `lsetxattr(2)`: sets `name` on `path` itself, never on a symlink's target.
pub fn lsetxattr(path: &Path, name: &[u8], value: &[u8]) -> io::Result<()> {
    let path = cpath(path)?;
    let name = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: both strings are NUL-terminated and live across the call; `value`
    // points at `value.len()` readable bytes; the kernel does not keep the pointers.
    let rc = unsafe {
        libc::lsetxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sets access and modification time of `path` itself (`AT_SYMLINK_NOFOLLOW`).
pub fn set_mtime_nofollow(path: &Path, secs: i64) -> io::Result<()> {
    let path = cpath(path)?;
    let t = libc::timespec {
        tv_sec: secs,
        tv_nsec: 0,
    };
    let times = [t, t];
    // SAFETY: `path` is NUL-terminated, `times` is an array of two timespecs as
    // utimensat requires; both outlive the call.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            path.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `mkfifo(3)` with the given permission bits.
pub fn mkfifo(path: &Path, mode: u32) -> io::Result<()> {
    let path = cpath(path)?;
    // SAFETY: `path` is a NUL-terminated string that outlives the call.
    let rc = unsafe { libc::mkfifo(path.as_ptr(), mode as libc::mode_t) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("spore-sys-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn mtime_applies_to_the_link_not_its_target() {
        let dir = scratch("mtime");
        std::fs::write(dir.join("target"), b"x").unwrap();
        std::os::unix::fs::symlink("target", dir.join("link")).unwrap();
        set_mtime_nofollow(&dir.join("link"), 1_000_000).unwrap();
        assert_eq!(
            std::fs::symlink_metadata(dir.join("link")).unwrap().mtime(),
            1_000_000
        );
        assert_ne!(
            std::fs::metadata(dir.join("target")).unwrap().mtime(),
            1_000_000
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn mkfifo_makes_a_fifo() {
        let dir = scratch("fifo");
        mkfifo(&dir.join("p"), 0o640).unwrap();
        let meta = std::fs::symlink_metadata(dir.join("p")).unwrap();
        assert!(meta.file_type().is_fifo());
        assert!(mkfifo(&dir.join("p"), 0o640).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
