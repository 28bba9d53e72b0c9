//! Request parts read the API's way: every refusal is a problem document, never axum's
//! plain-text rejections.

use super::auth::{self, Grant};
use super::problem::Problem;
use super::Api;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::time::SystemTime;

/// The caller, authenticated by its bearer token.
pub struct Caller(pub Grant);

/// What a 401 says, whatever the reason (the log has the reason).
const REFUSED: &str = "a valid bearer token is required (missing, unknown, revoked or expired)";

impl FromRequestParts<Arc<Api>> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, api: &Arc<Api>) -> Result<Self, Problem> {
        let refuse = |why: auth::Refused| {
            tracing::debug!("api: {} {}: refused: {why}", parts.method, parts.uri.path());
            Problem::new(StatusCode::UNAUTHORIZED, REFUSED)
        };
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, rest) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            })
            .ok_or_else(|| refuse(auth::Refused::Missing))?
            .to_string();
        let id = auth::token_id(&token)
            .ok_or_else(|| refuse(auth::Refused::Malformed))?
            .to_string();
        let record = api
            .run(move |d| {
                d.store()
                    .token_get(&id)
                    .map_err(|e| super::store_problem("token lookup", e))
            })
            .await?;
        auth::verify(&token, record.as_ref(), SystemTime::now())
            .map(Caller)
            .map_err(refuse)
    }
}

/// A JSON request body (`application/json`), within the body limit.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Problem> {
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
        if !json {
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "the body must be application/json",
            ));
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| Problem::new(e.status(), e.body_text()))?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| Problem::new(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")))
    }
}

/// Path parameters.
pub struct PathArgs<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for PathArgs<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(t)| PathArgs(t))
            .map_err(|e| Problem::new(StatusCode::BAD_REQUEST, e.body_text()))
    }
}

/// Query parameters.
pub struct QueryArgs<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for QueryArgs<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(t)| QueryArgs(t))
            .map_err(|e| Problem::new(StatusCode::BAD_REQUEST, e.body_text()))
    }
}
