//! End to end, the replay rule (README): a post's replay record follows what became of the
//! post. Real Postfix, Mailman 3 and listcrypt (the world of `e2e_postfix_mailman`), plus a
//! milter of this test placed after listcrypt in the inbound `smtpd_milters` that tempfails
//! the first message it sees. The scenarios run one after the other in one test function:
//!
//! - A: the later milter tempfails alice's post once after listcrypt said yes; her retries get
//!   `451 4.7.1` while the record is tentative, one is accepted once the (short) confirm window
//!   dropped it, and every member gets exactly one copy;
//! - C: an attacker replays that post after the window and after its distribution: it is a
//!   replay (discarded), nobody gets a second copy;
//! - B: a client hangs up right after DATA's final dot and retries: one copy each;
//! - D: Mailman holds a post (member moderation); its sender's retries are not held or
//!   distributed a second time.
//!
//! Runs as root, like `e2e_postfix_mailman` (`bash scripts/test`).

mod support;

use indymilter::{Callbacks, SetErrorReply, Status};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};
use support::mime;
use support::smtp::{self, Dialogue};
use support::world::{header_value, unique_marker, World, WorldOptions, DELIVERY_TIMEOUT, LIST};

/// `limits.replay_confirm_window` for A and C: short, so that the test can outwait it.
const SHORT_WINDOW: Duration = Duration::from_secs(8);
/// The window for B and D: far longer than Mailman takes to emit a post, as the default
/// (one hour) is in production.
const LONG_WINDOW: Duration = Duration::from_secs(600);
/// How long the sender waits between two attempts.
const RETRY_PAUSE: Duration = Duration::from_secs(1);
/// The text of the test milter's tempfail, to tell it from listcrypt's.
const MILTER_TEXT: &str = "test milter after listcrypt: please try again";

/// A milter that answers `451 4.7.0` at the end of the first message it sees and lets every
/// later one pass: another filter failing after listcrypt's yes. Stopped on drop.
struct TempfailOnce {
    /// For Postfix's `smtpd_milters`.
    address: String,
    eoms: Arc<AtomicUsize>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl TempfailOnce {
    fn start() -> TempfailOnce {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("milter: bind");
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let eoms = Arc::new(AtomicUsize::new(0));
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let counter = eoms.clone();
        let thread = thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("milter: runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let callbacks = Callbacks::<()>::new().on_eom(move |cx| {
                    let seen = counter.fetch_add(1, Ordering::SeqCst);
                    Box::pin(async move {
                        if seen > 0 {
                            return Status::Continue;
                        }
                        cx.reply
                            .set_error_reply("451", Some("4.7.0"), [MILTER_TEXT])
                            .expect("a valid 4xx reply");
                        Status::Tempfail
                    })
                });
                let stop = async move {
                    let _ = stopped.await;
                };
                indymilter::run(listener, callbacks, Default::default(), stop)
                    .await
                    .expect("milter: run");
            });
        });
        TempfailOnce {
            address: format!("inet:127.0.0.1:{port}"),
            eoms,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    /// Messages whose end the milter has seen (after listcrypt's yes: Postfix asks the
    /// milters in order and stops at the first refusal).
    fn eoms(&self) -> usize {
        self.eoms.load(Ordering::SeqCst)
    }
}

impl Drop for TempfailOnce {
    fn drop(&mut self) {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// listcrypt's answer to a duplicate of a post Mailman is not yet known to have.
fn is_tentative_duplicate(d: &Dialogue) -> bool {
    d.end_of_data()
        .is_some_and(|r| r.code == 451 && r.enhanced() == Some("4.7.1"))
}

/// The sender's retries: sends `post` every `RETRY_PAUSE` until the end of DATA gets 250.
/// Every refusal on the way must be listcrypt's `451 4.7.1`; an attempt that ends before
/// `tentative_until` must be refused. Returns how many were refused.
fn retry_until_accepted(
    w: &World,
    post: &[u8],
    what: &str,
    tentative_until: Option<Instant>,
    timeout: Duration,
) -> usize {
    let deadline = Instant::now() + timeout;
    let mut refused = 0;
    loop {
        let d = smtp::send(w.inbound_port, &w.alice.email, &[LIST], post);
        let ended = Instant::now();
        if d.accepted() {
            assert!(
                tentative_until.is_none_or(|until| ended >= until),
                "{what}: a retry was accepted while the first attempt's record was still \
                 tentative (inside the confirm window):\n{d}"
            );
            eprintln!("replay: {what}: retry accepted after {refused} refusal(s)");
            return refused;
        }
        assert!(
            is_tentative_duplicate(&d),
            "{what}: a retry got something else than 250 or listcrypt's 451 4.7.1:\n{d}"
        );
        refused += 1;
        assert!(
            Instant::now() < deadline,
            "{what}: still 451 4.7.1 after {refused} retries in {timeout:?}:\n{d}"
        );
        thread::sleep(RETRY_PAUSE);
    }
}

/// How many of listcrypt's log lines say a post was discarded as a duplicate.
fn duplicate_discards(w: &World) -> usize {
    w.listcrypt
        .log_text()
        .lines()
        .filter(|l| l.contains("discarded: duplicate post"))
        .count()
}

/// Waits until bob and carol have a copy of `id`, then until everything settled; asserts
/// one copy each (alice, the author, gets at most one: Mailman may skip her).
fn exactly_one_copy_each(w: &World, id: &str, what: &str) {
    let deadline = Instant::now() + DELIVERY_TIMEOUT;
    for rcpt in [&w.bob.email, &w.carol.email] {
        while w.copies_of(rcpt, id).is_empty() {
            assert!(
                Instant::now() < deadline,
                "{what}: no copy of {id} for {rcpt} within {DELIVERY_TIMEOUT:?}"
            );
            thread::sleep(Duration::from_millis(250));
        }
    }
    w.settle();
    assert_copies(w, id, what, 1);
}

/// Asserts that bob and carol have `n` copies of `id` and alice at most `n`.
fn assert_copies(w: &World, id: &str, what: &str, n: usize) {
    for rcpt in [&w.bob.email, &w.carol.email] {
        let copies = w.copies_of(rcpt, id).len();
        assert_eq!(copies, n, "{what}: {rcpt} got {copies} copies of {id}");
    }
    let own = w.copies_of(&w.alice.email, id).len();
    assert!(own <= n, "{what}: the author got {own} copies of {id}");
}

/// One post of alice's; its Message-ID (which Mailman keeps) identifies its copies.
struct Post {
    bytes: Vec<u8>,
    id: String,
    marker: String,
}

fn new_post(w: &World, tag: &str) -> Post {
    let marker = unique_marker(tag);
    let bytes = w.encrypted_post(
        &w.alice,
        &format!("E2E replay {tag}"),
        &format!("Hello list,\n\nthe word is {marker}.\n"),
    );
    let id = header_value(&bytes, "Message-ID").expect("the post has a Message-ID");
    Post { bytes, id, marker }
}

/// A: a milter after listcrypt tempfails alice's post once, after listcrypt said yes.
fn later_milter_tempfails_once(w: &World, milter: &TempfailOnce) -> (Post, Instant) {
    let post = new_post(w, "tempfail");
    let claimed_after = Instant::now();
    let first = smtp::send(w.inbound_port, &w.alice.email, &[LIST], &post.bytes);
    let reply = first
        .end_of_data()
        .unwrap_or_else(|| panic!("A: the first attempt did not reach the end of DATA:\n{first}"));
    assert!(
        reply.code == 451 && reply.text().contains(MILTER_TEXT),
        "A: the first attempt should get the test milter's 451:\n{first}"
    );
    assert_eq!(
        milter.eoms(),
        1,
        "A: the test milter saw no message after listcrypt"
    );

    // Inside the window the record is tentative: 451 4.7.1 from listcrypt, which the test
    // milter never sees; after it, the record is dropped and the retry counts as new.
    let refused = retry_until_accepted(
        w,
        &post.bytes,
        "A",
        Some(claimed_after + SHORT_WINDOW),
        SHORT_WINDOW + Duration::from_secs(60),
    );
    eprintln!("replay: A: {refused} retry(ies) inside or around the window got 451 4.7.1");
    let accepted_at = Instant::now();
    assert_eq!(
        milter.eoms(),
        2,
        "A: listcrypt's 451 4.7.1 retries must not reach the later milter"
    );

    exactly_one_copy_each(w, &post.id, "A");
    let copy = &w.copies_of(&w.bob.email, &post.id)[0];
    let armored = mime::rfc3156_payload(&copy.text())
        .unwrap_or_else(|why| panic!("A: bob's copy is not RFC 3156 encrypted ({why})"));
    let plain = w.bob.gpg.decrypt(armored.as_bytes());
    assert!(
        plain.decrypted() && plain.text().contains(&post.marker),
        "A: bob's copy is not alice's post:\n{}",
        plain.report()
    );
    (post, accepted_at)
}

/// C: the post of A replayed after the window and after its distribution is a replay.
fn later_replay_is_a_replay(w: &World, post: &Post, accepted_at: Instant) {
    let past_window = accepted_at + SHORT_WINDOW + Duration::from_secs(2);
    if let Some(wait) = past_window.checked_duration_since(Instant::now()) {
        thread::sleep(wait);
    }
    let discards = duplicate_discards(w);
    // The same transaction as alice's (an attacker can write any envelope), then another
    // envelope sender.
    let same = smtp::send(w.inbound_port, &w.alice.email, &[LIST], &post.bytes);
    assert!(
        same.accepted(),
        "C: a replay of a distributed post should be discarded (duplicate_action's default), \
         not asked to retry:\n{same}"
    );
    assert_eq!(
        duplicate_discards(w),
        discards + 1,
        "C: listcrypt did not log the replay as a discarded duplicate"
    );
    let other = smtp::send(w.inbound_port, "mallory@example.org", &[LIST], &post.bytes);
    let reply = other
        .end_of_data()
        .unwrap_or_else(|| panic!("C: the replay did not reach the end of DATA:\n{other}"));
    assert!(
        reply.code == 250 || (500..600).contains(&reply.code),
        "C: a replay from another envelope sender got {reply}, neither a discard nor a \
         refusal:\n{other}"
    );
    w.settle();
    assert_copies(w, &post.id, "C", 1);
}

/// B: the client hangs up after DATA's final dot and retries.
fn hang_up_after_dot_then_retry(w: &World) {
    let post = new_post(w, "hangup");
    let d = smtp::send_and_hang_up(w.inbound_port, &w.alice.email, &[LIST], &post.bytes);
    assert!(
        d.io_error.is_none() && d.reply("DATA").is_some_and(|r| r.code == 354),
        "B: the transaction did not get as far as DATA:\n{d}"
    );
    let discards = duplicate_discards(w);
    let refused = retry_until_accepted(w, &post.bytes, "B", None, Duration::from_secs(120));
    let discarded = duplicate_discards(w) > discards;
    eprintln!(
        "replay: B: {refused} retry(ies) got 451 4.7.1; the accepted retry was {}",
        if discarded {
            "discarded as a duplicate (Mailman had the first)"
        } else {
            "taken as new"
        }
    );
    exactly_one_copy_each(w, &post.id, "B");
}

/// D: Mailman holds alice's post; her retries are neither held nor distributed again.
fn held_post_retried(w: &World) {
    w.mailman.hook(
        LIST,
        "set_moderation_action",
        &[w.alice.email.as_str(), "hold"],
    );
    let post = new_post(w, "held");
    let first = smtp::send(w.inbound_port, &w.alice.email, &[LIST], &post.bytes);
    assert!(
        first.accepted(),
        "D: alice's post was not accepted:\n{first}"
    );
    let discards = duplicate_discards(w);
    // The hold notice to the owners carries the post: once it passed the outbound milter,
    // the record is final and the retry is discarded.
    let refused = retry_until_accepted(w, &post.bytes, "D", None, Duration::from_secs(120));
    assert_eq!(
        duplicate_discards(w),
        discards + 1,
        "D: the accepted retry was not discarded as a duplicate of the held post \
         ({refused} refusal(s) before)"
    );
    w.settle();
    let held = w.mailman.hook(LIST, "held_messages", &[]);
    let held: Vec<&str> = held.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        held.len(),
        1,
        "D: Mailman holds {} posts: {held:?}",
        held.len()
    );
    assert_copies(w, &post.id, "D", 0);
}

#[test]
fn replay_record_follows_the_outcome() {
    support::environment::require_environment(&[
        "postfix",
        "postconf",
        "postqueue",
        "postmap",
        "mailman",
        "gpg",
        "gpgconf",
    ]);
    let milter = TempfailOnce::start();
    let mut w = World::start(WorldOptions {
        name: "replay",
        limits: vec![format!(
            "replay_confirm_window = {}",
            SHORT_WINDOW.as_secs()
        )],
        inbound_milter_after: Some(milter.address.clone()),
        ..Default::default()
    });
    eprintln!("replay: world up after {:?}", w.started.elapsed());

    let (post, accepted_at) = later_milter_tempfails_once(&w, &milter);
    eprintln!(
        "replay: A (later milter's tempfail, retry delivered once) ok, {:?}",
        w.started.elapsed()
    );
    later_replay_is_a_replay(&w, &post, accepted_at);
    eprintln!(
        "replay: C (replay after the window and the distribution) ok, {:?}",
        w.started.elapsed()
    );

    w.listcrypt.stop();
    w.listcrypt
        .set_limits(&[format!("replay_confirm_window = {}", LONG_WINDOW.as_secs())]);
    w.listcrypt.serve();
    hang_up_after_dot_then_retry(&w);
    eprintln!(
        "replay: B (hang-up after the dot, retried) ok, {:?}",
        w.started.elapsed()
    );
    held_post_retried(&w);
    eprintln!(
        "replay: D (held post, retried) ok, {:?}",
        w.started.elapsed()
    );
    drop(w);
    drop(milter);
}
