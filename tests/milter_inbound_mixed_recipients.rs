//! Inbound: a transaction for a list may carry no other recipient — another list, or an
//! address that is no list's — so decrypted text reaches nobody else. The extra RCPT gets
//! `452 4.5.3` (the client retries it in a transaction of its own), whichever comes first.

mod support;

use indymilter_test::Status;
use support::milter;
use support::site::{Site, LIST};

const OTHER_LIST: &str = "other@lists.example.test";

#[tokio::test(flavor = "multi_thread")]
async fn extra_recipients_of_a_list_transaction_get_452() {
    let site = Site::new();
    site.create_list(LIST);
    site.create_list(OTHER_LIST);
    let daemon = milter::start(&site.config).await;
    let mut conn = milter::connect(daemon.inbound).await;
    let list = format!("<{LIST}>");
    let other_list = format!("<{OTHER_LIST}>");

    // The list first, then an outsider and a second list.
    assert_eq!(
        conn.mail(["<alice@example.test>"]).await.unwrap(),
        Status::Continue
    );
    assert_eq!(conn.rcpt([list.as_str()]).await.unwrap(), Status::Continue);
    let status = conn.rcpt(["<someone@elsewhere.test>"]).await.unwrap();
    milter::assert_reply(&status, "452", "4.5.3", "non-list recipient after the list");
    let status = conn.rcpt([other_list.as_str()]).await.unwrap();
    milter::assert_reply(&status, "452", "4.5.3", "second list");
    conn.abort().await.unwrap();

    // An outsider first: the list is the one deferred.
    assert_eq!(
        conn.mail(["<alice@example.test>"]).await.unwrap(),
        Status::Continue
    );
    let status = conn.rcpt(["<someone@elsewhere.test>"]).await.unwrap();
    assert!(
        matches!(status, Status::Continue | Status::Accept),
        "a transaction for no list is none of listcrypt's business: {status:?}"
    );
    if status == Status::Continue {
        let status = conn.rcpt([list.as_str()]).await.unwrap();
        milter::assert_reply(&status, "452", "4.5.3", "list after a non-list recipient");
        conn.abort().await.unwrap();
    }

    // Two addresses of the same list are one list.
    assert_eq!(
        conn.mail(["<alice@example.test>"]).await.unwrap(),
        Status::Continue
    );
    assert_eq!(conn.rcpt([list.as_str()]).await.unwrap(), Status::Continue);
    assert_eq!(
        conn.rcpt(["<enc-owner@lists.example.test>"]).await.unwrap(),
        Status::Continue,
        "the list's own -owner address belongs to the same list"
    );
    conn.abort().await.unwrap();

    conn.close().await.unwrap();
    daemon.stop().await;
}
