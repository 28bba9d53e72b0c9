//! Errors as RFC 9457 problem details (`application/problem+json`).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

pub const CONTENT_TYPE: &str = "application/problem+json";

/// RFC 9457 §3.1; `type` is `about:blank` (the status says it all) unless a member below
/// adds to it.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = Problem)]
pub struct ProblemDocument {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Policy validation: where `check-config` points (1-based).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
    /// A refused policy change: the keys it would loosen.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub loosened: Vec<String>,
}

/// A problem answer (boxed: handlers return it as their error, and it is large).
#[derive(Debug, Clone)]
pub struct Problem(Box<ProblemDocument>);

impl std::ops::Deref for Problem {
    type Target = ProblemDocument;
    fn deref(&self) -> &ProblemDocument {
        &self.0
    }
}

impl std::ops::DerefMut for Problem {
    fn deref_mut(&mut self) -> &mut ProblemDocument {
        &mut self.0
    }
}

impl Problem {
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Problem {
        Problem(Box::new(ProblemDocument {
            kind: "about:blank".into(),
            title: status.canonical_reason().unwrap_or("Error").into(),
            status: status.as_u16(),
            detail: detail.into(),
            line: None,
            column: None,
            loosened: Vec::new(),
        }))
    }

    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// An internal failure: logged with its cause, answered without it.
    pub fn internal(what: &str, e: impl std::fmt::Display) -> Problem {
        tracing::error!("api: {what}: {e}");
        Problem::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{what} failed"))
    }

    /// A temporary failure (the store is busy or unreachable): try again.
    pub fn unavailable(what: &str, e: impl std::fmt::Display) -> Problem {
        tracing::warn!("api: {what}: {e}");
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{what}: temporarily unavailable, try again"),
        )
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = serde_json::to_vec(&*self.0).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        if status == StatusCode::UNAUTHORIZED {
            // RFC 6750 §3.
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"listcrypt\""),
            );
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        response
    }
}
