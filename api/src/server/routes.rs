//! The route table and its handlers. Each route is one line in [`handle`]; each
//! handler parses its input, calls the supervisor and says what to answer. The
//! routes and their statuses are documented in `api/openapi.yaml`.

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::Instant;

use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use super::error::ApiError;
use super::http::{self, ChunkedWriter, FrameKind, Request, STREAM_CONTENT_TYPE};
use crate::backend::vm;
use crate::supervisor::metrics::Gauges;
use crate::supervisor::output::split_frames;
use crate::supervisor::spec::{ExecRequest, SandboxSpec};
use crate::supervisor::{templates, Supervisor};

/// A streamed body: the handler writes bytes through the sink it is given.
type StreamFn = Box<dyn FnOnce(&mut dyn FnMut(&[u8]) -> io::Result<()>) + Send>;
/// An upgraded connection: frames both ways (see `attach`).
pub type UpgradeFn = Box<dyn FnOnce(Box<dyn Read + Send>, Box<dyn Write + Send>) + Send>;

/// What a handler answers.
pub enum Reply {
    Json(u16, Value),
    Text(u16, &'static str, String),
    NoContent,
    /// 200 with a chunked body of multiplexed frames (see `http::FrameKind`).
    Stream(StreamFn),
    /// 101: the connection carries frames both ways; written by the server loop.
    Upgrade(UpgradeFn),
}

impl Reply {
    pub fn write<W: Write>(self, w: &mut W, close: bool) -> io::Result<()> {
        match self {
            Reply::Json(status, v) => http::write_json(w, status, &v, close),
            Reply::Text(status, ct, body) => {
                http::write_response(w, status, ct, body.as_bytes(), close)
            }
            Reply::NoContent => http::write_response(w, 204, "application/json", b"", close),
            Reply::Stream(f) => {
                let mut cw = ChunkedWriter::start(w, 200, STREAM_CONTENT_TYPE)?;
                let mut failed = None;
                f(&mut |bytes| {
                    cw.chunk(bytes).inspect_err(|e| {
                        failed = Some(e.kind());
                    })
                });
                match failed {
                    Some(kind) => Err(kind.into()),
                    None => cw.finish(),
                }
            }
            Reply::Upgrade(_) => Err(io::ErrorKind::Unsupported.into()),
        }
    }
}

/// Routes one request.
pub fn handle(sup: &Arc<Supervisor>, req: &Request) -> Result<Reply, ApiError> {
    let segments: Vec<&str> = req.path.trim_matches('/').split('/').collect();
    let method = req.method.as_str();
    match (method, segments.as_slice()) {
        ("GET", ["v1", "health"]) => Ok(health(sup)),
        ("GET", ["metrics"] | ["v1", "metrics"]) => Ok(metrics(sup)),
        ("GET", ["v1", "templates"]) => Ok(Reply::Json(200, json!(templates::list()))),
        ("POST", ["v1", "templates"]) => {
            let body: templates::TemplateRequest = parse_json(req)?;
            let created = templates::create(&sup.config.run_dir, &body)?;
            Ok(Reply::Json(201, json!(created)))
        }
        ("GET", ["v1", "templates", name]) => Ok(Reply::Json(200, json!(templates::get(name)?))),
        ("DELETE", ["v1", "templates", name]) => {
            templates::delete(name)?;
            Ok(Reply::NoContent)
        }
        ("GET", ["v1", "sandboxes"]) => Ok(Reply::Json(200, json!(sup.list()))),
        ("POST", ["v1", "sandboxes"]) => {
            let spec: SandboxSpec = parse_json(req)?;
            let sb = sup.create(&spec, req.flag("rm"))?;
            Ok(Reply::Json(201, json!(sb.record())))
        }
        ("GET", ["v1", "sandboxes", id]) => Ok(Reply::Json(200, json!(sup.get(id)?.record()))),
        ("DELETE", ["v1", "sandboxes", id]) => {
            sup.delete(id, req.flag("force"))?;
            Ok(Reply::NoContent)
        }
        ("POST", ["v1", "sandboxes", id, "wait"]) => {
            let sb = sup.get(id)?;
            Ok(Reply::Json(
                200,
                json!(sb.wait_until(None, |s| s.is_finished())),
            ))
        }
        ("GET", ["v1", "sandboxes", id, "logs"]) => logs(sup, id, req.flag("follow")),
        ("POST", ["v1", "sandboxes", id, "exec"]) => exec(sup, id, req),
        ("POST", ["v1", "sandboxes", id, "attach"]) => attach(sup, id),
        ("POST", ["v1", "run"]) => run(sup, req),
        ("GET", ["v1", "images"]) => Ok(Reply::Json(200, json!(sup.image_list()?))),
        ("POST", ["v1", "images"]) => {
            let body: ImportRequest = parse_json(req)?;
            Ok(Reply::Json(201, json!(sup.image_import(&body.source)?)))
        }
        // Image names may hold '/' (`docker.io/library/busybox`): the rest of the path.
        ("GET", ["v1", "images", name @ ..]) => {
            Ok(Reply::Json(200, json!(sup.image_get(&name.join("/"))?)))
        }
        ("DELETE", ["v1", "images", name @ ..]) => {
            Ok(Reply::Json(200, json!(sup.image_remove(&name.join("/"))?)))
        }
        (_, path) if known_path(path) => Err(ApiError::MethodNotAllowed(
            req.method.clone(),
            req.path.clone(),
        )),
        _ => Err(ApiError::NoRoute(req.method.clone(), req.path.clone())),
    }
}

/// True for paths that exist with some other method (405 rather than 404).
fn known_path(path: &[&str]) -> bool {
    matches!(
        path,
        ["v1", "health"]
            | ["metrics"]
            | ["v1", "metrics"]
            | ["v1", "templates"]
            | ["v1", "templates", _]
            | ["v1", "sandboxes"]
            | ["v1", "sandboxes", _]
            | ["v1", "sandboxes", _, "wait" | "logs" | "exec" | "attach"]
            | ["v1", "run"]
            | ["v1", "images", ..]
    )
}

/// The body of `POST /v1/images`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportRequest {
    /// A path on the daemon's host or a registry reference.
    source: String,
}

fn parse_json<T: DeserializeOwned>(req: &Request) -> Result<T, ApiError> {
    let body: &[u8] = if req.body.is_empty() {
        b"{}"
    } else {
        &req.body
    };
    serde_json::from_slice(body).map_err(ApiError::BadJson)
}

fn health(sup: &Supervisor) -> Reply {
    Reply::Json(
        200,
        json!({
            "status": "ok",
            "version": env!("CARGO_PKG_VERSION"),
            "default_isolation": sup.config.default_isolation,
            "isolations": {
                "process": "available",
                "vm": vm::status(),
            },
            "sandboxes": sup.list().len(),
        }),
    )
}

fn metrics(sup: &Supervisor) -> Reply {
    let gauges = Gauges {
        sandboxes_by_state: sup.count_by_state(),
        template_memory: templates::list()
            .into_iter()
            .map(|t| (t.name, t.memory_bytes))
            .collect(),
    };
    Reply::Text(
        200,
        "text/plain; version=0.0.4",
        sup.metrics.render(&gauges),
    )
}

fn logs(sup: &Arc<Supervisor>, id: &str, follow: bool) -> Result<Reply, ApiError> {
    let sb = sup.get(id)?;
    Ok(Reply::Stream(Box::new(move |sink| {
        if let Err(e) = sb.log.copy_to(0, follow, sink) {
            let body = json!({"code": "io", "message": format!("reading the log: {e}")});
            let _ = sink(&http::encode_frame(
                FrameKind::Error,
                body.to_string().as_bytes(),
            ));
        }
    })))
}

fn exec(sup: &Arc<Supervisor>, id: &str, req: &Request) -> Result<Reply, ApiError> {
    let spec: ExecRequest = parse_json(req)?;
    let started = sup.exec_start(id, &spec)?;
    if !req.flag("stream") {
        let mut framed = Vec::new();
        let exit = sup.exec_finish(started, &mut |kind, data| {
            framed.extend_from_slice(&http::encode_frame(kind, data));
            Ok(())
        })?;
        let (out, err) = split_frames(&framed);
        return Ok(Reply::Json(
            200,
            json!({
                "exit_code": exit.code,
                "exit_reason": exit.reason,
                "stdout": String::from_utf8_lossy(&out),
                "stderr": String::from_utf8_lossy(&err),
            }),
        ));
    }
    let sup = sup.clone();
    Ok(Reply::Stream(Box::new(move |sink| {
        let result = sup.exec_finish(started, &mut |kind, data| {
            sink(&http::encode_frame(kind, data))
        });
        let last = match result {
            Ok(exit) => http::encode_frame(
                FrameKind::Exit,
                json!({"exit_code": exit.code, "exit_reason": exit.reason})
                    .to_string()
                    .as_bytes(),
            ),
            Err(e) => error_frame(e.into()),
        };
        let _ = sink(&last);
    })))
}

/// Starts a sandbox created with `interactive` and joins the connection to its
/// stdio: stdin/close/resize frames in, output frames and a last exit frame out.
fn attach(sup: &Arc<Supervisor>, id: &str) -> Result<Reply, ApiError> {
    let started = sup.attach_start(id)?;
    let sup = sup.clone();
    Ok(Reply::Upgrade(Box::new(move |input, output| {
        sup.attach_finish(started, input, output);
    })))
}

fn run(sup: &Arc<Supervisor>, req: &Request) -> Result<Reply, ApiError> {
    let spec: SandboxSpec = parse_json(req)?;
    if !req.flag("stream") {
        return Ok(Reply::Json(200, json!(sup.run(&spec, None)?)));
    }
    let t0 = Instant::now();
    let sb = sup.create(&spec, false)?;
    let sup = sup.clone();
    Ok(Reply::Stream(Box::new(move |sink| {
        let result = sup.finish_run(t0, &sb, Some(&mut *sink));
        let _ = sink(&http::encode_frame(
            FrameKind::Exit,
            json!(result).to_string().as_bytes(),
        ));
    })))
}

fn error_frame(err: ApiError) -> Vec<u8> {
    let body = serde_json::to_vec(&err.body()).unwrap_or_default();
    http::encode_frame(FrameKind::Error, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_paths_get_405_unknown_404() {
        assert!(known_path(&["v1", "sandboxes", "abc", "logs"]));
        assert!(known_path(&["v1", "run"]));
        assert!(!known_path(&["v1", "nothing"]));
        assert!(!known_path(&["v1", "sandboxes", "abc", "pause"]));
    }

    #[test]
    fn empty_bodies_parse_as_empty_objects() {
        let req = Request::default();
        let v: Value = parse_json(&req).unwrap();
        assert_eq!(v, json!({}));
        let bad = Request {
            body: b"{not json".to_vec(),
            ..Request::default()
        };
        let err = parse_json::<Value>(&bad).unwrap_err();
        assert_eq!(err.status(), (400, "bad_json"));
    }
}
