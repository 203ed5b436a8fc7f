//! OCI/aufs whiteouts: `.wh.<name>` deletes `<name>` from the layers below, and
//! `.wh..wh..opq` hides everything the layers below put in its directory.
//!
//! Owns recognising the markers and applying them to the rootfs being built;
//! the entries a layer adds itself are never whited out (image-spec: whiteouts
//! apply to lower layers only), which `Touched` records.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

const PREFIX: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";
const META_PREFIX: &[u8] = b".wh..wh.";

/// Why a whiteout could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum WhiteoutError {
    #[error("whiteout {0:?} names no file")]
    BadName(PathBuf),
    #[error("cannot remove {0:?} for a whiteout")]
    Remove(PathBuf, #[source] io::Error),
}

/// What a layer entry's name means.
#[derive(Debug, PartialEq, Eq)]
pub enum Marker {
    /// A normal entry.
    None,
    /// Remove this path (relative to the root).
    Delete(PathBuf),
    /// Make this directory opaque.
    Opaque(PathBuf),
    /// Another aufs bookkeeping entry (`.wh..wh.plnk` …): ignored.
    Ignore,
}

/// Classifies the (already normalized) entry path `rel`.
pub fn classify(rel: &Path) -> Result<Marker, WhiteoutError> {
    let Some(name) = rel.file_name() else {
        return Ok(Marker::None);
    };
    let bytes = name.as_bytes();
    let parent = rel.parent().unwrap_or(Path::new("")).to_path_buf();
    if bytes == OPAQUE {
        return Ok(Marker::Opaque(parent));
    }
    if bytes.starts_with(META_PREFIX) {
        return Ok(Marker::Ignore);
    }
    match bytes.strip_prefix(PREFIX) {
        None => Ok(Marker::None),
        Some(b"" | b"." | b"..") => Err(WhiteoutError::BadName(rel.to_path_buf())),
        Some(target) => Ok(Marker::Delete(parent.join(OsStr::from_bytes(target)))),
    }
}

/// Paths the current layer wrote, with all their ancestors.
#[derive(Default)]
pub struct Touched {
    paths: HashSet<PathBuf>,
}

impl Touched {
    pub fn insert(&mut self, rel: &Path) {
        let mut p = rel;
        loop {
            if !self.paths.insert(p.to_path_buf()) {
                return;
            }
            match p.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => p = parent,
                _ => return,
            }
        }
    }

    pub fn contains(&self, rel: &Path) -> bool {
        self.paths.contains(rel)
    }
}

/// Removes `rel` (file, link or whole directory) unless this layer wrote it.
/// A missing target is fine: the lower layers simply did not have it.
pub fn delete(root: &Path, rel: &Path, touched: &Touched) -> Result<(), WhiteoutError> {
    if touched.contains(rel) {
        return Ok(());
    }
    remove_any(&root.join(rel)).map_err(|e| WhiteoutError::Remove(rel.to_path_buf(), e))
}

/// Empties directory `dir` of everything this layer did not write, recursing into
/// directories this layer wrote into (their lower contents are hidden too).
pub fn make_opaque(root: &Path, dir: &Path, touched: &Touched) -> Result<(), WhiteoutError> {
    let abs = root.join(dir);
    let entries = match fs::read_dir(&abs) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(WhiteoutError::Remove(dir.to_path_buf(), e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| WhiteoutError::Remove(dir.to_path_buf(), e))?;
        let rel = dir.join(entry.file_name());
        let is_dir = entry
            .file_type()
            .map_err(|e| WhiteoutError::Remove(rel.clone(), e))?
            .is_dir();
        if !touched.contains(&rel) {
            remove_any(&entry.path()).map_err(|e| WhiteoutError::Remove(rel.clone(), e))?;
        } else if is_dir {
            make_opaque(root, &rel, touched)?;
        }
    }
    Ok(())
}

/// Removes a file, symlink or directory tree; never follows symlinks.
pub fn remove_any(abs: &Path) -> io::Result<()> {
    match fs::symlink_metadata(abs) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(abs),
        Ok(_) => fs::remove_file(abs),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_markers() {
        assert_eq!(classify(Path::new("a/b")).unwrap(), Marker::None);
        assert_eq!(
            classify(Path::new("a/.wh.b")).unwrap(),
            Marker::Delete("a/b".into())
        );
        assert_eq!(
            classify(Path::new(".wh.b")).unwrap(),
            Marker::Delete("b".into())
        );
        assert_eq!(
            classify(Path::new("a/.wh..wh..opq")).unwrap(),
            Marker::Opaque("a".into())
        );
        assert_eq!(
            classify(Path::new("a/.wh..wh.plnk")).unwrap(),
            Marker::Ignore
        );
        assert!(classify(Path::new("a/.wh...")).is_err());
        assert!(classify(Path::new("a/.wh.")).is_err());
    }

    #[test]
    fn opaque_keeps_only_what_this_layer_wrote() {
        let root = std::env::temp_dir().join(format!("spore-whiteout-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("d/sub")).unwrap();
        fs::write(root.join("d/old"), b"").unwrap();
        fs::write(root.join("d/sub/old"), b"").unwrap();
        fs::write(root.join("d/sub/new"), b"").unwrap();
        fs::write(root.join("d/new"), b"").unwrap();
        let mut touched = Touched::default();
        touched.insert(Path::new("d/sub/new"));
        touched.insert(Path::new("d/new"));
        make_opaque(&root, Path::new("d"), &touched).unwrap();
        let mut left: Vec<_> = ["d/old", "d/sub/old", "d/sub/new", "d/new"]
            .into_iter()
            .filter(|p| root.join(p).exists())
            .collect();
        left.sort();
        assert_eq!(left, ["d/new", "d/sub/new"]);

        delete(&root, Path::new("d/new"), &touched).unwrap();
        assert!(
            root.join("d/new").exists(),
            "same-layer entry was whited out"
        );
        delete(&root, Path::new("d"), &Touched::default()).unwrap();
        assert!(!root.join("d").exists());
        delete(&root, Path::new("missing"), &Touched::default()).unwrap();
        fs::remove_dir_all(&root).unwrap();
    }
}
