//! Every configuration and policy key is documented where admins look: the README, the man
//! page listcrypt.toml(5), and the sample config (config keys) or the policy file that
//! `list create` writes (policy keys). The keys come from the types themselves (serialised
//! defaults), so a key added to the code without docs fails here.

use std::collections::BTreeSet;

fn keys(value: &toml::Value, prefix: &str, out: &mut BTreeSet<String>) {
    if let toml::Value::Table(t) = value {
        for (k, v) in t {
            let name = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            match v {
                toml::Value::Table(_) => keys(v, &name, out),
                _ => {
                    out.insert(name);
                }
            }
        }
    }
}

fn read(path: &str) -> String {
    std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The key's last part, as the docs write it (`max_packets` for `limits.max_packets`; the man
/// page escapes underscores nowhere, but may set them in bold).
fn leaf(key: &str) -> &str {
    key.rsplit('.').next().unwrap_or(key)
}

#[test]
fn every_config_key_is_documented() {
    let value = toml::Value::try_from(listcrypt::config::Config::default()).unwrap();
    let mut all = BTreeSet::new();
    keys(&value, "", &mut all);
    // Keys that serialise to nothing (None) never show up above: add them by name.
    for k in [
        "database_url",
        "passphrase_file",
        "http_listen",
        "socket_group",
        "user",
    ] {
        if read("contrib/listcrypt.toml").contains(k) {
            all.insert(k.to_string());
        }
    }
    assert!(all.len() > 15, "{all:?}");
    let readme = read("README.md");
    let man = read("contrib/man/listcrypt.toml.5");
    let sample = read("contrib/listcrypt.toml");
    let missing: Vec<String> = all
        .iter()
        .flat_map(|k| {
            let leaf = leaf(k);
            [
                ("README.md", &readme),
                ("listcrypt.toml(5)", &man),
                ("sample", &sample),
            ]
            .into_iter()
            .filter(move |(_, text)| !text.contains(leaf))
            .map(move |(doc, _)| format!("{k} not in {doc}"))
        })
        .collect();
    assert!(missing.is_empty(), "{missing:#?}");
}

#[test]
fn every_policy_key_is_documented() {
    let value = toml::Value::try_from(listcrypt::config::Policy::default()).unwrap();
    let mut all = BTreeSet::new();
    keys(&value, "", &mut all);
    assert!(all.len() > 10, "{all:?}");
    let readme = read("README.md");
    let man = read("contrib/man/listcrypt.toml.5");
    let written = listcrypt::config::Policy::default_file_text("enc@lists.example.test");
    let missing: Vec<String> = all
        .iter()
        .flat_map(|k| {
            let leaf = leaf(k);
            [
                ("README.md", &readme),
                ("listcrypt.toml(5)", &man),
                ("the policy file list create writes", &written),
            ]
            .into_iter()
            .filter(move |(_, text)| !text.contains(leaf))
            .map(move |(doc, _)| format!("{k} not in {doc}"))
        })
        .collect();
    assert!(missing.is_empty(), "{missing:#?}");
}
