//! Reads an OCI image-layout directory (`oci-layout`, `index.json`, `blobs/sha256/…`):
//! picks the linux/amd64 manifest, verifies manifest and config against their
//! digests, and lists the layers to apply with what each must hash to.
//!
//! Owns the layout format only; OCI archives are layouts once extracted
//! (`archive.rs`), and registry pulls are written as one (`registry.rs`).

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::digest::{Digest, DigestError};
use super::limits::{LimitError, Limits};
use super::spec::{self, Descriptor, ImageConfig, ManifestOrIndex, SpecError};
use super::unpack::LayerCheck;

const REF_NAME: &str = "org.opencontainers.image.ref.name";
const CONTAINERD_NAME: &str = "io.containerd.image.name";
/// Indexes pointing at indexes (docker's own `save` does one level) — at most this deep.
const MAX_INDEX_DEPTH: usize = 4;

/// Why a layout could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("{0:?} is not an OCI image layout (no oci-layout and index.json)")]
    NotALayout(PathBuf),
    #[error("blob {0} is missing from the layout")]
    MissingBlob(Digest),
    #[error("cannot read {0:?}")]
    Read(PathBuf, #[source] io::Error),
    #[error("invalid image document")]
    Spec(#[from] SpecError),
    #[error("blob failed verification")]
    Digest(#[from] DigestError),
    #[error("image too large")]
    Limit(#[from] LimitError),
    #[error("indexes nested deeper than {MAX_INDEX_DEPTH} levels")]
    TooDeep,
    #[error("config lists {diff_ids} diff_ids for {layers} layers")]
    LayerCount { layers: usize, diff_ids: usize },
}

/// One layer to apply: the blob file and what it must hash to.
pub struct LayerFile {
    pub path: PathBuf,
    pub check: LayerCheck,
}

/// An image resolved from any source, ready to unpack.
pub struct ImageParts {
    /// Digest of the manifest, when the source has one (not docker-archive).
    pub manifest_digest: Option<Digest>,
    pub manifest: Option<Vec<u8>>,
    pub config_digest: Digest,
    pub config_bytes: Vec<u8>,
    pub config: ImageConfig,
    /// Bottom layer first.
    pub layers: Vec<LayerFile>,
    /// Names the source gave the image (`busybox:latest`).
    pub tags: Vec<String>,
}

/// Reads the layout at `dir`.
pub fn read_layout(dir: &Path, limits: &Limits) -> Result<ImageParts, LayoutError> {
    if !dir.join("oci-layout").is_file() || !dir.join("index.json").is_file() {
        return Err(LayoutError::NotALayout(dir.to_path_buf()));
    }
    let index_bytes = read_limited(&dir.join("index.json"), limits.max_json_bytes)?;
    let mut doc = spec::parse_manifest_or_index(&index_bytes, limits.max_json_bytes)?;
    let mut tags = Vec::new();
    let mut chosen: Option<Descriptor> = None;
    for _ in 0..MAX_INDEX_DEPTH {
        let index = match doc {
            ManifestOrIndex::Index(index) => index,
            ManifestOrIndex::Manifest(manifest) => {
                let manifest_bytes = match &chosen {
                    Some(d) => read_blob(dir, d, limits.max_json_bytes)?,
                    None => index_bytes,
                };
                return finish(dir, chosen, manifest_bytes, manifest, tags, limits);
            }
        };
        let picked = spec::pick_platform(&index)?.clone();
        // Only the chosen entry's name: a layout may hold other images too.
        tags.extend(image_name(&picked));
        let bytes = read_blob(dir, &picked, limits.max_json_bytes)?;
        doc = spec::parse_manifest_or_index(&bytes, limits.max_json_bytes)?;
        chosen = Some(picked);
    }
    Err(LayoutError::TooDeep)
}

fn finish(
    dir: &Path,
    chosen: Option<Descriptor>,
    manifest_bytes: Vec<u8>,
    manifest: spec::Manifest,
    tags: Vec<String>,
    limits: &Limits,
) -> Result<ImageParts, LayoutError> {
    Limits::check_count("layers", manifest.layers.len() as u64, limits.max_layers)?;
    let config_bytes = read_blob(dir, &manifest.config, limits.max_json_bytes)?;
    let config: ImageConfig =
        spec::parse_json("image config", &config_bytes, limits.max_json_bytes)?;
    let diff_ids = &config.rootfs.diff_ids;
    if diff_ids.len() != manifest.layers.len() {
        return Err(LayoutError::LayerCount {
            layers: manifest.layers.len(),
            diff_ids: diff_ids.len(),
        });
    }
    let mut layers = Vec::new();
    for (layer, diff_id) in manifest.layers.iter().zip(diff_ids) {
        let digest = layer.digest()?;
        if layer.size > limits.max_blob_bytes {
            return Err(LimitError::Bytes {
                what: "layer blob",
                limit: limits.max_blob_bytes,
            }
            .into());
        }
        layers.push(LayerFile {
            path: blob_path(dir, &digest),
            check: LayerCheck {
                blob: Some((digest, layer.size)),
                diff_id: Some(diff_id.parse()?),
            },
        });
    }
    Ok(ImageParts {
        manifest_digest: chosen.map(|d| d.digest()).transpose()?,
        manifest: Some(manifest_bytes),
        config_digest: manifest.config.digest()?,
        config_bytes,
        config,
        layers,
        tags,
    })
}

/// The name an index entry gives its image: containerd's full name (docker 25+
/// `save` puts only the tag in ref.name), else the OCI ref.name.
fn image_name(desc: &Descriptor) -> Option<String> {
    let annotations = desc.annotations.as_ref()?;
    annotations
        .get(CONTAINERD_NAME)
        .or_else(|| annotations.get(REF_NAME))
        .cloned()
}

/// Where a blob lives in a layout.
pub fn blob_path(dir: &Path, digest: &Digest) -> PathBuf {
    dir.join("blobs/sha256").join(digest.hex())
}

/// Reads a small blob whole and verifies it against its descriptor.
fn read_blob(dir: &Path, desc: &Descriptor, limit: u64) -> Result<Vec<u8>, LayoutError> {
    let digest = desc.digest()?;
    if desc.size > limit {
        return Err(SpecError::TooLarge {
            what: "manifest or config",
            size: desc.size,
            limit,
        }
        .into());
    }
    let path = blob_path(dir, &digest);
    if !path.is_file() {
        return Err(LayoutError::MissingBlob(digest));
    }
    let bytes = read_limited(&path, limit)?;
    if bytes.len() as u64 != desc.size {
        return Err(DigestError::Size {
            digest,
            expected: desc.size,
            actual: bytes.len() as u64,
        }
        .into());
    }
    digest.verify(&bytes)?;
    Ok(bytes)
}

/// Reads at most `limit` bytes of a file; a longer file is an error.
pub fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>, LayoutError> {
    let file = File::open(path).map_err(|e| LayoutError::Read(path.to_path_buf(), e))?;
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| LayoutError::Read(path.to_path_buf(), e))?;
    if bytes.len() as u64 > limit {
        let size = fs::metadata(path).map_or(bytes.len() as u64, |m| m.len());
        return Err(SpecError::TooLarge {
            what: "JSON document",
            size,
            limit,
        }
        .into());
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_without_layout_files_is_refused() {
        let dir = std::env::temp_dir();
        let err = read_layout(&dir, &Limits::default()).err().unwrap();
        assert!(matches!(err, LayoutError::NotALayout(_)), "{err}");
    }

    #[test]
    fn names_prefer_containerds_full_name() {
        let mut desc: Descriptor = serde_json::from_str(
            r#"{"digest":"sha256:x","size":1,"annotations":{"org.opencontainers.image.ref.name":"latest"}}"#,
        )
        .unwrap();
        assert_eq!(image_name(&desc).as_deref(), Some("latest"));
        desc.annotations.as_mut().unwrap().insert(
            CONTAINERD_NAME.into(),
            "docker.io/library/busybox:latest".into(),
        );
        assert_eq!(
            image_name(&desc).as_deref(),
            Some("docker.io/library/busybox:latest")
        );
    }

    #[test]
    fn read_limited_refuses_longer_files() {
        let path = std::env::temp_dir().join(format!("spore-layout-limit-{}", std::process::id()));
        fs::write(&path, [b'x'; 100]).unwrap();
        assert_eq!(read_limited(&path, 100).unwrap().len(), 100);
        let err = read_limited(&path, 99).unwrap_err();
        assert!(
            matches!(
                err,
                LayoutError::Spec(SpecError::TooLarge { size: 100, .. })
            ),
            "{err}"
        );
        fs::remove_file(path).unwrap();
    }
}
