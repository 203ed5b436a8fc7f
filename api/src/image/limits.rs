//! Limits on what an image may make spore read, unpack and store.
//!
//! Owns the numbers and a reader that enforces a byte budget; the code that reads
//! images decides which budget applies where.

use std::io::{self, Read};

/// Why a limit was hit.
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    #[error("{what} exceeds the limit of {limit} bytes")]
    Bytes { what: &'static str, limit: u64 },
    #[error("{what}: {count} is over the limit of {limit}")]
    Count {
        what: &'static str,
        count: u64,
        limit: u64,
    },
}

/// Upper bounds for one import. The defaults are generous for real images and
/// small enough that a hostile image cannot fill the host's disk or memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Layers in one image.
    pub max_layers: u64,
    /// Bytes of one manifest, index or config JSON document.
    pub max_json_bytes: u64,
    /// Bytes of one (compressed) blob as its descriptor states it.
    pub max_blob_bytes: u64,
    /// Unpacked bytes over all layers.
    pub max_unpacked_bytes: u64,
    /// Tar entries over all layers.
    pub max_entries: u64,
    /// Unpacked bytes may be at most this many times a layer's compressed size ...
    pub max_ratio: u64,
    /// ... unless they stay below this many bytes (small layers compress well).
    pub ratio_floor_bytes: u64,
    /// Bytes of a whole image archive (OCI archive or docker-archive).
    pub max_archive_bytes: u64,
    /// Bytes of one path inside a layer.
    pub max_path_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        const GIB: u64 = 1 << 30;
        Limits {
            max_layers: 128,
            max_json_bytes: 4 << 20,
            max_blob_bytes: 8 * GIB,
            max_unpacked_bytes: 16 * GIB,
            max_entries: 1_000_000,
            max_ratio: 100,
            ratio_floor_bytes: 256 << 20,
            max_archive_bytes: 16 * GIB,
            max_path_bytes: 4096,
        }
    }
}

impl Limits {
    /// The most a layer of `compressed` bytes may unpack to, before the overall budget.
    pub fn layer_budget(&self, compressed: u64) -> u64 {
        compressed
            .saturating_mul(self.max_ratio)
            .max(self.ratio_floor_bytes)
    }

    /// `count` of `what` is within `limit`.
    pub fn check_count(what: &'static str, count: u64, limit: u64) -> Result<(), LimitError> {
        if count > limit {
            return Err(LimitError::Count { what, count, limit });
        }
        Ok(())
    }
}

/// Passes at most `limit` bytes through; one more byte is an error (not a silent
/// truncation, which would hide a decompression bomb behind a corrupt-tar message).
pub struct BudgetReader<R> {
    inner: R,
    left: u64,
    limit: u64,
    what: &'static str,
}

impl<R: Read> BudgetReader<R> {
    pub fn new(inner: R, limit: u64, what: &'static str) -> Self {
        BudgetReader {
            inner,
            left: limit,
            limit,
            what,
        }
    }

    /// Bytes passed through so far.
    pub fn used(&self) -> u64 {
        self.limit - self.left
    }
}

impl<R: Read> Read for BudgetReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // Ask for one byte past the budget so that overrunning it is noticed.
        let want = buf
            .len()
            .min(usize::try_from(self.left + 1).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n as u64 > self.left {
            return Err(io::Error::other(LimitError::Bytes {
                what: self.what,
                limit: self.limit,
            }));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_reader_passes_exact_budget() {
        let mut out = Vec::new();
        let mut r = BudgetReader::new(&[7u8; 10][..], 10, "test");
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out.len(), 10);
        assert_eq!(r.used(), 10);
    }

    #[test]
    fn budget_reader_fails_one_byte_over() {
        let mut out = Vec::new();
        let err = BudgetReader::new(&[7u8; 11][..], 10, "layer")
            .read_to_end(&mut out)
            .unwrap_err();
        assert!(err.to_string().contains("layer exceeds"), "{err}");
    }

    #[test]
    fn layer_budget_uses_ratio_above_floor() {
        let limits = Limits {
            max_ratio: 10,
            ratio_floor_bytes: 100,
            ..Limits::default()
        };
        assert_eq!(limits.layer_budget(5), 100);
        assert_eq!(limits.layer_budget(50), 500);
        assert_eq!(limits.layer_budget(u64::MAX), u64::MAX);
    }

    #[test]
    fn counts_over_limit_fail() {
        assert!(Limits::check_count("layers", 128, 128).is_ok());
        let err = Limits::check_count("layers", 129, 128).unwrap_err();
        assert_eq!(err.to_string(), "layers: 129 is over the limit of 128");
    }
}
