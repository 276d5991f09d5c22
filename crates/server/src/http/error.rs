//! API errors: every failure is a JSON body naming the problem and, where
//! there is one, the field, e.g.
//! `{"error": {"code": "invalid_field", "field": "timeout_seconds", "message": "must be between 1 and 604800"}}`.

use crate::service::auth::Denied;
use crate::service::error::{Refusal, ServiceError};
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::Serialize;
use shepherd_core::FieldError;
use shepherd_store::StoreError;

/// The body of every error response.
#[derive(Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `invalid_field`, `not_found`.
    pub code: String,
    /// The offending field's path in the request, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub message: String,
}

/// An error response.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub field: Option<String>,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, field: None, message: message.into() }
    }

    pub fn field(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError { status: StatusCode::BAD_REQUEST, code: "invalid_field", field: Some(field.into()), message: message.into() }
    }

    pub fn not_found(what: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", what)
    }

    /// The same error, naming the field it is about.
    pub fn with_field(mut self, field: impl Into<String>) -> ApiError {
        self.field = Some(field.into());
        self
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> ApiError {
        ApiError::field(e.field, e.message)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::Invalid { field, message } => return ApiError::field(field, message),
            StoreError::IdempotencyConflict(key) => {
                let message = format!("Idempotency-Key `{key}` was used within 24 hours for a different request");
                return ApiError::new(StatusCode::CONFLICT, "idempotency_key_reused", message).with_field("Idempotency-Key");
            }
            _ => {}
        }
        tracing::error!(error = %e, "store error while serving a request");
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", format!("the store failed: {e}"))
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> ApiError {
        match e {
            ServiceError::NotFound(id) => ApiError::not_found(format!("no task with id {id}")),
            ServiceError::Missing(what) => ApiError::not_found(format!("no {what}")),
            ServiceError::Forbidden { field, message } => ApiError::new(StatusCode::FORBIDDEN, "forbidden", message).with_field(field),
            ServiceError::Invalid(e) => e.into(),
            ServiceError::QuotaExceeded(message) => ApiError::new(StatusCode::TOO_MANY_REQUESTS, "quota_exceeded", message),
            ServiceError::NotCancellable(message) => ApiError::new(StatusCode::CONFLICT, "not_cancellable", message),
            ServiceError::Conflict(message) => ApiError::new(StatusCode::CONFLICT, "conflict", message),
            ServiceError::TooLarge(message) => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", message).with_field("body"),
            ServiceError::Refused { kind, code, field, message } => {
                let status = match kind {
                    Refusal::Forbidden => StatusCode::FORBIDDEN,
                    Refusal::Conflict => StatusCode::CONFLICT,
                    Refusal::Quota => StatusCode::TOO_MANY_REQUESTS,
                };
                ApiError { status, code, field, message }
            }
            ServiceError::Denied(e) => e.into(),
            ServiceError::Store(e) => e.into(),
        }
    }
}

impl From<Denied> for ApiError {
    fn from(e: Denied) -> ApiError {
        match e {
            Denied::AdminOnly => ApiError::new(StatusCode::FORBIDDEN, "forbidden", e.to_string()),
            Denied::NoProject(_) => ApiError::not_found(e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { error: ErrorDetail { code: self.code.to_string(), field: self.field, message: self.message } };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            // The store is restarting or failing over: worth trying again soon.
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from_static("1"));
        }
        response
    }
}

/// A JSON body whose decoding errors name the field (via
/// `serde_path_to_error`) instead of axum's plain-text rejections.
pub struct ApiJson<T>(pub T);

/// Decodes JSON, naming the field on failure.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    shepherd_core::decode_json(bytes).map_err(|e| {
        let code = if e.malformed { "malformed_json" } else { "invalid_field" };
        ApiError::new(StatusCode::BAD_REQUEST, code, e.message).with_field(e.field)
    })
}

/// [`ApiJson`], keeping the body's bytes too (a task naming a code is
/// laid over the code as sent: the bytes tell which fields it set).
pub struct ApiJsonBody<T>(pub T, pub axum::body::Bytes);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = body_bytes(req, state).await?;
        decode(&bytes).map(|value| ApiJsonBody(value, bytes))
    }
}

async fn body_bytes<S: Send + Sync>(req: Request, state: &S) -> Result<axum::body::Bytes, ApiError> {
    let bytes = axum::body::Bytes::from_request(req, state).await.map_err(|e: BytesRejection| {
        let status = e.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError { status, code: "body_too_large", field: Some("body".into()), message: e.body_text() }
        } else {
            ApiError { status, code: "bad_body", field: Some("body".into()), message: e.body_text() }
        }
    })?;
    if bytes.is_empty() {
        return Err(ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "malformed_json",
            field: Some("body".into()),
            message: "request body is empty; send a JSON object".into(),
        });
    }
    Ok(bytes)
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = body_bytes(req, state).await?;
        decode(&bytes).map(ApiJson)
    }
}

/// Decodes a query string (empty: the default), naming `query` on failure.
pub fn query<T: serde::de::DeserializeOwned + Default>(raw: Option<String>) -> Result<T, ApiError> {
    match raw.as_deref() {
        None | Some("") => Ok(T::default()),
        Some(text) => serde_urlencoded::from_str(text).map_err(|e| ApiError::field("query", format!("bad query string: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        cpu: u32,
    }
    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        items: Vec<Inner>,
    }

    #[test]
    fn errors_name_the_field() {
        let e = decode::<Outer>(br#"{"items":[{"cpu":1},{"cpu":-1}]}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("items[1].cpu"));
        let e = decode::<Outer>(br#"{"items":[{"cpu":1,"gpu":2}]}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("items[0].gpu"));
        let e = decode::<Outer>(br#"{}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("items"));
        let e = decode::<Outer>(br#"{"items":"#).unwrap_err();
        assert_eq!(e.code, "malformed_json");
    }
}
