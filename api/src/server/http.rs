//! HTTP/1.1 on a byte stream, server side: read one bounded request, write a JSON
//! or text response, or a chunked stream of multiplexed output frames.
//!
//! Owns the wire format only; routing and errors live in `router` and `error`.
//! Requests are bounded: the head (request line + headers) by [`MAX_HEAD`] and
//! [`MAX_HEADERS`] (431 past either), the body by [`MAX_BODY`] (413). Bodies must
//! come with a Content-Length; chunked request bodies are refused.

use std::io::{self, BufRead, BufReader, Read, Write};

use serde::Serialize;

/// Largest request head, in bytes.
pub const MAX_HEAD: usize = 16 * 1024;
/// Most header fields in one request.
pub const MAX_HEADERS: usize = 64;
/// Largest request body, in bytes.
pub const MAX_BODY: usize = 1024 * 1024;

/// Content type of streamed output: see [`FrameKind`].
pub const STREAM_CONTENT_TYPE: &str = "application/vnd.spore.stream";

/// Why a request could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("connection closed")]
    Closed,
    #[error("reading the request")]
    Io(#[from] io::Error),
    #[error("request head larger than {MAX_HEAD} bytes or more than {MAX_HEADERS} headers")]
    HeadTooLarge,
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("request body larger than {MAX_BODY} bytes")]
    BodyTooLarge,
    #[error("request bodies need a Content-Length (chunked bodies are not accepted)")]
    LengthRequired,
}

/// One parsed request.
#[derive(Debug, Default)]
pub struct Request {
    pub method: String,
    /// The path without the query string.
    pub path: String,
    /// Decoded `key=value` pairs of the query string, in order.
    pub query: Vec<(String, String)>,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// A query parameter's value.
    pub fn query(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// A boolean query flag: present as `1`, `true`, `yes` or with no value.
    pub fn flag(&self, key: &str) -> bool {
        matches!(self.query(key), Some("" | "1" | "true" | "yes"))
    }

    /// True if the client asked to close the connection after this request.
    pub fn wants_close(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

/// Reads one request. Returns [`HttpError::Closed`] on a clean end of stream
/// before any byte of a new request.
pub fn read_request<R: Read>(reader: &mut BufReader<R>) -> Result<Request, HttpError> {
    let head = read_head(reader)?;
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    match parsed.parse(&head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(HttpError::Malformed("incomplete".into())),
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::HeadTooLarge),
        Err(e) => return Err(HttpError::Malformed(e.to_string())),
    }
    let target = parsed.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut req = Request {
        method: parsed.method.unwrap_or("").to_owned(),
        path: percent_decode(path),
        query: parse_query(query),
        headers: parsed
            .headers
            .iter()
            .map(|h| {
                let value = String::from_utf8_lossy(h.value).into_owned();
                (h.name.to_owned(), value)
            })
            .collect(),
        body: Vec::new(),
    };
    if req
        .header("transfer-encoding")
        .is_some_and(|v| !v.eq_ignore_ascii_case("identity"))
    {
        return Err(HttpError::LengthRequired);
    }
    let len = match req.header("content-length") {
        None => 0,
        Some(v) => v
            .trim()
            .parse::<usize>()
            .map_err(|_| HttpError::Malformed(format!("Content-Length {v:?}")))?,
    };
    if len > MAX_BODY {
        return Err(HttpError::BodyTooLarge);
    }
    req.body = vec![0; len];
    reader.read_exact(&mut req.body)?;
    Ok(req)
}

/// Reads up to and including the blank line that ends the head.
fn read_head<R: Read>(reader: &mut BufReader<R>) -> Result<Vec<u8>, HttpError> {
    let mut head = Vec::with_capacity(512);
    loop {
        let before = head.len();
        let n = reader
            .by_ref()
            .take((MAX_HEAD + 1 - before) as u64)
            .read_until(b'\n', &mut head)?;
        if n == 0 {
            return if head.is_empty() {
                Err(HttpError::Closed)
            } else {
                Err(HttpError::Malformed(
                    "connection closed inside the head".into(),
                ))
            };
        }
        if head.len() > MAX_HEAD {
            return Err(HttpError::HeadTooLarge);
        }
        let line = &head[before..];
        if line == b"\r\n" || line == b"\n" {
            if before == 0 {
                // Stray blank lines between requests are allowed (RFC 9112 §2.2).
                head.clear();
                continue;
            }
            return Ok(head);
        }
    }
}

fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// Decodes `%XX` escapes and `+` (as a space, in queries too: harmless in paths).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The reason phrase of the status codes this server uses.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        101 => "Switching Protocols",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        422 => "Unprocessable Content",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Writes a complete response with a body.
pub fn write_response<W: Write>(
    w: &mut W,
    status: u16,
    content_type: &str,
    body: &[u8],
    close: bool,
) -> io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
        reason(status),
        body.len()
    );
    if close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    w.write_all(head.as_bytes())?;
    w.write_all(body)?;
    w.flush()
}

/// Writes a JSON response.
pub fn write_json<W: Write, T: Serialize>(
    w: &mut W,
    status: u16,
    value: &T,
    close: bool,
) -> io::Result<()> {
    let body = serde_json::to_vec(value).map_err(io::Error::other)?;
    write_response(w, status, "application/json", &body, close)
}

/// What a frame of a multiplexed output stream carries. Each frame is an 8-byte
/// header — kind, three zero bytes, payload length as big-endian u32 (Docker's
/// attach framing) — followed by the payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// Client → server on an attach connection: bytes for the process's stdin.
    Stdin = 0,
    Stdout = 1,
    Stderr = 2,
    /// The last frame of a run or exec: a JSON object with `exit_code`.
    Exit = 3,
    /// The stream ends in an error: a JSON error body (`code`, `message`).
    Error = 4,
    /// Client → server on an attach connection: close the process's stdin.
    CloseStdin = 5,
    /// Client → server on an attach connection: the terminal's rows and columns,
    /// big-endian u16 each.
    Resize = 6,
}

impl FrameKind {
    pub fn from_u8(b: u8) -> Option<FrameKind> {
        [
            FrameKind::Stdin,
            FrameKind::Stdout,
            FrameKind::Stderr,
            FrameKind::Exit,
            FrameKind::Error,
            FrameKind::CloseStdin,
            FrameKind::Resize,
        ]
        .into_iter()
        .find(|k| *k as u8 == b)
    }
}

/// Encodes one multiplexed frame.
pub fn encode_frame(kind: FrameKind, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + payload.len());
    v.extend_from_slice(&[kind as u8, 0, 0, 0]);
    v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// A response whose body is sent in chunks as it is produced. Dropping it without
/// [`ChunkedWriter::finish`] leaves the body unterminated, which a client sees as
/// a broken stream.
pub struct ChunkedWriter<'a, W: Write> {
    w: &'a mut W,
}

impl<'a, W: Write> ChunkedWriter<'a, W> {
    pub fn start(w: &'a mut W, status: u16, content_type: &str) -> io::Result<Self> {
        let head = format!(
            "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\n\
             Transfer-Encoding: chunked\r\n\r\n",
            reason(status)
        );
        w.write_all(head.as_bytes())?;
        w.flush()?;
        Ok(ChunkedWriter { w })
    }

    pub fn chunk(&mut self, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        write!(self.w, "{:x}\r\n", data.len())?;
        self.w.write_all(data)?;
        self.w.write_all(b"\r\n")?;
        self.w.flush()
    }

    pub fn finish(self) -> io::Result<()> {
        self.w.write_all(b"0\r\n\r\n")?;
        self.w.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8]) -> Result<Request, HttpError> {
        read_request(&mut BufReader::new(raw))
    }

    #[test]
    fn parses_request_with_query_and_body() {
        let req = parse(
            b"POST /v1/run?stream=1&x=a%20b HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody",
        )
        .unwrap();
        assert_eq!(req.method, "POST");
        assert_eq!(req.path, "/v1/run");
        assert!(req.flag("stream"));
        assert_eq!(req.query("x"), Some("a b"));
        assert_eq!(req.header("HOST"), Some("x"));
        assert_eq!(req.body, b"body");
    }

    #[test]
    fn bounds_are_enforced() {
        let big = format!(
            "POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 1
        );
        assert!(matches!(
            parse(big.as_bytes()),
            Err(HttpError::BodyTooLarge)
        ));
        let long = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        assert!(matches!(
            parse(long.as_bytes()),
            Err(HttpError::HeadTooLarge)
        ));
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("H{i}: v\r\n"))
            .collect();
        let many = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert!(matches!(
            parse(many.as_bytes()),
            Err(HttpError::HeadTooLarge)
        ));
        let chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(matches!(parse(chunked), Err(HttpError::LengthRequired)));
        assert!(matches!(parse(b""), Err(HttpError::Closed)));
        assert!(matches!(
            parse(b"NOT HTTP\r\n\r\n"),
            Err(HttpError::Malformed(_))
        ));
    }

    #[test]
    fn chunked_stream_and_frames() {
        let mut out = Vec::new();
        let mut w = ChunkedWriter::start(&mut out, 200, STREAM_CONTENT_TYPE).unwrap();
        w.chunk(&encode_frame(FrameKind::Stdout, b"hi")).unwrap();
        w.finish().unwrap();
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.contains("Transfer-Encoding: chunked"));
        assert!(out.ends_with(b"a\r\n\x01\x00\x00\x00\x00\x00\x00\x02hi\r\n0\r\n\r\n"));
        assert_eq!(FrameKind::from_u8(3), Some(FrameKind::Exit));
        assert_eq!(FrameKind::from_u8(9), None);
        assert_eq!(FrameKind::from_u8(0), Some(FrameKind::Stdin));
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Fb+c"), "a/b c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
