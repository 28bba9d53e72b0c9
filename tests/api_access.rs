//! The admin API's access control against a real `listcrypt serve`: tokens for one list stay
//! on that list, scopes bound what a token may change, expired and revoked tokens are
//! refused, only site-admin tokens loosen a policy, every change is audited and mailed,
//! encrypted, to the owners; bad requests get RFC 9457 problem documents.

mod support;

use sequoia_openpgp::parse::Parse;
use sequoia_openpgp::Cert;
use serde_json::json;
use std::fs;
use support::api::{enable, get, request, send_json, serve, token};
use support::gpg::GpgMember;
use support::sink::Sink;
use support::site::{Site, LIST};

const OTHER: &str = "other@lists.example.test";

fn members(list: &str) -> String {
    format!("/v1/lists/{list}/members")
}

fn policy(list: &str) -> String {
    format!("/v1/lists/{list}/policy")
}

#[test]
fn tokens_are_confined_to_their_list_and_scopes() {
    let site = Site::new();
    site.create_list(LIST);
    site.create_list(OTHER);
    let alice = GpgMember::new(&site, "alice", true);
    site.bind(OTHER, &alice.address, &alice.cert, false);
    enable(&site);
    let read_a = token(&site, &["--list", LIST, "--scope", "read"]);
    let members_a = token(&site, &["--list", LIST, "--scope", "members"]);
    let (_serving, addr) = serve(&site);

    // No token, a malformed one, a well-formed unknown one: 401 with a problem document.
    for t in [
        None,
        Some("nonsense"),
        Some(&*format!("{}x", &read_a[..read_a.len() - 1])),
    ] {
        let a = get(addr, &members(LIST), t);
        a.assert_problem(401);
        assert!(
            a.header("www-authenticate")
                .is_some_and(|v| v.starts_with("Bearer")),
            "{a:?}"
        );
    }

    // Its own list: readable, in `member list`'s words.
    let a = get(addr, &members(LIST), Some(&read_a));
    assert_eq!(a.status, 200, "{a:?}");
    let list = a.json();
    assert_eq!(list[0]["address"], alice.address.as_str());
    assert_eq!(list[0]["fingerprint"], alice.fingerprint.as_str());
    assert_eq!(list[0]["state"], "active");
    assert_eq!(list[0]["role"], "member");
    let cli = String::from_utf8(support::process::run_ok(
        site.cli().args(["member", "list", LIST]),
        None,
    ))
    .unwrap();
    assert!(
        cli.contains(&format!(" {} ", list[0]["expires"].as_str().unwrap()))
            || cli
                .trim_end()
                .ends_with(list[0]["expires"].as_str().unwrap()),
        "{cli} vs {list}"
    );
    // Certifications: none yet; once alice's certification of the list key is merged (as the
    // key address merges one), the member row says so.
    assert_eq!(list[0]["certifies_list_key"], false, "{list}");
    alice
        .gpg
        .ok(&["--quick-sign-key", &alice.list_fingerprint], None);
    let exported = alice.gpg.ok(&["--export", &alice.list_fingerprint], None);
    let certified = Cert::from_bytes(&exported).unwrap();
    let sigs: Vec<_> = certified
        .userids()
        .flat_map(|u| u.certifications().cloned())
        .collect();
    assert!(!sigs.is_empty(), "gpg exported no certification");
    let config = listcrypt::config::Config::load(Some(&site.config)).unwrap();
    let store = listcrypt::store::open(&config).unwrap();
    let home = listcrypt::keys::KeyHome::of(&config.keyring_dir, &*store);
    listcrypt::keys::add_list_certifications(home, LIST, sigs).unwrap();
    let list = get(addr, &members(LIST), Some(&read_a)).json();
    assert_eq!(list[0]["certifies_list_key"], true, "{list}");
    let lists = get(addr, "/v1/lists", Some(&read_a)).json();
    assert_eq!(lists.as_array().unwrap().len(), 1, "{lists}");
    assert_eq!(lists[0]["address"], LIST);

    // Another list: neither read nor changed, whatever the scope.
    for t in [&read_a, &members_a] {
        get(addr, &members(OTHER), Some(t)).assert_problem(403);
        get(addr, &policy(OTHER), Some(t)).assert_problem(403);
        get(addr, &format!("/v1/lists/{OTHER}/key"), Some(t)).assert_problem(403);
        let path = format!("{}/{}", members(OTHER), alice.address);
        request(addr, "DELETE", &path, Some(t), None).assert_problem(403);
        send_json(addr, "PUT", &policy(OTHER), Some(t), &json!({"text": ""})).assert_problem(403);
    }
    // A list that does not exist looks the same to a token for another list.
    get(addr, &members("nosuch@lists.example.test"), Some(&read_a)).assert_problem(403);

    // A read token cannot change anything.
    let alice_path = format!("{}/{}", members(LIST), alice.address);
    request(addr, "DELETE", &alice_path, Some(&read_a), None).assert_problem(403);
    let rotate = format!("/v1/lists/{LIST}/key/rotate");
    send_json(addr, "POST", &rotate, Some(&read_a), &json!({})).assert_problem(403);
    send_json(
        addr,
        "PUT",
        &policy(LIST),
        Some(&read_a),
        &json!({"text": ""}),
    )
    .assert_problem(403);
    let still = get(addr, &members(LIST), Some(&read_a)).json();
    assert_eq!(still.as_array().unwrap().len(), 1);

    // A members token can unbind, and the audit log names it.
    let a = request(addr, "DELETE", &alice_path, Some(&members_a), None);
    assert_eq!(a.status, 204, "{a:?}");
    assert_eq!(get(addr, &members(LIST), Some(&read_a)).json(), json!([]));
    request(addr, "DELETE", &alice_path, Some(&members_a), None).assert_problem(404);
    let log = get(addr, &format!("/v1/lists/{LIST}/audit"), Some(&read_a)).json();
    let id = members_a.split('_').nth(1).unwrap();
    assert_eq!(log[0]["action"], "member.unbind", "{log}");
    assert_eq!(log[0]["token_id"], id, "{log}");
    assert_eq!(log[0]["detail"], alice.address.as_str(), "{log}");
    // Alice is still bound on the other list.
    let other = String::from_utf8(support::process::run_ok(
        site.cli().args(["member", "list", OTHER]),
        None,
    ))
    .unwrap();
    assert!(other.contains(&alice.address), "{other}");
}

#[test]
fn expired_and_revoked_tokens_are_refused() {
    let site = Site::new();
    site.create_list(LIST);
    enable(&site);
    let expired = token(
        &site,
        &["--list", LIST, "--scope", "read", "--expires", "0"],
    );
    let revoked = token(&site, &["--site-admin"]);
    let good = token(&site, &["--site-admin", "--expires", "30"]);
    let id = revoked.split('_').nth(1).unwrap().to_string();
    let out = support::process::run_ok(site.cli().args(["token", "revoke", &id]), None);
    assert_eq!(
        String::from_utf8(out).unwrap().trim(),
        format!("revoked {id}")
    );
    let listed = String::from_utf8(support::process::run_ok(
        site.cli().args(["token", "list"]),
        None,
    ))
    .unwrap();
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with(&id) && l.contains(" revoked ")),
        "{listed}"
    );
    assert!(
        !listed.contains(&revoked),
        "the secret is never shown again"
    );
    let (_serving, addr) = serve(&site);
    get(addr, &members(LIST), Some(&expired)).assert_problem(401);
    get(addr, &members(LIST), Some(&revoked)).assert_problem(401);
    assert_eq!(get(addr, &members(LIST), Some(&good)).status, 200);
    // Revoked while the daemon runs: refused at the next request.
    let good_id = good.split('_').nth(1).unwrap().to_string();
    support::process::run_ok(site.cli().args(["token", "revoke", &good_id]), None);
    get(addr, &members(LIST), Some(&good)).assert_problem(401);
}

#[test]
fn only_site_admin_tokens_loosen_and_owners_hear_of_every_change() {
    let site = Site::new();
    site.create_list(LIST);
    let sink = Sink::start();
    site.reinject_to(sink.port);
    let owner = GpgMember::new(&site, "owner", false);
    site.bind(LIST, &owner.address, &owner.cert, true);
    enable(&site);
    let policy_a = token(&site, &["--list", LIST, "--scope", "policy"]);
    let admin = token(&site, &["--site-admin"]);
    let (_serving, addr) = serve(&site);
    let file = site.path("lists.d").join(format!("{LIST}.toml"));
    let before = fs::read_to_string(&file).unwrap();

    // Loosening with a list token: refused, named, nothing written, nobody told.
    let loose = before.replace(
        "unsigned_action = \"reject\"",
        "unsigned_action = \"accept\"",
    );
    let a = send_json(
        addr,
        "PUT",
        &policy(LIST),
        Some(&policy_a),
        &json!({"text": loose}),
    );
    let doc = a.assert_problem(403);
    assert_eq!(doc["loosened"], json!(["unsigned_action"]), "{doc}");
    assert_eq!(fs::read_to_string(&file).unwrap(), before);
    assert!(sink.deliveries().is_empty());

    // Tightening with the list token: written, reloaded, mailed encrypted to the owner.
    let tight = before.replace("batch_size = 50", "batch_size = 20");
    let a = send_json(
        addr,
        "PUT",
        &policy(LIST),
        Some(&policy_a),
        &json!({"text": tight}),
    );
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.json()["changes"], json!(["batch_size: 50 -> 20"]));
    assert_eq!(fs::read_to_string(&file).unwrap(), tight);
    let mail = sink.wait_for_deliveries(&owner.address, 1, std::time::Duration::from_secs(10));
    assert_eq!(mail[0].rcpts, vec![owner.address.clone()]);
    assert!(!mail[0].text().contains("batch_size"), "encrypted");
    let out = owner.gpg.decrypt(&mail[0].data);
    assert!(out.decrypted(), "{}", out.report());
    assert!(
        out.text().contains("batch_size: 50 -> 20"),
        "{}",
        out.text()
    );

    // The same loosening with a site-admin token goes through.
    let a = send_json(
        addr,
        "PUT",
        &policy(LIST),
        Some(&admin),
        &json!({"text": loose}),
    );
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(fs::read_to_string(&file).unwrap(), loose);
    sink.wait_for_deliveries(&owner.address, 2, std::time::Duration::from_secs(10));

    // Invalid text: check-config's diagnostic with line and column, nothing written.
    let bad = "batch_size = 5\nunsigned_action = \"maybe\"\n";
    for (method, path) in [
        ("POST", format!("{}/validate", policy(LIST))),
        ("PUT", policy(LIST)),
    ] {
        let doc = send_json(addr, method, &path, Some(&policy_a), &json!({"text": bad}))
            .assert_problem(422);
        assert_eq!(
            (doc["line"].as_u64(), doc["column"].as_u64()),
            (Some(2), Some(19)),
            "{doc}"
        );
        assert!(doc["detail"].as_str().unwrap().contains(":2:19: "), "{doc}");
        // Owners get the line and column, not where the site keeps its policy files.
        let detail = doc["detail"].as_str().unwrap();
        assert!(detail.starts_with(&format!("{LIST}.toml:2:19: ")), "{doc}");
        assert!(
            !detail.contains(&*site.dir.path().to_string_lossy()),
            "{doc}"
        );
    }
    assert_eq!(fs::read_to_string(&file).unwrap(), loose);
    let log = get(addr, &format!("/v1/lists/{LIST}/audit"), Some(&admin)).json();
    let actions: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["action"].as_str())
        .collect();
    assert_eq!(actions[..2], ["policy.replace", "policy.replace"], "{log}");
}

#[test]
fn malformed_requests_get_problem_documents() {
    let site = Site::new();
    site.create_list(LIST);
    enable(&site);
    let admin = token(&site, &["--site-admin"]);
    let (_serving, addr) = serve(&site);
    let validate = format!("{}/validate", policy(LIST));
    let t = Some(admin.as_str());
    request(
        addr,
        "POST",
        &validate,
        t,
        Some(("application/json", b"{\"text\": ")),
    )
    .assert_problem(400);
    request(
        addr,
        "POST",
        &validate,
        t,
        Some(("application/json", b"[1, 2]")),
    )
    .assert_problem(400);
    request(
        addr,
        "POST",
        &validate,
        t,
        Some(("text/plain", b"{\"text\": \"\"}")),
    )
    .assert_problem(415);
    // Over the 128 KiB body limit.
    let big = json!({"text": "#".repeat(200 * 1024)}).to_string();
    request(
        addr,
        "POST",
        &validate,
        t,
        Some(("application/json", big.as_bytes())),
    )
    .assert_problem(413);
    get(addr, "/v1/nothing-here", t).assert_problem(404);
    get(addr, &members("nosuch@lists.example.test"), t).assert_problem(404);
    request(addr, "PATCH", &members(LIST), t, None).assert_problem(405);
    let doc = get(addr, "/openapi.json", None);
    assert_eq!(doc.status, 200);
    assert!(
        doc.json()["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc.body
    );
}

#[test]
fn an_owner_starts_a_proven_binding_with_the_key_address_challenge() {
    let site = Site::new();
    site.create_list(LIST);
    let sink = Sink::start();
    site.reinject_to(sink.port);
    let bob = GpgMember::new(&site, "bob", false);
    enable(&site);
    let members_a = token(&site, &["--list", LIST, "--scope", "members"]);
    let (_serving, addr) = serve(&site);
    let cert = fs::read_to_string(&bob.cert).unwrap();
    let t = Some(members_a.as_str());
    // A key without a user ID for the address is refused before anything is sent.
    let wrong = json!({"address": "carol@example.test", "certificate": cert});
    send_json(addr, "POST", &members(LIST), t, &wrong).assert_problem(422);
    let body = json!({"address": bob.address, "certificate": cert});
    let a = send_json(addr, "POST", &members(LIST), t, &body);
    assert_eq!(a.status, 202, "{a:?}");
    assert_eq!(a.json()["fingerprint"], bob.fingerprint.as_str());
    let mail = sink.wait_for_deliveries(&bob.address, 1, std::time::Duration::from_secs(10));
    assert_eq!(
        mail[0].mail_from, "",
        "an automatic reply, as from the key address"
    );
    let out = bob.gpg.decrypt(&mail[0].data);
    assert!(out.decrypted(), "{}", out.report());
    assert!(out.text().contains("listcrypt-token: "), "{}", out.text());
    // Pending until bob answers, as `member list` shows it.
    let list = get(addr, &members(LIST), t).json();
    assert_eq!(list[0]["address"], bob.address.as_str(), "{list}");
    assert_eq!(list[0]["state"], "pending", "{list}");
    // Asking again at once is the key address's rate limit.
    send_json(addr, "POST", &members(LIST), t, &body).assert_problem(429);
    assert_eq!(sink.deliveries_to(&bob.address).len(), 1);
}

#[test]
fn with_database_url_the_policy_is_read_only_through_the_api() {
    let pg = support::postgres::Postgres::start();
    pg.create_database("api");
    let site = support::pg_site::host(&pg, "api", "mx1");
    site.create_list(LIST);
    enable(&site);
    let admin = token(&site, &["--site-admin"]);
    let (_serving, addr) = serve(&site);
    let file = site.path("lists.d").join(format!("{LIST}.toml"));
    let before = fs::read_to_string(&file).unwrap();
    let doc = get(addr, &policy(LIST), Some(&admin));
    assert_eq!(doc.status, 200, "{doc:?}");
    assert_eq!(doc.json()["read_only"], true);
    assert_eq!(doc.json()["text"], before.as_str());
    let tight = before.replace("batch_size = 50", "batch_size = 20");
    send_json(
        addr,
        "PUT",
        &policy(LIST),
        Some(&admin),
        &json!({"text": tight}),
    )
    .assert_problem(409);
    assert_eq!(fs::read_to_string(&file).unwrap(), before);
    // Tokens live in the shared database: the members of the list are readable.
    assert_eq!(get(addr, &members(LIST), Some(&admin)).status, 200);
}
