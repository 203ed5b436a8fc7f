//! Paths from a layer, made safe to write under a rootfs directory.
//!
//! Owns the rules: entry names must be relative and stay inside the rootfs, and no
//! write may go through a symlink (one from an earlier entry or an earlier layer).
//! Symlinks are created but never followed by spore; only where they lead is checked.

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

/// Why an entry's path was refused.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error("absolute path {0:?} in layer")]
    Absolute(PathBuf),
    #[error("path {0:?} leaves the image root")]
    Traversal(PathBuf),
    #[error("path {0:?} is longer than {1} bytes")]
    TooLong(PathBuf, u64),
    #[error("path {0:?} goes through the symlink {1:?}")]
    ThroughSymlink(PathBuf, PathBuf),
    #[error("path {0:?} needs {1:?} to be a directory")]
    NotADirectory(PathBuf, PathBuf),
    #[error("symlink {0:?} -> {1:?} points outside the image root")]
    SymlinkEscape(PathBuf, PathBuf),
    #[error("cannot create directory {0:?}")]
    Io(PathBuf, #[source] io::Error),
}

/// The entry path as clean relative components: `./` and `.` dropped, `..`,
/// absolute paths and over-long names refused. Empty means the root itself.
pub fn normalize(raw: &Path, max_len: u64) -> Result<PathBuf, PathError> {
    if raw.as_os_str().len() as u64 > max_len {
        return Err(PathError::TooLong(raw.to_path_buf(), max_len));
    }
    let mut out = PathBuf::new();
    for component in raw.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err(PathError::Traversal(raw.to_path_buf())),
            Component::RootDir | Component::Prefix(_) => {
                return Err(PathError::Absolute(raw.to_path_buf()))
            }
        }
    }
    Ok(out)
}

/// Makes sure every parent of `rel` under `root` is a real directory, creating
/// missing ones (mode 0755, as tar does). A symlink or file on the way is refused,
/// so nothing is ever written through a link.
pub fn prepare_parent(root: &Path, rel: &Path) -> Result<(), PathError> {
    let Some(parent) = rel.parent() else {
        return Ok(());
    };
    let mut walked = PathBuf::new();
    for part in parent.components() {
        walked.push(part);
        let abs = root.join(&walked);
        match fs::symlink_metadata(&abs) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(PathError::ThroughSymlink(rel.to_path_buf(), walked))
            }
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Err(PathError::NotADirectory(rel.to_path_buf(), walked)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&abs).map_err(|e| PathError::Io(walked.clone(), e))?;
            }
            Err(e) => return Err(PathError::Io(walked, e)),
        }
    }
    Ok(())
}

/// A symlink at `link` (relative to the root) with `target` must resolve inside
/// the root when followed lexically. Absolute targets are read relative to the
/// container's root, so they cannot leave it.
pub fn check_symlink(link: &Path, target: &Path) -> Result<(), PathError> {
    if target.is_absolute() {
        return Ok(());
    }
    let mut depth: i64 = link.parent().map_or(0, |p| p.components().count() as i64);
    for component in target.components() {
        match component {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
        if depth < 0 {
            return Err(PathError::SymlinkEscape(
                link.to_path_buf(),
                target.to_path_buf(),
            ));
        }
    }
    Ok(())
}

/// `rel` names an existing entry reached only through real directories.
pub fn existing_inside(root: &Path, rel: &Path) -> Result<fs::Metadata, PathError> {
    let mut walked = PathBuf::new();
    if let Some(parent) = rel.parent() {
        for part in parent.components() {
            walked.push(part);
            let meta = fs::symlink_metadata(root.join(&walked))
                .map_err(|e| PathError::Io(walked.clone(), e))?;
            if meta.file_type().is_symlink() {
                return Err(PathError::ThroughSymlink(rel.to_path_buf(), walked));
            }
        }
    }
    fs::symlink_metadata(root.join(rel)).map_err(|e| PathError::Io(rel.to_path_buf(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_strips_dot_and_refuses_escapes() {
        assert_eq!(
            normalize(Path::new("./a/./b"), 100).unwrap(),
            Path::new("a/b")
        );
        assert_eq!(normalize(Path::new("./"), 100).unwrap(), Path::new(""));
        assert!(matches!(
            normalize(Path::new("a/../../b"), 100),
            Err(PathError::Traversal(_))
        ));
        assert!(matches!(
            normalize(Path::new("a/../b"), 100),
            Err(PathError::Traversal(_))
        ));
        assert!(matches!(
            normalize(Path::new("/etc/passwd"), 100),
            Err(PathError::Absolute(_))
        ));
        assert!(matches!(
            normalize(Path::new("aaaa"), 3),
            Err(PathError::TooLong(..))
        ));
    }

    #[test]
    fn symlink_targets_must_stay_inside() {
        assert!(check_symlink(Path::new("bin/sh"), Path::new("busybox")).is_ok());
        assert!(check_symlink(Path::new("bin/sh"), Path::new("/bin/busybox")).is_ok());
        assert!(check_symlink(Path::new("usr/lib/x"), Path::new("../../lib/x")).is_ok());
        assert!(check_symlink(Path::new("usr/lib/x"), Path::new("../../../etc")).is_err());
        assert!(check_symlink(Path::new("x"), Path::new("a/../../y")).is_err());
    }

    #[test]
    fn parents_are_created_but_never_followed() {
        let root = std::env::temp_dir().join(format!("spore-safepath-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).unwrap();
        prepare_parent(&root, Path::new("a/b/c")).unwrap();
        assert!(root.join("a/b").is_dir());
        std::os::unix::fs::symlink("/tmp", root.join("link")).unwrap();
        let err = prepare_parent(&root, Path::new("link/evil")).unwrap_err();
        assert!(matches!(err, PathError::ThroughSymlink(..)), "{err}");
        fs::write(root.join("file"), b"").unwrap();
        let err = prepare_parent(&root, Path::new("file/x")).unwrap_err();
        assert!(matches!(err, PathError::NotADirectory(..)), "{err}");
        assert!(existing_inside(&root, Path::new("link/x")).is_err());
        assert!(existing_inside(&root, Path::new("file")).unwrap().is_file());
        fs::remove_dir_all(&root).unwrap();
    }
}
