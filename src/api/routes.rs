//! The handlers: authenticate, authorize (auth.rs), call the code the CLI uses, audit. The
//! decisions live in auth.rs and policy.rs; store and key work runs on the blocking pool.

use super::auth::{authorize, Grant, Need, Scope};
use super::extract::{Caller, JsonBody, PathArgs, QueryArgs};
use super::problem::Problem;
use super::{audit, key_problem, store_problem, Api};
use crate::keys::{self, normalize_address, valid_address};
use crate::keys::{member_rows_known, MemberRow};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::sync::Arc;
use utoipa::{IntoParams, ToSchema};

/// A list as the API shows it.
#[derive(Serialize, ToSchema)]
pub struct ListInfo {
    /// The list's posting address.
    pub address: String,
    /// Upper-case hex fingerprint of the list key.
    pub fingerprint: String,
}

/// One binding, in the words of `listcrypt member list`.
#[derive(Serialize, ToSchema)]
pub struct Member {
    pub address: String,
    pub fingerprint: String,
    /// `member` or `owner`.
    pub role: String,
    pub show_key_id: bool,
    /// `active`, or `pending` (a key offered and not yet proven).
    pub state: String,
    /// `YYYY-MM-DD`, `never`, `invalid`, or `missing` (as `member list` prints it).
    pub expires: String,
    /// Whether the list key, as published, carries this member key's certification of it
    /// (sent to the key address and merged after its signature was checked).
    pub certifies_list_key: bool,
}

impl Member {
    fn of(r: MemberRow, certifiers: &HashSet<String>) -> Member {
        let certifies_list_key = certifiers.contains(&r.fingerprint.to_ascii_uppercase());
        Member {
            address: r.address,
            fingerprint: r.fingerprint,
            role: r.role,
            show_key_id: r.show_key_id,
            state: r.state,
            expires: r.expires,
            certifies_list_key,
        }
    }
}

/// Upper-case fingerprints of the keys whose certifications the list key's user IDs carry
/// (an issuer named only by key ID matches no fingerprint: it is not counted).
fn list_key_certifiers(cert: &sequoia_openpgp::Cert) -> HashSet<String> {
    cert.userids()
        .flat_map(|u| u.certifications())
        .flat_map(|s| s.issuer_fingerprints())
        .map(|f| f.to_hex())
        .collect()
}

/// The list's address, normalized, once the caller may act on it; then whether it exists.
/// Authorization comes first: a token for another list learns nothing about this one.
pub(crate) fn list_for(api: &Api, grant: &Grant, raw: &str, need: Need) -> Result<String, Problem> {
    let list = normalize_address(raw);
    authorize(grant, &list, need)
        .map_err(|e| Problem::new(StatusCode::FORBIDDEN, e.to_string()))?;
    if !valid_address(&list) || !api.daemon.config().policy_path(&list).is_file() {
        return Err(Problem::new(StatusCode::NOT_FOUND, "no such list"));
    }
    Ok(list)
}

fn list_info(d: &crate::Daemon, list: &str) -> Result<ListInfo, Problem> {
    let config = d.config();
    let home = keys::KeyHome::of(&config.keyring_dir, d.store());
    let cert = keys::load_list_key(home, list).map_err(|e| key_problem("list key", e))?;
    Ok(ListInfo {
        address: list.to_string(),
        fingerprint: cert.fingerprint().to_hex(),
    })
}

#[utoipa::path(get, path = "/v1/lists", tag = "lists",
    responses((status = 200, description = "The lists this token may see", body = [ListInfo])))]
pub async fn lists(
    State(api): State<Arc<Api>>,
    Caller(grant): Caller,
) -> Result<Json<Vec<ListInfo>>, Problem> {
    let out = api
        .run(move |d| {
            let names = keys::list_names(&d.config()).map_err(|e| key_problem("lists", e))?;
            names
                .iter()
                .filter(|l| grant.sees(l) && authorize(&grant, l, Need::Read).is_ok())
                .map(|l| list_info(d, l))
                .collect::<Result<Vec<_>, _>>()
        })
        .await?;
    Ok(Json(out))
}

#[utoipa::path(get, path = "/v1/lists/{list}", tag = "lists",
    params(("list" = String, Path, description = "The list's posting address")),
    responses((status = 200, body = ListInfo)))]
pub async fn list(
    State(api): State<Arc<Api>>,
    Caller(grant): Caller,
    PathArgs(raw): PathArgs<String>,
) -> Result<Json<ListInfo>, Problem> {
    let list = list_for(&api, &grant, &raw, Need::Read)?;
    Ok(Json(api.run(move |d| list_info(d, &list)).await?))
}

#[utoipa::path(get, path = "/v1/lists/{list}/members", tag = "members",
    params(("list" = String, Path, description = "The list's posting address")),
    responses((status = 200, description = "Bindings, then keys offered and not yet proven",
        body = [Member])))]
pub async fn members(
    State(api): State<Arc<Api>>,
    Caller(grant): Caller,
    PathArgs(raw): PathArgs<String>,
) -> Result<Json<Vec<Member>>, Problem> {
    let list = list_for(&api, &grant, &raw, Need::Read)?;
    // The daemon's snapshot has the bound certificates parsed already (a snapshot that
    // cannot be had only costs the reads).
    let known = api
        .daemon
        .keyring()
        .ok()
        .and_then(|k| k.lists.get(&list).cloned());
    let rows = api
        .run(move |d| {
            let config = d.config();
            let home = keys::KeyHome::of(&config.keyring_dir, d.store());
            let list_key =
                keys::load_list_key(home, &list).map_err(|e| key_problem("list key", e))?;
            let certifiers = list_key_certifiers(&list_key);
            let rows = member_rows_known(&config.keyring_dir, d.store(), &list, known.as_deref())
                .map_err(|e| key_problem("members", e))?;
            Ok(rows
                .into_iter()
                .map(|r| Member::of(r, &certifiers))
                .collect())
        })
        .await?;
    Ok(Json(rows))
}

/// A key to bind to an address, proven by the same challenge as a key sent to the key address.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BindRequest {
    /// The member's address.
    pub address: String,
    /// The member's certificate, ASCII-armored.
    pub certificate: String,
}

/// A challenge is on its way; the binding is made when the member answers it.
#[derive(Serialize, ToSchema)]
pub struct BindStarted {
    pub address: String,
    pub fingerprint: String,
    /// Always `pending`.
    pub state: String,
}

#[utoipa::path(post, path = "/v1/lists/{list}/members", tag = "members",
    params(("list" = String, Path, description = "The list's posting address")),
    request_body = BindRequest,
    responses((status = 202, description = "Challenge sent, encrypted to the key", body = BindStarted)))]
pub async fn bind(
    State(api): State<Arc<Api>>,
    Caller(grant): Caller,
    PathArgs(raw): PathArgs<String>,
    JsonBody(req): JsonBody<BindRequest>,
) -> Result<(StatusCode, Json<BindStarted>), Problem> {
    let list = list_for(&api, &grant, &raw, Need::Change(Scope::Members))?;
    let started = super::binding::start(&api, &grant, &list, req).await?;
    Ok((StatusCode::ACCEPTED, Json(started)))
}

#[utoipa::path(delete, path = "/v1/lists/{list}/members/{address}", tag = "members",
    params(("list" = String, Path, description = "The list's posting address"),
        ("address" = String, Path, description = "The member's address")),
    responses((status = 204, description = "Unbound (pending offers for the address too)")))]
pub async fn unbind(
    State(api): State<Arc<Api>>,
    Caller(grant): Caller,
    PathArgs((raw, address)): PathArgs<(String, String)>,
) -> Result<StatusCode, Problem> {
    let list = list_for(&api, &grant, &raw, Need::Change(Scope::Members))?;
    let address = normalize_address(&address);
    let id = grant.id().to_string();
    let removed = api
        .run(move |d| {
            let removed = d
                .store()
                .unbind(&list, &address)
                .map_err(|e| store_problem("unbind", e))?;
            if removed {
                audit(d, &id, &list, "member.unbind", &address)?;
            }
            Ok(removed)
        })
        .await?;
    match removed {
        true => Ok(StatusCode::NO_CONTENT),
        false => Err(Problem::new(StatusCode::NOT_FOUND, "no such member")),
    }
}

/// The list's public key.
#[derive(Serialize, ToSchema)]
pub struct ListKey {
    pub fingerprint: String,
    /// ASCII-armored, as `listcrypt list export-key` prints it.
    pub armored: String,
}

#[utoipa::path(get, path = "/v1/lists/{list}/key", tag = "key",
    params(("list" = String, Path, description = "The list's posting address")),
    responses((status = 200, body = ListKey)))]
pub async fn key(
    State(api): State<Arc<Api>>,
    Caller(grant): Caller,
    PathArgs(raw): PathArgs<String>,
) -> Result<Json<ListKey>, Problem> {
    let list = list_for(&api, &grant, &raw, Need::Read)?;
    let key = api
        .run(move |d| {
            let config = d.config();
            let home = keys::KeyHome::of(&config.keyring_dir, d.store());
            let cert = keys::load_list_key(home, &list).map_err(|e| key_problem("list key", e))?;
            let armored =
                crate::pgp::armored_public(&cert).map_err(|e| Problem::internal("export", e))?;
            Ok(ListKey {
                fingerprint: cert.fingerprint().to_hex(),
                armored: String::from_utf8_lossy(&armored).into_owned(),
            })
        })
        .await?;
    Ok(Json(key))
}

/// `list rotate-subkey`'s options.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {
    /// Days the retiring encryption subkeys stay valid (0..=3650; default 30).
    #[serde(default = "default_grace", deserialize_with = "whole_days")]
    #[schema(value_type = u32, minimum = 0, maximum = 3650)]
    pub grace_days: u32,
}

fn default_grace() -> u32 {
    30
}

/// A whole number of days; JSON Schema's integers include `30.0`, so JSON numbers with a
/// zero fraction count too.
fn whole_days<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let n = serde_json::Number::deserialize(d)?;
    n.as_u64()
        .or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                .map(|f| f as u64)
        })
        .and_then(|v| u32::try_from(v).ok())
        .ok_or_else(|| {
            serde::de::Error::custom(format!("grace_days {n} is not a whole number of days"))
        })
}

/// Longest grace period: far-future expiries are refused by OpenPGP's 32-bit times anyway.
const MAX_GRACE_DAYS: u32 = 3650;

/// What `list rotate-subkey` did.
#[derive(Serialize, ToSchema)]
pub struct Rotated {
    pub new_subkey: Option<String>,
    pub retiring: Vec<String>,
    pub destroyed: Vec<String>,
}

#[utoipa::path(post, path = "/v1/lists/{list}/key/rotate", tag = "key",
    params(("list" = String, Path, description = "The list's posting address")),
    request_body = RotateRequest,
    responses((status = 200, description = "A new encryption subkey; the old ones retire",
        body = Rotated)))]
pub async fn rotate(
    State(api): State<Arc<Api>>,
    Caller(grant): Caller,
    PathArgs(raw): PathArgs<String>,
    JsonBody(req): JsonBody<RotateRequest>,
) -> Result<Json<Rotated>, Problem> {
    let list = list_for(&api, &grant, &raw, Need::Change(Scope::Keys))?;
    if req.grace_days > MAX_GRACE_DAYS {
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("grace_days {} is over {MAX_GRACE_DAYS}", req.grace_days),
        ));
    }
    let id = grant.id().to_string();
    let r = api
        .run(move |d| {
            let config = d.config();
            let grace = std::time::Duration::from_secs(u64::from(req.grace_days) * 86_400);
            let home = keys::KeyHome::of(&config.keyring_dir, d.store());
            let passphrases = keys::Passphrases::configured(&config);
            let r = keys::rotate_subkey(
                home,
                &list,
                grace,
                keys::RotateMode::NewSubkey,
                &passphrases,
            )
            .map_err(|e| key_problem("rotate", e))?;
            // Running sessions pick the new key up with the next message.
            d.store().touch().map_err(|e| store_problem("rotate", e))?;
            let new = r
                .new_subkey
                .as_ref()
                .map(|f| f.to_hex())
                .unwrap_or_default();
            audit(
                d,
                &id,
                &list,
                "key.rotate",
                &format!("new encryption subkey {new}"),
            )?;
            Ok(r)
        })
        .await?;
    let hex = |v: &[crate::pgp::Fingerprint]| v.iter().map(|f| f.to_hex()).collect();
    Ok(Json(Rotated {
        new_subkey: r.new_subkey.map(|f| f.to_hex()),
        retiring: hex(&r.retiring),
        destroyed: hex(&r.destroyed),
    }))
}

/// The newest records first.
#[derive(Deserialize, IntoParams)]
pub struct AuditQuery {
    /// How many records (1..=1000; default 100).
    pub limit: Option<u32>,
}

/// One audit record: which token changed what, when.
#[derive(Serialize, ToSchema)]
pub struct AuditEntry {
    pub seq: i64,
    /// Seconds since the Unix epoch.
    pub at: u64,
    /// The token's id (`cli` for the command line).
    pub token_id: String,
    pub list: String,
    pub action: String,
    pub detail: String,
}

#[utoipa::path(get, path = "/v1/lists/{list}/audit", tag = "audit",
    params(("list" = String, Path, description = "The list's posting address"), AuditQuery),
    responses((status = 200, body = [AuditEntry])))]
pub async fn audit_log(
    State(api): State<Arc<Api>>,
    Caller(grant): Caller,
    PathArgs(raw): PathArgs<String>,
    QueryArgs(q): QueryArgs<AuditQuery>,
) -> Result<Json<Vec<AuditEntry>>, Problem> {
    let list = list_for(&api, &grant, &raw, Need::Read)?;
    let limit = q
        .limit
        .unwrap_or(100)
        .clamp(1, crate::store::MAX_AUDIT_PAGE as u32) as usize;
    let records = api
        .run(move |d| {
            d.store()
                .audit(Some(&list), limit)
                .map_err(|e| store_problem("audit log", e))
        })
        .await?;
    Ok(Json(
        records
            .into_iter()
            .map(|r| AuditEntry {
                seq: r.seq,
                at: r
                    .at
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0),
                token_id: r.token_id,
                list: r.list,
                action: r.action,
                detail: r.detail,
            })
            .collect(),
    ))
}
