//! Measures erofs against ext4 for a given tree: build time, image size, and the
//! time to read every file through a read-only loop mount, cold (the image file's
//! pages evicted) and warm. A benchmark's engine for `spore bench`, never a timed test.
//!
//! Measured on the development host (2 cores shared with other builds, virtio
//! disk, erofs-utils 1.5 uncompressed, e2fsprogs 1.47 without journal; the
//! `image_store` test `measure_erofs_vs_ext4` with `SPORE_MEASURE_DIR`):
//!
//! | tree                      | format | build   | image (allocated)   | read cold | warm   |
//! |---------------------------|--------|---------|---------------------|-----------|--------|
//! | busybox image, 3.8 MiB    | erofs  | 20 ms   | 1.9 MiB (1.9)       | 5 ms      | 0.9 ms |
//! |                           | ext4   | 44 ms   | 21.5 MiB (2.2)      | 6 ms      | 1.0 ms |
//! | python3.11, 1403 files    | erofs  | 127 ms  | 50.0 MiB (50.0)     | 233 ms    | 19 ms  |
//! | 49.8 MiB                  | ext4   | 231 ms  | 74.8 MiB (53.1)     | 179 ms    | 25 ms  |
//! | /usr/share, 45031 files   | erofs  | 2.8–5.5 s | 645.7 MiB (645.7) | 3.2–3.4 s | 388–408 ms |
//! | 639 MiB (two runs)        | ext4   | 40–41 s | 891.1 MiB (779.1)   | 7.1–9.6 s | 575–657 ms |
//!
//! erofs is the store format (`fsimage::STORE_FORMAT`): 2–14x faster to build, the
//! smallest image (ext4 needs a pre-sized, sparse file that a copy or a registry
//! of images would inflate), cold reads as fast or faster on many-file trees,
//! warm reads ~1.5x faster, and it is read-only by design: no journal, nothing a
//! guest could replay or a crashed mount could leave dirty.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::fsimage::{self, FsFormat, FsImageError};
use super::mount::{self, MountError};

/// Why a measurement failed.
#[derive(Debug, thiserror::Error)]
pub enum MeasureError {
    #[error("building the {0} image")]
    Build(&'static str, #[source] FsImageError),
    #[error("mounting the {0} image")]
    Mount(&'static str, #[source] MountError),
    #[error("reading {0:?}")]
    Io(PathBuf, #[source] io::Error),
}

/// One format's figures.
#[derive(Clone, Debug)]
pub struct Measurement {
    pub format: FsFormat,
    pub build: Duration,
    /// Apparent size of the image file.
    pub size: u64,
    /// Bytes the image really occupies (ext4 images are sparse).
    pub allocated: u64,
    /// Reading every file right after mounting, the image's pages evicted first.
    pub read_cold: Duration,
    /// The same again, from the page cache.
    pub read_warm: Duration,
    pub files: u64,
    pub bytes: u64,
}

impl Measurement {
    pub fn line(&self) -> String {
        format!(
            "{:<5} build {:>8.1} ms  size {:>8.1} MiB (allocated {:>8.1} MiB)  read cold {:>8.1} ms  warm {:>7.1} ms  ({} files, {:.1} MiB)",
            self.format.fstype(),
            self.build.as_secs_f64() * 1e3,
            self.size as f64 / (1 << 20) as f64,
            self.allocated as f64 / (1 << 20) as f64,
            self.read_cold.as_secs_f64() * 1e3,
            self.read_warm.as_secs_f64() * 1e3,
            self.files,
            self.bytes as f64 / (1 << 20) as f64,
        )
    }
}

/// Builds, mounts and reads both formats of `src`, using `work` for the images.
pub fn measure(src: &Path, work: &Path) -> Result<Vec<Measurement>, MeasureError> {
    [FsFormat::Erofs, FsFormat::Ext4]
        .into_iter()
        .map(|format| measure_one(format, src, work))
        .collect()
}

fn measure_one(format: FsFormat, src: &Path, work: &Path) -> Result<Measurement, MeasureError> {
    let name = format.fstype();
    let image = work.join(format!("measure.{name}"));
    let started = Instant::now();
    fsimage::build(format, src, &image).map_err(|e| MeasureError::Build(name, e))?;
    let build = started.elapsed();
    let meta = fs::metadata(&image).map_err(|e| MeasureError::Io(image.clone(), e))?;
    let size = meta.len();
    let allocated = std::os::unix::fs::MetadataExt::blocks(&meta) * 512;
    evict(&image)?;
    let mounted = mount::mount_readonly(&image).map_err(|e| MeasureError::Mount(name, e))?;
    let started = Instant::now();
    let (files, bytes) = read_tree(mounted.target())?;
    let read_cold = started.elapsed();
    let started = Instant::now();
    read_tree(mounted.target())?;
    let read_warm = started.elapsed();
    drop(mounted);
    let _ = fs::remove_file(&image);
    Ok(Measurement {
        format,
        build,
        size,
        allocated,
        read_cold,
        read_warm,
        files,
        bytes,
    })
}

/// Drops the image file's pages from the page cache (only this file's: the host
/// is shared, so no global drop_caches).
fn evict(image: &Path) -> Result<(), MeasureError> {
    let file = File::open(image).map_err(|e| MeasureError::Io(image.to_path_buf(), e))?;
    file.sync_all()
        .map_err(|e| MeasureError::Io(image.to_path_buf(), e))?;
    // SAFETY: `file` is an open descriptor for the duration of the call; fadvise
    // only drops clean cached pages and touches no memory of ours.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        return Err(MeasureError::Io(
            image.to_path_buf(),
            io::Error::from_raw_os_error(rc),
        ));
    }
    Ok(())
}

/// Reads every regular file under `dir`; returns (files, bytes).
pub fn read_tree(dir: &Path) -> Result<(u64, u64), MeasureError> {
    let (mut files, mut bytes) = (0, 0);
    let mut buf = vec![0u8; 128 << 10];
    let io_err = |p: &Path, e| MeasureError::Io(p.to_path_buf(), e);
    for entry in fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
        let entry = entry.map_err(|e| io_err(dir, e))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(|e| io_err(&path, e))?;
        if kind.is_dir() {
            let (f, b) = read_tree(&path)?;
            files += f;
            bytes += b;
        } else if kind.is_file() {
            let mut file = File::open(&path).map_err(|e| io_err(&path, e))?;
            loop {
                let n = file.read(&mut buf).map_err(|e| io_err(&path, e))?;
                if n == 0 {
                    break;
                }
                bytes += n as u64;
            }
            files += 1;
        }
    }
    Ok((files, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_tree_counts_files_and_bytes() {
        let dir = std::env::temp_dir().join(format!("spore-measure-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("a/b")).unwrap();
        fs::write(dir.join("a/one"), [1u8; 10]).unwrap();
        fs::write(dir.join("a/b/two"), [2u8; 5]).unwrap();
        std::os::unix::fs::symlink("one", dir.join("a/link")).unwrap();
        assert_eq!(read_tree(&dir).unwrap(), (2, 15));
        fs::remove_dir_all(&dir).unwrap();
    }
}
