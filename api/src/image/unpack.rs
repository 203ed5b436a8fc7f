//! One layer's byte stream: the blob (plain or gzip'd tar) verified against its
//! digest and size, decompressed within the byte budgets that stop decompression
//! bombs, its uncompressed form verified against the config's diff_id, and its
//! entries handed to `entries.rs`.
//!
//! Owns the readers' stacking and what their errors mean; which layers, from
//! where and in which order is the importer's job.

use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use flate2::bufread::MultiGzDecoder;

use super::digest::{Digest, DigestError, VerifyingReader};
use super::entries::{self, EntryError, LayerStats};
use super::limits::{BudgetReader, LimitError, Limits};

/// Why a layer could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("layer entry rejected")]
    Entry(#[from] EntryError),
    #[error("layer content does not match its digest")]
    Digest(#[from] DigestError),
    #[error("layer too large")]
    Limit(#[from] LimitError),
    #[error("corrupt or truncated layer data")]
    Corrupt(#[source] io::Error),
    #[error("unsupported layer compression (only tar and tar+gzip are)")]
    Compression,
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
            stats = entries::apply_entries(root, &mut diff, budget).map_err(|e| match e {
                EntryError::Read(e) => classify(e),
                EntryError::Limit(e) => UnpackError::Limit(e),
                other => UnpackError::Entry(other),
            })?;
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
    use std::fs;
    use std::path::PathBuf;

    use tar::EntryType;

    use super::*;
    use crate::image::test_util::{file, header, tar_of};

    fn scratch(name: &str) -> PathBuf {
        crate::image::test_util::scratch("unpack", name)
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
    fn zstd_layers_are_refused_clearly() {
        let root = scratch("zstd");
        let blob = [0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0, 0];
        let check = LayerCheck {
            blob: None,
            diff_id: None,
        };
        let err = apply_layer(
            &root,
            &blob[..],
            &check,
            &mut Budget::new(Limits::default()),
        );
        assert!(matches!(err, Err(UnpackError::Compression)), "{err:?}");
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
