//! Golden corpus for the inbound pipeline, run through `listcrypt process inbound` (the same
//! pipeline the milter drives), every case with LF and with CRLF line endings.
//!
//! Layout of `tests/corpus/inbound/<case>/` (see tests/corpus/README.md):
//! `message.eml` (LF; `{{name}}` placeholders are replaced by blobs built at test time),
//! `case.toml` (how to build the blobs, extra environment), `sender`, `expected`,
//! optional `policy.toml`, `expect-header`, `expect-body-contains`, `expect-no-header`.
//!
//! Keys are generated per run (the list key comes from `listcrypt list create`), so every
//! encrypted input is built here with real clients: GnuPG, sq, RNP, and sequoia-openpgp for
//! packets no client writes on purpose. Expectations come from DESIGN.md's reply table, not from
//! what the daemon prints.

mod support;

use sequoia_openpgp as openpgp;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use support::gpg::Gpg;
use support::process::{run, run_ok};
use support::site::{Site, LIST};
use support::text::{contains, to_crlf, to_lf};

/// Cases whose expectation (from the spec) the daemon does not meet yet. Temporary: each entry
/// is reported to whoever owns src/, and removed when fixed. A listed case that passes is
/// reported so the entry can go.
const KNOWN_FAILURES: &[&str] = &[];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseSpec {
    #[allow(dead_code)] // documentation for humans
    description: String,
    /// Recipients given at RCPT; default: the list's posting address.
    #[serde(default)]
    rcpt: Vec<String>,
    /// Extra environment for `listcrypt process`, e.g. lowered limits.
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    blob: Vec<BlobSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BlobSpec {
    /// Replaces `{{name}}` in message.eml and in later blobs' inputs.
    name: String,
    /// gpg | sq | rnp | sequoia | file (the rendered input itself, e.g. a signed MIME entity)
    tool: String,
    /// encrypt (signs too when `signer` is set) | clearsign | detach-sign |
    /// sequoia only: bad-signature (the signature covers other bytes)
    #[serde(default = "default_op")]
    op: String,
    /// A file of the case; rendered with earlier blobs and made CRLF (MIME canonical form)
    /// unless `input_lf`.
    input: Option<String>,
    #[serde(default)]
    input_lf: bool,
    /// Instead of `input`: this many zero bytes.
    input_zeros: Option<usize>,
    signer: Option<String>,
    /// Cast names; "list" is the list key.
    #[serde(default)]
    recipients: Vec<String>,
    /// Extra arguments for the tool.
    #[serde(default)]
    args: Vec<String>,
    /// sequoia only: RFC 9580 SEIPDv2 (AEAD, OCB) instead of v1 SEIPD with MDC.
    #[serde(default)]
    seipdv2: bool,
    /// sequoia only: Intended Recipient subpackets naming these cast members.
    #[serde(default)]
    intended_recipients: Vec<String>,
    /// flip-middle (one bit in the middle of the binary message) | markers:N (N Marker
    /// packets in front).
    tamper: Option<String>,
}

fn default_op() -> String {
    "encrypt".into()
}

/// A subscriber (or outsider) of the test world.
struct Person {
    address: String,
    /// Armored certificate and secret key.
    cert: PathBuf,
    key: PathBuf,
    fingerprint: String,
}

/// Everyone's keys, generated once per run.
struct Cast {
    gpg: Gpg,
    rnp_home: PathBuf,
    people: BTreeMap<String, Person>,
    list_cert: PathBuf,
}

const DAY: u64 = 24 * 3600;

impl Cast {
    /// alice, bob: GnuPG members; carol: sq member; dave: RNP member; mallory: not a member;
    /// erin: member whose key expires once the posts are made; rita: member whose key is revoked
    /// once the posts are made.
    fn generate(site: &Site) -> Cast {
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
            ("erin", Some(support::site::now() - 10 * DAY)),
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

    fn person(&self, name: &str) -> Result<&Person, String> {
        self.people
            .get(name)
            .ok_or_else(|| format!("no cast member {name:?}"))
    }

    fn address(&self, name: &str) -> Result<String, String> {
        if name == "list" {
            return Ok(LIST.into());
        }
        Ok(self.person(name)?.address.clone())
    }

    fn cert_file(&self, name: &str) -> Result<PathBuf, String> {
        if name == "list" {
            return Ok(self.list_cert.clone());
        }
        Ok(self.person(name)?.cert.clone())
    }

    /// After every post is made: erin's key expires (a newer self-signature, made five days ago,
    /// sets an expiry four days ago) and rita's key is revoked; the list learns both through its
    /// pgp.cert.d store, as an admin's `sq --cert-store … import` would tell it.
    fn age_keys(&self, site: &Site) {
        let erin = &self.people["erin"];
        let then = (support::site::now() - 5 * DAY).to_string();
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
struct Case {
    name: String,
    dir: PathBuf,
    spec: Option<CaseSpec>,
    sender: String,
    expected: String,
}

fn load_cases(root: &Path) -> Vec<Case> {
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
fn build(case: &Case, cast: &Cast, work: &Path) -> Result<Vec<u8>, String> {
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

/// What one run of `listcrypt process inbound` showed.
struct Outcome {
    code: Option<i32>,
    stdout: Vec<u8>,
    stderr: String,
}

impl Outcome {
    fn first_line(&self) -> String {
        let text = String::from_utf8_lossy(&self.stdout);
        text.lines().next().unwrap_or("").trim_end().to_string()
    }
}

fn process(site: &Site, case: &Case, config: &Path, message: &[u8]) -> Outcome {
    let mut cmd = support::listcrypt::listcrypt_cmd();
    cmd.arg("-c")
        .arg(config)
        .args(["process", "inbound", "--list", LIST, "--from", &case.sender]);
    let rcpts = case
        .spec
        .as_ref()
        .map(|s| s.rcpt.clone())
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| vec![LIST.to_string()]);
    for r in &rcpts {
        cmd.args(["--rcpt", r]);
    }
    cmd.env_remove("LISTCRYPT_CONFIG")
        .current_dir(site.dir.path());
    if let Some(spec) = &case.spec {
        cmd.envs(&spec.env);
    }
    let out = run(&mut cmd, Some(message));
    Outcome {
        code: out.status.code(),
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The top-level header fields of a message, unfolded.
fn top_headers(message: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(message);
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            break;
        }
        if line.starts_with([' ', '\t']) {
            if let Some(last) = fields.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
        } else if let Some((n, v)) = line.split_once(':') {
            fields.push((n.trim().to_string(), v.trim().to_string()));
        }
    }
    fields
}

fn lines_of(dir: &Path, file: &str) -> Vec<String> {
    fs::read_to_string(dir.join(file))
        .map(|t| {
            t.lines()
                .map(|l| l.trim_end().to_string())
                .filter(|l| !l.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// Judges one outcome against the case's expectations; `Err` says why it fails.
fn judge(case: &Case, out: &Outcome) -> Result<(), String> {
    let first = out.first_line();
    let shown = || {
        format!(
            "exit {:?}, first line {first:?}, stderr {:?}",
            out.code,
            out.stderr.trim()
        )
    };
    if case.expected == "accept" {
        if out.code != Some(0) {
            return Err(format!("expected accept (exit 0), got {}", shown()));
        }
        // DESIGN.md: output messages use CRLF.
        if out
            .stdout
            .windows(2)
            .any(|w| w[1] == b'\n' && w[0] != b'\r')
            || out.stdout.first() == Some(&b'\n')
        {
            return Err("accepted message has bare LF line endings (must be CRLF)".into());
        }
        let headers = top_headers(&out.stdout);
        for want in lines_of(&case.dir, "expect-header") {
            let (name, value) = want.split_once(':').ok_or("bad expect-header line")?;
            let value = value.trim();
            if !headers
                .iter()
                .any(|(n, v)| n.eq_ignore_ascii_case(name.trim()) && v.starts_with(value))
            {
                return Err(format!(
                    "expected header {want:?}; top-level header has {:?}",
                    headers
                        .iter()
                        .filter(|(n, _)| n.eq_ignore_ascii_case(name.trim()))
                        .collect::<Vec<_>>()
                ));
            }
        }
        for name in lines_of(&case.dir, "expect-no-header") {
            if let Some((n, v)) = headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(&name)) {
                return Err(format!("header {n}: {v} must not reach Mailman"));
            }
        }
        for want in lines_of(&case.dir, "expect-body-contains") {
            if !contains(&out.stdout, want.as_bytes()) {
                return Err(format!("output does not contain {want:?}"));
            }
        }
        return Ok(());
    }
    if out.code != Some(1) {
        return Err(format!(
            "expected `{}` (exit 1), got {}",
            case.expected,
            shown()
        ));
    }
    let want: Vec<&str> = case.expected.split_whitespace().collect();
    let got: Vec<&str> = first.split_whitespace().collect();
    if got.len() < want.len() || got[..want.len()] != want[..] {
        return Err(format!("expected `{}`, got {}", case.expected, shown()));
    }
    if want.len() == 1 && got.len() < 2 {
        return Err(format!("`{}` without a reason: {first:?}", case.expected));
    }
    Ok(())
}

#[test]
fn inbound_corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/inbound");
    let cases = load_cases(&root);
    for k in KNOWN_FAILURES {
        assert!(
            cases.iter().any(|c| c.name == *k),
            "KNOWN_FAILURES names {k}, which is no case"
        );
    }

    let site = Site::new();
    site.create_list(LIST);
    let cast = Cast::generate(&site);
    let work = site.path("built");
    fs::create_dir_all(&work).unwrap();

    // Every post is made first (erin's and rita's while their keys are still good) ...
    let built: Vec<Result<Vec<u8>, String>> =
        cases.iter().map(|c| build(c, &cast, &work)).collect();
    // ... then keys age, as they do between a post and its delivery.
    cast.age_keys(&site);

    let mut report = String::new();
    let (mut passed, mut failed, mut known, mut fixed) = (0, 0, 0, Vec::new());
    for (case, message) in cases.iter().zip(&built) {
        let is_known = KNOWN_FAILURES.contains(&case.name.as_str());
        let config = case_config(&site, case);
        let variants: Vec<(&str, Result<Vec<u8>, String>)> = match message {
            Ok(lf) => vec![("lf", Ok(lf.clone())), ("crlf", Ok(to_crlf(lf)))],
            Err(e) => vec![("build", Err(e.clone()))],
        };
        let mut case_ok = true;
        for (variant, message) in variants {
            let verdict = message.and_then(|m| {
                fs::write(work.join(format!("{}.{variant}.eml", case.name)), &m).unwrap();
                judge(case, &process(&site, case, &config, &m))
            });
            let tag = match (&verdict, is_known) {
                (Ok(()), _) => "ok  ",
                (Err(_), true) => "KNOWN",
                (Err(_), false) => "FAIL",
            };
            let _ = write!(
                report,
                "{tag} {variant:<5} {:<40} {}",
                case.name, case.expected
            );
            if let Err(why) = &verdict {
                let _ = write!(report, " -- {why}");
                case_ok = false;
            }
            report.push('\n');
            match (verdict.is_ok(), is_known) {
                (true, _) => passed += 1,
                (false, true) => known += 1,
                (false, false) => failed += 1,
            }
        }
        if case_ok && is_known {
            fixed.push(case.name.clone());
        }
    }
    let _ = writeln!(
        report,
        "inbound corpus: {} cases, {} runs: {passed} passed, {failed} failed, {known} known failures",
        cases.len(),
        passed + failed + known
    );
    if !fixed.is_empty() {
        let _ = writeln!(
            report,
            "now passing, remove from KNOWN_FAILURES: {}",
            fixed.join(", ")
        );
    }
    println!("{report}");
    drop(cast);
    if std::env::var_os("CORPUS_KEEP_DIR").is_some() {
        // Built messages are under built/, one per case and line-ending variant.
        println!("kept {}", site.dir.keep().display());
    }
    assert_eq!(failed, 0, "inbound corpus failures:\n{report}");
}

/// The configuration a case runs with: the site's, or one whose policy_dir holds the case's
/// policy.toml for the list (keys and state stay the site's).
fn case_config(site: &Site, case: &Case) -> PathBuf {
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
