//! Pulls an image over the OCI distribution API into an OCI layout directory,
//! which the importer then reads like any other layout.
//!
//! Owns references, the HTTP exchanges and the token flow (anonymous, or a bearer
//! token fetched from the realm a 401's `WWW-Authenticate` names). Picks
//! linux/amd64 from indexes. Loopback registries are spoken to over plain HTTP,
//! every other one over HTTPS.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::digest::{Digest, DigestError, VerifyingReader};
use super::layout::blob_path;
use super::limits::{LimitError, Limits};
use super::spec::{self, Descriptor, ManifestOrIndex, SpecError};

const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.docker.distribution.manifest.v2+json";
const MAX_INDEX_DEPTH: usize = 4;

/// Why a pull failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("invalid image reference {0:?}")]
    Reference(String),
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("cannot reach {url}")]
    Transport {
        url: String,
        #[source]
        source: Box<ureq::Transport>,
    },
    #[error("{0} asks for authentication spore cannot do (only anonymous bearer tokens)")]
    Auth(String),
    #[error("token endpoint returned no token")]
    NoToken,
    #[error("reading the response from {0}")]
    Body(String, #[source] io::Error),
    #[error("invalid manifest from the registry")]
    Spec(#[from] SpecError),
    #[error("content from the registry does not match its digest")]
    Digest(#[from] DigestError),
    #[error("image too large")]
    Limit(#[from] LimitError),
    #[error("cannot write {0:?}")]
    Write(PathBuf, #[source] io::Error),
    #[error("indexes nested deeper than {MAX_INDEX_DEPTH} levels")]
    TooDeep,
}

/// `[registry/]name[:tag][@sha256:…]`, docker's defaults applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// Host (and port) to talk to.
    pub registry: String,
    pub name: String,
    /// A tag or a digest.
    pub reference: String,
}

impl Reference {
    pub fn parse(s: &str) -> Result<Reference, RegistryError> {
        let bad = || RegistryError::Reference(s.to_string());
        let (rest, digest) = match s.split_once('@') {
            Some((rest, d)) => (rest, Some(d.parse::<Digest>().map_err(|_| bad())?)),
            None => (s, None),
        };
        let (registry, path) = match rest.split_once('/') {
            Some((first, path)) if first.contains(['.', ':']) || first == "localhost" => {
                (first.to_string(), path.to_string())
            }
            _ => ("docker.io".to_string(), rest.to_string()),
        };
        let (name, tag) = match path.rsplit_once(':') {
            Some((name, tag)) if !tag.contains('/') => (name.to_string(), tag.to_string()),
            _ => (path, "latest".to_string()),
        };
        let valid = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/".contains(c);
        if name.is_empty() || !name.chars().all(valid) || tag.is_empty() || tag.contains('/') {
            return Err(bad());
        }
        let (registry, name) = if registry == "docker.io" {
            let name = if name.contains('/') {
                name
            } else {
                format!("library/{name}")
            };
            ("registry-1.docker.io".to_string(), name)
        } else {
            (registry, name)
        };
        let reference = digest.map_or(tag, |d| d.to_string());
        Ok(Reference {
            registry,
            name,
            reference,
        })
    }

    /// The name the store gives the image: docker hub's library images by their
    /// short name (`busybox:latest`), anything else in full (`host:5000/app:v1`).
    pub fn display_name(&self) -> String {
        let repo = match self.registry.as_str() {
            "registry-1.docker.io" => self
                .name
                .strip_prefix("library/")
                .unwrap_or(&self.name)
                .to_string(),
            registry => format!("{registry}/{}", self.name),
        };
        let sep = if self.reference.starts_with("sha256:") {
            '@'
        } else {
            ':'
        };
        format!("{repo}{sep}{}", self.reference)
    }

    fn base(&self) -> String {
        let host = self
            .registry
            .rsplit_once(':')
            .map_or(self.registry.as_str(), |(h, _)| h);
        let scheme = match host {
            "localhost" | "127.0.0.1" | "[::1]" => "http",
            _ => "https",
        };
        format!("{scheme}://{}/v2/{}", self.registry, self.name)
    }
}

/// Pulls `reference` into a new OCI layout at `dest`; returns the name to tag it with.
pub fn pull(reference: &str, dest: &Path, limits: &Limits) -> Result<String, RegistryError> {
    let r = Reference::parse(reference)?;
    let mut client = Client::new();
    // 1. The manifest, through any index to linux/amd64.
    let mut url = format!("{}/manifests/{}", r.base(), r.reference);
    let mut expected: Option<Digest> = r.reference.parse().ok();
    let (manifest_bytes, manifest) = 'found: {
        for _ in 0..MAX_INDEX_DEPTH {
            let bytes = client.get_small(&url, ACCEPT, limits.max_json_bytes)?;
            if let Some(d) = &expected {
                d.verify(&bytes)?;
            }
            match spec::parse_manifest_or_index(&bytes, limits.max_json_bytes)? {
                ManifestOrIndex::Manifest(m) => break 'found (bytes, m),
                ManifestOrIndex::Index(index) => {
                    let picked = spec::pick_platform(&index)?;
                    expected = Some(picked.digest()?);
                    url = format!("{}/manifests/{}", r.base(), picked.digest);
                }
            }
        }
        return Err(RegistryError::TooDeep);
    };
    Limits::check_count("layers", manifest.layers.len() as u64, limits.max_layers)?;
    // 2. Config and layers, each verified as it is written.
    let manifest_digest = Digest::of(&manifest_bytes);
    fs::create_dir_all(dest.join("blobs/sha256"))
        .map_err(|e| RegistryError::Write(dest.to_path_buf(), e))?;
    write(&blob_path(dest, &manifest_digest), &manifest_bytes)?;
    if manifest.config.size > limits.max_json_bytes {
        return Err(LimitError::Bytes {
            what: "image config",
            limit: limits.max_json_bytes,
        }
        .into());
    }
    for desc in std::iter::once(&manifest.config).chain(&manifest.layers) {
        if desc.size > limits.max_blob_bytes {
            return Err(LimitError::Bytes {
                what: "layer blob",
                limit: limits.max_blob_bytes,
            }
            .into());
        }
        client.download(&r, desc, dest)?;
    }
    // 3. The layout's own files.
    let tag = r.display_name();
    let index = spec::Index {
        schema_version: 2,
        media_type: Some(spec::MEDIA_OCI_INDEX.to_string()),
        manifests: vec![Descriptor {
            media_type: manifest
                .media_type
                .clone()
                .unwrap_or_else(|| spec::MEDIA_OCI_MANIFEST.into()),
            digest: manifest_digest.to_string(),
            size: manifest_bytes.len() as u64,
            platform: None,
            annotations: Some(BTreeMap::from([(
                "org.opencontainers.image.ref.name".to_string(),
                tag.clone(),
            )])),
        }],
    };
    write(
        &dest.join("index.json"),
        &serde_json::to_vec(&index).expect("index serializes"),
    )?;
    write(
        &dest.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    Ok(tag)
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), RegistryError> {
    fs::write(path, bytes).map_err(|e| RegistryError::Write(path.to_path_buf(), e))
}

/// One registry conversation: an agent and the bearer token once we have one.
struct Client {
    agent: ureq::Agent,
    token: Option<String>,
}

impl Client {
    fn new() -> Client {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(30))
            .timeout_read(Duration::from_secs(120))
            .build();
        Client { agent, token: None }
    }

    /// GET with the token flow: on a 401 naming a Bearer realm, fetch a token
    /// anonymously and try once more.
    fn get(&mut self, url: &str, accept: &str) -> Result<ureq::Response, RegistryError> {
        for attempt in 0..2 {
            let mut req = self.agent.get(url).set("Accept", accept);
            if let Some(token) = &self.token {
                req = req.set("Authorization", &format!("Bearer {token}"));
            }
            match req.call() {
                Ok(resp) => return Ok(resp),
                Err(ureq::Error::Status(401, resp)) if attempt == 0 => {
                    let header = resp.header("www-authenticate").unwrap_or("").to_string();
                    self.token = Some(self.fetch_token(url, &header)?);
                }
                Err(ureq::Error::Status(status, _)) => {
                    return Err(RegistryError::Status {
                        url: url.to_string(),
                        status,
                    })
                }
                Err(ureq::Error::Transport(t)) => {
                    return Err(RegistryError::Transport {
                        url: url.to_string(),
                        source: Box::new(t),
                    })
                }
            }
        }
        Err(RegistryError::Auth(url.to_string()))
    }

    fn fetch_token(&self, url: &str, challenge: &str) -> Result<String, RegistryError> {
        let params =
            parse_challenge(challenge).ok_or_else(|| RegistryError::Auth(url.to_string()))?;
        let realm = params
            .get("realm")
            .ok_or_else(|| RegistryError::Auth(url.to_string()))?;
        let mut req = self.agent.get(realm);
        for key in ["service", "scope"] {
            if let Some(value) = params.get(key) {
                req = req.query(key, value);
            }
        }
        let resp = req.call().map_err(|e| match e {
            ureq::Error::Status(status, _) => RegistryError::Status {
                url: realm.clone(),
                status,
            },
            ureq::Error::Transport(t) => RegistryError::Transport {
                url: realm.clone(),
                source: Box::new(t),
            },
        })?;
        let body = read_small(resp, realm, 1 << 20)?;
        let json: serde_json::Value = spec::parse_json("token response", &body, 1 << 20)?;
        json.get("token")
            .or_else(|| json.get("access_token"))
            .and_then(|t| t.as_str())
            .map(str::to_string)
            .ok_or(RegistryError::NoToken)
    }

    fn get_small(&mut self, url: &str, accept: &str, limit: u64) -> Result<Vec<u8>, RegistryError> {
        let resp = self.get(url, accept)?;
        read_small(resp, url, limit)
    }

    /// Streams a blob to `dest`'s blobs directory, verifying digest and size.
    fn download(
        &mut self,
        r: &Reference,
        desc: &Descriptor,
        dest: &Path,
    ) -> Result<(), RegistryError> {
        let digest = desc.digest()?;
        let path = blob_path(dest, &digest);
        if path.is_file() {
            return Ok(());
        }
        let url = format!("{}/blobs/{digest}", r.base());
        let resp = self.get(&url, "*/*")?;
        let tmp = path.with_extension("partial");
        let mut file = File::create(&tmp).map_err(|e| RegistryError::Write(tmp.clone(), e))?;
        let mut verified = VerifyingReader::new(resp.into_reader(), digest, Some(desc.size));
        io::copy(&mut verified, &mut file).map_err(|e| match e.get_ref() {
            Some(inner) if inner.is::<DigestError>() => {
                let inner = e.into_inner().expect("checked above");
                RegistryError::Digest(*inner.downcast::<DigestError>().expect("checked above"))
            }
            _ => RegistryError::Body(url.clone(), e),
        })?;
        fs::rename(&tmp, &path).map_err(|e| RegistryError::Write(path, e))
    }
}

fn read_small(resp: ureq::Response, url: &str, limit: u64) -> Result<Vec<u8>, RegistryError> {
    let mut bytes = Vec::new();
    resp.into_reader()
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| RegistryError::Body(url.to_string(), e))?;
    if bytes.len() as u64 > limit {
        return Err(SpecError::TooLarge {
            what: "registry response",
            size: bytes.len() as u64,
            limit,
        }
        .into());
    }
    Ok(bytes)
}

/// `Bearer realm="…",service="…",scope="…"` → its parameters; `None` unless Bearer.
pub fn parse_challenge(header: &str) -> Option<BTreeMap<String, String>> {
    let rest = header.trim().strip_prefix("Bearer ")?;
    let mut params = BTreeMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            return Some(params);
        }
        let value: String = if chars.peek() == Some(&'"') {
            chars.next();
            let v = chars.by_ref().take_while(|c| *c != '"').collect();
            v
        } else {
            chars.by_ref().take_while(|c| *c != ',').collect()
        };
        params.insert(key.trim().to_ascii_lowercase(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_get_docker_defaults() {
        let r = Reference::parse("busybox").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.name.as_str(), r.reference.as_str()),
            ("registry-1.docker.io", "library/busybox", "latest")
        );
        let r = Reference::parse("127.0.0.1:5000/team/app:v1").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.name.as_str(), r.reference.as_str()),
            ("127.0.0.1:5000", "team/app", "v1")
        );
        assert_eq!(r.base(), "http://127.0.0.1:5000/v2/team/app");
        assert_eq!(r.display_name(), "127.0.0.1:5000/team/app:v1");
        assert_eq!(
            Reference::parse("busybox").unwrap().display_name(),
            "busybox:latest"
        );
        let d = format!("sha256:{}", "a".repeat(64));
        let r = Reference::parse(&format!("ghcr.io/o/app@{d}")).unwrap();
        assert_eq!(r.reference, d);
        assert_eq!(r.base(), "https://ghcr.io/v2/o/app");
        assert!(Reference::parse("UPPER/case").is_err());
        assert!(Reference::parse("app@sha256:short").is_err());
    }

    #[test]
    fn parses_bearer_challenges() {
        let p = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        )
        .unwrap();
        assert_eq!(p["realm"], "https://auth.docker.io/token");
        assert_eq!(p["service"], "registry.docker.io");
        assert_eq!(p["scope"], "repository:library/busybox:pull");
        assert!(parse_challenge(r#"Basic realm="x""#).is_none());
    }
}
