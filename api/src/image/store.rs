//! The image store on disk: one directory per image, named by the config digest
//! (docker's image id, the same whichever format the image came in):
//!
//! ```text
//! <root>/images/<hex>/rootfs.erofs   read-only filesystem image (loop/virtio-blk)
//!                    /config.json    the image config, verbatim
//!                    /manifest.json  the manifest, when the source had one
//!                    /image.json     spore's record (tags, sizes, when imported)
//! <root>/tmp/<pid>-<n>/              staging; renamed into images/ when complete
//! ```
//!
//! Owns naming, listing, removal and the atomic commit; what goes into a staging
//! directory is `import.rs`'s job.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::digest::{Digest, DigestError};
use super::fsimage::STORE_FORMAT;
use super::limits::Limits;
use super::spec::{self, ImageConfig, SpecError};

/// Where the store lives unless `$SPORE_IMAGE_DIR` says otherwise.
pub const DEFAULT_DIR: &str = "/var/lib/spore/images";
pub const ENV_DIR: &str = "SPORE_IMAGE_DIR";
const RECORD: &str = "image.json";
const CONFIG: &str = "config.json";
const MANIFEST: &str = "manifest.json";

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot use image store at {0:?}")]
    Io(PathBuf, #[source] io::Error),
    #[error("no image {0:?} in the store — see `spore image ls`")]
    NotFound(String),
    #[error("{0:?} matches more than one image; give more of the digest")]
    Ambiguous(String),
    #[error("store entry {0:?} is damaged")]
    Damaged(PathBuf, #[source] SpecError),
    #[error("bad digest")]
    Digest(#[from] DigestError),
}

/// What the store knows about one image (`image.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The config digest: the image's id.
    pub digest: String,
    #[serde(default)]
    pub manifest_digest: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    /// `erofs` or `ext4`.
    pub format: String,
    /// Bytes of the filesystem image.
    pub size: u64,
    pub layers: usize,
    /// Unix seconds.
    pub imported: u64,
    /// Where it came from (a path or a registry reference).
    pub source: String,
}

/// The store rooted at one directory.
pub struct Store {
    root: PathBuf,
    limits: Limits,
}

impl Store {
    /// `$SPORE_IMAGE_DIR`, else `/var/lib/spore/images`.
    pub fn default_dir() -> PathBuf {
        std::env::var_os(ENV_DIR)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DIR))
    }

    /// Opens (creating, mode 0700) the store at `root`, and clears staging
    /// directories left by imports whose process is gone.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        for dir in [root.to_path_buf(), root.join("images"), root.join("tmp")] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(|e| StoreError::Io(dir.clone(), e))?;
        }
        let store = Store {
            root: root.to_path_buf(),
            limits: Limits::default(),
        };
        store.clear_stale_staging();
        Ok(store)
    }

    pub fn with_limits(mut self, limits: Limits) -> Store {
        self.limits = limits;
        self
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn dir(&self, digest: &Digest) -> PathBuf {
        self.root.join("images").join(digest.hex())
    }

    /// The read-only filesystem image of `digest` (present or not).
    pub fn image_path(&self, digest: &Digest) -> PathBuf {
        self.dir(digest)
            .join(format!("rootfs.{}", STORE_FORMAT.fstype()))
    }

    pub fn contains(&self, digest: &Digest) -> bool {
        self.dir(digest).join(RECORD).is_file()
    }

    /// The image's config, parsed.
    pub fn config(&self, digest: &Digest) -> Result<ImageConfig, StoreError> {
        let path = self.dir(digest).join(CONFIG);
        let bytes = fs::read(&path).map_err(|e| self.read_err(digest, path.clone(), e))?;
        spec::parse_json("image config", &bytes, self.limits.max_json_bytes)
            .map_err(|e| StoreError::Damaged(path, e))
    }

    pub fn record(&self, digest: &Digest) -> Result<ImageRecord, StoreError> {
        let path = self.dir(digest).join(RECORD);
        let bytes = fs::read(&path).map_err(|e| self.read_err(digest, path.clone(), e))?;
        spec::parse_json("image record", &bytes, self.limits.max_json_bytes)
            .map_err(|e| StoreError::Damaged(path, e))
    }

    fn read_err(&self, digest: &Digest, path: PathBuf, e: io::Error) -> StoreError {
        match e.kind() {
            io::ErrorKind::NotFound => StoreError::NotFound(digest.to_string()),
            _ => StoreError::Io(path, e),
        }
    }

    /// Every complete image, newest first.
    pub fn list(&self) -> Result<Vec<ImageRecord>, StoreError> {
        let images = self.root.join("images");
        let mut out = Vec::new();
        for entry in fs::read_dir(&images).map_err(|e| StoreError::Io(images.clone(), e))? {
            let entry = entry.map_err(|e| StoreError::Io(images.clone(), e))?;
            let Ok(digest) = format!("sha256:{}", entry.file_name().to_string_lossy()).parse()
            else {
                continue;
            };
            match self.record(&digest) {
                Ok(record) => out.push(record),
                Err(StoreError::NotFound(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| b.imported.cmp(&a.imported).then(a.digest.cmp(&b.digest)));
        Ok(out)
    }

    /// A full digest, a unique hex prefix (at least 4 digits, `sha256:` optional)
    /// or a tag (`busybox:latest`; `busybox` means `busybox:latest`).
    pub fn resolve(&self, name: &str) -> Result<Digest, StoreError> {
        let records = self.list()?;
        let last = name.rsplit('/').next().unwrap_or(name);
        let with_latest = if last.contains([':', '@']) {
            name.to_string()
        } else {
            format!("{name}:latest")
        };
        if let Some(r) = records
            .iter()
            .find(|r| r.tags.iter().any(|t| *t == name || *t == with_latest))
        {
            return Ok(r.digest.parse()?);
        }
        let hex = name.strip_prefix("sha256:").unwrap_or(name);
        let is_hex = hex.len() >= 4 && hex.bytes().all(|b| b.is_ascii_hexdigit());
        let matches: Vec<&ImageRecord> = records
            .iter()
            .filter(|r| is_hex && r.digest["sha256:".len()..].starts_with(hex))
            .collect();
        match matches.as_slice() {
            [one] => Ok(one.digest.parse()?),
            [] => Err(StoreError::NotFound(name.to_string())),
            _ => Err(StoreError::Ambiguous(name.to_string())),
        }
    }

    /// Removes an image. Sandboxes that have it mounted keep their open file.
    pub fn remove(&self, digest: &Digest) -> Result<(), StoreError> {
        if !self.contains(digest) {
            return Err(StoreError::NotFound(digest.to_string()));
        }
        // Rename first, so the image vanishes at once and never half-deleted.
        let doomed = self.staging_path("rm");
        fs::rename(self.dir(digest), &doomed).map_err(|e| StoreError::Io(self.dir(digest), e))?;
        fs::remove_dir_all(&doomed).map_err(|e| StoreError::Io(doomed, e))
    }

    /// A fresh, empty staging directory on the store's filesystem.
    pub fn staging(&self) -> Result<Staging, StoreError> {
        let path = self.staging_path("import");
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|e| StoreError::Io(path.clone(), e))?;
        Ok(Staging { path })
    }

    fn staging_path(&self, what: &str) -> PathBuf {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        self.root
            .join("tmp")
            .join(format!("{}-{n}-{what}", std::process::id()))
    }

    /// Moves a complete image directory (`rootfs.*`, `config.json`, …) into place
    /// in one rename, and takes its tags away from older images. Returns false when
    /// the image was already there (another import won; the staged copy is dropped).
    pub fn commit(&self, staged: &Path, record: &ImageRecord) -> Result<bool, StoreError> {
        let digest: Digest = record.digest.parse()?;
        write_json(&staged.join(RECORD), record)?;
        let dest = self.dir(&digest);
        let added = match fs::rename(staged, &dest) {
            Ok(()) => true,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EEXIST | libc::ENOTEMPTY)) => {
                self.add_tags(&digest, &record.tags)?;
                false
            }
            Err(e) => return Err(StoreError::Io(dest, e)),
        };
        self.untag_others(&digest, &record.tags)?;
        Ok(added)
    }

    /// Adds names to an image already in the store.
    pub fn add_tags(&self, digest: &Digest, tags: &[String]) -> Result<(), StoreError> {
        let mut record = self.record(digest)?;
        for tag in tags {
            if !record.tags.contains(tag) {
                record.tags.push(tag.clone());
            }
        }
        self.write_record(&record)?;
        self.untag_others(digest, tags)
    }

    fn untag_others(&self, digest: &Digest, tags: &[String]) -> Result<(), StoreError> {
        for mut other in self.list()? {
            if other.digest == digest.to_string() || !other.tags.iter().any(|t| tags.contains(t)) {
                continue;
            }
            other.tags.retain(|t| !tags.contains(t));
            self.write_record(&other)?;
        }
        Ok(())
    }

    fn write_record(&self, record: &ImageRecord) -> Result<(), StoreError> {
        let digest: Digest = record.digest.parse()?;
        write_json(&self.dir(&digest).join(RECORD), record)
    }

    fn clear_stale_staging(&self) {
        let Ok(entries) = fs::read_dir(self.root.join("tmp")) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let pid = name.split('-').next().unwrap_or("");
            let alive = !pid.is_empty() && Path::new("/proc").join(pid).exists();
            if !alive {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
}

/// Writes `value` as JSON via a temp file and a rename: readers see the old or the
/// new document, never half of one.
pub fn write_json(path: &Path, value: &impl Serialize) -> Result<(), StoreError> {
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(value).expect("records always serialize");
    fs::write(&tmp, bytes).map_err(|e| StoreError::Io(tmp.clone(), e))?;
    fs::rename(&tmp, path).map_err(|e| StoreError::Io(path.to_path_buf(), e))
}

/// A staging directory, removed on drop unless committed (renamed away).
pub struct Staging {
    path: PathBuf,
}

impl Staging {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if fs::symlink_metadata(&self.path).is_ok() {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// Bytes a file really occupies on disk (sparse files count their blocks only).
pub fn allocated_bytes(path: &Path) -> io::Result<u64> {
    Ok(fs::metadata(path)?.blocks() * 512)
}

/// Writes the files an image directory holds besides its filesystem image.
pub fn write_documents(
    dir: &Path,
    config: &[u8],
    manifest: Option<&[u8]>,
) -> Result<(), StoreError> {
    fs::write(dir.join(CONFIG), config).map_err(|e| StoreError::Io(dir.join(CONFIG), e))?;
    if let Some(manifest) = manifest {
        fs::write(dir.join(MANIFEST), manifest)
            .map_err(|e| StoreError::Io(dir.join(MANIFEST), e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("spore-store-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn fake_image(store: &Store, content: &str, tags: &[&str]) -> Digest {
        let staging = store.staging().unwrap();
        let config = format!(r#"{{"rootfs":{{"type":"layers","diff_ids":[]}},"x":"{content}"}}"#);
        let digest = Digest::of(config.as_bytes());
        write_documents(staging.path(), config.as_bytes(), None).unwrap();
        fs::write(staging.path().join("rootfs.erofs"), b"fs").unwrap();
        let record = ImageRecord {
            digest: digest.to_string(),
            manifest_digest: None,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            format: "erofs".into(),
            size: 2,
            layers: 0,
            imported: 1,
            source: "test".into(),
        };
        assert!(store.commit(staging.path(), &record).unwrap());
        digest
    }

    #[test]
    fn commit_list_resolve_remove() {
        let root = scratch("crud");
        let store = Store::open(&root).unwrap();
        let a = fake_image(&store, "a", &["app:1"]);
        let b = fake_image(&store, "b", &["app:1", "other"]);
        assert_eq!(store.list().unwrap().len(), 2);
        // The tag moved to the newer image.
        assert_eq!(store.resolve("app:1").unwrap(), b);
        assert_eq!(store.resolve("other").unwrap(), b);
        assert!(store.record(&a).unwrap().tags.is_empty());
        assert_eq!(store.resolve(&a.hex()[..12]).unwrap(), a);
        assert_eq!(store.resolve(&a.to_string()).unwrap(), a);
        assert!(matches!(
            store.resolve("nope"),
            Err(StoreError::NotFound(_))
        ));
        let c = fake_image(&store, "c", &["localhost:5000/app:latest"]);
        assert_eq!(store.resolve("localhost:5000/app").unwrap(), c);
        assert!(store.image_path(&a).is_file());
        assert!(store.config(&a).unwrap().rootfs.diff_ids.is_empty());
        store.remove(&a).unwrap();
        assert!(!store.contains(&a));
        assert!(matches!(store.remove(&a), Err(StoreError::NotFound(_))));
        assert_eq!(fs::read_dir(root.join("tmp")).unwrap().count(), 0);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn staging_is_removed_when_dropped_and_stale_ones_on_open() {
        let root = scratch("staging");
        let store = Store::open(&root).unwrap();
        let path = {
            let staging = store.staging().unwrap();
            fs::write(staging.path().join("half"), b"x").unwrap();
            staging.path().to_path_buf()
        };
        assert!(!path.exists());
        fs::create_dir_all(root.join("tmp/999999999-0-import")).unwrap();
        Store::open(&root).unwrap();
        assert!(!root.join("tmp/999999999-0-import").exists());
        fs::remove_dir_all(&root).unwrap();
    }
}
