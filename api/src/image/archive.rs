//! Image archives: a tarball (optionally gzip'd) holding an OCI layout (`OCI
//! archive`) or docker's `save` format. The archive is extracted into the import's
//! staging directory, then read as a layout or by `docker.rs`.
//!
//! Owns extraction of the outer tar: only files and directories are written;
//! symlinks (docker uses them for repeated layers) become hardlinks to files
//! already extracted, so nothing in the extracted tree is ever followed.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use flate2::bufread::MultiGzDecoder;
use tar::EntryType;

use super::docker::{self, DockerError};
use super::layout::{self, ImageParts, LayoutError};
use super::limits::{BudgetReader, LimitError, Limits};
use super::safepath::{self, PathError};

/// Why an archive could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("cannot open image archive {0:?}")]
    Open(PathBuf, #[source] io::Error),
    #[error("corrupt or truncated image archive")]
    Corrupt(#[source] io::Error),
    #[error("unsafe path in image archive")]
    Path(#[from] PathError),
    #[error("image archive too large")]
    Limit(#[from] LimitError),
    #[error("cannot write {0:?} while extracting")]
    Write(PathBuf, #[source] io::Error),
    #[error("symlink {0:?} in image archive does not name a file in the archive")]
    BadLink(PathBuf),
    #[error(
        "the archive is neither an OCI archive (index.json) nor a docker archive (manifest.json)"
    )]
    UnknownFormat,
    #[error("invalid OCI archive")]
    Layout(#[from] LayoutError),
    #[error("invalid docker archive")]
    Docker(#[from] DockerError),
}

/// Extracts `tarball` into `dest` (which must be empty) and reads the image in it.
pub fn read_archive(
    tarball: &Path,
    dest: &Path,
    limits: &Limits,
) -> Result<ImageParts, ArchiveError> {
    extract(tarball, dest, limits)?;
    if dest.join("index.json").is_file() && dest.join("oci-layout").is_file() {
        Ok(layout::read_layout(dest, limits)?)
    } else if dest.join("manifest.json").is_file() {
        Ok(docker::read_docker(dest, limits)?)
    } else {
        Err(ArchiveError::UnknownFormat)
    }
}

/// Extracts files and directories of the (plain or gzip'd) tar at `tarball`.
pub fn extract(tarball: &Path, dest: &Path, limits: &Limits) -> Result<(), ArchiveError> {
    let file = File::open(tarball).map_err(|e| ArchiveError::Open(tarball.to_path_buf(), e))?;
    let mut buffered = BufReader::with_capacity(64 << 10, file);
    let gzip = buffered
        .fill_buf()
        .map_err(ArchiveError::Corrupt)?
        .starts_with(&[0x1f, 0x8b]);
    let stream: Box<dyn Read> = if gzip {
        Box::new(MultiGzDecoder::new(buffered))
    } else {
        Box::new(buffered)
    };
    let stream = BudgetReader::new(stream, limits.max_archive_bytes, "image archive");
    fs::create_dir_all(dest).map_err(|e| ArchiveError::Write(dest.to_path_buf(), e))?;
    let mut archive = tar::Archive::new(stream);
    let mut count = 0u64;
    for entry in archive.entries().map_err(classify)? {
        let mut entry = entry.map_err(classify)?;
        count += 1;
        Limits::check_count("entries in image archive", count, limits.max_entries)?;
        let raw = entry.path().map_err(classify)?.into_owned();
        let rel = safepath::normalize(&raw, limits.max_path_bytes)?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        let out = dest.join(&rel);
        let write_err = |e| ArchiveError::Write(rel.clone(), e);
        match entry.header().entry_type() {
            EntryType::Directory => {
                safepath::prepare_parent(dest, &rel)?;
                if !out.is_dir() {
                    fs::create_dir(&out).map_err(write_err)?;
                }
            }
            EntryType::Regular | EntryType::Continuous => {
                safepath::prepare_parent(dest, &rel)?;
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&out)
                    .map_err(write_err)?;
                io::copy(&mut entry, &mut file).map_err(classify)?;
            }
            EntryType::Symlink | EntryType::Link => {
                let kind = entry.header().entry_type();
                let target = entry
                    .link_name()
                    .map_err(classify)?
                    .ok_or_else(|| ArchiveError::BadLink(rel.clone()))?;
                let target = if kind == EntryType::Symlink {
                    resolve_relative(&rel, &target)
                        .ok_or_else(|| ArchiveError::BadLink(rel.clone()))?
                } else {
                    safepath::normalize(&target, limits.max_path_bytes)?
                };
                let meta = safepath::existing_inside(dest, &target)
                    .map_err(|_| ArchiveError::BadLink(rel.clone()))?;
                if !meta.is_file() {
                    return Err(ArchiveError::BadLink(rel));
                }
                safepath::prepare_parent(dest, &rel)?;
                fs::hard_link(dest.join(&target), &out).map_err(write_err)?;
            }
            // pax headers are consumed by the tar reader; nothing else belongs here.
            _ => {}
        }
    }
    Ok(())
}

/// `target` of a symlink at `link`, as a path from the archive root; `None` when
/// absolute or leaving the root.
fn resolve_relative(link: &Path, target: &Path) -> Option<PathBuf> {
    let mut out: Vec<Component> = link.parent()?.components().collect();
    for component in target.components() {
        match component {
            Component::Normal(_) => out.push(component),
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop()?;
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out.iter().collect())
}

fn classify(err: io::Error) -> ArchiveError {
    if err.get_ref().is_some_and(|e| e.is::<LimitError>()) {
        let inner = err.into_inner().expect("checked above");
        return ArchiveError::Limit(*inner.downcast::<LimitError>().expect("checked above"));
    }
    ArchiveError::Corrupt(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlink_targets_resolve_inside_only() {
        let r = resolve_relative(Path::new("b/layer.tar"), Path::new("../a/layer.tar"));
        assert_eq!(r.unwrap(), Path::new("a/layer.tar"));
        assert!(resolve_relative(Path::new("b/layer.tar"), Path::new("../../x")).is_none());
        assert!(resolve_relative(Path::new("b/layer.tar"), Path::new("/etc/passwd")).is_none());
    }

    #[test]
    fn extracts_files_and_turns_symlinks_into_hardlinks() {
        let dir = std::env::temp_dir().join(format!("spore-archive-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_mode(0o644);
        b.append_data(&mut h, "a/layer.tar", &b"abc"[..]).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "b/layer.tar", "../a/layer.tar")
            .unwrap();
        fs::write(dir.join("in.tar"), b.into_inner().unwrap()).unwrap();
        extract(&dir.join("in.tar"), &dir.join("out"), &Limits::default()).unwrap();
        let meta = fs::symlink_metadata(dir.join("out/b/layer.tar")).unwrap();
        assert!(meta.is_file());
        assert_eq!(fs::read(dir.join("out/b/layer.tar")).unwrap(), b"abc");
        let err = read_archive(&dir.join("in.tar"), &dir.join("out2"), &Limits::default())
            .err()
            .unwrap();
        assert!(matches!(err, ArchiveError::UnknownFormat), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
