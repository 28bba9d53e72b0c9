//! A content-free delivery status notification (RFC 3464) for a recipient that the
//! reinjection listener refused: it goes to the list's bounces address, so Mailman's bounce
//! processing counts it against that member, and it quotes nothing of the post.

/// The DSN for `recipient`, refused with `code` and `text`, of a message from `sender` (the
/// list's bounces address). `host` names the reporting MTA; `now` is the Arrival-Date.
pub fn refused_recipient(
    sender: &str,
    recipient: &str,
    code: u16,
    text: &str,
    host: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Vec<u8> {
    let boundary = crate::mime::new_boundary();
    let date = now.format("%a, %-d %b %Y %H:%M:%S +0000");
    let action = if code >= 500 { "failed" } else { "delayed" };
    let status = status_code(code, text);
    // The reply text is the listener's, not the poster's: still, keep it to one clean line.
    let diagnostic: String = text.chars().filter(|c| !c.is_control()).take(200).collect();
    let recipient = recipient
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>');
    format!(
        "From: MAILER-DAEMON@{host} (listcrypt)\r\n\
         To: {sender}\r\n\
         Subject: Undelivered list mail\r\n\
         Date: {date}\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\
         \r\n\
         A copy of a list message could not be handed on for {recipient}.\r\n\
         The message itself is not quoted: it belongs to an encrypted list.\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Type: message/delivery-status\r\n\
         \r\n\
         Reporting-MTA: dns; {host}\r\n\
         Arrival-Date: {date}\r\n\
         \r\n\
         Final-Recipient: rfc822; {recipient}\r\n\
         Action: {action}\r\n\
         Status: {status}\r\n\
         Diagnostic-Code: smtp; {diagnostic}\r\n\
         \r\n\
         --{boundary}--\r\n"
    )
    .into_bytes()
}

/// The enhanced status code from the reply text (`550 5.1.1 …`), else the class's default.
fn status_code(code: u16, text: &str) -> String {
    let enhanced = text.split_whitespace().nth(1).filter(|w| {
        let parts: Vec<&str> = w.split('.').collect();
        parts.len() == 3
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    });
    match enhanced {
        Some(e) => e.to_string(),
        None if code >= 500 => "5.0.0".into(),
        None => "4.0.0".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn a_refused_recipient_gets_a_report_without_content() {
        let now = chrono::Utc.with_ymd_and_hms(2026, 12, 6, 15, 0, 0).unwrap();
        let dsn = refused_recipient(
            "enc-bounces@l.test",
            "<bob@m.test>",
            550,
            "550 5.1.1 <bob@m.test>: Recipient address rejected",
            "l.test",
            now,
        );
        let text = String::from_utf8(dsn.clone()).unwrap();
        // RFC 3464 §2.3: per-recipient fields.
        assert!(
            text.contains("Final-Recipient: rfc822; bob@m.test\r\n"),
            "{text}"
        );
        assert!(text.contains("Action: failed\r\n"));
        assert!(text.contains("Status: 5.1.1\r\n"));
        assert!(text.contains("To: enc-bounces@l.test\r\n"));
        assert!(!text.contains("message/rfc822"), "no quoted message");
        assert!(crate::mime::walk_entity(&dsn, 5, 10).is_ok());
    }

    #[test]
    fn a_temporary_refusal_is_a_delay() {
        let now = chrono::Utc.with_ymd_and_hms(2026, 12, 6, 15, 0, 0).unwrap();
        let text = String::from_utf8(refused_recipient(
            "b@l",
            "c@m",
            452,
            "452 too many",
            "l",
            now,
        ))
        .unwrap();
        assert!(
            text.contains("Action: delayed\r\nStatus: 4.0.0\r\n"),
            "{text}"
        );
    }
}
