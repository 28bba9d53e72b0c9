//! Starting a proven binding for an owner: the key address's own challenge (key_address.rs),
//! sent through the reinjection listener, its effects made once the MTA has it.

use super::auth::Grant;
use super::problem::Problem;
use super::routes::{BindRequest, BindStarted};
use super::{audit, key_problem, store_problem, Api};
use crate::key_address::{KeyAddressError, Processor};
use crate::keys::{normalize_address, valid_address, KeyError};
use axum::http::StatusCode;
use std::sync::Arc;
use std::time::SystemTime;

fn unprocessable(detail: impl Into<String>) -> Problem {
    Problem::new(StatusCode::UNPROCESSABLE_ENTITY, detail)
}

/// The one certificate in `armored`, or why not.
fn one_cert(armored: &str) -> Result<crate::pgp::Cert, Problem> {
    let mut certs = crate::pgp::parse_certs(armored.as_bytes());
    match (certs.next(), certs.next()) {
        (Some(cert), None) => Ok(cert),
        (None, _) => Err(unprocessable("certificate: no OpenPGP certificate found")),
        (Some(_), Some(_)) => Err(unprocessable("certificate: more than one certificate")),
    }
}

fn offer_problem(e: KeyAddressError) -> Problem {
    match e {
        KeyAddressError::Keys(KeyError::Unusable(why)) => {
            unprocessable(format!("certificate: {why}"))
        }
        KeyAddressError::Keys(e) => key_problem("binding", e),
        KeyAddressError::Store(e) => store_problem("binding", e),
        e => Problem::internal("binding", e),
    }
}

pub async fn start(
    api: &Arc<Api>,
    grant: &Grant,
    list: &str,
    req: BindRequest,
) -> Result<BindStarted, Problem> {
    let address = normalize_address(&req.address);
    if !valid_address(&address) {
        return Err(unprocessable(format!(
            "address {:?} is not valid",
            req.address
        )));
    }
    let cert = one_cert(&req.certificate)?;
    let keyring = api
        .daemon
        .keyring()
        .map_err(|e| key_problem("keyring", e))?;
    let keys = keyring
        .lists
        .get(list)
        .cloned()
        .ok_or_else(|| Problem::unavailable("binding", "the list is not loaded yet"))?;
    let fingerprint = cert.fingerprint().to_hex();
    let outcome = {
        let address = address.clone();
        api.run(move |d| {
            let config = d.config();
            let processor = Processor {
                list: &keys,
                store: d.store(),
                keyring_dir: &config.keyring_dir,
                limits: &config.limits,
            };
            processor
                .offer_for(&address, &cert, SystemTime::now())
                .map_err(offer_problem)
        })
        .await?
    };
    let Some(mail) = outcome.reply.as_ref() else {
        // Over a rate limit or a cap of pending challenges: nothing was recorded.
        return Err(Problem::new(StatusCode::TOO_MANY_REQUESTS, outcome.summary));
    };
    let config = api.daemon.config();
    crate::reinject::send_batch(
        &config.reinject_smtp,
        "",
        std::slice::from_ref(&mail.to),
        &mail.message,
    )
    .await
    .map_err(|e| Problem::unavailable("sending the challenge", e))?;
    tracing::info!("api: {list}: {} (token {})", outcome.summary, grant.id());
    let (id, list, detail) = (
        grant.id().to_string(),
        list.to_string(),
        format!("{address} {fingerprint}: challenge sent"),
    );
    api.run(move |d| {
        outcome
            .commit(d.store(), &d.config().keyring_dir)
            .map_err(offer_problem)?;
        audit(d, &id, &list, "member.bind", &detail)
    })
    .await?;
    Ok(BindStarted {
        address,
        fingerprint,
        state: "pending".into(),
    })
}
