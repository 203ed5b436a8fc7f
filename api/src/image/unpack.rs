//! Applies one layer (a plain or gzip'd tar) onto the rootfs directory being built:
//! entries in order, whiteouts, hardlinks, symlinks, modes, owners, xattrs, mtimes.
//! The layer's blob digest and its uncompressed diff_id are verified while reading.
//!
//! Owns the per-entry work; path rules are `safepath.rs`, markers `whiteout.rs`,
//! where layers come from and in which order is the importer's job.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use flate2::bufread::MultiGzDecoder;
use tar::EntryType;

use super::digest::{Digest, DigestError, VerifyingReader};
use super::limits::{BudgetReader, LimitError, Limits};
use super::safepath::{self, PathError};
use super::sys;
use super::whiteout::{self, Marker, Touched, WhiteoutError};

/// Why a layer could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("unsafe path in layer")]
    Path(#[from] PathError),
    #[error("bad whiteout in layer")]
    Whiteout(#[from] WhiteoutError),
    #[error("layer content does not match its digest")]
    Digest(#[from] DigestError),
    #[error("layer too large")]
    Limit(#[from] LimitError),
    #[error("corrupt or truncated layer data")]
    Corrupt(#[source] io::Error),
    #[error("unsupported layer compression (only tar and tar+gzip are)")]
    Compression,
    #[error("unsupported entry type {kind:?} at {path:?}")]
    EntryType { path: PathBuf, kind: EntryType },
    #[error("hardlink {0:?} -> {1:?}: the target is missing or a directory")]
    BadHardlink(PathBuf, PathBuf),
    #[error("cannot write {0:?}")]
    Write(PathBuf, #[source] io::Error),
}

/// What a layer is checked against.
pub struct LayerCheck {
    /// Digest and size of the blob as stored (compressed or not).
    pub blob: Option<(Digest, u64)>,
    /// Digest of the uncompressed tar (the config's diff_id).
    pub diff_id: Option<Digest>,
}

/// Budgets shared by all layers of one image.
pub struct Budget {
    pub limits: Limits,
    pub unpacked: u64,
    pub entries: u64,
}

impl Budget {
    pub fn new(limits: Limits) -> Budget {
        Budget {
            limits,
            unpacked: 0,
            entries: 0,
        }
    }
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

/// Applies the layer read from `blob` onto `root`.
pub fn apply_layer(
    root: &Path,
    blob: impl Read,
    check: &LayerCheck,
    budget: &mut Budget,
) -> Result<LayerStats, UnpackError> {
    let raw_size = check.blob.as_ref().map(|b| b.1);
    let mut raw: Box<dyn Read> = match &check.blob {
        Some((digest, size)) => Box::new(VerifyingReader::new(blob, digest.clone(), Some(*size))),
        None => Box::new(blob),
    };
    let mut buffered = BufReader::with_capacity(64 << 10, &mut raw);
    let head = buffered.fill_buf().map_err(classify)?;
    let gzip = head.starts_with(&[0x1f, 0x8b]);
    if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return Err(UnpackError::Compression);
    }
    let left = budget
        .limits
        .max_unpacked_bytes
        .saturating_sub(budget.unpacked);
    let allowed = match (gzip, raw_size) {
        (true, Some(size)) => budget.limits.layer_budget(size).min(left),
        _ => left,
    };
    let stats;
    {
        let decoded: Box<dyn Read + '_> = if gzip {
            Box::new(MultiGzDecoder::new(&mut buffered))
        } else {
            Box::new(&mut buffered)
        };
        let mut limited = BudgetReader::new(decoded, allowed, "unpacked layer");
        {
            let mut diff: Box<dyn Read + '_> = match &check.diff_id {
                Some(d) => Box::new(VerifyingReader::new(&mut limited, d.clone(), None)),
                None => Box::new(&mut limited),
            };
            stats = apply_tar(root, &mut diff, budget)?;
            // The rest of the stream (tar's trailing blocks) still counts for the digest.
            io::copy(&mut diff, &mut io::sink()).map_err(classify)?;
        }
        budget.unpacked += limited.used();
    }
    io::copy(&mut buffered, &mut io::sink()).map_err(classify)?;
    drop(buffered);
    io::copy(&mut raw, &mut io::sink()).map_err(classify)?;
    Ok(stats)
}

fn apply_tar(
    root: &Path,
    stream: impl Read,
    budget: &mut Budget,
) -> Result<LayerStats, UnpackError> {
    let mut archive = tar::Archive::new(stream);
    let mut stats = LayerStats::default();
    let mut touched = Touched::default();
    let mut dir_times: Vec<(PathBuf, i64)> = Vec::new();
    for entry in archive.entries().map_err(classify)? {
        let mut entry = entry.map_err(classify)?;
        budget.entries += 1;
        stats.entries += 1;
        Limits::check_count(
            "entries in image",
            budget.entries,
            budget.limits.max_entries,
        )?;
        let raw_path = entry.path().map_err(classify)?.into_owned();
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
        let write_err = |e| UnpackError::Write(rel.clone(), e);
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
                    .map_err(|_| UnpackError::BadHardlink(rel.clone(), target.clone()))?;
                if meta.is_dir() {
                    return Err(UnpackError::BadHardlink(rel.clone(), target));
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
                return Err(UnpackError::EntryType {
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
        sys::set_mtime_nofollow(dir, *mtime).map_err(|e| UnpackError::Write(dir.clone(), e))?;
    }
    Ok(stats)
}

fn copy_content(entry: &mut impl Read, file: &mut File, rel: &Path) -> Result<u64, UnpackError> {
    let mut buf = vec![0u8; 64 << 10];
    let mut total = 0u64;
    loop {
        let n = entry.read(&mut buf).map_err(classify)?;
        if n == 0 {
            return Ok(total);
        }
        io::Write::write_all(file, &buf[..n])
            .map_err(|e| UnpackError::Write(rel.to_path_buf(), e))?;
        total += n as u64;
    }
}

fn link_name<R: Read>(entry: &tar::Entry<'_, R>) -> Result<PathBuf, UnpackError> {
    match entry.link_name().map_err(classify)? {
        Some(name) => Ok(name.into_owned()),
        None => Err(UnpackError::Corrupt(io::Error::other(
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
) -> Result<(), UnpackError> {
    let header = entry.header();
    let corrupt = |e| UnpackError::Corrupt(e);
    let uid = header.uid().map_err(corrupt)?;
    let gid = header.gid().map_err(corrupt)?;
    let mode = header.mode().map_err(corrupt)?;
    let mtime = header.mtime().map_err(corrupt)?;
    let is_symlink = header.entry_type() == EntryType::Symlink;
    let is_dir = header.entry_type() == EntryType::Directory;
    let write_err = |e| UnpackError::Write(rel.to_path_buf(), e);
    let uid = u32::try_from(uid).map_err(|_| corrupt(io::Error::other("uid out of range")))?;
    let gid = u32::try_from(gid).map_err(|_| corrupt(io::Error::other("gid out of range")))?;
    std::os::unix::fs::lchown(dest, Some(uid), Some(gid)).map_err(write_err)?;
    if !is_symlink {
        fs::set_permissions(dest, fs::Permissions::from_mode(mode & 0o7777)).map_err(write_err)?;
    }
    if let Some(extensions) = entry.pax_extensions().map_err(classify)? {
        for ext in extensions {
            let ext = ext.map_err(classify)?;
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

/// Turns a read error into what it really was: a digest or limit failure raised
/// by one of our readers inside the stream, or corrupt data.
fn classify(err: io::Error) -> UnpackError {
    let inner = err.get_ref();
    if inner.is_some_and(|e| e.is::<DigestError>()) {
        let boxed = err.into_inner().expect("checked above");
        return UnpackError::Digest(*boxed.downcast::<DigestError>().expect("checked above"));
    }
    if inner.is_some_and(|e| e.is::<LimitError>()) {
        let boxed = err.into_inner().expect("checked above");
        return UnpackError::Limit(*boxed.downcast::<LimitError>().expect("checked above"));
    }
    UnpackError::Corrupt(err)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("spore-unpack-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn header(kind: EntryType, size: u64, mode: u32) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_600_000_000);
        h
    }

    fn tar_of(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        b.into_inner().unwrap()
    }

    fn file(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8], mode: u32) {
        let mut h = header(EntryType::Regular, data.len() as u64, mode);
        b.append_data(&mut h, path, data).unwrap();
    }

    fn apply(root: &Path, tar: &[u8]) -> Result<LayerStats, UnpackError> {
        let check = LayerCheck {
            blob: Some((Digest::of(tar), tar.len() as u64)),
            diff_id: Some(Digest::of(tar)),
        };
        apply_layer(root, tar, &check, &mut Budget::new(Limits::default()))
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

    #[test]
    fn gzip_layers_are_verified_on_both_digests() {
        let root = scratch("gzip");
        let tar = tar_of(|b| file(b, "a", b"hello", 0o644));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        io::Write::write_all(&mut gz, &tar).unwrap();
        let gz = gz.finish().unwrap();
        let check = LayerCheck {
            blob: Some((Digest::of(&gz), gz.len() as u64)),
            diff_id: Some(Digest::of(&tar)),
        };
        apply_layer(&root, &gz[..], &check, &mut Budget::new(Limits::default())).unwrap();
        assert_eq!(fs::read(root.join("a")).unwrap(), b"hello");
        let wrong = LayerCheck {
            blob: Some((Digest::of(&gz), gz.len() as u64)),
            diff_id: Some(Digest::of(b"other")),
        };
        let err = apply_layer(&root, &gz[..], &wrong, &mut Budget::new(Limits::default()));
        assert!(
            matches!(err, Err(UnpackError::Digest(DigestError::Mismatch { .. }))),
            "{err:?}"
        );
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn refuses_traversal_and_absolute_names() {
        let root = scratch("traversal");
        for name in [&b"../evil"[..], b"a/../../evil", b"/etc/evil"] {
            let tar = finish(raw_entry(EntryType::Regular, name, b"", b"x"));
            let err = apply(&root, &tar).unwrap_err();
            assert!(matches!(err, UnpackError::Path(_)), "{err:?}");
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
            matches!(err, UnpackError::Path(PathError::ThroughSymlink(..))),
            "{err:?}"
        );
        assert!(!outside.join("owned").exists());

        let t = raw_entry(EntryType::Symlink, b"up", b"../../../../etc", b"");
        let err = apply(&root, &finish(t)).unwrap_err();
        assert!(
            matches!(err, UnpackError::Path(PathError::SymlinkEscape(..))),
            "{err:?}"
        );

        let t = raw_entry(EntryType::Link, b"hard", b"../../etc/passwd", b"");
        let err = apply(&root, &finish(t)).unwrap_err();
        assert!(
            matches!(err, UnpackError::Path(PathError::Traversal(..))),
            "{err:?}"
        );
        let t = raw_entry(EntryType::Link, b"hard", b"/etc/passwd", b"");
        assert!(apply(&root, &finish(t)).is_err());
        let t = raw_entry(EntryType::Link, b"hard2", b"esc/passwd", b"");
        let err = apply(&root, &finish(t)).unwrap_err();
        assert!(matches!(err, UnpackError::BadHardlink(..)), "{err:?}");
        fs::remove_dir_all(&root).unwrap();
        fs::remove_dir_all(&outside).unwrap();
    }

    #[test]
    fn truncated_and_corrupt_streams_fail() {
        let root = scratch("corrupt");
        let tar = tar_of(|b| file(b, "a", &[1u8; 4000], 0o644));
        let cut = &tar[..1000];
        let check = LayerCheck {
            blob: None,
            diff_id: None,
        };
        let err = apply_layer(&root, cut, &check, &mut Budget::new(Limits::default())).unwrap_err();
        assert!(matches!(err, UnpackError::Corrupt(_)), "{err:?}");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        io::Write::write_all(&mut gz, &tar).unwrap();
        let gz = gz.finish().unwrap();
        let err = apply_layer(
            &root,
            &gz[..gz.len() / 2],
            &check,
            &mut Budget::new(Limits::default()),
        )
        .unwrap_err();
        assert!(matches!(err, UnpackError::Corrupt(_)), "{err:?}");
        let mut bad = gz.clone();
        bad[20] ^= 0xff;
        assert!(apply_layer(&root, &bad[..], &check, &mut Budget::new(Limits::default())).is_err());
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn decompression_bomb_is_stopped() {
        let root = scratch("bomb");
        let tar = tar_of(|b| file(b, "zeros", &vec![0u8; 8 << 20], 0o644));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        io::Write::write_all(&mut gz, &tar).unwrap();
        let gz = gz.finish().unwrap();
        let limits = Limits {
            max_ratio: 10,
            ratio_floor_bytes: 1 << 20,
            ..Limits::default()
        };
        let check = LayerCheck {
            blob: Some((Digest::of(&gz), gz.len() as u64)),
            diff_id: None,
        };
        let err = apply_layer(&root, &gz[..], &check, &mut Budget::new(limits)).unwrap_err();
        assert!(
            matches!(err, UnpackError::Limit(LimitError::Bytes { .. })),
            "{err:?}"
        );
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn entry_count_limit_applies_across_layers() {
        let root = scratch("entries");
        let tar = tar_of(|b| {
            for i in 0..5 {
                file(b, &format!("f{i}"), b"", 0o644);
            }
        });
        let check = LayerCheck {
            blob: None,
            diff_id: None,
        };
        let mut budget = Budget::new(Limits {
            max_entries: 8,
            ..Limits::default()
        });
        apply_layer(&root, &tar[..], &check, &mut budget).unwrap();
        let err = apply_layer(&root, &tar[..], &check, &mut budget).unwrap_err();
        assert!(
            matches!(err, UnpackError::Limit(LimitError::Count { .. })),
            "{err:?}"
        );
        fs::remove_dir_all(&root).unwrap();
    }
}
