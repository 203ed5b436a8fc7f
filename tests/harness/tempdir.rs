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
        remove_stale(prefix);
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

/// Removes `<prefix>-<pid>-*` dirs left by test processes that were killed before
/// their destructors ran (their pid no longer exists).
fn remove_stale(prefix: &str) {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = stale_pid(&name.to_string_lossy(), prefix) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The pid in a dir name made by [`TempDir::new`] with `prefix`.
fn stale_pid(name: &str, prefix: &str) -> Option<u32> {
    let rest = name.strip_prefix(prefix)?.strip_prefix('-')?;
    let (pid, rest) = rest.split_once('-')?;
    rest.contains('-').then_some(())?;
    pid.parse().ok()
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
    fn stale_names_are_recognised() {
        assert_eq!(
            stale_pid("spore-tcg-17777-0-36e1ed41", "spore-tcg"),
            Some(17777)
        );
        assert_eq!(stale_pid("spore-tcgx-17777-0-36e1ed41", "spore-tcg"), None);
        assert_eq!(stale_pid("spore-tcg-abc-0-1", "spore-tcg"), None);
        assert_eq!(stale_pid("spore-tcg-12", "spore-tcg"), None);
    }

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
