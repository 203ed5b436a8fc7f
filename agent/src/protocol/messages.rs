//! Requests, replies and attach frames: what travels inside the frames of
//! [`super::frame`].
//!
//! Control messages are JSON objects, one per frame. A request carries an `id` the
//! reply echoes and a `type` naming the operation; a reply carries the same `id`
//! and either `ok` (a [`Reply`]) or `error` (an [`ErrorReply`] with a code and a
//! message). Attach connections carry binary [`AttachFrame`]s after their first
//! reply, so output bytes are never JSON-escaped.
//!
//! This module only defines and encodes messages; the agent's server and the
//! host's [`super::client`] do the I/O.

use serde::{Deserialize, Serialize};

use super::spec::{ContainerSpec, ContainerState, ExecSpec, ExitInfo};

/// Version of this protocol. Bumped on any incompatible change; the agent refuses a
/// `hello` from a host speaking another version.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest data chunk in one attach frame (64 KiB).
pub const MAX_CHUNK: usize = 64 * 1024;

/// One request on a control connection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Chosen by the host, echoed in the reply.
    pub id: u64,
    #[serde(flatten)]
    pub body: RequestBody,
}

/// What a request asks for. Containers are named by the host (`container`); exec
/// processes by the pid the agent returned from `exec` (`exec_pid`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RequestBody {
    /// First message of a session: versions and machine facts.
    Hello { protocol_version: u32 },
    /// Set up a container; its process waits for `start`. Reply: `done`.
    Create {
        container: String,
        spec: ContainerSpec,
    },
    /// Let a created container's process run. Reply: `done`.
    Start { container: String },
    /// Block until the container's init (or one exec process) has ended; answered
    /// at once if it already has. Reply: `exit`.
    Wait {
        container: String,
        #[serde(default)]
        exec_pid: Option<u32>,
    },
    /// Send a signal to the container's init. Reply: `done`.
    Signal { container: String, signal: i32 },
    /// Start a further process in a running container. Reply: `exec`.
    Exec { container: String, spec: ExecSpec },
    /// Reply: `state`.
    State { container: String },
    /// Reply: `list`.
    List,
    /// Kill everything in the container and remove it. Reply: `done`.
    Delete { container: String },
    /// Turn this connection into the stdio stream of a container's init (or of an
    /// exec process). After the `attached` reply, only [`AttachFrame`]s flow. Each
    /// process can be attached once; its output waits in its pipe until then.
    Attach {
        container: String,
        #[serde(default)]
        exec_pid: Option<u32>,
    },
    /// Make a freshly cloned VM its own machine. Reply: `done`.
    Fixup(CloneFixup),
    /// Sync disks and power the VM off (host mode: end the agent). Reply: `done`,
    /// sent before the machine goes away.
    Shutdown,
}

/// The per-clone identity a host hands a new clone.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloneFixup {
    /// Fresh bytes for the guest RNG (`RNDADDENTROPY`, then `RNDRESEEDCRNG`).
    #[serde(default)]
    pub entropy: Vec<u8>,
    /// Wall clock to set (`CLOCK_REALTIME`), nanoseconds since the Unix epoch.
    #[serde(default)]
    pub realtime_ns: Option<u64>,
    #[serde(default)]
    pub hostname: Option<String>,
    /// The sandbox this VM now is; reported by later `hello`s.
    #[serde(default)]
    pub sandbox_id: Option<String>,
}

/// One reply on a control connection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// The request's id; 0 when the request was too malformed to have one.
    pub id: u64,
    #[serde(flatten)]
    pub outcome: Outcome,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok(Reply),
    Error(ErrorReply),
}

/// A successful reply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply {
    Hello(HelloInfo),
    Done,
    Exit(ExitInfo),
    Exec {
        exec_pid: u32,
    },
    State(ContainerState),
    List {
        containers: Vec<ContainerState>,
    },
    /// The connection is now an attach stream; `tty` says whether output is one
    /// pseudo-terminal stream (stdout only) or separate stdout and stderr.
    Attached {
        tty: bool,
    },
}

/// What the agent says about itself in reply to `hello`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloInfo {
    pub protocol_version: u32,
    /// The agent's crate version.
    pub agent_version: String,
    /// `uname -r` of the kernel the agent runs on.
    pub kernel_release: String,
    /// The machine's hostname (`uname -n`), as the last clone fixup set it.
    #[serde(default)]
    pub hostname: String,
    /// Time since boot (CLOCK_BOOTTIME), milliseconds.
    pub uptime_ms: u64,
    /// True in a guest, where the agent is PID 1.
    pub pid1: bool,
    /// Set by the last clone fixup.
    pub sandbox_id: Option<String>,
}

/// A failed request: a stable machine-readable code and a human message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub code: ErrorCode,
    pub message: String,
}

/// Why a request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame was not a JSON object, or was larger than the frame limit.
    BadFrame,
    /// A known request type with missing or wrong fields.
    BadRequest,
    /// A `type` the agent does not know.
    UnknownType,
    /// `hello` with a protocol version the agent does not speak.
    VersionMismatch,
    /// No container (or exec process) by that name.
    NotFound,
    /// A container by that name exists already.
    AlreadyExists,
    /// The container is not in a state that allows the request.
    InvalidState,
    /// The process's stdio is attached elsewhere already.
    AlreadyAttached,
    /// The request is valid but cannot be carried out where this agent runs.
    Unsupported,
    /// The container engine failed.
    Engine,
    /// A system call failed.
    System,
}

impl ErrorReply {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ErrorReply {
        ErrorReply {
            code,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ErrorReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

/// Request types the agent knows; anything else is [`ErrorCode::UnknownType`].
pub const REQUEST_TYPES: &[&str] = &[
    "hello", "create", "start", "wait", "signal", "exec", "state", "list", "delete", "attach",
    "fixup", "shutdown",
];

/// Which output stream a chunk belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One frame on an attach connection. Encoded as a tag byte followed by data:
///
/// | tag | direction | meaning |
/// |---|---|---|
/// | 1 / 2 | agent → host | stdout / stderr bytes (≤ [`MAX_CHUNK`]), in order |
/// | 3 | agent → host | end of stream: 1 byte, 1 = stdout, 2 = stderr |
/// | 16 | host → agent | stdin bytes |
/// | 17 | host → agent | close stdin |
/// | 18 | host → agent | resize the tty: rows, cols as big-endian u16 |
///
/// Flow control is the stream's: the agent writes output frames with blocking
/// writes, so a host that reads slowly slows the container down; nothing is lost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttachFrame {
    Output(Stream, Vec<u8>),
    Eof(Stream),
    Stdin(Vec<u8>),
    CloseStdin,
    Resize { rows: u16, cols: u16 },
}

/// An attach frame that does not decode.
#[derive(Debug, thiserror::Error)]
pub enum MessagesError {
    #[error("empty attach frame")]
    Empty,
    #[error("unknown attach frame tag {0}")]
    UnknownTag(u8),
    #[error("attach frame with tag {0} has a malformed body")]
    BadBody(u8),
}

const TAG_STDOUT: u8 = 1;
const TAG_STDERR: u8 = 2;
const TAG_EOF: u8 = 3;
const TAG_STDIN: u8 = 16;
const TAG_CLOSE_STDIN: u8 = 17;
const TAG_RESIZE: u8 = 18;

fn stream_tag(s: Stream) -> u8 {
    match s {
        Stream::Stdout => TAG_STDOUT,
        Stream::Stderr => TAG_STDERR,
    }
}

impl AttachFrame {
    pub fn encode(&self) -> Vec<u8> {
        let (tag, body): (u8, &[u8]) = match self {
            AttachFrame::Output(s, data) => (stream_tag(*s), data),
            AttachFrame::Eof(s) => return vec![TAG_EOF, stream_tag(*s)],
            AttachFrame::Stdin(data) => (TAG_STDIN, data),
            AttachFrame::CloseStdin => (TAG_CLOSE_STDIN, &[]),
            AttachFrame::Resize { rows, cols } => {
                let mut v = vec![TAG_RESIZE];
                v.extend_from_slice(&rows.to_be_bytes());
                v.extend_from_slice(&cols.to_be_bytes());
                return v;
            }
        };
        let mut v = Vec::with_capacity(1 + body.len());
        v.push(tag);
        v.extend_from_slice(body);
        v
    }

    pub fn decode(frame: &[u8]) -> Result<AttachFrame, MessagesError> {
        let (&tag, body) = frame.split_first().ok_or(MessagesError::Empty)?;
        let stream = |b: &[u8]| match b {
            [TAG_STDOUT] => Ok(Stream::Stdout),
            [TAG_STDERR] => Ok(Stream::Stderr),
            _ => Err(MessagesError::BadBody(tag)),
        };
        Ok(match tag {
            TAG_STDOUT => AttachFrame::Output(Stream::Stdout, body.to_vec()),
            TAG_STDERR => AttachFrame::Output(Stream::Stderr, body.to_vec()),
            TAG_EOF => AttachFrame::Eof(stream(body)?),
            TAG_STDIN => AttachFrame::Stdin(body.to_vec()),
            TAG_CLOSE_STDIN if body.is_empty() => AttachFrame::CloseStdin,
            TAG_RESIZE if body.len() == 4 => AttachFrame::Resize {
                rows: u16::from_be_bytes([body[0], body[1]]),
                cols: u16::from_be_bytes([body[2], body[3]]),
            },
            TAG_CLOSE_STDIN | TAG_RESIZE => return Err(MessagesError::BadBody(tag)),
            other => return Err(MessagesError::UnknownTag(other)),
        })
    }
}

/// Parses one control frame. On failure returns the reply to send: its id is the
/// request's when one could be read, else 0.
pub fn parse_request(frame: &[u8]) -> Result<Request, Response> {
    let fail = |id, code, message: String| Response {
        id,
        outcome: Outcome::Error(ErrorReply::new(code, message)),
    };
    let value: serde_json::Value = serde_json::from_slice(frame)
        .map_err(|e| fail(0, ErrorCode::BadFrame, format!("not JSON: {e}")))?;
    let obj = value
        .as_object()
        .ok_or_else(|| fail(0, ErrorCode::BadFrame, "not a JSON object".into()))?;
    let id = obj.get("id").and_then(|v| v.as_u64()).unwrap_or(0);
    let kind = obj.get("type").and_then(|v| v.as_str());
    match kind {
        None => return Err(fail(id, ErrorCode::BadRequest, "no \"type\" field".into())),
        Some(k) if !REQUEST_TYPES.contains(&k) => {
            return Err(fail(
                id,
                ErrorCode::UnknownType,
                format!("unknown request type {k:?}"),
            ))
        }
        Some(_) => {}
    }
    serde_json::from_value(value).map_err(|e| fail(id, ErrorCode::BadRequest, e.to_string()))
}

impl Response {
    pub fn ok(id: u64, reply: Reply) -> Response {
        Response {
            id,
            outcome: Outcome::Ok(reply),
        }
    }

    pub fn error(id: u64, err: ErrorReply) -> Response {
        Response {
            id,
            outcome: Outcome::Error(err),
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        // A Response holds only strings, numbers and enums: serializing cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_wire_shape() {
        let req = Request {
            id: 7,
            body: RequestBody::Start {
                container: "c1".into(),
            },
        };
        let json = serde_json::to_string(&req).unwrap();
        assert_eq!(json, r#"{"id":7,"type":"start","container":"c1"}"#);
        assert_eq!(parse_request(json.as_bytes()).unwrap(), req);
        let list = parse_request(br#"{"id":1,"type":"list"}"#).unwrap();
        assert_eq!(list.body, RequestBody::List);
    }

    #[test]
    fn every_request_type_is_listed() {
        let bodies = [
            RequestBody::Hello {
                protocol_version: 1,
            },
            RequestBody::List,
            RequestBody::Shutdown,
            RequestBody::Fixup(CloneFixup::default()),
            RequestBody::Wait {
                container: "c".into(),
                exec_pid: Some(3),
            },
        ];
        for body in bodies {
            let v = serde_json::to_value(Request { id: 1, body }).unwrap();
            let t = v["type"].as_str().unwrap().to_owned();
            assert!(REQUEST_TYPES.contains(&t.as_str()), "{t}");
        }
    }

    #[test]
    fn bad_requests_get_codes_and_ids() {
        let err = |b: &[u8]| match parse_request(b).unwrap_err().outcome {
            Outcome::Error(e) => e.code,
            Outcome::Ok(_) => unreachable!(),
        };
        assert_eq!(err(b"\x00garbage"), ErrorCode::BadFrame);
        assert_eq!(err(b"[1,2]"), ErrorCode::BadFrame);
        assert_eq!(err(br#"{"id":4}"#), ErrorCode::BadRequest);
        assert_eq!(err(br#"{"id":4,"type":"fly"}"#), ErrorCode::UnknownType);
        assert_eq!(err(br#"{"id":4,"type":"start"}"#), ErrorCode::BadRequest);
        assert_eq!(
            parse_request(br#"{"id":9,"type":"fly"}"#).unwrap_err().id,
            9
        );
    }

    #[test]
    fn response_wire_shape() {
        let ok = Response::ok(3, Reply::Exec { exec_pid: 42 });
        let json = String::from_utf8(ok.to_bytes()).unwrap();
        assert_eq!(json, r#"{"id":3,"ok":{"type":"exec","exec_pid":42}}"#);
        let err = Response::error(4, ErrorReply::new(ErrorCode::NotFound, "no c"));
        let json = String::from_utf8(err.to_bytes()).unwrap();
        assert_eq!(
            json,
            r#"{"id":4,"error":{"code":"not_found","message":"no c"}}"#
        );
        assert_eq!(serde_json::from_str::<Response>(&json).unwrap(), err);
        let done: Response =
            serde_json::from_slice(&Response::ok(1, Reply::Done).to_bytes()).unwrap();
        assert_eq!(done.outcome, Outcome::Ok(Reply::Done));
    }

    #[test]
    fn attach_frames_round_trip() {
        let frames = [
            AttachFrame::Output(Stream::Stdout, b"out".to_vec()),
            AttachFrame::Output(Stream::Stderr, vec![]),
            AttachFrame::Eof(Stream::Stderr),
            AttachFrame::Stdin(b"in".to_vec()),
            AttachFrame::CloseStdin,
            AttachFrame::Resize { rows: 24, cols: 80 },
        ];
        for f in frames {
            assert_eq!(AttachFrame::decode(&f.encode()).unwrap(), f);
        }
        assert_eq!(AttachFrame::Eof(Stream::Stdout).encode(), vec![3, 1]);
        assert!(matches!(
            AttachFrame::decode(&[]),
            Err(MessagesError::Empty)
        ));
        assert!(matches!(
            AttachFrame::decode(&[99]),
            Err(MessagesError::UnknownTag(99))
        ));
        assert!(matches!(
            AttachFrame::decode(&[18, 1]),
            Err(MessagesError::BadBody(18))
        ));
        assert!(matches!(
            AttachFrame::decode(&[3, 7]),
            Err(MessagesError::BadBody(3))
        ));
    }
}
