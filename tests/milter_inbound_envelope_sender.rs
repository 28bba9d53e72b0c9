//! Inbound, `inbound_envelope_sender` (issue 16, Sendmail's own DSNs pass no milter): with
//! "list-bounces" an accepted post leaves with the envelope sender `LIST-bounces@DOMAIN`
//! (SMFIR_CHGFROM, angle brackets as in MAIL FROM), so a DSN about it goes back into
//! Mailman; refused posts and mail that listcrypt passes as it is (owner mail) keep theirs;
//! with the default "keep" nothing changes. `process inbound` reports the same change.

mod support;

use indymilter_test::{EomAction, EomActions, Status};
use std::fs;
use support::gpg::GpgMember;
use support::milter::{self, Mail};
use support::site::{Site, LIST, LIST_BOUNCES, LIST_OWNER};

/// The envelope senders the end-of-message actions set, in order.
fn sender_changes(actions: &EomActions) -> Vec<(String, Option<String>)> {
    actions
        .actions
        .iter()
        .filter_map(|a| match a {
            EomAction::ChangeSender { mail, args } => Some((
                mail.to_string_lossy().into_owned(),
                args.as_ref().map(|a| a.to_string_lossy().into_owned()),
            )),
            _ => None,
        })
        .collect()
}

/// One transaction through the inbound listener: its end-of-message actions and status.
async fn transact(
    addr: std::net::SocketAddr,
    from: &str,
    rcpt: &str,
    mail: &Mail,
) -> (EomActions, Status) {
    let mut conn = milter::connect(addr).await;
    assert_eq!(
        conn.mail([format!("<{from}>")]).await.unwrap(),
        Status::Continue
    );
    assert_eq!(
        conn.rcpt([format!("<{rcpt}>")]).await.unwrap(),
        Status::Continue
    );
    let result = milter::send(&mut conn, mail).await;
    conn.close().await.unwrap();
    result
}

/// `process inbound` on `post`: (exit code, stderr).
fn process(site: &Site, from: &str, post: &[u8]) -> (Option<i32>, String) {
    let out = support::process::run(
        site.cli()
            .args(["process", "inbound", "--list", LIST, "--from", from]),
        Some(post),
    );
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn set_envelope_sender(site: &Site, value: &str) {
    let text = fs::read_to_string(&site.config).unwrap();
    fs::write(
        &site.config,
        format!("inbound_envelope_sender = \"{value}\"\n{text}"),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn list_bounces_changes_the_sender_of_accepted_posts_only() {
    let site = Site::new();
    site.create_list(LIST);
    set_envelope_sender(&site, "list-bounces");
    let alice = GpgMember::new(&site, "alice", true);
    let post = alice.post("[...]", "Hello list.");

    // The dry run first: it only peeks at the replay record the milter then writes.
    let (code, stderr) = process(&site, &alice.address, &post);
    assert_eq!(code, Some(0), "process inbound: {stderr}");
    assert!(
        stderr.contains(&format!("<{LIST_BOUNCES}>")),
        "process inbound does not report the envelope sender change: {stderr:?}"
    );

    let daemon = milter::start(&site.config).await;
    let (actions, status) =
        transact(daemon.inbound, &alice.address, LIST, &Mail::parse(&post)).await;
    milter::assert_goes_on(&status, "good post");
    assert_eq!(
        sender_changes(&actions),
        vec![(format!("<{LIST_BOUNCES}>"), None)],
        "the accepted post must leave with the list's bounces address as envelope sender"
    );

    // Refused: nothing goes on, so nothing to change.
    let plain = Mail::parse(
        format!(
            "From: {}\nTo: {LIST}\nSubject: plain\nContent-Type: text/plain\n\nin clear\n",
            alice.address
        )
        .as_bytes(),
    );
    let (actions, status) = transact(daemon.inbound, &alice.address, LIST, &plain).await;
    assert!(
        matches!(status, Status::Reject { .. }),
        "plaintext post: {status:?}"
    );
    assert!(sender_changes(&actions).is_empty(), "{:?}", actions.actions);

    // Owner mail passes as it came: listcrypt decrypted nothing, so its sender stays.
    let owner_mail = Mail::parse(
        format!(
            "From: someone@example.test\nTo: {LIST_OWNER}\nSubject: hi\n\
             Content-Type: text/plain\n\nplease let me in\n"
        )
        .as_bytes(),
    );
    let (actions, status) = transact(
        daemon.inbound,
        "someone@example.test",
        LIST_OWNER,
        &owner_mail,
    )
    .await;
    milter::assert_goes_on(&status, "owner mail");
    assert!(sender_changes(&actions).is_empty(), "{:?}", actions.actions);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn keep_is_the_default_and_changes_nothing() {
    let site = Site::new();
    site.create_list(LIST);
    let alice = GpgMember::new(&site, "alice", true);
    let post = alice.post("[...]", "Hello list.");

    let (code, stderr) = process(&site, &alice.address, &post);
    assert_eq!(code, Some(0), "process inbound: {stderr}");
    assert!(
        !stderr.contains("envelope sender"),
        "process inbound reports a sender change by default: {stderr:?}"
    );

    let daemon = milter::start(&site.config).await;
    let (actions, status) =
        transact(daemon.inbound, &alice.address, LIST, &Mail::parse(&post)).await;
    milter::assert_goes_on(&status, "good post");
    assert!(
        sender_changes(&actions).is_empty(),
        "by default the author's envelope sender stays: {:?}",
        actions.actions
    );
    daemon.stop().await;
}

/// A held post reaches Mailman decrypted too (for moderation), so it is changed as well.
#[tokio::test(flavor = "multi_thread")]
async fn held_posts_leave_with_the_bounces_address_too() {
    let site = Site::new();
    site.create_list(LIST);
    set_envelope_sender(&site, "list-bounces");
    fs::write(
        site.path("lists.d").join(format!("{LIST}.toml")),
        "unknown_signer_action = \"hold\"\n",
    )
    .unwrap();
    let dave = GpgMember::new(&site, "dave", false);
    let post = dave.post("[...]", "Not bound yet.");

    let out = support::process::run(
        site.cli().args([
            "process",
            "inbound",
            "--list",
            LIST,
            "--from",
            &dave.address,
        ]),
        Some(&post),
    );
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.code() == Some(1) && stdout.starts_with("hold "),
        "process inbound: {stdout:?} {stderr:?}"
    );
    assert!(
        stderr.contains(&format!("<{LIST_BOUNCES}>")),
        "process inbound does not report the envelope sender change: {stderr:?}"
    );

    let daemon = milter::start(&site.config).await;
    let (actions, status) =
        transact(daemon.inbound, &dave.address, LIST, &Mail::parse(&post)).await;
    milter::assert_goes_on(&status, "held post");
    assert!(
        Mail::parse(&post)
            .apply(&actions)
            .header("X-Listcrypt-Hold")
            .is_some(),
        "the post is not held: {:?}",
        actions.actions
    );
    assert_eq!(
        sender_changes(&actions),
        vec![(format!("<{LIST_BOUNCES}>"), None)]
    );
    daemon.stop().await;
}

/// Fail closed: an MTA that would not let listcrypt change the sender gets no inbound service
/// (Sendmail's F=T and Postfix's default_action=tempfail make that a 4xx), rather than posts
/// whose DSNs could reach their authors.
#[tokio::test(flavor = "multi_thread")]
async fn an_mta_without_the_sender_change_gets_no_inbound_service() {
    use indymilter_test::{Actions, ProtoOpts, TestConnection};
    let site = Site::new();
    site.create_list(LIST);
    set_envelope_sender(&site, "list-bounces");
    let daemon = milter::start(&site.config).await;
    let opened = TestConnection::configure()
        .available_actions(Actions::all() - Actions::CHANGE_SENDER)
        .available_opts(ProtoOpts::all())
        .exact_leading_space(true)
        .open_tcp(daemon.inbound)
        .await;
    let served = match opened {
        Err(_) => false,
        Ok(mut conn) => conn
            .connect("client.example.test", [127, 0, 0, 1])
            .await
            .is_ok_and(|s| matches!(s, Status::Continue | Status::Noreply)),
    };
    assert!(
        !served,
        "the inbound listener served an MTA that cannot change the sender"
    );
    daemon.stop().await;
}
