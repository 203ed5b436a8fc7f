//! Content digests (`sha256:<64 hex digits>`) and a reader that verifies one while
//! the bytes stream through it.
//!
//! Owns digest parsing and checking only; where blobs come from is the sources' job.

use std::fmt;
use std::io::{self, Read};
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

/// Why a digest was refused.
#[derive(Debug, thiserror::Error)]
pub enum DigestError {
    #[error("malformed digest {0:?}: expected sha256:<64 lowercase hex digits>")]
    Malformed(String),
    #[error("digest mismatch: expected {expected}, content hashes to {actual}")]
    Mismatch { expected: Digest, actual: Digest },
    #[error("size mismatch for {digest}: descriptor says {expected} bytes, blob has {actual}")]
    Size {
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    #[error("blob {digest} is longer than its descriptor's {expected} bytes")]
    TooLong { digest: Digest, expected: u64 },
}

/// A sha256 content digest; the only algorithm spore accepts.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hex: String,
}

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest::from_hasher(Sha256::new_with_prefix(bytes))
    }

    fn from_hasher(hasher: Sha256) -> Digest {
        Digest {
            hex: to_hex(&hasher.finalize()),
        }
    }

    /// The 64 hex digits, without the algorithm; safe to use as a file name.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// `bytes` hash to this digest, or the mismatch.
    pub fn verify(&self, bytes: &[u8]) -> Result<(), DigestError> {
        let actual = Digest::of(bytes);
        if &actual == self {
            Ok(())
        } else {
            Err(DigestError::Mismatch {
                expected: self.clone(),
                actual,
            })
        }
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Digest, DigestError> {
        let hex = s
            .strip_prefix("sha256:")
            .ok_or_else(|| DigestError::Malformed(s.to_string()))?;
        let valid = hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !valid {
            return Err(DigestError::Malformed(s.to_string()));
        }
        Ok(Digest {
            hex: hex.to_string(),
        })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hashes everything read through it. At end of stream the content must hash to
/// `expected` (and be exactly `size` bytes when a size is known); a longer stream
/// fails as soon as it passes `size`, so a lying source cannot feed us forever.
pub struct VerifyingReader<R> {
    inner: R,
    hasher: Sha256,
    read: u64,
    expected: Digest,
    size: Option<u64>,
    verified: bool,
}

impl<R: Read> VerifyingReader<R> {
    pub fn new(inner: R, expected: Digest, size: Option<u64>) -> Self {
        VerifyingReader {
            inner,
            hasher: Sha256::new(),
            read: 0,
            expected,
            size,
            verified: false,
        }
    }

    /// Reads what is left and checks digest and size.
    pub fn finish(mut self) -> io::Result<()> {
        io::copy(&mut self, &mut io::sink())?;
        Ok(())
    }

    fn check_end(&mut self) -> Result<(), DigestError> {
        if let Some(expected) = self.size {
            if self.read != expected {
                return Err(DigestError::Size {
                    digest: self.expected.clone(),
                    expected,
                    actual: self.read,
                });
            }
        }
        let actual = Digest::from_hasher(std::mem::take(&mut self.hasher));
        if actual != self.expected {
            return Err(DigestError::Mismatch {
                expected: self.expected.clone(),
                actual,
            });
        }
        self.verified = true;
        Ok(())
    }
}

impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.verified || buf.is_empty() {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        if n == 0 {
            self.check_end().map_err(io::Error::other)?;
            return Ok(0);
        }
        self.read += n as u64;
        if let Some(expected) = self.size {
            if self.read > expected {
                return Err(io::Error::other(DigestError::TooLong {
                    digest: self.expected.clone(),
                    expected,
                }));
            }
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELLO: &str = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    #[test]
    fn parses_and_prints_sha256() {
        let d: Digest = HELLO.parse().unwrap();
        assert_eq!(d.to_string(), HELLO);
        assert_eq!(Digest::of(b"hello"), d);
    }

    #[test]
    fn refuses_other_algorithms_and_bad_hex() {
        for bad in [
            "sha512:00",
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
            "sha256:../../etc/passwd",
            "sha256:2CF24DBA5FB0A30E26E83B2AC5B9E29E1B161E5C1FA7425E73043362938B9824",
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn reader_accepts_matching_content() {
        let d: Digest = HELLO.parse().unwrap();
        let mut r = VerifyingReader::new(&b"hello"[..], d, Some(5));
        let mut out = String::new();
        r.read_to_string(&mut out).unwrap();
        assert_eq!(out, "hello");
    }

    #[test]
    fn reader_rejects_mismatch_short_and_long() {
        let d: Digest = HELLO.parse().unwrap();
        let err = VerifyingReader::new(&b"hellO"[..], d.clone(), Some(5))
            .finish()
            .unwrap_err();
        assert!(err.to_string().contains("digest mismatch"), "{err}");
        let err = VerifyingReader::new(&b"hell"[..], d.clone(), Some(5))
            .finish()
            .unwrap_err();
        assert!(err.to_string().contains("size mismatch"), "{err}");
        let err = VerifyingReader::new(&b"hello!"[..], d, Some(5))
            .finish()
            .unwrap_err();
        assert!(err.to_string().contains("longer"), "{err}");
    }
}
