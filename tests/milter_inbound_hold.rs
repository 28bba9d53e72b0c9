//! Inbound: `hold` decrypts and delivers with listcrypt's `X-Listcrypt-Hold: reason` header
//! (Mailman's header_matches rule holds it), and an `X-Listcrypt-Hold` that arrives with a
//! post — forged to release or to hold — never reaches Mailman.

mod support;

use indymilter_test::{Status, TestConnection};
use std::fs;
use support::gpg::GpgMember;
use support::milter::{self, Mail};
use support::site::{Site, LIST};
use support::text::contains;

const FORGED: &str = "X-Listcrypt-Hold: forged-by-sender\n";

async fn deliver(conn: &mut TestConnection, sender: &str, mail: &Mail) -> Mail {
    let from = format!("<{sender}>");
    assert_eq!(conn.mail([from.as_str()]).await.unwrap(), Status::Continue);
    let to = format!("<{LIST}>");
    assert_eq!(conn.rcpt([to.as_str()]).await.unwrap(), Status::Continue);
    let (actions, status) = milter::send(conn, mail).await;
    assert!(
        matches!(status, Status::Continue | Status::Accept),
        "expected delivery to Mailman, got {}",
        milter::reply_text(&status)
    );
    mail.apply(&actions)
}

fn hold_headers(mail: &Mail) -> Vec<String> {
    mail.headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("X-Listcrypt-Hold"))
        .map(|(_, v)| v.trim().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn hold_header_is_listcrypts_own() {
    let site = Site::new();
    site.create_list(LIST);
    fs::write(
        site.path("lists.d").join(format!("{LIST}.toml")),
        "unsigned_action = \"hold\"\n",
    )
    .unwrap();
    let alice = GpgMember::new(&site, "alice", true);
    let daemon = milter::start(&site.config).await;
    let mut conn = milter::connect(daemon.inbound).await;

    // A good post with a forged header: the header goes, the post is not held.
    let good = Mail::parse(&alice.compose("[...]", "A good post.", true, FORGED));
    let delivered = deliver(&mut conn, &alice.address, &good).await;
    assert!(contains(&delivered.body, b"A good post."));
    assert_eq!(
        hold_headers(&delivered),
        Vec::<String>::new(),
        "a forged X-Listcrypt-Hold must be removed from a good post"
    );

    // An unsigned post under unsigned_action = hold: decrypted, with exactly one hold header,
    // listcrypt's.
    let unsigned = Mail::parse(&alice.compose("[...]", "Held for a moderator.", false, FORGED));
    let delivered = deliver(&mut conn, &alice.address, &unsigned).await;
    assert!(
        contains(&delivered.body, b"Held for a moderator."),
        "a held post is decrypted for the moderator"
    );
    let holds = hold_headers(&delivered);
    assert_eq!(holds.len(), 1, "exactly one X-Listcrypt-Hold: {holds:?}");
    assert!(
        !holds[0].is_empty() && !holds[0].contains("forged-by-sender"),
        "the hold reason is listcrypt's: {holds:?}"
    );

    conn.close().await.unwrap();
    daemon.stop().await;
}
