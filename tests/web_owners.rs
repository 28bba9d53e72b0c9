//! The owners' page against a real `listcrypt serve`, driven in headless Chromium: sign-in
//! (a wrong token refused), the session cookie's attributes, the members page in `member
//! list`'s words, a policy edit with an error at line:column and a valid one saved, POSTs
//! without the form token or from another origin refused, a list-A token kept off list B,
//! a revoked token ending its session, the public page; screenshots of each page into
//! target/web-screenshots/ and axe-core on each (no serious or critical violation).

mod support;

use serde_json::json;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use support::api::{enable, send_json, serve, token};
use support::browser::{axe_source, Browser};
use support::gpg::{Gpg, GpgMember};
use support::process::run_ok;
use support::sink::Sink;
use support::site::{Site, LIST};

const OTHER: &str = "other@lists.example.test";

struct Run {
    b: Browser,
    base: String,
    axe: String,
    shots: PathBuf,
}

impl Run {
    /// Screenshot and accessibility check of the page shown.
    fn check_page(&mut self, name: &str) {
        let path = self.b.screenshot(&self.shots, name);
        eprintln!("screenshot: {}", path.display());
        let serious = self.b.axe_serious(&self.axe);
        assert!(serious.is_empty(), "axe on {name}: {serious:#?}");
        // Every answer carries the headers (the page has no script of its own at all).
        let csp = self.b.header("content-security-policy");
        for part in [
            "default-src 'none'",
            "style-src 'self'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(part), "{name}: CSP {csp:?}");
        }
        assert_eq!(self.b.header("x-content-type-options"), "nosniff");
        assert_eq!(self.b.header("referrer-policy"), "same-origin");
        assert_eq!(self.b.eval("document.scripts.length"), json!(0), "{name}");
    }

    fn open(&mut self, path: &str) {
        let url = format!("{}{path}", self.base);
        self.b.open(&url);
    }
}

/// The site: LIST with alice bound and bob pending, OTHER; WKD served; Mailman's REST API
/// configured at a port where nothing listens.
fn setup() -> (Site, Sink, GpgMember) {
    let site = Site::new();
    site.create_list(LIST);
    site.create_list(OTHER);
    let sink = Sink::start();
    site.reinject_to(sink.port);
    let alice = GpgMember::new(&site, "alice", true);
    enable(&site);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mailman = closed.local_addr().unwrap();
    drop(closed);
    let password = site.path("mailman-admin-pass");
    fs::write(&password, "secret\n").unwrap();
    let mut text = fs::read_to_string(&site.config).unwrap();
    text.push_str(&format!(
        "http_listen = \"127.0.0.1:0\"\n[mailman_api]\nurl = \"http://{mailman}/3.1\"\n\
         user = \"restadmin\"\npassword_file = \"{}\"\n",
        password.display()
    ));
    fs::write(&site.config, text).unwrap();
    (site, sink, alice)
}

/// One request with a cookie and an Origin; the status.
fn post_raw(addr: SocketAddr, path: &str, cookie: &str, origin: &str, body: &str) -> u16 {
    post_answer(addr, path, cookie, origin, body).0
}

/// The status and the head of the answer.
fn post_answer(
    addr: SocketAddr,
    path: &str,
    cookie: &str,
    origin: &str,
    body: &str,
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nCookie: {cookie}\r\n\
         Origin: {origin}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    let status = raw.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap();
    let head = raw
        .split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    (status, head)
}

/// Sign-in attempts from one address: a few, then 429 with Retry-After.
fn sign_in_is_rate_limited(addr: SocketAddr) {
    let origin = format!("http://{addr}");
    // A well-formed token that does not exist, with a valid double-submit pair.
    let body = format!("csrf=x1&token=lct_{}_{}", "a".repeat(16), "b".repeat(52));
    let answers: Vec<(u16, String)> = (0..8)
        .map(|_| post_answer(addr, "/signin", "listcrypt_signin=x1", &origin, &body))
        .collect();
    let statuses: Vec<u16> = answers.iter().map(|a| a.0).collect();
    assert!(statuses.contains(&401), "{statuses:?}");
    let limited = answers
        .iter()
        .find(|a| a.0 == 429)
        .unwrap_or_else(|| panic!("never 429: {statuses:?}"));
    let retry = limited
        .1
        .lines()
        .find_map(|l| l.strip_prefix("retry-after: "))
        .and_then(|v| v.trim().parse::<u64>().ok());
    assert!(
        retry.is_some_and(|s| (1..=13).contains(&s)),
        "{}",
        limited.1
    );
}

fn sign_in(r: &mut Run, token: &str) {
    r.open("/");
    r.b.submit(&format!(
        "document.getElementById('token').value = {}; \
         document.querySelector('form[action=\"/signin\"] button').click()",
        json!(token)
    ));
}

#[test]
fn owners_page_in_headless_chromium() {
    let (site, _sink, alice) = setup();
    let owner_a = token(
        &site,
        &["--list", LIST, "--scope", "read", "--scope", "policy"],
    );
    let members_a = token(&site, &["--list", LIST, "--scope", "members"]);
    let (_serving, addr) = serve(&site);
    // bob's key offered through the API: pending until he answers the challenge.
    let bob = GpgMember::new(&site, "bob", false);
    let cert = fs::read_to_string(&bob.cert).unwrap();
    let a = send_json(
        addr,
        "POST",
        &format!("/v1/lists/{LIST}/members"),
        Some(&members_a),
        &json!({"address": bob.address, "certificate": cert}),
    );
    assert_eq!(a.status, 202, "{a:?}");
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/web-screenshots");
    let mut r = Run {
        b: Browser::start(),
        // Browsers keep `Secure` cookies over plain HTTP only on loopback (a secure
        // context); in production the TLS front-end serves the page.
        base: format!("http://localhost:{}", addr.port()),
        axe: axe_source(),
        shots,
    };
    public_page(&mut r, &site);
    sign_in_and_session(&mut r, addr, &owner_a);
    members_page(&mut r, &site, &alice, &bob);
    policy_pages(&mut r, &site, addr);
    other_list_and_revocation(&mut r, &site, &owner_a);
    sign_in_is_rate_limited(addr);
}

fn public_page(r: &mut Run, site: &Site) {
    // The fingerprint as GnuPG reads the exported list key, not as the page computes it.
    let gpg = Gpg::new(site.path("gnupg-public"));
    let fingerprint = gpg.show_fingerprints(&site.export_list_key(LIST))[0].clone();
    r.open(&format!("/lists/{LIST}"));
    assert_eq!(r.b.status, 200);
    let text = r.b.text();
    assert!(text.contains(&fingerprint), "{fingerprint} in {text}");
    // The advanced WKD layout of draft-koch-openpgp-webkey-service §3.1.
    assert!(
        text.contains(
            "https://openpgpkey.lists.example.test/.well-known/openpgpkey/lists.example.test/hu/"
        ),
        "{text}"
    );
    assert!(text.contains("enc-key@lists.example.test"), "{text}");
    r.check_page("public");
    r.open("/lists/nobody@lists.example.test");
    assert_eq!(r.b.status, 404);
}

fn sign_in_and_session(r: &mut Run, addr: SocketAddr, owner_a: &str) {
    r.open("/");
    assert_eq!(r.b.status, 200);
    r.check_page("signin");
    // A well-formed token with one letter of its secret changed.
    let last = owner_a.len() - 1;
    let wrong = format!(
        "{}{}",
        &owner_a[..last],
        if owner_a.ends_with('a') { 'b' } else { 'a' }
    );
    sign_in(r, &wrong);
    assert_eq!(r.b.status, 401);
    assert!(r.b.text().contains("refused"), "{}", r.b.text());
    r.check_page("signin-refused");
    // A sign-in form posted without its form token (as another site's form would be).
    // Same origin (Origin matches Host), so only the missing form token refuses it.
    let status = post_raw(
        addr,
        "/signin",
        "",
        &format!("http://{addr}"),
        &format!("token={owner_a}"),
    );
    assert_eq!(status, 403);
    assert!(r
        .b
        .cookies(&r.base.clone())
        .iter()
        .all(|c| c["name"] != "listcrypt_session"));

    sign_in(r, owner_a);
    assert_eq!(r.b.status, 200);
    assert!(r.b.text().contains(LIST), "{}", r.b.text());
    r.check_page("lists");
    let cookies = r.b.cookies(&r.base.clone());
    let session = cookies
        .iter()
        .find(|c| c["name"] == "listcrypt_session")
        .unwrap_or_else(|| panic!("no session cookie in {cookies:?}"));
    assert_eq!(session["httpOnly"], true, "{session}");
    assert_eq!(session["secure"], true, "{session}");
    assert_eq!(session["sameSite"], "Strict", "{session}");
    assert_eq!(session["path"], "/", "{session}");
}

fn members_page(r: &mut Run, site: &Site, alice: &GpgMember, bob: &GpgMember) {
    r.open(&format!("/owner/{LIST}"));
    assert_eq!(r.b.status, 200);
    // `member list`'s words for each binding: its state and expiry columns.
    let cli = String::from_utf8(run_ok(site.cli().args(["member", "list", LIST]), None)).unwrap();
    let rows = r.b.eval(
        "[...document.querySelectorAll('tbody tr')].map(tr => \
         [...tr.cells].map(td => td.innerText.trim()).join(' '))",
    );
    let rows: Vec<String> = serde_json::from_value(rows).unwrap();
    for (who, state) in [(alice, "active"), (bob, "pending")] {
        let line = cli
            .lines()
            .find(|l| l.starts_with(&who.address))
            .unwrap_or_else(|| panic!("{} not in {cli}", who.address));
        assert!(line.contains(state), "{line}");
        assert!(
            rows.contains(&line.trim().to_string()),
            "{line:?} in {rows:?}"
        );
    }
    let text = r.b.text();
    let pending_at = text.find("Pending bindings").unwrap();
    assert!(text[pending_at..].contains(&bob.address), "{text}");
    assert!(!text[pending_at..].contains(&alice.address), "{text}");
    // Mailman down: said plainly, not an error page.
    assert!(text.contains("Mailman could not be asked"), "{text}");
    r.check_page("members");
}

fn policy_file(site: &Site) -> PathBuf {
    site.path("lists.d").join(format!("{LIST}.toml"))
}

/// Puts `text` in the policy form and presses `button`.
fn edit_policy(r: &mut Run, text: &str, button: &str, drop_form_token: bool) {
    let drop = if drop_form_token {
        "document.querySelector('form[action$=\"/policy\"] input[name=csrf]').remove();"
    } else {
        ""
    };
    r.b.submit(&format!(
        "{drop} document.getElementById('text').value = {}; \
         document.querySelector('button[value={button}]').click()",
        json!(text)
    ));
}

fn policy_pages(r: &mut Run, site: &Site, addr: SocketAddr) {
    let file = policy_file(site);
    let before = fs::read_to_string(&file).unwrap();
    r.open(&format!("/owner/{LIST}/policy"));
    assert_eq!(r.b.status, 200);
    assert_eq!(
        r.b.eval("document.getElementById('text').value"),
        json!(before)
    );
    r.check_page("policy");
    // check-config's rule and position: line 2, column 19 is the bad value.
    let bad = "batch_size = 5\nunsigned_action = \"maybe\"\n# <script>alert(1)</script>\n";
    edit_policy(r, bad, "check", false);
    assert_eq!(r.b.status, 422);
    let text = r.b.text();
    assert!(text.contains("Error at 2:19"), "{text}");
    // The text comes back as text: no element made of it.
    assert_eq!(
        r.b.eval("document.getElementById('text').value"),
        json!(bad)
    );
    r.check_page("policy-error");
    assert_eq!(fs::read_to_string(&file).unwrap(), before);

    let tight = before.replace("batch_size = 50", "batch_size = 20");
    assert_ne!(tight, before);
    edit_policy(r, &tight, "save", false);
    let (status, text) = (r.b.status, r.b.text());
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("Saved"), "{text}");
    assert_eq!(fs::read_to_string(&file).unwrap(), tight);
    r.check_page("policy-saved");

    // Without the form token, or from another origin: refused, nothing written.
    let looser = tight.replace("batch_size = 20", "batch_size = 10");
    edit_policy(r, &looser, "save", true);
    assert_eq!(r.b.status, 403);
    let csrf = r.b.cookies(&r.base.clone());
    let session = csrf
        .iter()
        .find(|c| c["name"] == "listcrypt_session")
        .unwrap();
    let cookie = format!("listcrypt_session={}", session["value"].as_str().unwrap());
    r.open(&format!("/owner/{LIST}/policy"));
    let token =
        r.b.eval("document.querySelector('form[action$=\"/policy\"] input[name=csrf]').value");
    let body = format!(
        "csrf={}&action=save&text=batch_size+%3D+10",
        token.as_str().unwrap()
    );
    let path = format!("/owner/{LIST}/policy");
    assert_eq!(
        post_raw(addr, &path, &cookie, "https://evil.example", &body),
        403
    );
    assert_eq!(fs::read_to_string(&file).unwrap(), tight);
}

fn other_list_and_revocation(r: &mut Run, site: &Site, owner_a: &str) {
    for path in [format!("/owner/{OTHER}"), format!("/owner/{OTHER}/policy")] {
        r.open(&path);
        assert_eq!(r.b.status, 403, "{path}");
        assert!(!r.b.text().contains("batch_size"), "{path}");
    }
    r.check_page("other-list-refused");
    // Signing out (from a page of the signed-in owner) ends the session.
    r.open("/");
    r.b.submit("document.querySelector('form[action=\"/signout\"] button').click()");
    r.open(&format!("/owner/{LIST}"));
    assert!(r.b.text().contains("Sign in with"), "{}", r.b.text());
    sign_in(r, owner_a);
    assert_eq!(r.b.status, 200);
    // Revoked: the session ends at the next request.
    let id = owner_a.split('_').nth(1).unwrap();
    run_ok(site.cli().args(["token", "revoke", id]), None);
    r.open(&format!("/owner/{LIST}"));
    assert!(r.b.text().contains("Sign in with"), "{}", r.b.text());
}
