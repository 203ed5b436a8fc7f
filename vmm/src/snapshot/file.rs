//! The template state file: a fixed header, then the `VmState` as JSON.
//!
//! ```text
//! offset  size  field
//!      0     8  magic "SPORESNP"
//!      8     4  format version, u32 little endian
//!     12     4  reserved, 0
//!     16     8  payload length in bytes, u64 little endian
//!     24     8  CRC-64/XZ of the payload, u64 little endian
//!     32     …  payload: `VmState` as JSON
//! ```
//!
//! Why JSON: the state is small (a few hundred KiB at most: per vCPU 4 KiB of XSAVE
//! and 1 KiB of LAPIC registers, which kvm-bindings serializes as byte arrays), it
//! is read once per template load, never per clone (clones get the state from
//! their template process), and serde_json is already a dependency. It also keeps
//! a template inspectable with `tail -c +33 state | jq`. The header is checked
//! before the payload is parsed, so a wrong file or an old format is refused with a
//! specific error instead of a parse error.
//!
//! Owns the encoding and the checks. Writing goes to a temporary file in the same
//! directory that is renamed over the target, so a crash never leaves a half file.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::crc64::crc64;
use super::{VmState, FORMAT_VERSION};

pub const MAGIC: [u8; 8] = *b"SPORESNP";
pub const HEADER_LEN: usize = 32;

/// Errors from saving or loading a template state file.
#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    #[error("cannot write template state {}", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read template state {}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("encoding the template state failed")]
    Encode(#[source] serde_json::Error),
    #[error("{} is not a spore template state file (it does not start with \"SPORESNP\")", .path.display())]
    BadMagic { path: PathBuf },
    #[error("{}: template was saved by format version {found}; this spore reads {expected} — recreate the template", .path.display())]
    Version {
        path: PathBuf,
        found: u32,
        expected: u32,
    },
    #[error("template state {} is truncated: {actual} bytes, {expected} expected — recreate the template", .path.display())]
    Truncated {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error("template state {} has {extra} bytes after its payload — recreate the template", .path.display())]
    TrailingBytes { path: PathBuf, extra: u64 },
    #[error("template state {} is corrupt: payload checksum {actual:#018x}, header says {expected:#018x} — recreate the template", .path.display())]
    Checksum {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error("template state {} does not decode — recreate the template", .path.display())]
    Decode {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("template state {}: header says format version {header}, payload says {payload} — recreate the template", .path.display())]
    VersionDisagrees {
        path: PathBuf,
        header: u32,
        payload: u32,
    },
}

/// The header for `payload`, saved by format version `version`.
fn header(version: u32, payload: &[u8]) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&version.to_le_bytes());
    h[16..24].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    h[24..32].copy_from_slice(&crc64(payload).to_le_bytes());
    h
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes(b.try_into().expect("4 bytes"))
}

fn le_u64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b.try_into().expect("8 bytes"))
}

/// Checks the header of `bytes` (a whole file) and returns its payload.
fn checked_payload<'a>(path: &Path, bytes: &'a [u8]) -> Result<&'a [u8], StateFileError> {
    let path = || path.to_owned();
    let prefix = bytes.len().min(MAGIC.len());
    if bytes[..prefix] != MAGIC[..prefix] {
        return Err(StateFileError::BadMagic { path: path() });
    }
    if bytes.len() < HEADER_LEN {
        return Err(StateFileError::Truncated {
            path: path(),
            expected: HEADER_LEN as u64,
            actual: bytes.len() as u64,
        });
    }
    let version = le_u32(&bytes[8..12]);
    if version != FORMAT_VERSION {
        return Err(StateFileError::Version {
            path: path(),
            found: version,
            expected: FORMAT_VERSION,
        });
    }
    let len = le_u64(&bytes[16..24]);
    let payload = &bytes[HEADER_LEN..];
    let actual = payload.len() as u64;
    if actual < len {
        return Err(StateFileError::Truncated {
            path: path(),
            expected: HEADER_LEN as u64 + len,
            actual: bytes.len() as u64,
        });
    }
    if actual > len {
        return Err(StateFileError::TrailingBytes {
            path: path(),
            extra: actual - len,
        });
    }
    let expected = le_u64(&bytes[24..32]);
    let sum = crc64(payload);
    if sum != expected {
        return Err(StateFileError::Checksum {
            path: path(),
            expected,
            actual: sum,
        });
    }
    Ok(payload)
}

/// Runs `write` on a temporary file in the same directory as `path`, then syncs it
/// and renames it over `path`.
/// Shared with the memory file.
pub(super) fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut File) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = PathBuf::from(tmp_name);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        write(&mut file)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // Make the rename itself durable.
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

impl VmState {
    /// Writes the state to `path` (replacing it atomically), under the header
    /// version `self.format_version`.
    pub fn save(&self, path: &Path) -> Result<(), StateFileError> {
        let payload = serde_json::to_vec(self).map_err(StateFileError::Encode)?;
        let head = header(self.format_version, &payload);
        write_atomically(path, |f| {
            f.write_all(&head)?;
            f.write_all(&payload)
        })
        .map_err(|source| StateFileError::Write {
            path: path.to_owned(),
            source,
        })
    }

    /// Reads a state saved by `save`, refusing a file that is not one, is of
    /// another format version, is truncated or fails its checksum.
    pub fn load(path: &Path) -> Result<VmState, StateFileError> {
        let bytes = std::fs::read(path).map_err(|source| StateFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        let payload = checked_payload(path, &bytes)?;
        let state: VmState =
            serde_json::from_slice(payload).map_err(|source| StateFileError::Decode {
                path: path.to_owned(),
                source,
            })?;
        if state.format_version != FORMAT_VERSION {
            return Err(StateFileError::VersionDisagrees {
                path: path.to_owned(),
                header: FORMAT_VERSION,
                payload: state.format_version,
            });
        }
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use vmm_sys_util::tempdir::TempDir;

    use super::*;
    use crate::snapshot::{MemoryLayout, MemoryRegion};

    fn sample() -> VmState {
        let mut s = VmState {
            format_version: FORMAT_VERSION,
            vcpus: vec![Default::default()],
            ..Default::default()
        };
        s.vcpus[0].regs.rip = 0xfff0;
        s.memory = MemoryLayout {
            regions: vec![MemoryRegion {
                guest_addr: 0,
                size: 1 << 20,
                file_offset: 0,
            }],
        };
        s
    }

    fn saved() -> (TempDir, PathBuf) {
        let dir = TempDir::new().unwrap();
        let path = dir.as_path().join("state");
        sample().save(&path).unwrap();
        (dir, path)
    }

    /// Rewrites the file at `path` through `edit`.
    fn edit(path: &Path, edit: impl FnOnce(&mut Vec<u8>)) {
        let mut bytes = std::fs::read(path).unwrap();
        edit(&mut bytes);
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn round_trip_writes_header_and_no_leftovers() {
        let (dir, path) = saved();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"SPORESNP");
        assert_eq!(le_u32(&bytes[8..12]), FORMAT_VERSION);
        assert_eq!(le_u64(&bytes[16..24]), (bytes.len() - HEADER_LEN) as u64);
        let back = VmState::load(&path).unwrap();
        assert_eq!(back.vcpus[0].regs.rip, 0xfff0);
        assert_eq!(back.memory, sample().memory);
        let names: Vec<_> = std::fs::read_dir(dir.as_path()).unwrap().collect();
        assert_eq!(names.len(), 1, "the temporary file was renamed away");
        // Saving again replaces the file.
        let mut other = sample();
        other.vcpus[0].regs.rip = 0x1000;
        other.save(&path).unwrap();
        assert_eq!(VmState::load(&path).unwrap().vcpus[0].regs.rip, 0x1000);
    }

    #[test]
    fn refuses_a_file_that_is_not_a_template() {
        let (_dir, path) = saved();
        edit(&path, |b| b[0] = b'X');
        let err = VmState::load(&path).unwrap_err();
        assert!(matches!(err, StateFileError::BadMagic { .. }), "{err:?}");
        std::fs::write(&path, b"{}").unwrap();
        let err = VmState::load(&path).unwrap_err();
        assert!(matches!(err, StateFileError::BadMagic { .. }), "{err:?}");
    }

    #[test]
    fn refuses_another_format_version_with_advice() {
        let (_dir, path) = saved();
        let mut old = sample();
        old.format_version = FORMAT_VERSION + 6;
        old.save(&path).unwrap();
        let err = VmState::load(&path).unwrap_err();
        let StateFileError::Version {
            found, expected, ..
        } = err
        else {
            panic!("not a version error: {err:?}");
        };
        assert_eq!((found, expected), (FORMAT_VERSION + 6, FORMAT_VERSION));
        let msg = VmState::load(&path).unwrap_err().to_string();
        let want = format!(
            "template was saved by format version {}; this spore reads {} — recreate the template",
            FORMAT_VERSION + 6,
            FORMAT_VERSION
        );
        assert!(msg.contains(&want), "{msg}");
    }

    #[test]
    fn refuses_a_truncated_file() {
        let (_dir, path) = saved();
        let full = std::fs::metadata(&path).unwrap().len();
        edit(&path, |b| b.truncate(b.len() - 10));
        let err = VmState::load(&path).unwrap_err();
        let StateFileError::Truncated {
            expected, actual, ..
        } = err
        else {
            panic!("not a truncation: {err:?}");
        };
        assert_eq!((expected, actual), (full, full - 10));
        edit(&path, |b| b.truncate(20));
        assert!(matches!(
            VmState::load(&path).unwrap_err(),
            StateFileError::Truncated {
                expected: 32,
                actual: 20,
                ..
            }
        ));
        let (_dir2, path2) = saved();
        edit(&path2, |b| b.extend_from_slice(b"  "));
        assert!(matches!(
            VmState::load(&path2).unwrap_err(),
            StateFileError::TrailingBytes { extra: 2, .. }
        ));
    }

    #[test]
    fn refuses_a_corrupt_payload() {
        let (_dir, path) = saved();
        edit(&path, |b| {
            let i = b.len() - 5;
            b[i] ^= 0x01;
        });
        let err = VmState::load(&path).unwrap_err();
        assert!(matches!(err, StateFileError::Checksum { .. }), "{err:?}");
        assert!(err.to_string().contains("recreate the template"));
    }

    #[test]
    fn refuses_a_valid_frame_around_a_bad_payload() {
        let (_dir, path) = saved();
        let payload = b"{\"format_version\": 1}";
        let mut bytes = header(FORMAT_VERSION, payload).to_vec();
        bytes.extend_from_slice(payload);
        std::fs::write(&path, bytes).unwrap();
        assert!(matches!(
            VmState::load(&path).unwrap_err(),
            StateFileError::Decode { .. }
        ));
        let mut other = sample();
        other.format_version = FORMAT_VERSION + 1;
        let payload = serde_json::to_vec(&other).unwrap();
        let mut bytes = header(FORMAT_VERSION, &payload).to_vec();
        bytes.extend_from_slice(&payload);
        std::fs::write(&path, bytes).unwrap();
        assert!(matches!(
            VmState::load(&path).unwrap_err(),
            StateFileError::VersionDisagrees { .. }
        ));
    }

    #[test]
    fn a_missing_file_names_its_path() {
        let err = VmState::load(Path::new("/nonexistent/spore/state")).unwrap_err();
        assert!(matches!(err, StateFileError::Read { .. }));
        assert!(err.to_string().contains("/nonexistent/spore/state"));
    }
}
