//! The policy resource: read, validate as `check-config` does, replace atomically and reload.
//! Loosening takes a site-admin token (policy.rs says what loosens); every change is mailed,
//! encrypted, to the list's owners, or not made. With `database_url` the policy files are
//! deployed by configuration management to every host: read-only here.

use super::auth::{Grant, Need, Scope};
use super::extract::{Caller, JsonBody, PathArgs};
use super::policy::{changes, loosenings, validate};
use super::problem::Problem;
use super::routes::list_for;
use super::{audit, key_problem, Api};
use crate::config::Policy;
use crate::key_address::OutMail;
use crate::store::Role;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use utoipa::ToSchema;

/// A policy file's text.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyText {
    /// The whole policy file (TOML), as listcrypt.toml(5) describes it.
    pub text: String,
}

/// The policy file as it is.
#[derive(Serialize, ToSchema)]
pub struct PolicyDocument {
    pub text: String,
    /// True with `database_url`: policy files are deployed to every host, not changed here.
    pub read_only: bool,
}

/// The text passes `check-config`'s rules.
#[derive(Serialize, ToSchema)]
pub struct Valid {
    pub valid: bool,
}

/// What a replacement changed.
#[derive(Serialize, ToSchema)]
pub struct PolicyChanged {
    /// `key: old -> new`, one per changed key.
    pub changes: Vec<String>,
    /// Owners told of the change (encrypted mail).
    pub owners_notified: usize,
}

fn read_policy(path: &std::path::Path) -> Result<String, Problem> {
    std::fs::read_to_string(path).map_err(|e| Problem::internal("reading the policy", e))
}

fn invalid(d: super::policy::Diagnostic) -> Problem {
    let mut p = Problem::new(StatusCode::UNPROCESSABLE_ENTITY, d.text);
    p.line = d.line;
    p.column = d.column;
    p
}

#[utoipa::path(get, path = "/v1/lists/{list}/policy", tag = "policy",
    params(("list" = String, Path, description = "The list's posting address")),
    responses((status = 200, body = PolicyDocument)))]
pub async fn get(
    State(api): State<Arc<Api>>,
    Caller(grant): Caller,
    PathArgs(raw): PathArgs<String>,
) -> Result<Json<PolicyDocument>, Problem> {
    let list = list_for(&api, &grant, &raw, Need::Read)?;
    let config = api.daemon.config();
    Ok(Json(PolicyDocument {
        text: read_policy(&config.policy_path(&list))?,
        read_only: !config.database_url.is_empty(),
    }))
}

/// The policy file's name without its directory: diagnostics go to list owners, who need the
/// line and column but not where `policy_dir` is on the host.
fn shown_name(path: &std::path::Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[utoipa::path(post, path = "/v1/lists/{list}/policy/validate", tag = "policy",
    params(("list" = String, Path, description = "The list's posting address")),
    request_body = PolicyText,
    responses((status = 200, description = "Valid", body = Valid)))]
pub async fn check(
    State(api): State<Arc<Api>>,
    Caller(grant): Caller,
    PathArgs(raw): PathArgs<String>,
    JsonBody(body): JsonBody<PolicyText>,
) -> Result<Json<Valid>, Problem> {
    let list = list_for(&api, &grant, &raw, Need::Read)?;
    validate(
        &shown_name(&api.daemon.config().policy_path(&list)),
        &body.text,
    )
    .map_err(invalid)?;
    Ok(Json(Valid { valid: true }))
}

#[utoipa::path(put, path = "/v1/lists/{list}/policy", tag = "policy",
    params(("list" = String, Path, description = "The list's posting address")),
    request_body = PolicyText,
    responses((status = 200, description = "Replaced and reloaded; the owners were told",
        body = PolicyChanged),
        (status = 409, description = "Read-only: database_url is set", body = super::problem::ProblemDocument,
        content_type = "application/problem+json")))]
pub async fn put(
    State(api): State<Arc<Api>>,
    Caller(grant): Caller,
    PathArgs(raw): PathArgs<String>,
    JsonBody(body): JsonBody<PolicyText>,
) -> Result<Json<PolicyChanged>, Problem> {
    let list = list_for(&api, &grant, &raw, Need::Change(Scope::Policy))?;
    let config = api.daemon.config();
    if !config.database_url.is_empty() {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "policy is read-only through the API with database_url: deploy the policy files \
             to every host instead",
        ));
    }
    let path = config.policy_path(&list);
    let new = validate(&shown_name(&path), &body.text).map_err(invalid)?;
    // One change at a time: the comparison below is with the file it replaces.
    let _guard = api.policy_lock.lock().await;
    let old_text = read_policy(&path)?;
    let old = Policy::parse(&path.display().to_string(), &old_text)
        .map_err(|e| Problem::internal("reading the current policy", e))?;
    decide(&grant, &old, &new)?;
    let changed = changes(&old, &new);
    let notices = notices(&api, &grant, &list, &changed)?;
    replace(&api, path.clone(), body.text.into_bytes()).await?;
    if let Err(e) = send(&api, &notices).await {
        // Not told, not changed: the old file goes back.
        replace(&api, path, old_text.into_bytes()).await?;
        return Err(e);
    }
    let (id, detail, n) = (grant.id().to_string(), changed.join("; "), notices.len());
    api.run(move |d| audit(d, &id, &list, "policy.replace", &detail))
        .await?;
    Ok(Json(PolicyChanged {
        changes: changed,
        owners_notified: n,
    }))
}

/// Only a site-admin token may loosen.
fn decide(grant: &Grant, old: &Policy, new: &Policy) -> Result<(), Problem> {
    let loosened = loosenings(old, new);
    if loosened.is_empty() || grant.is_site_admin() {
        return Ok(());
    }
    let mut p = Problem::new(
        StatusCode::FORBIDDEN,
        format!(
            "this change loosens the policy ({}): only a site-admin token may",
            loosened.join(", ")
        ),
    );
    p.loosened = loosened.into_iter().map(String::from).collect();
    Err(p)
}

/// The encrypted notice to each owner with a usable key, made before anything changes.
fn notices(
    api: &Arc<Api>,
    grant: &Grant,
    list: &str,
    changed: &[String],
) -> Result<Vec<OutMail>, Problem> {
    let keyring = api
        .daemon
        .keyring()
        .map_err(|e| key_problem("keyring", e))?;
    let Some(keys) = keyring.lists.get(list) else {
        return Err(Problem::unavailable("policy", "the list is not loaded yet"));
    };
    let body = format!(
        "The policy of {list} was changed through the admin API by token {}.\r\n\
         Changed keys:\r\n  {}\r\n",
        grant.id(),
        if changed.is_empty() {
            "(none)".to_string()
        } else {
            changed.join("\r\n  ")
        }
    );
    keys.members
        .iter()
        .filter(|m| {
            m.role == Role::Owner && crate::keys::check_member_cert(&m.cert, &m.address).is_ok()
        })
        .map(|m| {
            crate::key_address::notice(keys, &m.address, &m.cert, "List policy changed", &body)
                .map_err(|e| Problem::internal("owner notice", e))
        })
        .collect()
}

async fn send(api: &Arc<Api>, notices: &[OutMail]) -> Result<(), Problem> {
    let config = api.daemon.config();
    for mail in notices {
        crate::reinject::send_batch(
            &config.reinject_smtp,
            "",
            std::slice::from_ref(&mail.to),
            &mail.message,
        )
        .await
        .map_err(|e| Problem::unavailable("telling the owners", e))?;
    }
    Ok(())
}

/// Writes the file atomically and reloads the daemon; a reload that fails puts the old
/// file back (the caller's copy) by failing before any notice is sent.
async fn replace(api: &Arc<Api>, path: PathBuf, text: Vec<u8>) -> Result<(), Problem> {
    api.run(move |d| {
        use std::os::unix::fs::PermissionsExt;
        let before = std::fs::read(&path).map_err(|e| Problem::internal("policy", e))?;
        // The file keeps the mode it had (the admin's umask when `list create` wrote it).
        let mode = std::fs::metadata(&path)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(crate::atomic_file::PUBLIC);
        crate::atomic_file::write(&path, &text, mode)
            .map_err(|e| Problem::internal("writing the policy", e))?;
        if let Err(e) = d.reload() {
            let _ = crate::atomic_file::write(&path, &before, mode);
            return Err(Problem::internal("reloading", e));
        }
        Ok(())
    })
    .await
}
