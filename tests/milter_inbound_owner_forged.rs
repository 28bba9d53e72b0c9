//! Mail to the list's owner address reaches Mailman as it is, except for forged copies of the
//! header fields listcrypt sets (a poster must not be able to fake a verification result or a
//! hold reason on any path into Mailman).

mod support;

use indymilter_test::{EomAction, Status};
use support::milter::{self, Mail};
use support::site::{Site, LIST, LIST_OWNER};

#[tokio::test(flavor = "multi_thread")]
async fn forged_listcrypt_fields_are_removed_from_owner_mail() {
    let site = Site::new();
    site.create_list(LIST);
    let daemon = milter::start(&site.config).await;
    let mut conn = milter::connect(daemon.inbound).await;
    let mail = Mail::parse(
        format!(
            "From: someone@example.test\nTo: {LIST_OWNER}\nSubject: hello owner\n\
             X-Listcrypt-Hold: forged\nX-Listcrypt-Signer: alice@example.test 0xFORGED\n\
             X-Mailman-Rule-Misses: forged\nX-Mailman-Rule-Hits: forged\n\
             Content-Type: text/plain\n\nplease let me in\n"
        )
        .as_bytes(),
    );
    assert_eq!(
        conn.mail(["<someone@example.test>"]).await.unwrap(),
        Status::Continue
    );
    assert_eq!(
        conn.rcpt([format!("<{LIST_OWNER}>")]).await.unwrap(),
        Status::Continue
    );
    let (actions, status) = milter::send(&mut conn, &mail).await;
    assert!(
        matches!(status, Status::Accept | Status::Continue),
        "{}",
        milter::reply_text(&status)
    );
    let removed: Vec<String> = actions
        .actions
        .iter()
        .filter_map(|a| match a {
            EomAction::DeleteHeader { name, .. } => Some(name.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect();
    assert!(
        removed
            .iter()
            .any(|n| n.eq_ignore_ascii_case("X-Listcrypt-Hold")),
        "{:?}",
        actions.actions
    );
    assert!(
        removed
            .iter()
            .any(|n| n.eq_ignore_ascii_case("X-Listcrypt-Signer")),
        "{:?}",
        actions.actions
    );
    // Mailman's own marks of an accepted post: forged on owner mail, its forward to the
    // owners would pass for a post and go into the encrypted archive (issue 15).
    for field in ["X-Mailman-Rule-Misses", "X-Mailman-Rule-Hits"] {
        assert!(
            removed.iter().any(|n| n.eq_ignore_ascii_case(field)),
            "{field}: {:?}",
            actions.actions
        );
    }
    assert!(!milter::replaces_body(&actions), "the body is not touched");
    let out = mail.apply(&actions);
    assert_eq!(
        out.header("Subject").as_deref().map(str::trim),
        Some("hello owner")
    );
    conn.close().await.unwrap();
    daemon.stop().await;
}
