//! The entries of one layer's tar, applied in order onto the rootfs being built:
//! files, directories, symlinks, hardlinks, fifos, whiteouts; then owner (as
//! root), mode, xattrs and mtime of each.
//!
//! Owns the per-entry work; path rules are `safepath.rs`, markers `whiteout.rs`,
//! and the stream (decompression, digests, byte budgets) is `unpack.rs`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tar::EntryType;

use super::limits::{LimitError, Limits};
use super::safepath::{self, PathError};
use super::sys;
use super::unpack::Budget;
use super::whiteout::{self, Marker, Touched, WhiteoutError};

/// Why an entry was refused.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    #[error("unsafe path in layer")]
    Path(#[from] PathError),
    #[error("bad whiteout in layer")]
    Whiteout(#[from] WhiteoutError),
    #[error("too many entries")]
    Limit(#[from] LimitError),
    #[error("unsupported entry type {kind:?} at {path:?}")]
    EntryType { path: PathBuf, kind: EntryType },
    #[error("hardlink {0:?} -> {1:?}: the target is missing or a directory")]
    BadHardlink(PathBuf, PathBuf),
    #[error("cannot write {0:?}")]
    Write(PathBuf, #[source] io::Error),
    /// Reading the stream failed; `unpack.rs` tells corrupt data from digest and
    /// budget failures raised inside the stream.
    #[error("reading the layer")]
    Read(#[source] io::Error),
}

/// Counts for one applied layer.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct LayerStats {
    pub entries: u64,
    pub bytes: u64,
    pub whiteouts: u64,
    /// Device nodes are never created from images (a container gets its /dev elsewhere).
    pub skipped_devices: u64,
}

/// Applies the entries of the tar read from `stream` onto `root`, in order.
pub fn apply_entries(
    root: &Path,
    stream: impl Read,
    budget: &mut Budget,
) -> Result<LayerStats, EntryError> {
    let mut archive = tar::Archive::new(stream);
    let mut stats = LayerStats::default();
    let mut touched = Touched::default();
    let mut dir_times: Vec<(PathBuf, i64)> = Vec::new();
    for entry in archive.entries().map_err(EntryError::Read)? {
        let mut entry = entry.map_err(EntryError::Read)?;
        budget.entries += 1;
        stats.entries += 1;
        Limits::check_count(
            "entries in image",
            budget.entries,
            budget.limits.max_entries,
        )?;
        let raw_path = entry.path().map_err(EntryError::Read)?.into_owned();
        let rel = safepath::normalize(&raw_path, budget.limits.max_path_bytes)?;
        let kind = entry.header().entry_type();
        if rel.as_os_str().is_empty() || kind == EntryType::XGlobalHeader {
            continue;
        }
        match whiteout::classify(&rel)? {
            Marker::Delete(target) => {
                safepath::prepare_parent(root, &target)?;
                whiteout::delete(root, &target, &touched)?;
                stats.whiteouts += 1;
                continue;
            }
            Marker::Opaque(dir) => {
                safepath::prepare_parent(root, &rel)?;
                whiteout::make_opaque(root, &dir, &touched)?;
                stats.whiteouts += 1;
                continue;
            }
            Marker::Ignore => continue,
            Marker::None => {}
        }
        safepath::prepare_parent(root, &rel)?;
        let dest = root.join(&rel);
        let write_err = |e| EntryError::Write(rel.clone(), e);
        match kind {
            EntryType::Directory => {
                let is_dir = fs::symlink_metadata(&dest).is_ok_and(|m| m.is_dir());
                if !is_dir {
                    whiteout::remove_any(&dest).map_err(write_err)?;
                    fs::create_dir(&dest).map_err(write_err)?;
                }
            }
            EntryType::Regular | EntryType::Continuous => {
                whiteout::remove_any(&dest).map_err(write_err)?;
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&dest)
                    .map_err(write_err)?;
                stats.bytes += copy_content(&mut entry, &mut file, &rel)?;
            }
            EntryType::Symlink => {
                let target = link_name(&entry)?;
                safepath::check_symlink(&rel, &target)?;
                whiteout::remove_any(&dest).map_err(write_err)?;
                std::os::unix::fs::symlink(&target, &dest).map_err(write_err)?;
            }
            EntryType::Link => {
                let target =
                    safepath::normalize(&link_name(&entry)?, budget.limits.max_path_bytes)?;
                let meta = safepath::existing_inside(root, &target)
                    .map_err(|_| EntryError::BadHardlink(rel.clone(), target.clone()))?;
                if meta.is_dir() {
                    return Err(EntryError::BadHardlink(rel.clone(), target));
                }
                if target != rel {
                    whiteout::remove_any(&dest).map_err(write_err)?;
                    fs::hard_link(root.join(&target), &dest).map_err(write_err)?;
                }
                touched.insert(&rel);
                // A hardlink shares its target's inode: metadata is the target's.
                continue;
            }
            EntryType::Fifo => {
                whiteout::remove_any(&dest).map_err(write_err)?;
                sys::mkfifo(&dest, 0o600).map_err(write_err)?;
            }
            EntryType::Char | EntryType::Block => {
                stats.skipped_devices += 1;
                continue;
            }
            other => {
                return Err(EntryError::EntryType {
                    path: rel,
                    kind: other,
                })
            }
        }
        touched.insert(&rel);
        apply_metadata(&mut entry, &dest, &rel, &mut dir_times)?;
    }
    // Directory times last: writing into a directory changes its mtime.
    for (dir, mtime) in dir_times.iter().rev() {
        sys::set_mtime_nofollow(dir, *mtime).map_err(|e| EntryError::Write(dir.clone(), e))?;
    }
    Ok(stats)
}

fn copy_content(entry: &mut impl Read, file: &mut File, rel: &Path) -> Result<u64, EntryError> {
    let mut buf = vec![0u8; 64 << 10];
    let mut total = 0u64;
    loop {
        let n = entry.read(&mut buf).map_err(EntryError::Read)?;
        if n == 0 {
            return Ok(total);
        }
        io::Write::write_all(file, &buf[..n])
            .map_err(|e| EntryError::Write(rel.to_path_buf(), e))?;
        total += n as u64;
    }
}

fn link_name<R: Read>(entry: &tar::Entry<'_, R>) -> Result<PathBuf, EntryError> {
    match entry.link_name().map_err(EntryError::Read)? {
        Some(name) => Ok(name.into_owned()),
        None => Err(EntryError::Read(io::Error::other(
            "link entry without a target",
        ))),
    }
}

/// Owner (as root), mode, xattrs, mtime — in that order, because chown clears
/// set-uid bits and setting xattrs is not allowed on every filesystem.
fn apply_metadata<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    dest: &Path,
    rel: &Path,
    dir_times: &mut Vec<(PathBuf, i64)>,
) -> Result<(), EntryError> {
    let header = entry.header();
    let corrupt = EntryError::Read;
    let uid = header.uid().map_err(corrupt)?;
    let gid = header.gid().map_err(corrupt)?;
    let mode = header.mode().map_err(corrupt)?;
    let mtime = header.mtime().map_err(corrupt)?;
    let is_symlink = header.entry_type() == EntryType::Symlink;
    let is_dir = header.entry_type() == EntryType::Directory;
    let write_err = |e| EntryError::Write(rel.to_path_buf(), e);
    let uid = u32::try_from(uid).map_err(|_| corrupt(io::Error::other("uid out of range")))?;
    let gid = u32::try_from(gid).map_err(|_| corrupt(io::Error::other("gid out of range")))?;
    std::os::unix::fs::lchown(dest, Some(uid), Some(gid)).map_err(write_err)?;
    if !is_symlink {
        fs::set_permissions(dest, fs::Permissions::from_mode(mode & 0o7777)).map_err(write_err)?;
    }
    if let Some(extensions) = entry.pax_extensions().map_err(EntryError::Read)? {
        for ext in extensions {
            let ext = ext.map_err(EntryError::Read)?;
            let Some(name) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") else {
                continue;
            };
            // Best effort: the staging filesystem may not allow this namespace.
            let _ = sys::lsetxattr(dest, name, ext.value_bytes());
        }
    }
    let mtime = i64::try_from(mtime).unwrap_or(0);
    if is_dir {
        dir_times.push((dest.to_path_buf(), mtime));
    } else {
        sys::set_mtime_nofollow(dest, mtime).map_err(write_err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;
    use crate::image::test_util::{file, header, tar_of};

    fn scratch(name: &str) -> PathBuf {
        crate::image::test_util::scratch("entries", name)
    }

    fn apply(root: &Path, tar: &[u8]) -> Result<LayerStats, EntryError> {
        apply_entries(root, tar, &mut Budget::new(Limits::default()))
    }

    /// tar::Builder refuses unsafe names, so hostile entries are spliced in by hand.
    fn raw_entry(kind: EntryType, name: &[u8], link: &[u8], data: &[u8]) -> Vec<u8> {
        let mut h = header(kind, data.len() as u64, 0o644);
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        h.set_cksum();
        let mut out = h.as_bytes().to_vec();
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
        out
    }

    fn finish(mut entries: Vec<u8>) -> Vec<u8> {
        entries.extend_from_slice(&[0u8; 1024]);
        entries
    }

    #[test]
    fn applies_files_links_modes_and_whiteouts() {
        let root = scratch("basic");
        let lower = tar_of(|b| {
            file(b, "bin/tool", b"v1", 0o4755);
            file(b, "etc/gone", b"x", 0o644);
            file(b, "opq/old", b"x", 0o644);
            let mut h = header(EntryType::Symlink, 0, 0o777);
            b.append_link(&mut h, "bin/alias", "tool").unwrap();
            let mut h = header(EntryType::Link, 0, 0o644);
            b.append_link(&mut h, "bin/hard", "bin/tool").unwrap();
        });
        let stats = apply(&root, &lower).unwrap();
        assert_eq!(stats.entries, 5);
        let upper = tar_of(|b| {
            file(b, "etc/.wh.gone", b"", 0o644);
            file(b, "opq/new", b"y", 0o600);
            file(b, "opq/.wh..wh..opq", b"", 0o644);
        });
        let stats = apply(&root, &upper).unwrap();
        assert_eq!(stats.whiteouts, 2);
        assert!(!root.join("etc/gone").exists());
        assert!(!root.join("opq/old").exists());
        assert_eq!(fs::read(root.join("opq/new")).unwrap(), b"y");
        let tool = fs::metadata(root.join("bin/tool")).unwrap();
        assert_eq!(tool.mode() & 0o7777, 0o4755);
        assert_eq!(tool.nlink(), 2);
        assert_eq!(
            fs::read_link(root.join("bin/alias")).unwrap(),
            Path::new("tool")
        );
        assert_eq!(tool.mtime(), 1_600_000_000);
        fs::remove_dir_all(&root).unwrap();
    }

    fn lgetxattr(path: &Path, name: &str) -> Option<Vec<u8>> {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
        let name = std::ffi::CString::new(name).unwrap();
        let mut buf = [0u8; 256];
        // SAFETY: NUL-terminated strings and a buffer of the length passed, all
        // alive across the call.
        let n = unsafe {
            libc::lgetxattr(
                path.as_ptr(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        (n >= 0).then(|| buf[..n as usize].to_vec())
    }

    #[test]
    fn pax_xattrs_are_applied_where_the_filesystem_allows() {
        let root = scratch("xattr");
        let probe = root.join("probe");
        fs::write(&probe, b"").unwrap();
        if sys::lsetxattr(&probe, b"user.probe", b"1").is_err() {
            eprintln!("skipped: {} has no user xattrs", root.display());
            return;
        }
        let tar = tar_of(|b| {
            b.append_pax_extensions([("SCHILY.xattr.user.spore", &b"yes"[..])])
                .unwrap();
            file(b, "tagged", b"x", 0o644);
        });
        apply(&root, &tar).unwrap();
        assert_eq!(
            lgetxattr(&root.join("tagged"), "user.spore").as_deref(),
            Some(&b"yes"[..])
        );
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn refuses_traversal_and_absolute_names() {
        let root = scratch("traversal");
        for name in [&b"../evil"[..], b"a/../../evil", b"/etc/evil"] {
            let tar = finish(raw_entry(EntryType::Regular, name, b"", b"x"));
            let err = apply(&root, &tar).unwrap_err();
            assert!(matches!(err, EntryError::Path(_)), "{err:?}");
        }
        assert!(!root.parent().unwrap().join("evil").exists());
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn refuses_writes_through_symlinks_and_escaping_links() {
        let root = scratch("symlinks");
        let outside = scratch("symlinks-outside");
        let mut t = raw_entry(
            EntryType::Symlink,
            b"esc",
            outside.to_str().unwrap().as_bytes(),
            b"",
        );
        t.extend(raw_entry(EntryType::Regular, b"esc/owned", b"", b"x"));
        let err = apply(&root, &finish(t)).unwrap_err();
        assert!(
            matches!(err, EntryError::Path(PathError::ThroughSymlink(..))),
            "{err:?}"
        );
        assert!(!outside.join("owned").exists());

        let t = raw_entry(EntryType::Symlink, b"up", b"../../../../etc", b"");
        let err = apply(&root, &finish(t)).unwrap_err();
        assert!(
            matches!(err, EntryError::Path(PathError::SymlinkEscape(..))),
            "{err:?}"
        );

        let t = raw_entry(EntryType::Link, b"hard", b"../../etc/passwd", b"");
        let err = apply(&root, &finish(t)).unwrap_err();
        assert!(
            matches!(err, EntryError::Path(PathError::Traversal(..))),
            "{err:?}"
        );
        let t = raw_entry(EntryType::Link, b"hard", b"/etc/passwd", b"");
        assert!(apply(&root, &finish(t)).is_err());
        let t = raw_entry(EntryType::Link, b"hard2", b"esc/passwd", b"");
        let err = apply(&root, &finish(t)).unwrap_err();
        assert!(matches!(err, EntryError::BadHardlink(..)), "{err:?}");
        fs::remove_dir_all(&root).unwrap();
        fs::remove_dir_all(&outside).unwrap();
    }
}
