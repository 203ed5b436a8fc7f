//! One virtio-blk request: parse the header, move the data between guest memory and
//! the backing file, write the status byte (virtio 1.2 section 5.2.6).
//!
//! Owns the backing file (`Disk`). Queue handling and interrupts are in `device.rs`.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use virtio_queue::{DescriptorChain, Reader, Writer};
use vm_memory::GuestMemoryMmap;

// Request types, 5.2.6 "Device Operation".
pub const VIRTIO_BLK_T_IN: u32 = 0;
pub const VIRTIO_BLK_T_OUT: u32 = 1;
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;
// Status values, 5.2.6.
pub const VIRTIO_BLK_S_OK: u8 = 0;
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

pub const SECTOR_SIZE: u64 = 512;
/// GET_ID answers with up to 20 bytes (VIRTIO_BLK_ID_BYTES, 5.2.6).
const ID_BYTES: usize = 20;
/// Data moves through a bounce buffer this big, so a huge request allocates little.
const CHUNK: usize = 64 * 1024;
/// `struct virtio_blk_req` header: type, reserved, sector.
const HEADER_LEN: usize = 16;

/// The host file behind the disk.
#[derive(Debug)]
pub struct Disk {
    file: File,
    path: PathBuf,
    read_only: bool,
    sectors: u64,
}

impl Disk {
    /// Opens `path`; its size in whole 512-byte sectors is the capacity.
    pub fn open(path: &Path, read_only: bool) -> std::io::Result<Self> {
        let mut file = OpenOptions::new().read(true).write(!read_only).open(path)?;
        // Seeking to the end also sizes block devices, whose metadata length is 0.
        let sectors = file.seek(SeekFrom::End(0))? / SECTOR_SIZE;
        Ok(Self {
            file,
            path: path.to_owned(),
            read_only,
            sectors,
        })
    }

    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The GET_ID answer: the backing file's name, cut or zero-padded to 20 bytes.
    fn id(&self) -> [u8; ID_BYTES] {
        let mut id = [0u8; ID_BYTES];
        let name = self
            .path
            .file_name()
            .map(|n| n.as_encoded_bytes())
            .unwrap_or(b"spore");
        let n = name.len().min(ID_BYTES);
        id[..n].copy_from_slice(&name[..n]);
        id
    }

    /// Byte offset of `sector` if `len` bytes from there fit in the disk.
    fn range(&self, sector: u64, len: usize) -> Option<u64> {
        let len = len as u64;
        if len % SECTOR_SIZE != 0 {
            return None;
        }
        let end = sector.checked_add(len / SECTOR_SIZE)?;
        (end <= self.sectors).then(|| sector * SECTOR_SIZE)
    }
}

/// Executes the request in `chain`; returns the number of bytes written to the guest
/// (data plus the status byte), the used-ring length.
pub fn execute(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    disk: &Disk,
) -> u32 {
    let (mut reader, mut writer) = match (
        Reader::<()>::new(mem, chain.clone()),
        Writer::<()>::new(mem, chain),
    ) {
        (Ok(r), Ok(w)) => (r, w),
        _ => {
            log::warn!("virtio-blk: descriptor chain outside guest memory");
            return 0;
        }
    };
    // The status byte is the last device-writable byte (5.2.6).
    let Some(data_len) = writer.available_bytes().checked_sub(1) else {
        log::warn!("virtio-blk: request without a status byte");
        return 0;
    };
    let Ok(mut status_writer) = writer.split_at(data_len) else {
        return 0;
    };
    let mut header = [0u8; HEADER_LEN];
    let status = if reader.read_exact(&mut header).is_err() {
        VIRTIO_BLK_S_IOERR
    } else {
        let kind = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
        let sector = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
        match kind {
            VIRTIO_BLK_T_IN => read_disk(disk, sector, &mut writer),
            VIRTIO_BLK_T_OUT => write_disk(disk, sector, &mut reader),
            VIRTIO_BLK_T_FLUSH => match disk.file.sync_data() {
                Ok(()) => VIRTIO_BLK_S_OK,
                Err(_) => VIRTIO_BLK_S_IOERR,
            },
            VIRTIO_BLK_T_GET_ID => {
                let id = disk.id();
                let n = writer.available_bytes().min(ID_BYTES);
                match writer.write_all(&id[..n]) {
                    Ok(()) => VIRTIO_BLK_S_OK,
                    Err(_) => VIRTIO_BLK_S_IOERR,
                }
            }
            _ => VIRTIO_BLK_S_UNSUPP,
        }
    };
    if status_writer.write_all(&[status]).is_err() {
        return 0;
    }
    (writer.bytes_written() + 1) as u32
}

/// VIRTIO_BLK_T_IN: disk → every device-writable data byte.
fn read_disk(disk: &Disk, sector: u64, writer: &mut Writer<'_>) -> u8 {
    let len = writer.available_bytes();
    let Some(mut offset) = disk.range(sector, len) else {
        return VIRTIO_BLK_S_IOERR;
    };
    let mut buf = vec![0u8; len.min(CHUNK)];
    let mut left = len;
    while left > 0 {
        let chunk = &mut buf[..left.min(CHUNK)];
        if disk.file.read_exact_at(chunk, offset).is_err() || writer.write_all(chunk).is_err() {
            return VIRTIO_BLK_S_IOERR;
        }
        offset += chunk.len() as u64;
        left -= chunk.len();
    }
    VIRTIO_BLK_S_OK
}

/// VIRTIO_BLK_T_OUT: every device-readable data byte → disk.
fn write_disk(disk: &Disk, sector: u64, reader: &mut Reader<'_>) -> u8 {
    let len = reader.available_bytes();
    if disk.read_only {
        return VIRTIO_BLK_S_IOERR;
    }
    let Some(mut offset) = disk.range(sector, len) else {
        return VIRTIO_BLK_S_IOERR;
    };
    let mut buf = vec![0u8; len.min(CHUNK)];
    let mut left = len;
    while left > 0 {
        let chunk = &mut buf[..left.min(CHUNK)];
        if reader.read_exact(chunk).is_err() || disk.file.write_all_at(chunk, offset).is_err() {
            return VIRTIO_BLK_S_IOERR;
        }
        offset += chunk.len() as u64;
        left -= chunk.len();
    }
    VIRTIO_BLK_S_OK
}
