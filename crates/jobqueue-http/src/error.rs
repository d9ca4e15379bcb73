//! [`ApiError`]: every refusal, as a status, a code and a message, answered
//! as `{"error": {"code": "...", "message": "..."}}`.
//!
//! The codes are a closed list ([`Code`]); `docs/http-api.md` and the
//! OpenAPI document list the same ones, and a test checks that they agree.

use http::{HeaderValue, Response, StatusCode, header};
use jobqueue::core::{ErrorKind, JobId, StoreError};
use serde_json::{Map, Value, json};

use crate::api::{ApiBody, full};

/// The error codes, each with its one HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Code {
    /// 400: the body is not JSON (or not UTF-8, or nested too deep to read).
    BadRequest,
    /// 401: the token is missing or wrong.
    Unauthorized,
    /// 404: no such job, or no such route.
    NotFound,
    /// 405: the path exists, the method does not.
    MethodNotAllowed,
    /// 409: the job's state does not allow it.
    Conflict,
    /// 409: a queued or running job holds the unique key.
    Duplicate,
    /// 413: the body is larger than `max_body`.
    PayloadTooLarge,
    /// 422: well-formed but wrong.
    Invalid,
    /// 500: a fault of the server.
    Internal,
    /// 503: the store is busy, shutting down or gone; try again later.
    Unavailable,
}

impl Code {
    /// Every code, for the docs and the OpenAPI document.
    pub(crate) const ALL: [Code; 10] = [
        Code::BadRequest,
        Code::Unauthorized,
        Code::NotFound,
        Code::MethodNotAllowed,
        Code::Conflict,
        Code::Duplicate,
        Code::PayloadTooLarge,
        Code::Invalid,
        Code::Internal,
        Code::Unavailable,
    ];

    /// The code as the JSON shows it.
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Code::BadRequest => "bad_request",
            Code::Unauthorized => "unauthorized",
            Code::NotFound => "not_found",
            Code::MethodNotAllowed => "method_not_allowed",
            Code::Conflict => "conflict",
            Code::Duplicate => "duplicate",
            Code::PayloadTooLarge => "payload_too_large",
            Code::Invalid => "invalid",
            Code::Internal => "internal",
            Code::Unavailable => "unavailable",
        }
    }

    /// Its HTTP status.
    pub(crate) const fn status(self) -> StatusCode {
        match self {
            Code::BadRequest => StatusCode::BAD_REQUEST,
            Code::Unauthorized => StatusCode::UNAUTHORIZED,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Code::Conflict | Code::Duplicate => StatusCode::CONFLICT,
            Code::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Code::Invalid => StatusCode::UNPROCESSABLE_ENTITY,
            Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// A refused request.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    code: Code,
    message: String,
    /// Extra members of the error object (`job_id` of a duplicate, `index`
    /// of the bad job of a batch); they are repeated at the top level.
    details: Map<String, Value>,
    /// `Allow` of a 405.
    allow: Option<String>,
}

impl ApiError {
    pub(crate) fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            details: Map::new(),
            allow: None,
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(Code::BadRequest, message)
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(Code::Invalid, message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(Code::NotFound, message)
    }

    pub(crate) fn job_not_found(id: &str) -> Self {
        Self::not_found(format!("job {id} not found"))
    }

    pub(crate) fn method_not_allowed(method: &http::Method, allow: &[&str]) -> Self {
        let mut e = Self::new(
            Code::MethodNotAllowed,
            format!(
                "method {method} is not allowed here; allowed: {}",
                allow.join(", ")
            ),
        );
        e.allow = Some(allow.join(", "));
        e
    }

    /// Adds `key` to the error object (and the top level).
    pub(crate) fn with(mut self, key: &str, value: Value) -> Self {
        self.details.insert(key.to_owned(), value);
        self
    }

    /// Prefixes the message with where in the request the problem is.
    pub(crate) fn at(mut self, place: &str) -> Self {
        self.message = format!("{place}: {}", self.message);
        self
    }

    #[cfg(test)]
    pub(crate) fn code(&self) -> Code {
        self.code
    }

    /// The JSON body.
    pub(crate) fn body(&self) -> Value {
        let mut error = Map::new();
        error.insert("code".into(), json!(self.code.as_str()));
        error.insert("message".into(), json!(self.message));
        let mut top = Map::new();
        for (k, v) in &self.details {
            error.insert(k.clone(), v.clone());
            top.insert(k.clone(), v.clone());
        }
        top.insert("error".into(), Value::Object(error));
        Value::Object(top)
    }

    pub(crate) fn into_response(self) -> Response<ApiBody> {
        let mut response = json_response(self.code.status(), &self.body());
        let headers = response.headers_mut();
        if self.code == Code::Unauthorized {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"jobqueue\""),
            );
        }
        if let Some(allow) = self.allow.and_then(|a| HeaderValue::from_str(&a).ok()) {
            headers.insert(header::ALLOW, allow);
        }
        response
    }
}

/// A JSON response.
pub(crate) fn json_response<T: serde::Serialize>(
    status: StatusCode,
    body: &T,
) -> Response<ApiBody> {
    // The bodies are made of strings, numbers and JSON values with string
    // keys: serializing them cannot fail, and if it did, an empty object
    // beats a panic.
    let text = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut response = Response::new(full(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

impl From<jobqueue::Error> for ApiError {
    fn from(e: jobqueue::Error) -> Self {
        match e {
            jobqueue::Error::Store(e) => e.into(),
            e @ (jobqueue::Error::UnknownPipeline(_)
            | jobqueue::Error::WebhookUrl(_)
            | jobqueue::Error::Webhook(_)
            | jobqueue::Error::Json(_)) => ApiError::invalid(e.to_string()),
            other => {
                tracing::error!(error = %other, "request failed");
                ApiError::new(Code::Internal, other.to_string())
            }
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        if let StoreError::Batch { index, error } = e {
            let inner = ApiError::from(*error);
            return ApiError {
                message: format!("jobs[{index}]: {}", inner.message),
                ..inner
            }
            .with("index", json!(index));
        }
        let code = match e.kind() {
            ErrorKind::NotFound => Code::NotFound,
            ErrorKind::Duplicate => Code::Duplicate,
            ErrorKind::Invalid => Code::Invalid,
            ErrorKind::Conflict | ErrorKind::LeaseLost => Code::Conflict,
            ErrorKind::Busy | ErrorKind::Closed | ErrorKind::InUse => Code::Unavailable,
            _ => Code::Internal,
        };
        if matches!(code, Code::Internal | Code::Unavailable) {
            tracing::error!(error = %e, "the store failed a request");
        }
        let error = ApiError::new(code, e.to_string());
        match e {
            StoreError::Duplicate { existing, .. }
            | StoreError::DuplicateInPeriod { existing, .. } => {
                error.with("job_id", job_id(existing))
            }
            _ => error,
        }
    }
}

fn job_id(id: JobId) -> Value {
    Value::String(id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_names_the_holder_in_the_error_and_at_the_top() {
        let id = JobId::new();
        let e = ApiError::from(StoreError::Duplicate {
            key: "k".into(),
            existing: id,
        });
        let body = e.body();
        assert_eq!(body["error"]["code"], "duplicate");
        assert_eq!(body["error"]["job_id"], id.to_string());
        assert_eq!(body["job_id"], id.to_string());
        assert_eq!(e.code().status(), StatusCode::CONFLICT);
    }

    #[test]
    fn batch_errors_keep_their_kind_and_name_the_index() {
        let e = ApiError::from(StoreError::Batch {
            index: 2,
            error: Box::new(StoreError::Invalid("bad".into())),
        });
        let body = e.body();
        assert_eq!(body["error"]["code"], "invalid");
        assert_eq!(body["error"]["index"], 2);
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("jobs[2]: ")
        );
    }

    #[test]
    fn the_user_docs_list_every_code_with_its_status() {
        let docs = include_str!("../../../docs/http-api.md");
        for code in Code::ALL {
            let row = format!("| {} | `{}` |", code.status().as_u16(), code.as_str());
            assert!(docs.contains(&row), "docs/http-api.md has no row {row}");
        }
    }

    #[test]
    fn codes_and_statuses() {
        for code in Code::ALL {
            assert!(code.status().is_client_error() || code.status().is_server_error());
        }
        assert_eq!(Code::Invalid.status().as_u16(), 422);
        assert_eq!(Code::PayloadTooLarge.status().as_u16(), 413);
    }
}
