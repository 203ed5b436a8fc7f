//! The template's memory file: a sparse copy of the guest RAM memfd, and opening it
//! again for clones to map `MAP_PRIVATE` (sharing the host page cache).
//!
//! Owns the copy and its checks. Mapping the file is the memory module's business
//! (`GuestRam::from_memfd_private` takes the `File` this returns).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::file::write_atomically;
use super::MemoryLayout;

const PAGE: usize = 4096;
/// Compared against with memcmp, which is much faster than a byte loop.
static ZERO_PAGE: [u8; PAGE] = [0; PAGE];
/// The copy reads this much at a time.
const CHUNK: usize = 1 << 20;

/// Errors from saving or opening a memory file.
#[derive(Debug, thiserror::Error)]
pub enum MemoryFileError {
    #[error("cannot read the guest memory to save it")]
    ReadMemory(#[source] io::Error),
    #[error("cannot write memory file {}", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot open memory file {}", .path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("memory file {} is not a regular file", .path.display())]
    NotAFile { path: PathBuf },
    #[error("memory file {} is {actual} bytes; the template's memory needs {expected} — recreate the template", .path.display())]
    Truncated {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
}

/// Where the next data run of `file` at or after `offset` starts, and where it
/// ends (SEEK_DATA / SEEK_HOLE); `None` past the last one. Filesystems without
/// hole reporting show the whole file as one run. Moves `file`'s offset.
fn next_data(file: &File, offset: u64, size: u64) -> io::Result<Option<(u64, u64)>> {
    let seek = |from: u64, whence: i32| -> io::Result<Option<u64>> {
        let from = libc::off_t::try_from(from)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: lseek on an fd we own only moves its file offset; no memory is
        // touched.
        let at = unsafe { libc::lseek(file.as_raw_fd(), from, whence) };
        if at >= 0 {
            return Ok(Some(at as u64));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            // No data at or after `from`.
            Some(libc::ENXIO) => Ok(None),
            _ => Err(e),
        }
    };
    if offset >= size {
        return Ok(None);
    }
    let start = match seek(offset, libc::SEEK_DATA) {
        Ok(Some(start)) => start,
        Ok(None) => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(Some((offset, size))),
        Err(e) => return Err(e),
    };
    let end = seek(start, libc::SEEK_HOLE)?.unwrap_or(size).min(size);
    Ok(Some((start, end)))
}

/// Copies the non-zero pages of `buf` (file bytes from `at`) into `out` at the same
/// offsets, one write per run of consecutive non-zero pages.
fn write_nonzero_pages(out: &File, buf: &[u8], at: u64) -> io::Result<u64> {
    let mut written = 0;
    let mut run: Option<usize> = None;
    for (i, page) in buf.chunks(PAGE).enumerate() {
        let zero = page == &ZERO_PAGE[..page.len()];
        match (zero, run) {
            (false, None) => run = Some(i * PAGE),
            (true, Some(start)) => {
                out.write_all_at(&buf[start..i * PAGE], at + start as u64)?;
                written += (i * PAGE - start) as u64;
                run = None;
            }
            _ => {}
        }
    }
    if let Some(start) = run {
        out.write_all_at(&buf[start..], at + start as u64)?;
        written += (buf.len() - start) as u64;
    }
    Ok(written)
}

/// Writes a sparse copy of `memfd` to `path` (atomically replacing it): holes of
/// the memfd and all-zero pages become holes of the file, so the file occupies
/// about what the guest wrote. Returns the bytes of data written. The memfd's
/// file offset is moved; its contents and mappings are not touched.
pub fn save_memory(memfd: &File, path: &Path) -> Result<u64, MemoryFileError> {
    let size = memfd.metadata().map_err(MemoryFileError::ReadMemory)?.len();
    let write_err = |source| MemoryFileError::Write {
        path: path.to_owned(),
        source,
    };
    let mut read_err = None;
    let mut data = 0;
    write_atomically(path, |out| {
        out.set_len(size)?;
        let mut buf = vec![0u8; CHUNK];
        let mut offset = 0;
        loop {
            let run = next_data(memfd, offset, size).map_err(|e| read_err.insert(e).kind())?;
            let Some((start, end)) = run else {
                return Ok(());
            };
            let mut at = start;
            while at < end {
                let n = CHUNK.min((end - at) as usize);
                memfd
                    .read_exact_at(&mut buf[..n], at)
                    .map_err(|e| read_err.insert(e).kind())?;
                data += write_nonzero_pages(out, &buf[..n], at)?;
                at += n as u64;
            }
            offset = end;
        }
    })
    .map_err(|e| match read_err.take() {
        Some(read) => MemoryFileError::ReadMemory(read),
        None => write_err(e),
    })?;
    Ok(data)
}

/// Opens a memory file saved by `save_memory` for clones to map `MAP_PRIVATE`
/// (read-only: a private mapping never writes back), after checking it holds
/// every region of `layout`.
pub fn load_memory(path: &Path, layout: &MemoryLayout) -> Result<File, MemoryFileError> {
    let file = File::open(path).map_err(|source| MemoryFileError::Open {
        path: path.to_owned(),
        source,
    })?;
    let meta = file.metadata().map_err(|source| MemoryFileError::Open {
        path: path.to_owned(),
        source,
    })?;
    if !meta.is_file() {
        return Err(MemoryFileError::NotAFile {
            path: path.to_owned(),
        });
    }
    let expected = layout.file_size();
    if meta.len() < expected {
        return Err(MemoryFileError::Truncated {
            path: path.to_owned(),
            expected,
            actual: meta.len(),
        });
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use std::os::fd::FromRawFd;
    use std::os::unix::fs::MetadataExt;

    use vm_memory::{FileOffset, MmapRegion};
    use vmm_sys_util::tempdir::TempDir;

    use super::*;
    use crate::snapshot::MemoryRegion;

    const SIZE: u64 = 64 << 20;

    fn memfd(size: u64) -> File {
        // SAFETY: the name is a NUL-terminated string; memfd_create does not keep it.
        let fd = unsafe { libc::memfd_create(c"spore-test-ram".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0, "memfd_create: {}", io::Error::last_os_error());
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(size).unwrap();
        file
    }

    fn layout(size: u64) -> MemoryLayout {
        MemoryLayout {
            regions: vec![MemoryRegion {
                guest_addr: 0,
                size,
                file_offset: 0,
            }],
        }
    }

    /// A mostly empty guest: a few written pages, and a page written with zeros.
    fn guest() -> File {
        let ram = memfd(SIZE);
        ram.write_all_at(&[0xaa; 3 * PAGE], 0x10_0000).unwrap();
        ram.write_all_at(b"counter", 0x200_0123).unwrap();
        ram.write_all_at(&[0u8; PAGE], 0x300_0000).unwrap();
        ram.write_all_at(&[0x55; 16], SIZE - 16).unwrap();
        ram
    }

    #[test]
    fn saved_memory_is_sparse_and_identical() {
        let dir = TempDir::new().unwrap();
        let path = dir.as_path().join("memory");
        let ram = guest();
        let data = save_memory(&ram, &path).unwrap();
        assert_eq!(
            data,
            5 * PAGE as u64,
            "three 0xaa pages, the counter's, the last"
        );
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), SIZE);
        let allocated = meta.blocks() * 512;
        assert!(
            allocated <= 1 << 20,
            "{allocated} bytes allocated for {SIZE}"
        );
        let file = load_memory(&path, &layout(SIZE)).unwrap();
        let (mut a, mut b) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
        for at in (0..SIZE).step_by(CHUNK) {
            ram.read_exact_at(&mut a, at).unwrap();
            file.read_exact_at(&mut b, at).unwrap();
            assert!(a == b, "memory differs in the MiB at {at:#x}");
        }
    }

    #[test]
    fn loaded_memory_maps_private_without_writing_back() {
        let dir = TempDir::new().unwrap();
        let path = dir.as_path().join("memory");
        save_memory(&guest(), &path).unwrap();
        let file = load_memory(&path, &layout(SIZE)).unwrap();
        let region = MmapRegion::<()>::build(
            Some(FileOffset::new(file, 0)),
            SIZE as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_NORESERVE,
        )
        .unwrap();
        let mem =
            vm_memory::GuestMemoryMmap::<()>::from_regions(vec![vm_memory::GuestRegionMmap::new(
                region,
                vm_memory::GuestAddress(0),
            )
            .unwrap()])
            .unwrap();
        use vm_memory::Bytes;
        let at = vm_memory::GuestAddress(0x200_0123);
        let mut word = [0u8; 7];
        mem.read_slice(&mut word, at).unwrap();
        assert_eq!(&word, b"counter");
        mem.write_slice(b"clone!!", at).unwrap();
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(&on_disk[0x200_0123..0x200_012a], b"counter");
    }

    #[test]
    fn an_empty_memfd_saves_as_a_hole() {
        let dir = TempDir::new().unwrap();
        let path = dir.as_path().join("memory");
        assert_eq!(save_memory(&memfd(SIZE), &path).unwrap(), 0);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!((meta.len(), meta.blocks()), (SIZE, 0));
    }

    #[test]
    fn load_refuses_a_truncated_or_missing_file() {
        let dir = TempDir::new().unwrap();
        let path = dir.as_path().join("memory");
        save_memory(&guest(), &path).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(SIZE / 2)
            .unwrap();
        let err = load_memory(&path, &layout(SIZE)).unwrap_err();
        assert!(
            matches!(err, MemoryFileError::Truncated { expected: SIZE, actual, .. } if actual == SIZE / 2),
            "{err:?}"
        );
        assert!(err.to_string().contains("recreate the template"));
        let missing = load_memory(&dir.as_path().join("nope"), &layout(SIZE)).unwrap_err();
        assert!(matches!(missing, MemoryFileError::Open { .. }));
        let dir_err = load_memory(dir.as_path(), &layout(0)).unwrap_err();
        assert!(matches!(dir_err, MemoryFileError::NotAFile { .. }));
    }

    #[test]
    fn zero_pages_inside_data_are_skipped() {
        let out_dir = TempDir::new().unwrap();
        let out = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(out_dir.as_path().join("o"))
            .unwrap();
        let mut buf = vec![0u8; 4 * PAGE];
        buf[PAGE] = 1;
        buf[3 * PAGE + 5] = 2;
        assert_eq!(
            write_nonzero_pages(&out, &buf, 0x1000).unwrap(),
            2 * PAGE as u64
        );
        let mut got = [0u8; 1];
        out.read_exact_at(&mut got, 0x1000 + 3 * PAGE as u64 + 5)
            .unwrap();
        assert_eq!(got, [2]);
    }
}
