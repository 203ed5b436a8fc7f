//! Framing: every message on an agent connection is one frame.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of payload.
//! Lengths above [`MAX_FRAME`] are refused before anything is allocated, so a peer
//! cannot make the reader reserve memory it never sends.

use std::io::{self, Read, Write};

/// Largest payload a frame may carry (1 MiB). Output is streamed in smaller chunks.
pub const MAX_FRAME: u32 = 1 << 20;

/// Errors from reading or writing frames.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge(u32),
    #[error("connection closed")]
    Closed,
    #[error("frame i/o")]
    Io(#[from] io::Error),
}

/// Writes one frame holding `payload`.
pub fn write_frame<W: Write>(w: &mut W, payload: &[u8]) -> Result<(), FrameError> {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|&l| l <= MAX_FRAME)
        .ok_or(FrameError::TooLarge(
            payload.len().min(u32::MAX as usize) as u32
        ))?;
    let mut buf = Vec::with_capacity(4 + payload.len());
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(payload);
    w.write_all(&buf)?;
    Ok(())
}

/// Reads one frame. A clean end of stream before the first length byte is
/// [`FrameError::Closed`]; an end in the middle of a frame is an I/O error.
pub fn read_frame<R: Read>(r: &mut R) -> Result<Vec<u8>, FrameError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < len.len() {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Err(FrameError::Closed),
            Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = u32::from_be_bytes(len);
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload)?;
    Ok(payload)
}

/// Reads and drops `len` payload bytes: what a reader does after
/// [`FrameError::TooLarge`] to stay in step with the peer without buffering.
pub fn discard<R: Read>(r: &mut R, len: u32) -> Result<(), FrameError> {
    let copied = io::copy(&mut r.take(u64::from(len)), &mut io::sink())?;
    if copied < u64::from(len) {
        return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut wire = Vec::new();
        write_frame(&mut wire, b"hello").unwrap();
        write_frame(&mut wire, b"").unwrap();
        assert_eq!(&wire[..4], &[0, 0, 0, 5]);
        let mut r = &wire[..];
        assert_eq!(read_frame(&mut r).unwrap(), b"hello");
        assert_eq!(read_frame(&mut r).unwrap(), b"");
        assert!(matches!(read_frame(&mut r), Err(FrameError::Closed)));
    }

    #[test]
    fn oversized_length_is_refused_without_reading_payload() {
        let wire = (MAX_FRAME + 1).to_be_bytes();
        assert!(matches!(
            read_frame(&mut &wire[..]),
            Err(FrameError::TooLarge(n)) if n == MAX_FRAME + 1
        ));
        let big = vec![0u8; MAX_FRAME as usize + 1];
        assert!(matches!(
            write_frame(&mut Vec::new(), &big),
            Err(FrameError::TooLarge(_))
        ));
    }

    #[test]
    fn discard_skips_an_oversized_payload() {
        let mut wire = (MAX_FRAME + 2).to_be_bytes().to_vec();
        wire.extend(std::iter::repeat_n(7u8, MAX_FRAME as usize + 2));
        write_frame(&mut wire, b"next").unwrap();
        let mut r = &wire[..];
        let Err(FrameError::TooLarge(n)) = read_frame(&mut r) else {
            panic!("oversized frame accepted");
        };
        discard(&mut r, n).unwrap();
        assert_eq!(read_frame(&mut r).unwrap(), b"next");
        assert!(matches!(
            discard(&mut &[1u8][..], 2),
            Err(FrameError::Io(_))
        ));
    }

    #[test]
    fn truncated_frame_is_an_error() {
        let mut wire = Vec::new();
        write_frame(&mut wire, b"hello").unwrap();
        wire.truncate(6);
        assert!(matches!(read_frame(&mut &wire[..]), Err(FrameError::Io(_))));
        assert!(matches!(
            read_frame(&mut &[0u8, 0][..]),
            Err(FrameError::Io(_))
        ));
    }
}
