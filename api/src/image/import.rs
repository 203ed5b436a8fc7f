//! Importing an image into the store, as one straight procedure:
//! resolve the source → stage → apply layers in order → build the filesystem
//! image → write config and record → rename into place.
//!
//! Owns the order of steps and the source kinds; each step lives in its own module.

use std::fs::{self, File};
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::archive::{self, ArchiveError};
use super::digest::Digest;
use super::fsimage::{self, FsImageError, STORE_FORMAT};
use super::layout::{self, ImageParts, LayoutError};
use super::registry::{self, RegistryError};
use super::store::{self, ImageRecord, Store, StoreError};
use super::unpack::{self, Budget, UnpackError};

/// Why an import failed. Nothing was added to the store.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read OCI image layout")]
    Layout(#[from] LayoutError),
    #[error("cannot read image archive")]
    Archive(#[from] ArchiveError),
    #[error("cannot pull image")]
    Registry(#[from] RegistryError),
    #[error("layer {index} ({digest}) rejected")]
    Layer {
        index: usize,
        digest: String,
        #[source]
        source: UnpackError,
    },
    #[error("layer {0:?} is missing or not a regular file")]
    NotAFile(PathBuf),
    #[error("cannot open layer {0:?}")]
    OpenLayer(PathBuf, #[source] std::io::Error),
    #[error("cannot build the filesystem image")]
    FsImage(#[from] FsImageError),
    #[error("image store")]
    Store(#[from] StoreError),
}

/// Where an image comes from.
#[derive(Clone, Debug)]
pub enum Source {
    /// An OCI image-layout directory.
    Layout(PathBuf),
    /// A tarball: OCI archive or docker-archive (told apart by content).
    Archive(PathBuf),
    /// A registry reference (`registry/name:tag` or `…@sha256:…`).
    Registry(String),
}

impl Source {
    /// A directory is a layout, a file an archive, anything else a reference.
    pub fn guess(arg: &str) -> Source {
        let path = Path::new(arg);
        if path.is_dir() {
            Source::Layout(path.to_path_buf())
        } else if path.is_file() {
            Source::Archive(path.to_path_buf())
        } else {
            Source::Registry(arg.to_string())
        }
    }

    fn describe(&self) -> String {
        match self {
            Source::Layout(p) | Source::Archive(p) => p.display().to_string(),
            Source::Registry(r) => r.clone(),
        }
    }
}

/// Imports `source`; returns the record of the image (already present or new).
pub fn import(store: &Store, source: &Source) -> Result<ImageRecord, ImportError> {
    let limits = store.limits().clone();
    // 1. A staging directory on the store's filesystem; dropped on any error.
    let staging = store.staging()?;
    let src_dir = staging.path().join("src");
    let rootfs = staging.path().join("rootfs");
    let out = staging.path().join("out");
    // 2. Resolve the image: manifest, config, layer files (digests checked here
    //    for the small documents, while unpacking for the layers).
    let parts = match source {
        Source::Layout(dir) => layout::read_layout(dir, &limits)?,
        Source::Archive(file) => archive::read_archive(file, &src_dir, &limits)?,
        Source::Registry(reference) => {
            let tag = registry::pull(reference, &src_dir, &limits)?;
            let mut parts = layout::read_layout(&src_dir, &limits)?;
            parts.tags = vec![tag];
            parts
        }
    };
    // 3. Already stored: only the names are new.
    if store.contains(&parts.config_digest) {
        store.add_tags(&parts.config_digest, &parts.tags)?;
        return Ok(store.record(&parts.config_digest)?);
    }
    // 4. Layers in order onto the staging rootfs.
    create_dir(&rootfs)?;
    apply_layers(&rootfs, &parts, Budget::new(limits))?;
    // 5. The read-only filesystem image, then the documents beside it.
    create_dir(&out)?;
    let image = out.join(format!("rootfs.{}", STORE_FORMAT.fstype()));
    fsimage::build(STORE_FORMAT, &rootfs, &image)?;
    store::write_documents(&out, &parts.config_bytes, parts.manifest.as_deref())?;
    // 6. Into place in one rename.
    let record = ImageRecord {
        digest: parts.config_digest.to_string(),
        manifest_digest: parts.manifest_digest.as_ref().map(Digest::to_string),
        tags: parts.tags.clone(),
        format: STORE_FORMAT.fstype().to_string(),
        size: fs::metadata(&image).map_or(0, |m| m.len()),
        layers: parts.layers.len(),
        imported: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        source: source.describe(),
    };
    store.commit(&out, &record)?;
    Ok(store.record(&parts.config_digest)?)
}

/// Applies every layer of `parts` onto `rootfs`, bottom first.
pub fn apply_layers(
    rootfs: &Path,
    parts: &ImageParts,
    mut budget: Budget,
) -> Result<(), ImportError> {
    for (index, layer) in parts.layers.iter().enumerate() {
        // Checked before opening: opening a fifo would block.
        if !fs::metadata(&layer.path).is_ok_and(|m| m.is_file()) {
            return Err(ImportError::NotAFile(layer.path.clone()));
        }
        let file =
            File::open(&layer.path).map_err(|e| ImportError::OpenLayer(layer.path.clone(), e))?;
        let digest = match (&layer.check.blob, &layer.check.diff_id) {
            (Some((d, _)), _) | (None, Some(d)) => d.to_string(),
            (None, None) => "unverified".to_string(),
        };
        unpack::apply_layer(rootfs, BufReader::new(file), &layer.check, &mut budget).map_err(
            |source| ImportError::Layer {
                index,
                digest,
                source,
            },
        )?;
    }
    Ok(())
}

fn create_dir(path: &Path) -> Result<(), ImportError> {
    fs::create_dir(path).map_err(|e| StoreError::Io(path.to_path_buf(), e).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guesses_the_source_kind() {
        let dir = std::env::temp_dir();
        assert!(matches!(
            Source::guess(dir.to_str().unwrap()),
            Source::Layout(_)
        ));
        assert!(matches!(
            Source::guess("/proc/self/status"),
            Source::Archive(_)
        ));
        assert!(matches!(
            Source::guess("docker.io/library/busybox:1.36"),
            Source::Registry(_)
        ));
    }
}
