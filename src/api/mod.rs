//! The admin REST API on `api_listen`: axum on the daemon's own runtime, plain HTTP for a
//! TLS front-end (loopback unless `api_allow_remote`), an OpenAPI 3.1 document generated
//! from the handlers at `/openapi.json`, errors as RFC 9457 problem details.
//!
//! Handlers are thin (routes.rs, policy_routes.rs, binding.rs): who may do what is decided
//! in auth.rs, what loosens a policy in policy.rs. Connections are bounded as on the WKD
//! listener (http.rs): in number, in header size and time, and in total time.

pub mod auth;
mod binding;
pub mod extract;
pub mod policy;
pub mod policy_routes;
pub mod problem;
pub mod routes;

use crate::keys::KeyError;
use crate::state::Daemon;
use crate::store::{AuditRecord, StoreError};
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use problem::Problem;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use utoipa::OpenApi;

/// Request bodies: a policy file or an armored certificate (the key address stores none
/// over 64 KiB binary, ~88 KiB armored).
pub const MAX_BODY_BYTES: usize = 128 * 1024;
/// Request line and headers.
const MAX_HEAD_BYTES: usize = 16 * 1024;
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// One request, from its head to the answer (a key rotation or a reload takes well under a
/// second); over it, 503.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// A keep-alive connection is closed after the request in progress once it is this old, so a
/// client cannot hold a connection slot for ever (idle ones go after HEADER_READ_TIMEOUT).
const CONNECTION_LIFETIME: Duration = Duration::from_secs(300);
const MAX_CONNECTIONS: usize = 64;
const STOP_GRACE: Duration = Duration::from_secs(2);

/// What the handlers share.
pub struct Api {
    pub daemon: Arc<Daemon>,
    /// Policy replacements one at a time.
    policy_lock: tokio::sync::Mutex<()>,
}

impl Api {
    pub fn new(daemon: Arc<Daemon>) -> Arc<Api> {
        Arc::new(Api {
            daemon,
            policy_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// Store and key work on the blocking pool.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Daemon) -> Result<T, Problem> + Send + 'static,
    ) -> Result<T, Problem> {
        self.daemon
            .blocking(work)
            .await
            .unwrap_or_else(|e| Err(Problem::internal("request", e)))
    }
}

/// A busy or unreachable store is temporary (503); anything else is internal.
fn store_problem(what: &str, e: StoreError) -> Problem {
    match e {
        StoreError::Busy(_) | StoreError::Unavailable(_) => Problem::unavailable(what, e),
        e => Problem::internal(what, e),
    }
}

fn key_problem(what: &str, e: KeyError) -> Problem {
    match e {
        KeyError::Store(e) => store_problem(what, e),
        KeyError::NoSuchList(_) => Problem::new(StatusCode::NOT_FOUND, "no such list"),
        KeyError::Unusable(why) => Problem::new(StatusCode::UNPROCESSABLE_ENTITY, why),
        e => Problem::internal(what, e),
    }
}

/// Records a change made by token `token_id`.
fn audit(
    d: &Daemon,
    token_id: &str,
    list: &str,
    action: &str,
    detail: &str,
) -> Result<(), Problem> {
    d.store()
        .audit_record(&AuditRecord {
            seq: 0,
            at: SystemTime::now(),
            token_id: token_id.into(),
            list: list.into(),
            action: action.into(),
            detail: detail.into(),
        })
        .map_err(|e| store_problem("audit log", e))
}

#[derive(OpenApi)]
#[openapi(
    info(title = "listcrypt admin API", description = "Per-list administration of \
        OpenPGP-encrypted mailing lists. Authenticate with `Authorization: Bearer lct_…` \
        (`listcrypt token create`). Errors are RFC 9457 problem details."),
    paths(
        routes::lists, routes::list, routes::members, routes::bind, routes::unbind,
        routes::key, routes::rotate, policy_routes::get, policy_routes::check,
        policy_routes::put, routes::audit_log
    ),
    components(schemas(problem::ProblemDocument)),
    modifiers(&Common),
    security(("bearer" = []))
)]
struct ApiDoc;

/// The bearer scheme, and the problem answers every operation can give.
struct Common;

impl utoipa::Modify for Common {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        let problem = |why: &str| {
            ResponseBuilder::new()
                .description(why)
                .content(
                    problem::CONTENT_TYPE,
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("Problem")))
                        .build(),
                )
                .build()
        };
        let common = [
            ("400", "Malformed request (bad JSON, bad parameters)"),
            ("401", "No valid bearer token"),
            ("403", "The token may not do this on this list"),
            ("404", "No such list or member"),
            ("413", "Body over the size limit"),
            ("415", "Body not application/json"),
            (
                "422",
                "Well-formed but refused (invalid policy, unusable key)",
            ),
            ("429", "Rate limited (challenges)"),
            (
                "503",
                "The store or the mail system is temporarily unavailable",
            ),
        ];
        for item in doc.paths.paths.values_mut() {
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                for (code, why) in common {
                    op.responses
                        .responses
                        .entry(code.into())
                        .or_insert_with(|| problem(why).into());
                }
            }
        }
    }
}

/// The OpenAPI document (3.1).
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The routes, for the listener and for tests that call the router directly.
pub fn router(api: Arc<Api>) -> Router {
    let doc = Arc::new(openapi());
    Router::new()
        .route(
            "/openapi.json",
            get(move || {
                let doc = doc.clone();
                async move { axum::Json((*doc).clone()) }
            }),
        )
        .route("/v1/lists", get(routes::lists))
        .route("/v1/lists/{list}", get(routes::list))
        .route(
            "/v1/lists/{list}/members",
            get(routes::members).post(routes::bind),
        )
        .route(
            "/v1/lists/{list}/members/{address}",
            axum::routing::delete(routes::unbind),
        )
        .route("/v1/lists/{list}/key", get(routes::key))
        .route("/v1/lists/{list}/key/rotate", post(routes::rotate))
        .route(
            "/v1/lists/{list}/policy",
            get(policy_routes::get).put(policy_routes::put),
        )
        .route(
            "/v1/lists/{list}/policy/validate",
            post(policy_routes::check),
        )
        .route("/v1/lists/{list}/audit", get(routes::audit_log))
        .fallback(|| async { Problem::new(StatusCode::NOT_FOUND, "no such resource") })
        .method_not_allowed_fallback(|| async {
            Problem::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here")
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(api)
}

/// Routes served beside the API on its listener (the owners' page, `crate::web::router`),
/// made from the same state.
pub type Pages = fn(Arc<Api>) -> Router;

/// The running API listener of `serve`, with its stop switch.
pub struct Server {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Server {
    /// Binds `listen` (`IP:PORT`; port 0 picks one) and serves the API and `pages`. The
    /// configuration has checked that it is loopback unless `api_allow_remote`.
    pub async fn start(listen: &str, daemon: Arc<Daemon>, pages: Pages) -> io::Result<Server> {
        let addr: SocketAddr = listen
            .parse()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{listen}: {e}")))?;
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        if !addr.ip().is_loopback() {
            tracing::warn!(
                "admin API over plain HTTP on {addr}, not loopback: serve it through TLS only"
            );
        }
        tracing::info!("admin API over HTTP on {addr}, for a TLS front-end");
        let (stop, stopped) = watch::channel(false);
        let api = Api::new(daemon);
        let app = router(api.clone()).merge(pages(api));
        let task = tokio::spawn(accept_loop(listener, app, stopped));
        Ok(Server { addr, stop, task })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and waits briefly for the requests in progress.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn accept_loop(listener: TcpListener, app: Router, mut stop: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = stopped(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("api: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::debug!("api: {peer}: over {MAX_CONNECTIONS} connections, refused");
            continue;
        };
        let app = app.clone();
        connections.spawn(async move {
            let _permit = permit;
            serve_connection(stream, peer, app).await;
        });
        while connections.try_join_next().is_some() {}
    }
    let drain = async { while connections.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(STOP_GRACE, drain).await;
}

async fn serve_connection(stream: tokio::net::TcpStream, peer: SocketAddr, app: Router) {
    let service = hyper::service::service_fn(move |mut req: hyper::Request<_>| {
        let app = app.clone();
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(peer));
        async move {
            let answer =
                tokio::time::timeout(REQUEST_TIMEOUT, tower::ServiceExt::oneshot(app, req));
            Ok::<_, std::convert::Infallible>(match answer.await {
                Ok(Ok(response)) => response,
                Ok(Err(never)) => match never {},
                Err(_) => axum::response::IntoResponse::into_response(Problem::unavailable(
                    "request",
                    format!("{peer}: over {} s", REQUEST_TIMEOUT.as_secs()),
                )),
            })
        }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let served = tokio::select! {
        r = conn.as_mut() => r,
        _ = tokio::time::sleep(CONNECTION_LIFETIME) => {
            // The request in progress is answered, then the connection closes.
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(REQUEST_TIMEOUT, conn).await {
                Ok(r) => r,
                Err(_) => return tracing::debug!("api: {peer}: timed out"),
            }
        }
    };
    if let Err(e) = served {
        tracing::debug!("api: {peer}: {e}");
    }
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`: drop it here.
    let _ = stop.wait_for(|s| *s).await.is_ok();
}
