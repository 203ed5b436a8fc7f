//! Reading an HTTP/1.1 response: status line and headers, then a body framed by
//! Content-Length, chunked transfer coding, or the end of the connection; and
//! splitting a streamed body into multiplexed frames.

use std::io::{self, BufRead, Read};

use super::ClientError;
use crate::server::http::FrameKind;

/// Largest response head the client accepts.
const MAX_HEAD: usize = 64 * 1024;

/// How the body ends.
enum Framing {
    Length(u64),
    Chunked,
    UntilClose,
}

/// A response whose body has not been read yet.
pub struct Response {
    pub status: u16,
    body: Box<dyn Read>,
}

impl Response {
    pub fn read<R: BufRead + 'static>(mut r: R) -> Result<Response, ClientError> {
        let mut head = Vec::new();
        loop {
            let n = r.read_until(b'\n', &mut head)?;
            if n == 0 {
                return Err(ClientError::Protocol(
                    "connection closed in the head".into(),
                ));
            }
            if head.ends_with(b"\r\n\r\n") || head.ends_with(b"\n\n") {
                break;
            }
            if head.len() > MAX_HEAD {
                return Err(ClientError::Protocol("response head too large".into()));
            }
        }
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Response::new(&mut headers);
        parsed
            .parse(&head)
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let status = parsed.code.unwrap_or(0);
        let header = |name: &str| {
            parsed
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).trim().to_owned())
        };
        let framing = if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            Framing::Chunked
        } else if let Some(len) = header("content-length") {
            Framing::Length(
                len.parse()
                    .map_err(|_| ClientError::Protocol(format!("Content-Length {len:?}")))?,
            )
        } else if status == 204 {
            Framing::Length(0)
        } else {
            Framing::UntilClose
        };
        let body: Box<dyn Read> = match framing {
            Framing::Length(n) => Box::new(r.take(n)),
            Framing::Chunked => Box::new(Chunked {
                r,
                left: 0,
                done: false,
            }),
            Framing::UntilClose => Box::new(r),
        };
        Ok(Response { status, body })
    }

    pub fn body_bytes(&mut self) -> Result<Vec<u8>, ClientError> {
        let mut v = Vec::new();
        self.body.read_to_end(&mut v)?;
        Ok(v)
    }

    /// Reads multiplexed frames until the body ends.
    pub fn frames(
        &mut self,
        on_frame: &mut dyn FnMut(FrameKind, &[u8]) -> io::Result<()>,
    ) -> Result<(), ClientError> {
        let mut header = [0u8; 8];
        let mut payload = Vec::new();
        loop {
            match read_full(&mut self.body, &mut header)? {
                0 => return Ok(()),
                8 => {}
                _ => return Err(ClientError::Protocol("truncated frame header".into())),
            }
            let len = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
            payload.resize(len, 0);
            if read_full(&mut self.body, &mut payload)? != len {
                return Err(ClientError::Protocol("truncated frame".into()));
            }
            let kind = FrameKind::from_u8(header[0])
                .ok_or_else(|| ClientError::Protocol(format!("frame kind {}", header[0])))?;
            on_frame(kind, &payload)?;
        }
    }
}

/// Reads until `buf` is full or the stream ends; returns how much was read.
fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// A chunked body decoder.
struct Chunked<R> {
    r: R,
    left: usize,
    done: bool,
}

impl<R: BufRead> Read for Chunked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            let mut line = String::new();
            self.r.read_line(&mut line)?;
            let size = line.trim().split(';').next().unwrap_or("");
            self.left = usize::from_str_radix(size, 16).map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidData, format!("chunk size {line:?}"))
            })?;
            if self.left == 0 {
                self.done = true;
                // Trailer section: lines until the blank one.
                loop {
                    line.clear();
                    if self.r.read_line(&mut line)? == 0 || line.trim().is_empty() {
                        return Ok(0);
                    }
                }
            }
        }
        let want = buf.len().min(self.left);
        let n = self.r.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.left -= n;
        if self.left == 0 {
            let mut crlf = String::new();
            self.r.read_line(&mut crlf)?;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;
    use crate::server::http::{encode_frame, ChunkedWriter, STREAM_CONTENT_TYPE};

    #[test]
    fn reads_content_length_bodies() {
        let raw = b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}extra".to_vec();
        let mut r = Response::read(Cursor::new(raw)).unwrap();
        assert_eq!(r.status, 404);
        assert_eq!(r.body_bytes().unwrap(), b"{}");
    }

    #[test]
    fn reads_what_the_server_streams() {
        let mut wire = Vec::new();
        let mut w = ChunkedWriter::start(&mut wire, 200, STREAM_CONTENT_TYPE).unwrap();
        w.chunk(&encode_frame(FrameKind::Stdout, b"hello\n"))
            .unwrap();
        w.chunk(&encode_frame(FrameKind::Stderr, &vec![b'e'; 100_000]))
            .unwrap();
        w.chunk(&encode_frame(FrameKind::Exit, br#"{"exit_code":3}"#))
            .unwrap();
        w.finish().unwrap();
        let mut r = Response::read(Cursor::new(wire)).unwrap();
        let mut seen = Vec::new();
        r.frames(&mut |k, d| {
            seen.push((k, d.len()));
            Ok(())
        })
        .unwrap();
        assert_eq!(
            seen,
            [
                (FrameKind::Stdout, 6),
                (FrameKind::Stderr, 100_000),
                (FrameKind::Exit, 15)
            ]
        );
    }
}
