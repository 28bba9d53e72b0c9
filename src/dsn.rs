//! Postfix's own delivery status notifications for list mail. A DSN for a decrypted post that
//! Mailman's LMTP refused or delayed would quote the plaintext; it reaches listcrypt through
//! `non_smtpd_milters` (with `internal_mail_filter_classes = bounce`) and is reduced to a
//! content-free notice. Rejecting it would leave the original deferred ("bounce failed") until
//! the queue lifetime ends, so we reduce instead (reference/postfix-milter.md).

use crate::address;
use crate::keys::Keyring;
use crate::message::Rewrite;
use crate::mime::{self, Entity};

const NOTICE: &str = "This is the mail system at the list host.\r\n\
\r\n\
Your message to an encrypted mailing list could not be delivered, or is delayed.\r\n\
The delivery status report is attached; the message itself and its headers were\r\n\
removed by listcrypt, because they had already been decrypted on the list host.\r\n";

/// Whether a DSN recipient is, or Postfix could route it to, an address of a managed list; an
/// address that does not parse counts, so a quoted post is never let through on a doubt.
fn names_list_address(keyring: &Keyring, addr: &str) -> bool {
    match address::normalize(addr) {
        Some(a) => {
            address::reaches_list(&a, keyring, &keyring.address)
                || address::is_in_list_domain(&a, keyring)
        }
        None => !keyring.lists.is_empty(),
    }
}

/// If `message` is a multipart/report whose delivery status names a managed list address,
/// the rewrite that keeps only a notice and the machine-readable status.
pub fn reduce(message: &[u8], keyring: &Keyring) -> Option<Rewrite> {
    let entity = Entity::parse(message).ok()?;
    let ct = entity.content_type();
    if ct.mimetype != "multipart/report" {
        return None;
    }
    let boundary = ct.params.get("boundary")?;
    let parts = mime::split_multipart(entity.body, boundary).ok()?;
    let status = parts.iter().find(|p| {
        Entity::parse(p).is_ok_and(|e| e.content_type().mimetype == "message/delivery-status")
    })?;
    let status_entity = Entity::parse(status).ok()?;
    let names_list = String::from_utf8_lossy(status_entity.body)
        .lines()
        .any(|line| {
            let lower = line.to_ascii_lowercase();
            let value = lower
                .strip_prefix("final-recipient:")
                .or_else(|| lower.strip_prefix("original-recipient:"));
            value
                .and_then(|v| v.split(';').nth(1))
                .is_some_and(|addr| names_list_address(keyring, addr.trim()))
        });
    if !names_list {
        return None;
    }
    let new_boundary = mime::new_boundary();
    let mut body = Vec::new();
    body.extend_from_slice(b"This is a MIME-encapsulated message.\r\n\r\n");
    body.extend_from_slice(format!("--{new_boundary}\r\n").as_bytes());
    body.extend_from_slice(
        b"Content-Description: Notification\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n",
    );
    body.extend_from_slice(NOTICE.as_bytes());
    body.extend_from_slice(format!("\r\n--{new_boundary}\r\n").as_bytes());
    body.extend_from_slice(&mime::to_crlf(status));
    body.extend_from_slice(format!("\r\n--{new_boundary}--\r\n").as_bytes());
    Some(Rewrite {
        remove: vec!["Content-Type".into(), "Content-Transfer-Encoding".into()],
        add: vec![(
            "Content-Type".into(),
            format!(
                "multipart/report; report-type=delivery-status;\n\tboundary=\"{new_boundary}\""
            ),
        )],
        body: Some(body),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Policy;
    use crate::keys::ListKeys;
    use std::collections::HashMap;
    use std::sync::Arc;

    fn keyring() -> Keyring {
        let cert = crate::pgp::testkit::general_purpose("<enc@l.test>");
        let mut lists = HashMap::new();
        lists.insert(
            "enc@l.test".to_string(),
            Arc::new(ListKeys::new(
                "enc@l.test".into(),
                Policy::default(),
                cert,
                Vec::new(),
            )),
        );
        Keyring {
            generation: 0,
            lists,
            address: crate::address::AddressConfig::default(),
            other_recipients: crate::config::OtherRecipients::Reject,
        }
    }

    fn dsn(final_rcpt: &str) -> Vec<u8> {
        format!(
            "From: MAILER-DAEMON\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"B\"\r\n\r\n\
             --B\r\nContent-Type: text/plain\r\n\r\nbounced\r\n\
             --B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; h\r\n\r\nFinal-Recipient: rfc822; {final_rcpt}\r\nAction: failed\r\nStatus: 5.0.0\r\n\r\n\
             --B\r\nContent-Type: message/rfc822\r\n\r\nSubject: SECRET SUBJECT\r\n\r\nSECRET BODY\r\n\
             --B--\r\n"
        )
        .into_bytes()
    }

    #[test]
    fn dsn_for_a_list_post_loses_the_quoted_post() {
        let k = keyring();
        let rewrite = reduce(&dsn("enc@l.test"), &k).expect("reduced");
        let out = rewrite.render(&dsn("enc@l.test"));
        let text = String::from_utf8_lossy(&out);
        assert!(!text.contains("SECRET"), "{text}");
        assert!(text.contains("Final-Recipient: rfc822; enc@l.test"));
        assert!(text.contains("multipart/report"));
        assert!(crate::mime::walk_entity(&out, 5, 10).is_ok());
    }

    #[test]
    fn dsn_for_any_spelling_of_a_list_address_is_reduced() {
        // Spellings Postfix delivers to enc@l.test (recipient_delimiter = +) and Mailman files
        // under it; success and delay reports (RET=FULL) quote the post the same way.
        let k = keyring();
        for rcpt in [
            "enc+x@l.test",
            "ENC@L.TEST.",
            "\"enc\"@l.test",
            "enc-owner@l.test",
            "enc%l.test@mx.test",
        ] {
            let m = dsn(rcpt);
            let rewrite = reduce(&m, &k).unwrap_or_else(|| panic!("{rcpt} reduced"));
            let text = String::from_utf8_lossy(&rewrite.render(&m)).into_owned();
            assert!(!text.contains("SECRET"), "{rcpt}: {text}");
        }
        for action in ["delivered", "delayed"] {
            let m = String::from_utf8(dsn("enc+x@l.test"))
                .unwrap()
                .replace("Action: failed", &format!("Action: {action}"))
                .into_bytes();
            assert!(reduce(&m, &k).is_some(), "{action}");
        }
    }

    #[test]
    fn other_dsns_pass() {
        assert!(reduce(&dsn("someone@else.test"), &keyring()).is_none());
        assert!(reduce(b"Subject: x\r\n\r\nbody", &keyring()).is_none());
    }
}
