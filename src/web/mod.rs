//! The owners' page on `api_listen`: server-rendered HTML (maud), forms without JavaScript.
//!
//! Owners sign in with an API token; the session cookie names a session held in memory
//! (session.rs) that re-authenticates its token on every request. Who may see or change what
//! is the API's decision: the pages call its handlers (src/api/routes.rs, policy_routes.rs)
//! with the session's grant, so the page can never do more than the token could.

mod pages;
pub mod session;

use crate::api::auth::{self, Grant};
use crate::api::extract::Caller;
use crate::api::problem::Problem;
use crate::api::Api;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use session::{Limiter, Sessions};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use zeroize::Zeroizing;

/// The session cookie, and the sign-in form's double-submit cookie.
pub const SESSION_COOKIE: &str = "listcrypt_session";
const SIGNIN_COOKIE: &str = "listcrypt_signin";

/// Every page: nothing but our own style sheet loads, forms post only here, no framing.
pub const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; \
    form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The page's shared state.
pub struct Web {
    api: Arc<Api>,
    sessions: Mutex<Sessions>,
    limiter: Mutex<Limiter>,
}

/// The pages, merged into the API's router.
pub fn router(api: Arc<Api>) -> Router {
    let web = Arc::new(Web {
        api,
        sessions: Mutex::new(Sessions::default()),
        limiter: Mutex::new(Limiter::new(Instant::now())),
    });
    Router::new()
        .route("/", get(pages::home))
        .route("/signin", post(pages::sign_in))
        .route("/signout", post(pages::sign_out))
        .route("/owner/{list}", get(pages::owner))
        .route(
            "/owner/{list}/policy",
            get(pages::policy).post(pages::policy_post),
        )
        .route("/lists/{list}", get(pages::public))
        .route("/style.css", get(pages::style))
        .layer(DefaultBodyLimit::max(crate::api::MAX_BODY_BYTES))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(web)
}

async fn security_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    for (name, value) in [
        ("content-security-policy", CSP),
        ("x-content-type-options", "nosniff"),
        // Not `no-referrer`: with it, browsers send `Origin: null` on our own forms.
        ("referrer-policy", "same-origin"),
        ("x-frame-options", "DENY"),
        ("cross-origin-opener-policy", "same-origin"),
        ("cache-control", "no-store"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    r
}

/// A signed-in owner: the grant of the session's token, now.
pub struct Owner {
    pub grant: Grant,
    pub csrf: String,
    pub session: String,
}

/// The value of cookie `name`.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
}

/// `Set-Cookie` for our cookies: never readable by scripts, never sent cross-site, only over
/// TLS (browsers make an exception for localhost).
fn set_cookie(name: &str, value: &str, max_age: u64) -> (header::HeaderName, String) {
    (
        header::SET_COOKIE,
        format!("{name}={value}; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age={max_age}"),
    )
}

/// What the API's bearer authentication makes of `token` (the one code path for tokens).
async fn authenticate(api: &Arc<Api>, token: &str) -> Result<Grant, Problem> {
    let Ok(value) = HeaderValue::from_str(&format!("Bearer {token}")) else {
        return Err(Problem::new(StatusCode::UNAUTHORIZED, "not a token"));
    };
    let (mut parts, ()) = axum::http::Request::builder()
        .uri("/")
        .header(header::AUTHORIZATION, value)
        .body(())
        .map_err(|e| Problem::internal("sign-in", e))?
        .into_parts();
    Caller::from_request_parts(&mut parts, api)
        .await
        .map(|Caller(g)| g)
}

impl Web {
    /// The owner of the request's session; `None` without a live session or once its token
    /// is revoked or expired (the session then ends). A store failure is an error.
    async fn owner(&self, headers: &HeaderMap) -> Result<Option<Owner>, Problem> {
        let Some(id) = cookie(headers, SESSION_COOKIE) else {
            return Ok(None);
        };
        let found = self.sessions().get(id, Instant::now());
        let Some((token, csrf)) = found else {
            return Ok(None);
        };
        match authenticate(&self.api, &token).await {
            Ok(grant) => Ok(Some(Owner {
                grant,
                csrf,
                session: id.to_string(),
            })),
            Err(p) if p.status() == StatusCode::UNAUTHORIZED => {
                self.sessions().close(id);
                Ok(None)
            }
            Err(p) => Err(p),
        }
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, Sessions> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn open_session(&self, token: &Zeroizing<String>) -> (String, String) {
        self.sessions().open(token, Instant::now())
    }

    /// One sign-in attempt from the request's client; `Err` is the 429 answer.
    fn rate_limit(&self, peer: Option<SocketAddr>) -> Result<(), Response> {
        let ip = peer.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |p| p.ip());
        let verdict = self
            .limiter
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .attempt(ip, Instant::now());
        verdict.map_err(|wait| {
            let secs = wait.as_secs() + 1;
            tracing::info!("web: sign-in from {ip} rate-limited for {secs} s");
            let mut r = pages::message(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many sign-in attempts",
                &format!("Try again in {secs} seconds."),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            r
        })
    }
}

/// The client address the connection came from (absent when the router is called directly).
fn peer(ext: Option<axum::Extension<ConnectInfo<SocketAddr>>>) -> Option<SocketAddr> {
    ext.map(|axum::Extension(ConnectInfo(a))| a)
}

/// A POST from a page of this site: `Sec-Fetch-Site` and `Origin`, when the browser sends
/// them, must say so (older browsers send neither; the form token still protects them).
fn same_origin(headers: &HeaderMap) -> bool {
    let text = |name| headers.get(name).map(|v| v.to_str().unwrap_or("\u{0}"));
    if let Some(site) = text("sec-fetch-site") {
        if site != "same-origin" {
            return false;
        }
    }
    match (text("origin"), text("host")) {
        (None, _) => true,
        (Some(origin), Some(host)) => {
            origin.split_once("://").is_some_and(|(scheme, authority)| {
                matches!(scheme, "http" | "https") && authority.eq_ignore_ascii_case(host)
            })
        }
        (Some(_), None) => false,
    }
}

/// The form's token against the session's, in constant time.
fn form_token_ok(expected: &str, given: &str) -> bool {
    !expected.is_empty() && auth::constant_time_eq(expected.as_bytes(), given.as_bytes())
}

/// A refused POST (no or wrong form token, or another site's form).
fn forbidden_post() -> Response {
    pages::message(
        StatusCode::FORBIDDEN,
        "Refused",
        "This form was not sent from this site's page, or the page is too old: reload it and \
         try again.",
    )
}

/// A problem from the API as a page.
fn problem_page(p: Problem) -> Response {
    let title = p.title.clone();
    pages::message(p.status(), &title, &p.detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.insert(*n, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn posts_from_other_sites_are_refused() {
        let host = ("host", "owners.example.org");
        assert!(same_origin(&headers(&[host])));
        assert!(same_origin(&headers(&[
            host,
            ("origin", "https://owners.example.org"),
            ("sec-fetch-site", "same-origin")
        ])));
        assert!(!same_origin(&headers(&[
            host,
            ("origin", "https://evil.example")
        ])));
        assert!(!same_origin(&headers(&[host, ("origin", "null")])));
        assert!(!same_origin(&headers(&[
            host,
            ("sec-fetch-site", "cross-site")
        ])));
        assert!(!same_origin(&headers(&[
            host,
            ("sec-fetch-site", "same-site")
        ])));
        assert!(form_token_ok("abc", "abc"));
        assert!(!form_token_ok("abc", "abd"));
        assert!(!form_token_ok("", ""));
    }

    #[test]
    fn cookies_are_found_by_exact_name() {
        let h = headers(&[("cookie", "a=1; listcrypt_session=xyz; listcrypt_sessionx=2")]);
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("xyz"));
        assert_eq!(cookie(&h, "b"), None);
        let (_, v) = set_cookie(SESSION_COOKIE, "v", 60);
        for attr in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
            assert!(v.split("; ").any(|a| a == attr), "{v}");
        }
    }
}
