//! Outbound: Mailman talking to itself (`LIST-owner@`, from `LIST-bounces@`) passes untouched,
//! but a loopback recipient mixed with an outside member is split off with `452 4.5.3` at RCPT,
//! in either order, so neither gets the other's treatment.

mod support;

use indymilter_test::{EomAction, Status};
use support::gpg::GpgMember;
use support::milter::{self, Mail};
use support::site::{Site, LIST, LIST_BOUNCES, LIST_OWNER};

#[tokio::test(flavor = "multi_thread")]
async fn loopback_and_outside_recipients_are_split() {
    let site = Site::new();
    site.create_list(LIST);
    let alice = GpgMember::new(&site, "alice", true);
    let daemon = milter::start(&site.config).await;
    let mut conn = milter::connect(daemon.outbound).await;
    let from = format!("<{LIST_BOUNCES}>");
    let owner = format!("<{LIST_OWNER}>");
    let member = format!("<{}>", alice.address);

    // Loopback first, then a member.
    assert_eq!(conn.mail([from.as_str()]).await.unwrap(), Status::Continue);
    assert_eq!(
        conn.rcpt([owner.as_str()]).await.unwrap(),
        Status::Continue,
        "the list's own -owner address"
    );
    let status = conn.rcpt([member.as_str()]).await.unwrap();
    milter::assert_reply(&status, "452", "4.5.3", "member after a loopback recipient");
    conn.abort().await.unwrap();

    // A member first, then loopback.
    assert_eq!(conn.mail([from.as_str()]).await.unwrap(), Status::Continue);
    assert_eq!(
        conn.rcpt([member.as_str()]).await.unwrap(),
        Status::Continue
    );
    let status = conn.rcpt([owner.as_str()]).await.unwrap();
    milter::assert_reply(&status, "452", "4.5.3", "loopback recipient after a member");
    conn.abort().await.unwrap();

    // Loopback alone reaches Mailman as it is.
    let notice = Mail::parse(
        format!(
            "From: {LIST_BOUNCES}\n\
             To: {LIST_OWNER}\n\
             Subject: Uncaught bounce notification\n\
             MIME-Version: 1.0\n\
             Content-Type: text/plain; charset=utf-8\n\
             \n\
             The attached message was received as a bounce.\n"
        )
        .as_bytes(),
    );
    assert_eq!(conn.mail([from.as_str()]).await.unwrap(), Status::Continue);
    assert_eq!(conn.rcpt([owner.as_str()]).await.unwrap(), Status::Continue);
    let (actions, status) = milter::send(&mut conn, &notice).await;
    milter::assert_goes_on(&status, "loopback");
    assert!(
        !actions.actions.iter().any(|a| matches!(
            a,
            EomAction::ReplaceBody { .. }
                | EomAction::ChangeHeader { .. }
                | EomAction::DeleteHeader { .. }
        )),
        "loopback mail passes untouched: {:?}",
        actions.actions
    );

    conn.close().await.unwrap();
    daemon.stop().await;
}
