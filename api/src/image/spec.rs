//! The OCI image-spec JSON documents spore reads: descriptors, indexes, manifests
//! and the parts of the image config it uses (docker's v2 schema 2 shares them).
//!
//! Plain data and parsing; what a config means for a process is `config.rs`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::digest::{Digest, DigestError};

pub const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MEDIA_OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// Why a document was refused.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("{what} is {size} bytes, over the limit of {limit}")]
    TooLarge {
        what: &'static str,
        size: u64,
        limit: u64,
    },
    #[error("{what} is not valid JSON of the expected shape")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("descriptor has an unusable digest")]
    Digest(#[from] DigestError),
    #[error("unsupported media type {0:?}")]
    MediaType(String),
    #[error("no linux/amd64 image in the index (found: {0})")]
    NoPlatform(String),
}

/// Points at a blob by digest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

impl Descriptor {
    pub fn digest(&self) -> Result<Digest, SpecError> {
        Ok(self.digest.parse()?)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// An image index (OCI) or manifest list (docker).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
}

/// One image's manifest: its config and its layers, bottom first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// A document found where a manifest was expected.
#[derive(Debug)]
pub enum ManifestOrIndex {
    Manifest(Manifest),
    Index(Index),
}

/// The image config, as far as spore uses it. The full JSON is kept verbatim in
/// the store beside the filesystem image.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub config: Option<ContainerConfig>,
    pub rootfs: RootFs,
}

/// What the image asks a container to run (docker's capitalised field names).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    pub diff_ids: Vec<String>,
}

/// Parses a JSON document of at most `limit` bytes.
pub fn parse_json<T: serde::de::DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
    limit: u64,
) -> Result<T, SpecError> {
    if bytes.len() as u64 > limit {
        return Err(SpecError::TooLarge {
            what,
            size: bytes.len() as u64,
            limit,
        });
    }
    serde_json::from_slice(bytes).map_err(|source| SpecError::Json { what, source })
}

/// Tells an index from a manifest by media type, or by shape when it has none.
pub fn parse_manifest_or_index(bytes: &[u8], limit: u64) -> Result<ManifestOrIndex, SpecError> {
    let probe: serde_json::Value = parse_json("manifest", bytes, limit)?;
    let media = probe
        .get("mediaType")
        .and_then(|m| m.as_str())
        .unwrap_or("");
    let is_index = match media {
        MEDIA_OCI_INDEX | MEDIA_DOCKER_LIST => true,
        MEDIA_OCI_MANIFEST | MEDIA_DOCKER_MANIFEST => false,
        "" => probe.get("manifests").is_some(),
        other => return Err(SpecError::MediaType(other.to_string())),
    };
    if is_index {
        Ok(ManifestOrIndex::Index(parse_json("index", bytes, limit)?))
    } else {
        Ok(ManifestOrIndex::Manifest(parse_json(
            "manifest", bytes, limit,
        )?))
    }
}

/// The index entry for linux/amd64; an entry without a platform counts when it is
/// the only one (a single-image layout).
pub fn pick_platform(index: &Index) -> Result<&Descriptor, SpecError> {
    let amd64 = index.manifests.iter().find(|d| {
        d.platform
            .as_ref()
            .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
    });
    let only = match index.manifests.as_slice() {
        [one] if one.platform.is_none() => Some(one),
        _ => None,
    };
    amd64.or(only).ok_or_else(|| {
        let found: Vec<String> = index
            .manifests
            .iter()
            .map(|d| match &d.platform {
                Some(p) => format!("{}/{}", p.os, p.architecture),
                None => "unspecified".to_string(),
            })
            .collect();
        SpecError::NoPlatform(found.join(", "))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(platform: Option<(&str, &str)>) -> Descriptor {
        Descriptor {
            media_type: MEDIA_OCI_MANIFEST.into(),
            digest: format!("sha256:{}", "a".repeat(64)),
            size: 1,
            platform: platform.map(|(os, arch)| Platform {
                architecture: arch.into(),
                os: os.into(),
                variant: None,
            }),
            annotations: None,
        }
    }

    #[test]
    fn picks_linux_amd64_from_a_list() {
        let mut arm = desc(Some(("linux", "arm64")));
        arm.digest = format!("sha256:{}", "b".repeat(64));
        let index = Index {
            schema_version: 2,
            media_type: None,
            manifests: vec![arm, desc(Some(("linux", "amd64")))],
        };
        assert_eq!(
            pick_platform(&index).unwrap().digest,
            format!("sha256:{}", "a".repeat(64))
        );
    }

    #[test]
    fn no_amd64_is_an_error_naming_what_exists() {
        let index = Index {
            schema_version: 2,
            media_type: None,
            manifests: vec![desc(Some(("linux", "arm64"))), desc(None)],
        };
        let err = pick_platform(&index).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no linux/amd64 image in the index (found: linux/arm64, unspecified)"
        );
    }

    #[test]
    fn tells_index_from_manifest() {
        let m =
            br#"{"schemaVersion":2,"config":{"mediaType":"x","digest":"d","size":1},"layers":[]}"#;
        assert!(matches!(
            parse_manifest_or_index(m, 1024).unwrap(),
            ManifestOrIndex::Manifest(_)
        ));
        let i = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert!(matches!(
            parse_manifest_or_index(i, 1024).unwrap(),
            ManifestOrIndex::Index(_)
        ));
    }

    #[test]
    fn oversized_json_is_refused_before_parsing() {
        let big = vec![b' '; 2048];
        let err = parse_json::<serde_json::Value>("config", &big, 1024).unwrap_err();
        assert!(matches!(err, SpecError::TooLarge { size: 2048, .. }));
    }

    #[test]
    fn reads_docker_style_config() {
        let c = br#"{"architecture":"amd64","os":"linux","config":{"Env":["A=1"],"WorkingDir":"/w","User":"1000"},"rootfs":{"type":"layers","diff_ids":[]}}"#;
        let cfg: ImageConfig = parse_json("config", c, 4096).unwrap();
        let cc = cfg.config.unwrap();
        assert_eq!(cc.env, Some(vec!["A=1".to_string()]));
        assert_eq!(cc.working_dir.as_deref(), Some("/w"));
        assert_eq!(cc.user.as_deref(), Some("1000"));
    }
}
