//! A small blocking client for Mailman 3's REST API (`[mailman_api]`): GET with basic auth,
//! JSON answers, over hyper's HTTP/1 client on a loopback connection. `doctor` checks
//! Mailman's settings with it; the owners' page shows Mailman's roster.

use crate::config::MailmanApi;
use bytes::Bytes;
use hyper::header::AUTHORIZATION;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::time::Duration;

/// Mailman answers in milliseconds; a stuck runner must not hang doctor.
const TIMEOUT: Duration = Duration::from_secs(15);
/// Rosters of large lists are the biggest answers.
const MAX_BODY: usize = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum RestError {
    #[error("{0}")]
    Setup(String),
    #[error("GET {path}: {why}")]
    Transport { path: String, why: String },
    #[error("GET {path}: HTTP {status}")]
    Status { path: String, status: u16 },
    #[error("GET {path}: not JSON: {source}")]
    Json {
        path: String,
        #[source]
        source: serde_json::Error,
    },
}

impl RestError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, RestError::Status { status: 404, .. })
    }
}

pub struct Rest {
    runtime: tokio::runtime::Runtime,
    authority: String,
    base_path: String,
    authorization: String,
}

impl Rest {
    /// A client for `api`; `password` is Mailman's `admin_pass`.
    pub fn new(api: &MailmanApi, password: &str) -> Result<Rest, RestError> {
        let endpoint = api.endpoint().map_err(RestError::Setup)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| RestError::Setup(format!("tokio runtime: {e}")))?;
        let credentials = format!("{}:{password}", api.user);
        Ok(Rest {
            runtime,
            authority: endpoint.authority,
            base_path: endpoint.base_path,
            authorization: format!(
                "Basic {}",
                data_encoding::BASE64.encode(credentials.as_bytes())
            ),
        })
    }

    /// `GET base/path`, its JSON body; any status but 200 is an error.
    pub fn get(&self, path: &str) -> Result<Value, RestError> {
        let full = format!("{}/{}", self.base_path, path.trim_start_matches('/'));
        let fail = |why: String| RestError::Transport {
            path: full.clone(),
            why,
        };
        let (status, body) = self
            .runtime
            .block_on(async {
                tokio::time::timeout(TIMEOUT, self.exchange(&full))
                    .await
                    .unwrap_or_else(|_| Err(format!("no answer within {}s", TIMEOUT.as_secs())))
            })
            .map_err(fail)?;
        if status != 200 {
            return Err(RestError::Status { path: full, status });
        }
        serde_json::from_slice(&body).map_err(|source| RestError::Json { path: full, source })
    }

    async fn exchange(&self, path: &str) -> Result<(u16, Bytes), String> {
        let stream = tokio::net::TcpStream::connect(&self.authority)
            .await
            .map_err(|e| format!("connect to {}: {e}", self.authority))?;
        let auth = [(AUTHORIZATION, self.authorization.as_str())];
        crate::http_client::get(TokioIo::new(stream), &self.authority, path, &auth, MAX_BODY).await
    }
}

/// A roster or collection's `entries` (absent when empty, as Mailman leaves it out).
pub fn entries(collection: &Value) -> &[Value] {
    collection
        .get("entries")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// A JSON value as Mailman's configuration strings read (`"10025"`, `10025`, `true`).
pub fn text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

/// A client for `api` with its password file read, or why there is none.
pub(crate) fn connect(api: &MailmanApi) -> Result<Rest, String> {
    let password = match api.password() {
        None => return Err("mailman_api.password_file is not set".into()),
        Some(Err(e)) => return Err(format!("{}: {e}", api.password_file.display())),
        Some(Ok(p)) => p,
    };
    Rest::new(api, &password).map_err(|e| e.to_string())
}
