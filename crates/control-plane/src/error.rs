//! The API's errors: what went wrong ([`ErrorKind`], which picks the HTTP status and the
//! Kubernetes `Status` reason) and the `Status` documents kubectl reads and prints.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use tandem_objects::Kind;
use tandem_store::StoreError;

/// What went wrong with a request, as Kubernetes names it: it decides the HTTP status and the
/// `reason` of the `Status` answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    BadRequest,
    NotFound,
    AlreadyExists,
    /// A stale resource version: someone else wrote first.
    Conflict,
    /// A watch from a version the store no longer has.
    Expired,
    /// The object, or the change, breaks a validation rule.
    Invalid,
    /// An admission rule refused the change, answered as cStor's admission webhook answers
    /// (HTTP 400, reason BadRequest, the message after "admission webhook ... denied the
    /// request: "), so kubectl prints it as cStor's users know it.
    Denied,
    /// A patch in a format this API does not take (strategic merge, apply).
    UnsupportedMediaType,
    /// A path that exists, with a method it does not serve.
    MethodNotAllowed,
    Internal,
    /// The store cannot be reached or cannot decide (etcd without quorum): try again, or
    /// another control plane.
    Unavailable,
    /// The request came without a credential this API takes.
    Unauthorized,
    /// The caller is known but may not do this.
    Forbidden,
}

impl ErrorKind {
    pub fn status(self) -> StatusCode {
        match self {
            ErrorKind::BadRequest | ErrorKind::Denied => StatusCode::BAD_REQUEST,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::AlreadyExists | ErrorKind::Conflict => StatusCode::CONFLICT,
            ErrorKind::Expired => StatusCode::GONE,
            ErrorKind::Invalid => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorKind::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorKind::Forbidden => StatusCode::FORBIDDEN,
        }
    }

    /// The `reason` of the `Status` answer.
    pub fn reason(self) -> &'static str {
        match self {
            ErrorKind::BadRequest | ErrorKind::Denied => "BadRequest",
            ErrorKind::NotFound => "NotFound",
            ErrorKind::AlreadyExists => "AlreadyExists",
            ErrorKind::Conflict => "Conflict",
            ErrorKind::Expired => "Expired",
            ErrorKind::Invalid => "Invalid",
            ErrorKind::UnsupportedMediaType => "UnsupportedMediaType",
            ErrorKind::MethodNotAllowed => "MethodNotAllowed",
            ErrorKind::Internal => "InternalError",
            ErrorKind::Unavailable => "ServiceUnavailable",
            ErrorKind::Unauthorized => "Unauthorized",
            ErrorKind::Forbidden => "Forbidden",
        }
    }
}

/// A failed request, answered as a Kubernetes `Status` whose message names what was wrong.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    kind: ErrorKind,
    message: String,
}

impl ApiError {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> ApiError {
        ApiError {
            kind,
            message: message.into(),
        }
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorKind::BadRequest, message)
    }

    pub(crate) fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorKind::Invalid, message)
    }

    /// An admission rule's refusal.
    pub(crate) fn denied(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorKind::Denied, message)
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// The `Status` document kubectl reads (also the object of a watch's ERROR event).
    pub(crate) fn status_document(&self) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Status",
            "metadata": {},
            "status": "Failure",
            "reason": self.kind.reason(),
            "message": self.message,
            "code": self.kind.status().as_u16(),
        })
    }

    pub(crate) fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorKind::Internal, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.kind.status(), Json(self.status_document())).into_response()
    }
}

/// Store errors, worded as kubectl users know them.
pub(crate) fn store_error(kind: Kind, error: StoreError) -> ApiError {
    let resource = resource_name(kind);
    match error {
        StoreError::NotFound(key) => ApiError::new(
            ErrorKind::NotFound,
            format!("{resource} \"{}\" not found", key.name),
        ),
        StoreError::AlreadyExists(key) => ApiError::new(
            ErrorKind::AlreadyExists,
            format!("{resource} \"{}\" already exists", key.name),
        ),
        error @ StoreError::Conflict { .. } => {
            ApiError::new(ErrorKind::Conflict, error.to_string())
        }
        error @ StoreError::Expired { .. } => ApiError::new(ErrorKind::Expired, error.to_string()),
        error @ StoreError::Invalid { .. } => ApiError::invalid(error.to_string()),
        error @ StoreError::Fenced { .. } => ApiError::new(ErrorKind::Conflict, error.to_string()),
        error @ StoreError::Unavailable(_) => {
            ApiError::new(ErrorKind::Unavailable, error.to_string())
        }
        error @ (StoreError::Storage(_) | StoreError::InUse(_)) => {
            ApiError::internal(error.to_string())
        }
    }
}

/// "cstorvolumeconfigs.cstor.openebs.io", as kubectl names a resource in messages.
pub(crate) fn resource_name(kind: Kind) -> String {
    match kind {
        Kind::Event => kind.plural().to_string(),
        _ => format!("{}.cstor.openebs.io", kind.plural()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kind of error answers with the Kubernetes `Status` it always had.
    #[tokio::test]
    async fn given_each_error_kind_when_answered_then_its_status_code_and_reason() {
        let table = [
            (ErrorKind::BadRequest, 400, "BadRequest"),
            (ErrorKind::NotFound, 404, "NotFound"),
            (ErrorKind::AlreadyExists, 409, "AlreadyExists"),
            (ErrorKind::Conflict, 409, "Conflict"),
            (ErrorKind::Expired, 410, "Expired"),
            (ErrorKind::Invalid, 422, "Invalid"),
            (ErrorKind::Denied, 400, "BadRequest"),
            (ErrorKind::UnsupportedMediaType, 415, "UnsupportedMediaType"),
            (ErrorKind::MethodNotAllowed, 405, "MethodNotAllowed"),
            (ErrorKind::Internal, 500, "InternalError"),
            (ErrorKind::Unavailable, 503, "ServiceUnavailable"),
            (ErrorKind::Unauthorized, 401, "Unauthorized"),
            (ErrorKind::Forbidden, 403, "Forbidden"),
        ];
        for (kind, code, reason) in table {
            let response = ApiError::new(kind, "what was wrong").into_response();
            assert_eq!(response.status().as_u16(), code, "{kind:?}");
            let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .expect("a body");
            let body: Value = serde_json::from_slice(&bytes).expect("JSON");
            assert_eq!(
                body,
                json!({
                    "apiVersion": "v1",
                    "kind": "Status",
                    "metadata": {},
                    "status": "Failure",
                    "reason": reason,
                    "message": "what was wrong",
                    "code": code,
                })
            );
        }
    }
}
