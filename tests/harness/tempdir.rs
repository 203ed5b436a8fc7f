//! A temporary directory removed (with its contents) when dropped.
//!
//! Kept short on purpose: unix socket paths inside it must stay under the 108-byte
//! `sun_path` limit, so it lives directly in the system temp dir.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates a fresh, empty directory named `<prefix>-<pid>-<n>-<nanos>`.
    pub fn new(prefix: &str) -> io::Result<TempDir> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!("{prefix}-{}-{n}-{nanos:x}", std::process::id());
        let path = std::env::temp_dir().join(name);
        // `create_dir` (not `create_dir_all`) fails if the path exists, so two
        // harnesses never share a directory.
        std::fs::create_dir(&path)?;
        Ok(TempDir { path })
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_is_fresh_and_removed_on_drop() {
        let a = TempDir::new("spore-tempdir-test").unwrap();
        let b = TempDir::new("spore-tempdir-test").unwrap();
        assert_ne!(a.path(), b.path());
        std::fs::write(a.path().join("f"), b"x").unwrap();
        let path = a.path().to_path_buf();
        drop(a);
        assert!(!path.exists());
        assert!(b.path().is_dir());
    }
}
