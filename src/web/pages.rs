//! The pages. Every value is escaped by maud; every decision about tokens, lists and policy
//! is the API's (its handlers are called with the session's grant).

use super::session::{self, random_id};
use super::{
    authenticate, cookie, forbidden_post, form_token_ok, peer, problem_page, same_origin,
    set_cookie, Owner, Web, SESSION_COOKIE, SIGNIN_COOKIE,
};
use crate::api::auth::Grant;
use crate::api::extract::{Caller, JsonBody, PathArgs};
use crate::api::policy_routes::{self, PolicyChanged, PolicyText};
use crate::api::routes::{self as api_routes, Member};
use crate::keys::normalize_address;
use axum::extract::rejection::FormRejection;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form, Json};
use maud::{html, Markup, DOCTYPE};
use serde::Deserialize;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use zeroize::Zeroizing;

type WebState = State<Arc<Web>>;

const STYLE: &str = include_str!("style.css");

pub async fn style() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE).into_response()
}

fn layout(title: &str, owner: Option<&Owner>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " — listcrypt" }
                link rel="stylesheet" href="/style.css";
            }
            body {
                header {
                    p.site { "listcrypt" }
                    @if let Some(o) = owner {
                        form method="post" action="/signout" {
                            input type="hidden" name="csrf" value=(o.csrf);
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main { h1 { (title) } (body) }
            }
        }
    }
}

fn page(status: StatusCode, title: &str, owner: Option<&Owner>, body: Markup) -> Response {
    let html = layout(title, owner, body).into_string();
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        html,
    )
        .into_response()
}

/// A page with one message.
pub fn message(status: StatusCode, title: &str, text: &str) -> Response {
    page(
        status,
        title,
        None,
        html! { p { (text) } p { a href="/" { "Back to the start page" } } },
    )
}

/// A list address as one URL path segment.
fn segment(list: &str) -> String {
    list.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'@' => {
                char::from(b).to_string()
            }
            b => format!("%{b:02X}"),
        })
        .collect()
}

fn see_other(to: &str) -> Response {
    Redirect::to(to).into_response()
}

/// The signed-in owner, or the answer to give instead (to the sign-in page, the session
/// cookie cleared).
async fn signed(web: &Web, headers: &HeaderMap) -> Result<Owner, Response> {
    match web.owner(headers).await {
        Ok(Some(o)) => Ok(o),
        Ok(None) => Err(([set_cookie(SESSION_COOKIE, "", 0)], see_other("/")).into_response()),
        Err(p) => Err(problem_page(p)),
    }
}

pub async fn home(State(web): WebState, headers: HeaderMap) -> Response {
    match web.owner(&headers).await {
        Err(p) => problem_page(p),
        Ok(Some(o)) => lists_page(&web, o).await,
        Ok(None) => sign_in_page(StatusCode::OK, None),
    }
}

fn sign_in_page(status: StatusCode, error: Option<&str>) -> Response {
    // Double submit: the form's token must match this cookie, which other sites cannot set.
    let pre = random_id();
    let body = html! {
        p { "Sign in with an admin API token (" code { "listcrypt token create" } ")." }
        @if let Some(e) = error { p.error role="alert" { (e) } }
        form method="post" action="/signin" {
            input type="hidden" name="csrf" value=(pre);
            label for="token" { "Token" }
            input #token type="password" name="token" autocomplete="off" required;
            button type="submit" { "Sign in" }
        }
    };
    let mut r = page(status, "Sign in", None, body);
    let (name, value) = set_cookie(SIGNIN_COOKIE, &pre, 3600);
    if let Ok(v) = value.parse() {
        r.headers_mut().append(name, v);
    }
    r
}

async fn lists_page(web: &Web, o: Owner) -> Response {
    let lists = match &o.grant {
        Grant::List { list, .. } => Ok(vec![list.clone()]),
        Grant::SiteAdmin { .. } => web
            .api
            .daemon
            .blocking(|d| crate::keys::list_names(&d.config()).map_err(|e| e.to_string()))
            .await
            .unwrap_or_else(|e| Err(e.to_string())),
    };
    let body = match lists {
        Err(e) => {
            tracing::warn!("web: lists: {e}");
            return message(
                StatusCode::SERVICE_UNAVAILABLE,
                "Unavailable",
                "The lists cannot be read now: try again later.",
            );
        }
        Ok(lists) => html! {
            ul { @for l in &lists { li { a href={ "/owner/" (segment(l)) } { (l) } } } }
        },
    };
    page(StatusCode::OK, "Your lists", Some(&o), body)
}

#[derive(Deserialize)]
pub struct SignInForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    csrf: String,
}

pub async fn sign_in(
    State(web): WebState,
    connected: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    form: Result<Form<SignInForm>, FormRejection>,
) -> Response {
    let Ok(Form(f)) = form else {
        return forbidden_post();
    };
    let pre = cookie(&headers, SIGNIN_COOKIE).unwrap_or("");
    if !same_origin(&headers) || !form_token_ok(pre, &f.csrf) {
        return forbidden_post();
    }
    if let Err(r) = web.rate_limit(peer(connected)) {
        return r;
    }
    let token = Zeroizing::new(f.token.trim().to_string());
    match authenticate(&web.api, &token).await {
        Err(p) if p.status() == StatusCode::UNAUTHORIZED => sign_in_page(
            StatusCode::UNAUTHORIZED,
            Some("That token was refused: it is unknown, revoked or expired."),
        ),
        Err(p) => problem_page(p),
        Ok(_) => {
            let (id, _) = web.open_session(&token);
            let mut r = see_other("/");
            for (name, value) in [
                set_cookie(SESSION_COOKIE, &id, session::LIFETIME.as_secs()),
                set_cookie(SIGNIN_COOKIE, "", 0),
            ] {
                if let Ok(v) = value.parse() {
                    r.headers_mut().append(name, v);
                }
            }
            r
        }
    }
}

#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

pub async fn sign_out(
    State(web): WebState,
    headers: HeaderMap,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Response {
    let o = match signed(&web, &headers).await {
        Ok(o) => o,
        Err(r) => return r,
    };
    let given = form.map(|Form(f)| f.csrf).unwrap_or_default();
    if !same_origin(&headers) || !form_token_ok(&o.csrf, &given) {
        return forbidden_post();
    }
    web.sessions().close(&o.session);
    ([set_cookie(SESSION_COOKIE, "", 0)], see_other("/")).into_response()
}

/// Mailman's members without an active binding, or why they are not known.
enum Roster {
    NotConfigured,
    Unreachable(String),
    Unbound(Vec<String>),
}

async fn mailman_unbound(web: &Web, list: &str, rows: &[Member]) -> Roster {
    use crate::mailman_rest::{entries, text};
    let api = web.api.daemon.config().mailman_api.clone();
    if api.password().is_none() {
        return Roster::NotConfigured;
    }
    let bound: BTreeSet<String> = rows
        .iter()
        .filter(|m| m.state == "active")
        .map(|m| normalize_address(&m.address))
        .collect();
    let list = list.to_string();
    let fetched = web
        .api
        .daemon
        .blocking(move |_| {
            let rest = crate::mailman_rest::connect(&api)?;
            let roster = rest
                .get(&format!("lists/{list}/roster/member"))
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(
                entries(&roster)
                    .iter()
                    .filter_map(|m| text(m.get("email")))
                    .map(|e| normalize_address(&e))
                    .filter(|e| !bound.contains(e))
                    .collect::<BTreeSet<_>>(),
            )
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
    match fetched {
        Ok(unbound) => Roster::Unbound(unbound.into_iter().collect()),
        Err(e) => {
            tracing::info!("web: mailman roster: {e}");
            Roster::Unreachable(e)
        }
    }
}

pub async fn owner(State(web): WebState, headers: HeaderMap, Path(raw): Path<String>) -> Response {
    let o = match signed(&web, &headers).await {
        Ok(o) => o,
        Err(r) => return r,
    };
    let rows = api_routes::members(
        State(web.api.clone()),
        Caller(o.grant.clone()),
        PathArgs(raw.clone()),
    )
    .await;
    let rows = match rows {
        Ok(Json(rows)) => rows,
        Err(p) => return problem_page(p),
    };
    let list = normalize_address(&raw);
    let roster = mailman_unbound(&web, &list, &rows).await;
    let (pending, bound): (Vec<&Member>, Vec<&Member>) =
        rows.iter().partition(|m| m.state == "pending");
    let body = html! {
        nav { a href={ "/owner/" (segment(&list)) "/policy" } { "Policy" } " · "
              a href={ "/lists/" (segment(&list)) } { "Public page" } }
        h2 { "Members" }
        (member_table(&bound, "No bound keys."))
        h2 { "Pending bindings" }
        (member_table(&pending, "No keys waiting for their challenge to be answered."))
        h2 { "Mailman members with no bound key" }
        (roster_html(&roster))
    };
    page(StatusCode::OK, &list, Some(&o), body)
}

fn member_table(rows: &[&Member], none: &str) -> Markup {
    html! {
        @if rows.is_empty() { p { (none) } } @else {
            table {
                thead { tr { th scope="col" { "Address" } th scope="col" { "Fingerprint" }
                    th scope="col" { "Role" } th scope="col" { "State" } th scope="col" { "Key expires" } } }
                tbody { @for m in rows { tr {
                    td { (m.address) } td.fpr { (m.fingerprint) }
                    td { (m.role) @if m.show_key_id { ",show-key-id" } }
                    td { (m.state) } td { (m.expires) }
                } } }
            }
        }
    }
}

fn roster_html(roster: &Roster) -> Markup {
    html! {
        @match roster {
            Roster::NotConfigured => p { "Mailman's REST API is not configured ("
                code { "[mailman_api]" } " in listcrypt.toml)." },
            Roster::Unreachable(why) => p.error role="status" {
                "Mailman could not be asked: " (why) },
            Roster::Unbound(none) if none.is_empty() => p { "Every Mailman member has a bound key." },
            Roster::Unbound(addresses) => ul { @for a in addresses { li { (a) } } },
        }
    }
}

/// What the last policy form did.
enum Outcome {
    None,
    Valid,
    Saved(PolicyChanged),
    Refused(crate::api::problem::Problem),
}

fn policy_page(o: &Owner, list: &str, text: &str, read_only: bool, outcome: &Outcome) -> Markup {
    html! {
        nav { a href={ "/owner/" (segment(list)) } { "Members" } }
        @match outcome {
            Outcome::None => {},
            Outcome::Valid => p.ok role="status" { "The policy is valid (not saved)." },
            Outcome::Saved(c) => div.ok role="status" {
                p { "Saved and reloaded; " (c.owners_notified) " owner(s) notified." }
                @if !c.changes.is_empty() { ul { @for ch in &c.changes { li { code { (ch) } } } } }
            },
            Outcome::Refused(p) => div.error role="alert" {
                @if let (Some(l), Some(c)) = (p.line, p.column) {
                    p { strong { "Error at " (l) ":" (c) } " (line " (l) ", column " (c) ")" }
                }
                p { (p.detail) }
                @if !p.loosened.is_empty() { p { "Loosened: " (p.loosened.join(", ")) } }
            },
        }
        @if read_only {
            p { "With " code { "database_url" } " set, policy files are deployed to every host: read-only here." }
        }
        form method="post" action={ "/owner/" (segment(list)) "/policy" } {
            input type="hidden" name="csrf" value=(o.csrf);
            label for="text" { "Policy (TOML, as listcrypt.toml(5) describes it)" }
            // The parser drops a newline right after <textarea>: this one, not the text's.
            textarea #text name="text" rows="24" cols="80" spellcheck="false" { "\n" (text) }
            button type="submit" name="action" value="check" { "Check" }
            @if !read_only { button type="submit" name="action" value="save" { "Save" } }
        }
    }
}

pub async fn policy(State(web): WebState, headers: HeaderMap, Path(raw): Path<String>) -> Response {
    let o = match signed(&web, &headers).await {
        Ok(o) => o,
        Err(r) => return r,
    };
    let doc = policy_routes::get(
        State(web.api.clone()),
        Caller(o.grant.clone()),
        PathArgs(raw.clone()),
    )
    .await;
    let doc = match doc {
        Ok(Json(doc)) => doc,
        Err(p) => return problem_page(p),
    };
    let list = normalize_address(&raw);
    let body = policy_page(&o, &list, &doc.text, doc.read_only, &Outcome::None);
    page(StatusCode::OK, &format!("Policy of {list}"), Some(&o), body)
}

#[derive(Deserialize)]
pub struct PolicyForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    text: String,
    #[serde(default)]
    action: String,
}

pub async fn policy_post(
    State(web): WebState,
    headers: HeaderMap,
    Path(raw): Path<String>,
    form: Result<Form<PolicyForm>, FormRejection>,
) -> Response {
    let o = match signed(&web, &headers).await {
        Ok(o) => o,
        Err(r) => return r,
    };
    let f = form.map(|Form(f)| f).unwrap_or(PolicyForm {
        csrf: String::new(),
        text: String::new(),
        action: String::new(),
    });
    if !same_origin(&headers) || !form_token_ok(&o.csrf, &f.csrf) {
        return forbidden_post();
    }
    // Browsers send a textarea's lines with CRLF; the file keeps the owner's LF.
    let text = f.text.replace("\r\n", "\n");
    let (api, caller, path) = (
        web.api.clone(),
        Caller(o.grant.clone()),
        PathArgs(raw.clone()),
    );
    let body = JsonBody(PolicyText { text: text.clone() });
    let outcome = if f.action == "save" {
        policy_routes::put(State(api), caller, path, body)
            .await
            .map(|Json(c)| Outcome::Saved(c))
    } else {
        policy_routes::check(State(api), caller, path, body)
            .await
            .map(|_| Outcome::Valid)
    };
    let (status, outcome) = match outcome {
        Ok(x) => (StatusCode::OK, x),
        Err(p) if p.status() == StatusCode::NOT_FOUND => return problem_page(p),
        Err(p) => (p.status(), Outcome::Refused(p)),
    };
    let list = normalize_address(&raw);
    let read_only = status == StatusCode::CONFLICT;
    let body = policy_page(&o, &list, &text, read_only, &outcome);
    page(status, &format!("Policy of {list}"), Some(&o), body)
}

/// Whether and where the list key is in a Web Key Directory.
fn wkd_status(http_listen: &str, keys: &crate::pgp::ListKeys) -> Markup {
    use crate::wkd::{self, Layout};
    let list = &keys.address;
    let published = wkd::public_key(&keys.secret, list);
    html! {
        @if http_listen.is_empty() {
            p { "listcrypt does not serve a Web Key Directory here (" code { "http_listen" }
                " is off); the site may publish " code { "listcrypt wkd export" } "'s files instead." }
        } @else {
            @match published {
                Ok(_) => {
                    p { "Served by listcrypt's Web Key Directory, for the site's TLS front-end to publish at:" }
                    ul { @for l in [Layout::Advanced, Layout::Direct] {
                        @if let Some(u) = l.url(list) { li { code { (u) } } } } }
                },
                Err(e) => p.error { "Not published by WKD: " (e.to_string()) },
            }
        }
    }
}

pub async fn public(State(web): WebState, Path(raw): Path<String>) -> Response {
    let list = normalize_address(&raw);
    let keyring = match web.api.daemon.keyring() {
        Ok(k) => k,
        Err(e) => {
            tracing::warn!("web: keyring: {e}");
            return message(
                StatusCode::SERVICE_UNAVAILABLE,
                "Unavailable",
                "Try again later.",
            );
        }
    };
    let Some(keys) = keyring.lists.get(&list) else {
        return message(
            StatusCode::NOT_FOUND,
            "No such list",
            "There is no encrypted list at this address.",
        );
    };
    let key_address = crate::key_address::key_address(keys);
    let http_listen = web.api.daemon.config().http_listen.clone();
    let body = html! {
        p { (list) " is an OpenPGP-encrypted mailing list: posts must be encrypted to the list key and signed by a member." }
        h2 { "List key" }
        p { "Fingerprint: " code.fpr { (keys.secret.fingerprint().to_hex()) } }
        h2 { "Web Key Directory" }
        (wkd_status(&http_listen, keys))
        h2 { "How to subscribe" }
        ol {
            li { "Get the list key (" code { "gpg --locate-keys " (list) } ", or mail any message to "
                 code { (key_address) } ") and check its fingerprint against the one above." }
            li { "Have your key bound to your address before you subscribe: send your public key from that address to "
                 code { (key_address) } " and answer the encrypted challenge that comes back with a signed reply that keeps the "
                 code { "listcrypt-token:" } " line. Or ask an owner to bind it." }
            li { "Subscribe as the list says (Mailman's page or its -join address)." }
            li { "Post from the bound address as PGP/MIME, signed and encrypted to the list key." }
        }
    };
    page(StatusCode::OK, &list, None, body)
}
