//! API errors and the one place where each maps to an HTTP status and a stable
//! `code`. Every error body is `{"code": "...", "message": "..."}`; the message
//! carries the whole cause chain.

use serde::Serialize;
use spore_agent::protocol::messages::ErrorCode;

use super::http::HttpError;
use crate::backend::BackendError;
use crate::image::registry::RegistryError;
use crate::image::{ImportError, StoreError};
use crate::supervisor::images::ImagesError;
use crate::supervisor::SupervisorError;

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("malformed JSON body")]
    BadJson(#[source] serde_json::Error),
    #[error("no route {0} {1}")]
    NoRoute(String, String),
    #[error("{0} is not allowed on {1}")]
    MethodNotAllowed(String, String),
    #[error("missing or wrong bearer token")]
    Unauthorized,
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
}

/// The JSON body of every error response.
#[derive(Debug, Serialize)]
pub struct ErrorBody {
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    /// The HTTP status and machine-readable code of this error. The only place
    /// statuses are decided.
    pub fn status(&self) -> (u16, &'static str) {
        use SupervisorError as S;
        match self {
            ApiError::Http(HttpError::HeadTooLarge) => (431, "headers_too_large"),
            ApiError::Http(HttpError::BodyTooLarge) => (413, "body_too_large"),
            ApiError::Http(HttpError::LengthRequired) => (411, "length_required"),
            ApiError::Http(_) => (400, "bad_request"),
            ApiError::BadJson(_) => (400, "bad_json"),
            ApiError::NoRoute(..) => (404, "no_route"),
            ApiError::MethodNotAllowed(..) => (405, "method_not_allowed"),
            ApiError::Unauthorized => (401, "unauthorized"),
            ApiError::Supervisor(e) => match e {
                S::InvalidSpec(_) => (400, "invalid_spec"),
                S::UnknownImage(_) => (404, "unknown_image"),
                S::ImageNotBuilt(..) => (503, "image_not_built"),
                S::UnknownTemplate(_) => (404, "unknown_template"),
                S::NotFound(_) => (404, "not_found"),
                S::Ambiguous(_) => (400, "ambiguous_id"),
                S::Conflict(_) => (409, "conflict"),
                S::Io { .. } => (500, "io"),
                S::Images(i) => image_status(i),
                S::Backend(b) => match b {
                    BackendError::VmUnavailable(_) => (422, "vm_unavailable"),
                    BackendError::NotYetAvailable(_) => (501, "not_yet_available"),
                    BackendError::AgentMissing(_) => (503, "agent_missing"),
                    BackendError::LimitsUnsupported { .. } => (422, "limits_unsupported"),
                    BackendError::Refused(reply) => match reply.code {
                        ErrorCode::BadRequest => (400, "agent_bad_request"),
                        ErrorCode::Unsupported => (422, "unsupported_on_host"),
                        ErrorCode::NotFound => (404, "agent_not_found"),
                        ErrorCode::InvalidState | ErrorCode::AlreadyAttached => {
                            (409, "agent_invalid_state")
                        }
                        _ => (500, "agent_error"),
                    },
                    _ => (500, "backend"),
                },
            },
        }
    }

    /// The body: code and the whole cause chain as the message.
    pub fn body(&self) -> ErrorBody {
        let mut message = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(s) = source {
            let text = s.to_string();
            if !message.contains(&text) {
                message.push_str(": ");
                message.push_str(&text);
            }
            source = s.source();
        }
        ErrorBody {
            code: self.status().1,
            message,
        }
    }
}

/// Image operations: what the client sent is 4xx, the store and tools 5xx.
fn image_status(e: &ImagesError) -> (u16, &'static str) {
    use ImagesError as I;
    match e {
        I::Store(StoreError::NotFound(_)) => (404, "unknown_image"),
        I::Store(StoreError::Ambiguous(_)) => (400, "ambiguous_image"),
        I::Store(_) => (500, "image_store"),
        I::Import(_, ImportError::Store(_) | ImportError::FsImage(_)) => (500, "image_store"),
        I::Import(_, ImportError::Registry(RegistryError::Reference(_))) => {
            (400, "invalid_reference")
        }
        I::Import(_, ImportError::Registry(_)) => (502, "registry"),
        I::Import(..) => (400, "invalid_image"),
        I::Config(_) => (400, "invalid_spec"),
        I::InUse { .. } => (409, "image_in_use"),
        I::NoSource(_) => (400, "invalid_source"),
    }
}

#[cfg(test)]
mod tests {
    use spore_agent::protocol::messages::ErrorReply;

    use super::*;

    fn image(e: ImagesError) -> ApiError {
        SupervisorError::from(e).into()
    }

    #[test]
    fn statuses() {
        let cases: Vec<(ApiError, u16)> = vec![
            (HttpError::BodyTooLarge.into(), 413),
            (HttpError::HeadTooLarge.into(), 431),
            (SupervisorError::InvalidSpec("x".into()).into(), 400),
            (SupervisorError::UnknownTemplate("x".into()).into(), 404),
            (SupervisorError::Conflict("x".into()).into(), 409),
            (
                SupervisorError::from(BackendError::Refused(ErrorReply::new(
                    ErrorCode::Unsupported,
                    "limits",
                )))
                .into(),
                422,
            ),
            (
                SupervisorError::from(BackendError::VmUnavailable("kvm_pvm".into())).into(),
                422,
            ),
            (ApiError::Unauthorized, 401),
            (image(ImagesError::NoSource("/x".into())), 400),
            (image(StoreError::NotFound("x".into()).into()), 404),
            (
                image(ImagesError::InUse {
                    image: "x".into(),
                    sandboxes: vec!["abc".into()],
                }),
                409,
            ),
            (
                image(ImagesError::Import(
                    "/x.tar".into(),
                    ImportError::NotAFile("/x/blob".into()),
                )),
                400,
            ),
        ];
        for (err, status) in cases {
            assert_eq!(err.status().0, status, "{err:?}");
            assert!(!err.body().message.is_empty());
        }
    }

    #[test]
    fn body_has_the_cause_chain() {
        let json_err = serde_json::from_str::<serde_json::Value>("{").unwrap_err();
        let body = ApiError::BadJson(json_err).body();
        assert_eq!(body.code, "bad_json");
        assert!(
            body.message.starts_with("malformed JSON body: "),
            "{}",
            body.message
        );
    }
}
