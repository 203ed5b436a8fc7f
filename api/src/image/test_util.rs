//! Test helpers shared by the image modules' unit tests: scratch directories and
//! small in-memory tar layers.

use std::fs;
use std::path::PathBuf;

use tar::EntryType;

/// A fresh, empty directory `spore-<area>-<name>-<pid>` in the temp dir.
pub fn scratch(area: &str, name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("spore-{area}-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// A GNU tar header owned by root with a fixed mtime.
pub fn header(kind: EntryType, size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_600_000_000);
    h
}

/// The bytes of a tar archive that `build` fills.
pub fn tar_of(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    build(&mut b);
    b.into_inner().unwrap()
}

/// Appends a regular file.
pub fn file(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8], mode: u32) {
    let mut h = header(EntryType::Regular, data.len() as u64, mode);
    b.append_data(&mut h, path, data).unwrap();
}
