//! The inbound golden corpus (tests/corpus/inbound, layout in tests/corpus/README.md): cases
//! read from their directories and their messages built at test time with real clients (GnuPG,
//! sq, RNP, and sequoia-openpgp for packets no client writes on purpose). Shared by
//! `inbound_corpus` (expectations) and `corpus_parity` (milter and `process` agree).

use super::gpg::Gpg;
use super::process::{run, run_ok};
use super::site::{Site, LIST};
use super::text::{to_crlf, to_lf};
use sequoia_openpgp as openpgp;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseSpec {
    #[allow(dead_code)] // documentation for humans
    pub description: String,
    /// Recipients given at RCPT; default: the list's posting address.
    #[serde(default)]
    pub rcpt: Vec<String>,
    /// Extra environment for `listcrypt process`, e.g. lowered limits.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub blob: Vec<BlobSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlobSpec {
    /// Replaces `{{name}}` in message.eml and in later blobs' inputs.
    pub name: String,
    /// gpg | sq | rnp | sequoia | file (the rendered input itself, e.g. a signed MIME entity)
    pub tool: String,
    /// encrypt (signs too when `signer` is set) | clearsign | detach-sign |
    /// sequoia only: bad-signature (the signature covers other bytes)
    #[serde(default = "default_op")]
    pub op: String,
    /// A file of the case; rendered with earlier blobs and made CRLF (MIME canonical form)
    /// unless `input_lf`.
    pub input: Option<String>,
    #[serde(default)]
    pub input_lf: bool,
    /// Instead of `input`: this many zero bytes.
    pub input_zeros: Option<usize>,
    pub signer: Option<String>,
    /// Cast names; "list" is the list key.
    #[serde(default)]
    pub recipients: Vec<String>,
    /// Extra arguments for the tool.
    #[serde(default)]
    pub args: Vec<String>,
    /// sequoia only: RFC 9580 SEIPDv2 (AEAD, OCB) instead of v1 SEIPD with MDC.
    #[serde(default)]
    seipdv2: bool,
    /// sequoia only: Intended Recipient subpackets naming these cast members.
    #[serde(default)]
    pub intended_recipients: Vec<String>,
    /// flip-middle (one bit in the middle of the binary message) | markers:N (N Marker
    /// packets in front).
    pub tamper: Option<String>,
}

fn default_op() -> String {
    "encrypt".into()
}

/// A subscriber (or outsider) of the test world.
pub struct Person {
    pub address: String,
    /// Armored certificate and secret key.
    pub cert: PathBuf,
    pub key: PathBuf,
    pub fingerprint: String,
}

/// Everyone's keys, generated once per run.
pub struct Cast {
    pub gpg: Gpg,
    pub rnp_home: PathBuf,
    pub people: BTreeMap<String, Person>,
    pub list_cert: PathBuf,
}

const DAY: u64 = 24 * 3600;

impl Cast {
    /// alice, bob: GnuPG members; carol: sq member; dave: RNP member; mallory: not a member;
    /// erin: member whose key expires once the posts are made; rita: member whose key is revoked
    /// once the posts are made.
    pub fn generate(site: &Site) -> Cast {
        let keys = site.path("cast");
        fs::create_dir_all(&keys).unwrap();
        let list_cert = site.export_list_key(LIST);
        let gpg = Gpg::new(site.path("gnupg"));
        gpg.import(&list_cert);
        let mut people = BTreeMap::new();
        for (name, created) in [
            ("alice", None),
            ("bob", None),
            ("mallory", None),
            ("rita", None),
            ("erin", Some(super::site::now() - 10 * DAY)),
        ] {
            let address = format!("{name}@example.test");
            let fingerprint = gpg.gen_key(&format!("{} <{address}>", capitalise(name)), created);
            let cert = keys.join(format!("{name}.cert"));
            let key = keys.join(format!("{name}.key"));
            gpg.export(&fingerprint, &cert);
            gpg.export_secret(&fingerprint, &key);
            people.insert(
                name.to_string(),
                Person {
                    address,
                    cert,
                    key,
                    fingerprint,
                },
            );
        }

        // carol uses sq.
        let carol_key = keys.join("carol.key");
        let carol_cert = keys.join("carol.cert");
        run_ok(
            Command::new("sq")
                .args(["key", "generate", "--userid", "Carol <carol@example.test>"])
                .arg("--export")
                .arg(&carol_key),
            None,
        );
        let cert = run_ok(
            Command::new("sq")
                .args(["key", "extract-cert"])
                .arg(&carol_key),
            None,
        );
        fs::write(&carol_cert, cert).unwrap();
        people.insert(
            "carol".into(),
            Person {
                address: "carol@example.test".into(),
                fingerprint: cert_fingerprint(&carol_cert),
                cert: carol_cert,
                key: carol_key,
            },
        );

        // dave uses RNP (its default: RSA-2048 with an RSA encryption subkey).
        let rnp_home = site.path("rnp");
        fs::create_dir_all(&rnp_home).unwrap();
        run_ok(
            Command::new("rnpkeys")
                .arg("--homedir")
                .arg(&rnp_home)
                .args([
                    "--notty",
                    "--generate-key",
                    "--userid",
                    "Dave <dave@example.test>",
                    "--password",
                    "",
                ]),
            None,
        );
        run_ok(
            Command::new("rnpkeys")
                .arg("--homedir")
                .arg(&rnp_home)
                .args(["--notty", "--import"])
                .arg(&list_cert),
            None,
        );
        let dave_cert = keys.join("dave.cert");
        let dave_key = keys.join("dave.key");
        let out = run_ok(
            Command::new("rnpkeys")
                .arg("--homedir")
                .arg(&rnp_home)
                .args(["--notty", "--export-key", "dave@example.test"]),
            None,
        );
        fs::write(&dave_cert, out).unwrap();
        let out = run_ok(
            Command::new("rnpkeys")
                .arg("--homedir")
                .arg(&rnp_home)
                .args([
                    "--notty",
                    "--export-key",
                    "--secret",
                    "dave@example.test",
                    "--password",
                    "",
                ]),
            None,
        );
        fs::write(&dave_key, out).unwrap();
        people.insert(
            "dave".into(),
            Person {
                address: "dave@example.test".into(),
                fingerprint: cert_fingerprint(&dave_cert),
                cert: dave_cert,
                key: dave_key,
            },
        );

        for name in ["alice", "bob", "carol", "dave", "erin", "rita"] {
            let p = &people[name];
            site.bind(LIST, &p.address, &p.cert, false);
        }
        Cast {
            gpg,
            rnp_home,
            people,
            list_cert,
        }
    }

    pub fn person(&self, name: &str) -> Result<&Person, String> {
        self.people
            .get(name)
            .ok_or_else(|| format!("no cast member {name:?}"))
    }

    pub fn address(&self, name: &str) -> Result<String, String> {
        if name == "list" {
            return Ok(LIST.into());
        }
        Ok(self.person(name)?.address.clone())
    }

    pub fn cert_file(&self, name: &str) -> Result<PathBuf, String> {
        if name == "list" {
            return Ok(self.list_cert.clone());
        }
        Ok(self.person(name)?.cert.clone())
    }

    /// After every post is made: erin's key expires (a newer self-signature, made five days ago,
    /// sets an expiry four days ago) and rita's key is revoked; the list learns both through its
    /// pgp.cert.d store, as an admin's `sq --cert-store … import` would tell it.
    pub fn age_keys(&self, site: &Site) {
        let erin = &self.people["erin"];
        let then = (super::site::now() - 5 * DAY).to_string();
        for subkeys in [None, Some("*")] {
            let mut cmd = self.gpg.cmd();
            cmd.args(["--faked-system-time", &then, "--quick-set-expire"])
                .arg(&erin.fingerprint)
                .arg("1d");
            if let Some(s) = subkeys {
                cmd.arg(s);
            }
            run_ok(&mut cmd, None);
        }
        let rita = &self.people["rita"];
        let rev = self
            .gpg
            .home
            .join("openpgp-revocs.d")
            .join(format!("{}.rev", rita.fingerprint));
        let rev = fs::read_to_string(&rev).expect("rita's revocation certificate");
        let rev = rev.replace(
            ":-----BEGIN PGP PUBLIC KEY BLOCK",
            "-----BEGIN PGP PUBLIC KEY BLOCK",
        );
        self.gpg.ok(&["--import"], Some(rev.as_bytes()));
        for p in [erin, rita] {
            let cert = self.gpg.ok(&["--export", &p.fingerprint], None);
            let path = site.cert_store_path(&p.fingerprint);
            assert!(
                path.exists(),
                "{} should be in the cert store at {}",
                p.address,
                path.display()
            );
            fs::write(&path, cert).unwrap();
        }
    }
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_ascii_uppercase().to_string() + c.as_str(),
        None => String::new(),
    }
}

fn cert_fingerprint(path: &Path) -> String {
    use openpgp::parse::Parse;
    openpgp::Cert::from_file(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .fingerprint()
        .to_hex()
}

/// One case, read from its directory.
pub struct Case {
    pub name: String,
    pub dir: PathBuf,
    pub spec: Option<CaseSpec>,
    pub sender: String,
    pub expected: String,
}

impl Case {
    /// The recipients given at RCPT: the case's `rcpt`, else the list's posting address.
    pub fn rcpts(&self) -> Vec<String> {
        self.spec
            .as_ref()
            .map(|s| s.rcpt.clone())
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| vec![LIST.to_string()])
    }

    /// Extra environment for `listcrypt process` (e.g. lowered limits).
    pub fn env(&self) -> BTreeMap<String, String> {
        self.spec
            .as_ref()
            .map(|s| s.env.clone())
            .unwrap_or_default()
    }
}

pub fn load_cases(root: &Path) -> Vec<Case> {
    let mut dirs: Vec<PathBuf> = fs::read_dir(root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs.into_iter()
        .map(|dir| {
            let name = dir.file_name().unwrap().to_string_lossy().into_owned();
            let read = |f: &str| {
                fs::read_to_string(dir.join(f))
                    .unwrap_or_else(|e| panic!("{name}/{f}: {e}"))
                    .trim()
                    .to_string()
            };
            let spec = dir.join("case.toml").exists().then(|| {
                toml::from_str(&read("case.toml"))
                    .unwrap_or_else(|e| panic!("{name}/case.toml: {e}"))
            });
            assert!(
                dir.join("message.eml").exists(),
                "{name}: message.eml missing"
            );
            Case {
                sender: read("sender"),
                expected: read("expected"),
                name,
                dir,
                spec,
            }
        })
        .collect()
}

fn render(template: &[u8], blobs: &BTreeMap<String, Vec<u8>>) -> Result<Vec<u8>, String> {
    let mut out = template.to_vec();
    for (name, blob) in blobs {
        let placeholder = format!("{{{{{name}}}}}");
        out = replace(&out, placeholder.as_bytes(), blob);
    }
    if let Some(i) = out.windows(2).position(|w| w == b"{{") {
        let end = (i + 40).min(out.len());
        return Err(format!(
            "unresolved placeholder {}",
            String::from_utf8_lossy(&out[i..end])
        ));
    }
    Ok(out)
}

fn replace(haystack: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len() + with.len());
    let mut i = 0;
    while i < haystack.len() {
        if haystack[i..].starts_with(needle) {
            out.extend_from_slice(with);
            i += needle.len();
        } else {
            out.push(haystack[i]);
            i += 1;
        }
    }
    out
}

/// Builds the LF form of the case's message.
pub fn build(case: &Case, cast: &Cast, work: &Path) -> Result<Vec<u8>, String> {
    let template = fs::read(case.dir.join("message.eml")).map_err(|e| e.to_string())?;
    let mut blobs = BTreeMap::new();
    if let Some(spec) = &case.spec {
        for b in &spec.blob {
            let input = match (&b.input, b.input_zeros) {
                (Some(f), None) => {
                    let raw = fs::read(case.dir.join(f)).map_err(|e| format!("{f}: {e}"))?;
                    let raw = render(&raw, &blobs)?;
                    if b.input_lf {
                        to_lf(&raw)
                    } else {
                        to_crlf(&raw)
                    }
                }
                (None, Some(n)) => vec![0u8; n],
                _ => return Err(format!("blob {}: give input or input_zeros", b.name)),
            };
            // RFC 3156 §5: the line break before a boundary belongs to the boundary, so a
            // detached signature covers the entity without its last line break.
            let input = if b.op == "detach-sign" {
                input.strip_suffix(b"\r\n").unwrap_or(&input).to_vec()
            } else {
                input
            };
            let input_path = work.join(format!("{}-{}.in", case.name, b.name));
            fs::write(&input_path, &input).map_err(|e| e.to_string())?;
            let mut out = match b.tool.as_str() {
                "file" => input.clone(),
                "gpg" => gpg_blob(b, cast, &input_path)?,
                "sq" => sq_blob(b, cast, &input_path)?,
                "rnp" => rnp_blob(b, cast, &input_path)?,
                "sequoia" => sequoia_blob(b, cast, &input)?,
                t => return Err(format!("blob {}: unknown tool {t}", b.name)),
            };
            if let Some(t) = &b.tamper {
                out = tamper(&out, t)?;
            }
            let text = to_lf(&out);
            let text = text.strip_suffix(b"\n").unwrap_or(&text).to_vec();
            blobs.insert(b.name.clone(), text);
        }
    }
    Ok(to_lf(&render(&template, &blobs)?))
}

fn checked(cmd: &mut Command, what: &str) -> Result<Vec<u8>, String> {
    let out = run(cmd, None);
    if !out.status.success() || out.stdout.is_empty() {
        return Err(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(out.stdout)
}

fn gpg_blob(b: &BlobSpec, cast: &Cast, input: &Path) -> Result<Vec<u8>, String> {
    let mut cmd = cast.gpg.cmd();
    cmd.arg("--armor");
    match b.op.as_str() {
        "encrypt" => {
            if let Some(s) = &b.signer {
                cmd.args(["--sign", "--local-user", &cast.address(s)?]);
            }
            if !b.recipients.is_empty() {
                cmd.arg("--encrypt");
            }
            for r in &b.recipients {
                cmd.args(["--recipient", &cast.address(r)?]);
            }
        }
        "clearsign" | "detach-sign" => {
            let s = b.signer.as_deref().ok_or("signing needs a signer")?;
            cmd.arg(format!("--{}", b.op))
                .args(["--local-user", &cast.address(s)?]);
        }
        op => return Err(format!("gpg: unknown op {op}")),
    }
    cmd.args(&b.args).args(["--output", "-"]).arg(input);
    checked(&mut cmd, "gpg")
}

fn sq_blob(b: &BlobSpec, cast: &Cast, input: &Path) -> Result<Vec<u8>, String> {
    if b.op != "encrypt" {
        return Err(format!("sq: unsupported op {}", b.op));
    }
    let mut cmd = Command::new("sq");
    cmd.arg("encrypt");
    for r in &b.recipients {
        cmd.arg("--recipient-cert").arg(cast.cert_file(r)?);
    }
    if let Some(s) = &b.signer {
        cmd.arg("--signer-key").arg(&cast.person(s)?.key);
    }
    cmd.args(&b.args).arg(input);
    checked(&mut cmd, "sq encrypt")
}

fn rnp_blob(b: &BlobSpec, cast: &Cast, input: &Path) -> Result<Vec<u8>, String> {
    if b.op != "encrypt" {
        return Err(format!("rnp: unsupported op {}", b.op));
    }
    let mut cmd = Command::new("rnp");
    cmd.arg("--homedir")
        .arg(&cast.rnp_home)
        .args(["--notty", "--password", "", "--armor"]);
    if let Some(s) = &b.signer {
        cmd.args(["--sign", "--userid", &cast.address(s)?]);
    }
    if !b.recipients.is_empty() {
        cmd.arg("--encrypt");
    }
    for r in &b.recipients {
        cmd.args(["--recipient", &cast.address(r)?]);
    }
    cmd.args(&b.args).args(["--output", "-"]).arg(input);
    checked(&mut cmd, "rnp")
}

/// Messages made with sequoia-openpgp, some no client writes on purpose: v1 SEIPD (what GnuPG
/// 2.2 reads; v2 on request) to `recipients`, with key ids shown, signed inside by `signer`.
fn sequoia_blob(b: &BlobSpec, cast: &Cast, input: &[u8]) -> Result<Vec<u8>, String> {
    sequoia_message(b, cast, input).map_err(|e| format!("sequoia: {e:#}"))
}

fn sequoia_message(b: &BlobSpec, cast: &Cast, input: &[u8]) -> openpgp::Result<Vec<u8>> {
    use openpgp::armor;
    use openpgp::packet::prelude::*;
    use openpgp::parse::Parse;
    use openpgp::policy::StandardPolicy;
    use openpgp::serialize::stream::{
        Armorer, Encryptor, LiteralWriter, Message, Recipient, Signer,
    };
    use openpgp::serialize::Serialize;
    use openpgp::types::{DataFormat, Features, SignatureType};

    let p = StandardPolicy::new();
    let certs: Vec<openpgp::Cert> = b
        .recipients
        .iter()
        .map(|r| openpgp::Cert::from_file(cast.cert_file(r).map_err(anyhow::Error::msg)?))
        .collect::<openpgp::Result<_>>()?;
    let mut recipients = Vec::new();
    for cert in &certs {
        for ka in cert
            .keys()
            .with_policy(&p, None)
            .supported()
            .alive()
            .revoked(false)
            .for_transport_encryption()
        {
            let features = if b.seipdv2 {
                Features::empty().set_seipdv1().set_seipdv2()
            } else {
                Features::empty().set_seipdv1()
            };
            recipients.push(Recipient::new(
                features,
                openpgp::KeyHandle::from(ka.key().fingerprint()),
                ka.key(),
            ));
        }
    }
    let signer_name = b
        .signer
        .as_deref()
        .ok_or_else(|| anyhow::anyhow!("no signer"))?;
    let tsk = openpgp::Cert::from_file(&cast.person(signer_name).map_err(anyhow::Error::msg)?.key)?;
    let keypair = tsk
        .keys()
        .with_policy(&p, None)
        .secret()
        .for_signing()
        .alive()
        .revoked(false)
        .next()
        .ok_or_else(|| anyhow::anyhow!("no signing key"))?
        .key()
        .clone()
        .into_keypair()?;

    let mut sink = Vec::new();
    let message = Message::new(&mut sink);
    let message = Armorer::new(message).kind(armor::Kind::Message).build()?;
    let message = Encryptor::for_recipients(message, recipients).build()?;
    match b.op.as_str() {
        "encrypt" => {
            let mut signer = Signer::new(message, keypair)?;
            let irs: Vec<openpgp::Cert> = b
                .intended_recipients
                .iter()
                .map(|r| openpgp::Cert::from_file(cast.cert_file(r).map_err(anyhow::Error::msg)?))
                .collect::<openpgp::Result<_>>()?;
            for ir in &irs {
                signer = signer.add_intended_recipient(ir);
            }
            let message = signer.build()?;
            let mut w = LiteralWriter::new(message).build()?;
            w.write_all(input)?;
            w.finalize()?;
        }
        "bad-signature" => {
            // One-pass signature, the literal data, and a signature over other bytes.
            let mut keypair = keypair;
            let mut other = input.to_vec();
            other.extend_from_slice(b"(not what was sent)");
            let sig = SignatureBuilder::new(SignatureType::Binary)
                .set_signature_creation_time(std::time::SystemTime::now())?
                .set_issuer_fingerprint(keypair.public().fingerprint())?
                .set_issuer(keypair.public().keyid())?
                .sign_message(&mut keypair, &other)?;
            let mut ops = OnePassSig3::try_from(&sig)?;
            ops.set_last(true);
            let mut literal = Literal::new(DataFormat::Binary);
            literal.set_body(input.to_vec());
            let mut packets = Vec::new();
            Packet::from(ops).serialize(&mut packets)?;
            Packet::from(literal).serialize(&mut packets)?;
            Packet::from(sig).serialize(&mut packets)?;
            let mut message = message;
            message.write_all(&packets)?;
            message.finalize()?;
        }
        op => return Err(anyhow::anyhow!("unknown op {op}")),
    }
    Ok(sink)
}

/// Alters an armored OpenPGP message the way an attacker on the wire could.
fn tamper(armored: &[u8], how: &str) -> Result<Vec<u8>, String> {
    use openpgp::armor::{Kind, Reader, ReaderMode, Writer};
    let mut binary = Vec::new();
    Reader::from_bytes(armored, ReaderMode::Tolerant(Some(Kind::Message)))
        .read_to_end(&mut binary)
        .map_err(|e| format!("dearmor: {e}"))?;
    let binary = if how == "flip-middle" {
        let mut b = binary;
        let mid = b.len() / 2;
        b[mid] ^= 0x10;
        b
    } else if let Some(n) = how.strip_prefix("markers:") {
        let n: usize = n.parse().map_err(|_| format!("bad tamper {how}"))?;
        // Marker packet (RFC 9580 §5.8), new format: tag 10, length 3, "PGP".
        let mut b = [0xCA, 0x03, b'P', b'G', b'P'].repeat(n);
        b.extend_from_slice(&binary);
        b
    } else {
        return Err(format!("unknown tamper {how}"));
    };
    let mut w = Writer::new(Vec::new(), Kind::Message).map_err(|e| e.to_string())?;
    w.write_all(&binary).map_err(|e| e.to_string())?;
    w.finalize().map_err(|e| e.to_string())
}

/// The configuration a case runs with: the site's, or one whose policy_dir holds the case's
/// policy.toml for the list (keys and state stay the site's).
pub fn case_config(site: &Site, case: &Case) -> PathBuf {
    let policy = case.dir.join("policy.toml");
    if !policy.exists() {
        return site.config.clone();
    }
    let dir = site.path("policies").join(&case.name);
    fs::create_dir_all(&dir).unwrap();
    fs::copy(&policy, dir.join(format!("{LIST}.toml"))).unwrap();
    let config = site
        .path("policies")
        .join(format!("{}.listcrypt.toml", case.name));
    fs::write(&config, Site::config_text(site.dir.path(), &dir)).unwrap();
    config
}
