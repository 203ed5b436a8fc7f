//! Image names to root filesystems, and the daemon's image operations (import,
//! list, inspect, remove) over the image store (`crate::image`).
//!
//! A sandbox's image is, in order: an image imported into the store
//! (`$SPORE_IMAGE_DIR`, else `/var/lib/spore/images`), whose erofs file becomes
//! the rootfs lower (the agent loop-mounts it read-only; no per-sandbox copy) and
//! whose config gives the process; else the built-in `busybox`: the tree
//! `resources/build-rootfs.sh` builds at `target/guest/rootfs`, found next to the
//! `spore` binary (`target/<profile>/spore` → `target/guest/rootfs`) or at
//! `$SPORE_BUSYBOX_ROOTFS`.
//!
//! Not here: unpacking and building images (`crate::image`), HTTP statuses
//! (`server::error`).

use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{Supervisor, SupervisorError};
use crate::image::spec::{ContainerConfig, ImageConfig};
use crate::image::{self, ConfigError, ImageRecord, ImportError, Source, Store, StoreError};

/// The names `busybox` answers to.
const BUSYBOX: &[&str] = &["busybox", "busybox:latest", "docker.io/library/busybox"];

/// Why an image operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ImagesError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot import {0}")]
    Import(String, #[source] ImportError),
    #[error("the image's config and the request do not give a process")]
    Config(#[from] ConfigError),
    #[error(
        "image {image} is used by sandbox {} — remove it first (`spore rm`)",
        sandboxes.join(", ")
    )]
    InUse {
        image: String,
        sandboxes: Vec<String>,
    },
    #[error(
        "{0:?} is not a file or directory on the daemon's host (give an absolute \
         path to an OCI layout, OCI archive or docker-archive, or a registry reference)"
    )]
    NoSource(String),
}

/// What a sandbox runs on: its rootfs lower and, for imported images, the config.
#[derive(Clone, Debug, PartialEq)]
pub struct ResolvedImage {
    /// A directory (built-in busybox) or the image's erofs file.
    pub lower: PathBuf,
    /// Entrypoint, Cmd, Env, WorkingDir, User of an imported image.
    pub config: Option<ContainerConfig>,
}

impl From<PathBuf> for ResolvedImage {
    fn from(lower: PathBuf) -> ResolvedImage {
        ResolvedImage {
            lower,
            config: None,
        }
    }
}

/// `GET /v1/images/{name}`: the record plus the image config.
#[derive(Debug, Serialize)]
pub struct ImageDetails {
    #[serde(flatten)]
    pub record: ImageRecord,
    /// The filesystem image every sandbox of this image mounts.
    pub path: PathBuf,
    pub config: ImageConfig,
}

/// The image a sandbox named `name` runs: imported first, else built-in busybox.
pub fn resolve_for_run(name: &str) -> Result<ResolvedImage, SupervisorError> {
    if let Some(store) = existing_store()? {
        match store.resolve(name) {
            Ok(digest) => {
                let config = store.config(&digest).map_err(ImagesError::from)?;
                return Ok(ResolvedImage {
                    lower: store.image_path(&digest),
                    config: Some(config.config.unwrap_or_default()),
                });
            }
            Err(StoreError::NotFound(_)) => {}
            Err(e) => return Err(ImagesError::from(e).into()),
        }
    }
    resolve(name).map(ResolvedImage::from)
}

/// The store, when one exists (resolving never creates it: a host that never
/// imported an image may not be allowed to).
fn existing_store() -> Result<Option<Store>, ImagesError> {
    let dir = Store::default_dir();
    if !dir.join("images").is_dir() {
        return Ok(None);
    }
    Ok(Some(Store::open(&dir)?))
}

fn open_store() -> Result<Store, ImagesError> {
    Ok(Store::open(&Store::default_dir())?)
}

impl Supervisor {
    /// Imports from a path on this host (layout directory or archive) or a
    /// registry reference; the image's record (new, or already stored).
    pub fn image_import(&self, source: &str) -> Result<ImageRecord, SupervisorError> {
        let looks_like_path = source.starts_with(['/', '.']);
        if looks_like_path && !Path::new(source).exists() {
            return Err(ImagesError::NoSource(source.into()).into());
        }
        let store = open_store()?;
        image::import(&store, &Source::guess(source))
            .map_err(|e| ImagesError::Import(source.into(), e).into())
    }

    /// Every imported image, newest first.
    pub fn image_list(&self) -> Result<Vec<ImageRecord>, SupervisorError> {
        match existing_store()? {
            Some(store) => Ok(store.list().map_err(ImagesError::from)?),
            None => Ok(Vec::new()),
        }
    }

    /// One image by tag, digest or digest prefix.
    pub fn image_get(&self, name: &str) -> Result<ImageDetails, SupervisorError> {
        let store = existing_store()?.ok_or_else(|| not_found(name))?;
        let digest = store.resolve(name).map_err(ImagesError::from)?;
        Ok(ImageDetails {
            record: store.record(&digest).map_err(ImagesError::from)?,
            path: store.image_path(&digest),
            config: store.config(&digest).map_err(ImagesError::from)?,
        })
    }

    /// Removes an image no sandbox uses; the removed image's record.
    pub fn image_remove(&self, name: &str) -> Result<ImageRecord, SupervisorError> {
        let store = existing_store()?.ok_or_else(|| not_found(name))?;
        let digest = store.resolve(name).map_err(ImagesError::from)?;
        let record = store.record(&digest).map_err(ImagesError::from)?;
        let users = self.sandboxes_on(&store.image_path(&digest));
        if !users.is_empty() {
            return Err(ImagesError::InUse {
                image: name.into(),
                sandboxes: users,
            }
            .into());
        }
        store.remove(&digest).map_err(ImagesError::from)?;
        Ok(record)
    }

    /// Ids of the sandboxes whose rootfs lower is `image` (any state: docker
    /// keeps an image while a stopped container refers to it).
    fn sandboxes_on(&self, image: &Path) -> Vec<String> {
        self.list()
            .into_iter()
            .filter(|r| r.plan.container.rootfs.lower == image)
            .map(|r| r.id)
            .collect()
    }
}

fn not_found(name: &str) -> SupervisorError {
    ImagesError::Store(StoreError::NotFound(name.into())).into()
}

/// The built-in image's rootfs directory (`busybox` only).
pub fn resolve(name: &str) -> Result<PathBuf, SupervisorError> {
    if !BUSYBOX.contains(&name) {
        return Err(SupervisorError::UnknownImage(name.into()));
    }
    let path = busybox_rootfs();
    if path.join("bin/busybox").exists() {
        Ok(path)
    } else {
        Err(SupervisorError::ImageNotBuilt(
            name.into(),
            io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "{} has no bin/busybox — run `make rootfs` (resources/build-rootfs.sh) \
                     or set SPORE_BUSYBOX_ROOTFS",
                    path.display()
                ),
            ),
        ))
    }
}

/// Where the busybox tree is expected.
pub fn busybox_rootfs() -> PathBuf {
    if let Some(p) = std::env::var_os("SPORE_BUSYBOX_ROOTFS") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/spore, or target/<profile>/deps/<test> in unit tests.
    exe.ancestors()
        .skip(1)
        .map(|d| d.join("guest/rootfs"))
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("target/guest/rootfs"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_busybox_is_built_in() {
        assert!(matches!(
            resolve("alpine"),
            Err(SupervisorError::UnknownImage(n)) if n == "alpine"
        ));
        match resolve("busybox") {
            Ok(p) => assert!(p.join("bin/busybox").exists()),
            Err(e) => assert!(matches!(e, SupervisorError::ImageNotBuilt(..))),
        }
    }

    #[test]
    fn in_use_names_the_sandboxes() {
        let err = ImagesError::InUse {
            image: "twolayer".into(),
            sandboxes: vec!["abc".into(), "def".into()],
        };
        let text = err.to_string();
        assert!(
            text.contains("twolayer") && text.contains("abc, def"),
            "{text}"
        );
    }

    #[test]
    fn a_path_is_not_a_reference() {
        let sup = Supervisor::open(super::super::SupervisorConfig {
            run_dir: std::env::temp_dir().join(format!("spore-img-{}", std::process::id())),
            default_isolation: crate::backend::Isolation::Process,
            agent_pool: 0,
        })
        .unwrap();
        let err = sup.image_import("/nonexistent/image.tar").unwrap_err();
        assert!(
            matches!(err, SupervisorError::Images(ImagesError::NoSource(_))),
            "{err:?}"
        );
        let _ = std::fs::remove_dir_all(&sup.config.run_dir);
    }
}
