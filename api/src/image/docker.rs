//! docker-archive (`docker save` / `podman save`): `manifest.json` naming a config
//! file and layer tars. Layers carry no digest of their own in the legacy format;
//! each is verified against the config's `rootfs.diff_ids`, and the config against
//! its file name when that is a digest.
//!
//! Owns the docker manifest only; extraction is `archive.rs`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::digest::{Digest, DigestError};
use super::layout::{self, ImageParts, LayerFile, LayoutError};
use super::limits::{LimitError, Limits};
use super::safepath::{self, PathError};
use super::spec::{self, ImageConfig, SpecError};
use super::unpack::LayerCheck;

/// Why a docker archive could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("manifest.json lists {0} images; spore imports one image per archive")]
    ImageCount(usize),
    #[error("config lists {diff_ids} diff_ids for {layers} layers")]
    LayerCount { layers: usize, diff_ids: usize },
    #[error("layer file {0:?} is missing from the archive")]
    MissingLayer(PathBuf),
    #[error("unsafe path in manifest.json")]
    Path(#[from] PathError),
    #[error("cannot read docker archive file")]
    Read(#[from] LayoutError),
    #[error("invalid docker manifest or config")]
    Spec(#[from] SpecError),
    #[error("config failed verification")]
    Digest(#[from] DigestError),
    #[error("image too large")]
    Limit(#[from] LimitError),
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Entry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// Reads the extracted docker archive at `dir`.
pub fn read_docker(dir: &Path, limits: &Limits) -> Result<ImageParts, DockerError> {
    let bytes = layout::read_limited(&dir.join("manifest.json"), limits.max_json_bytes)?;
    let entries: Vec<Entry> = spec::parse_json("manifest.json", &bytes, limits.max_json_bytes)?;
    let [entry] = entries.as_slice() else {
        return Err(DockerError::ImageCount(entries.len()));
    };
    Limits::check_count("layers", entry.layers.len() as u64, limits.max_layers)?;

    let config_rel = safepath::normalize(Path::new(&entry.config), limits.max_path_bytes)?;
    let config_bytes = layout::read_limited(&dir.join(&config_rel), limits.max_json_bytes)?;
    let config_digest = Digest::of(&config_bytes);
    if let Some(named) = digest_in_name(&config_rel) {
        named.verify(&config_bytes)?;
    }
    let config: ImageConfig =
        spec::parse_json("image config", &config_bytes, limits.max_json_bytes)?;
    let diff_ids = &config.rootfs.diff_ids;
    if diff_ids.len() != entry.layers.len() {
        return Err(DockerError::LayerCount {
            layers: entry.layers.len(),
            diff_ids: diff_ids.len(),
        });
    }

    let mut layers = Vec::new();
    for (name, diff_id) in entry.layers.iter().zip(diff_ids) {
        let rel = safepath::normalize(Path::new(name), limits.max_path_bytes)?;
        let meta = safepath::existing_inside(dir, &rel)
            .map_err(|_| DockerError::MissingLayer(rel.clone()))?;
        if !meta.is_file() {
            return Err(DockerError::MissingLayer(rel));
        }
        let blob = digest_in_name(&rel).map(|d| (d, meta.len()));
        layers.push(LayerFile {
            path: dir.join(&rel),
            check: LayerCheck {
                blob,
                diff_id: Some(diff_id.parse()?),
            },
        });
    }
    Ok(ImageParts {
        manifest_digest: None,
        manifest: None,
        config_digest,
        config_bytes,
        config,
        layers,
        tags: entry.repo_tags.clone().unwrap_or_default(),
    })
}

/// `blobs/sha256/<hex>` and `<hex>.json` name their content's digest.
fn digest_in_name(rel: &Path) -> Option<Digest> {
    let name = rel.file_name()?.to_str()?;
    let hex = name.strip_suffix(".json").unwrap_or(name);
    format!("sha256:{hex}").parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_found_in_docker_file_names() {
        let hex = "a".repeat(64);
        assert_eq!(
            digest_in_name(Path::new(&format!("{hex}.json")))
                .unwrap()
                .hex(),
            hex
        );
        assert!(digest_in_name(Path::new(&format!("blobs/sha256/{hex}"))).is_some());
        assert!(digest_in_name(Path::new("abc/layer.tar")).is_none());
    }
}
