//! The CLI verbs other than `serve`: list and member administration, `check-config`, and the
//! `process` dry runs that drive the same pipelines as the milter.

use crate::config::{Config, ConfigError, Policy};
use crate::inbound::{self, Target, Verdict};
use crate::keys::{self, normalize_address, valid_address, KeyError, Keyring};
use crate::notices::{self, Notice, NoticeError};
use crate::outbound;
use crate::pgp;
use crate::refusal::{RcptOutcome, Refusal};
use crate::store::{Role, Store, StoreError};
use crate::wkd::WkdError;
use std::io::{Read, Write};
use std::path::Path;

pub mod archive;
pub mod backup;
pub mod doctor;
pub mod token;

/// sysexits(3) codes, as DESIGN.md contracts them.
pub mod exit {
    pub const OK: u8 = 0;
    pub const NOT_PROCESSED: u8 = 1;
    pub const USAGE: u8 = 64;
    pub const DATA: u8 = 65;
    pub const UNAVAILABLE: u8 = 69;
    pub const SOFTWARE: u8 = 70;
    pub const IOERR: u8 = 74;
    pub const TEMPFAIL: u8 = 75;
    pub const CONFIG: u8 = 78;
}

/// A failure to run a command at all: printed as `listcrypt: what: why`.
#[derive(Debug)]
pub struct CommandError {
    pub code: u8,
    pub what: String,
    pub why: String,
}

impl CommandError {
    pub fn new(code: u8, what: impl Into<String>, why: impl std::fmt::Display) -> CommandError {
        CommandError {
            code,
            what: what.into(),
            why: why.to_string(),
        }
    }
}

impl From<KeyError> for CommandError {
    fn from(e: KeyError) -> Self {
        let code = match &e {
            KeyError::Config(_) => exit::CONFIG,
            KeyError::Store(StoreError::Busy(_) | StoreError::Unavailable(_)) => exit::TEMPFAIL,
            KeyError::Store(_) => exit::UNAVAILABLE,
            KeyError::Io { .. } => exit::IOERR,
            KeyError::Parse { .. } | KeyError::Unusable(_) => exit::DATA,
            KeyError::NoSuchList(_) | KeyError::ListExists(_) => exit::USAGE,
            KeyError::Crypto(_) => exit::SOFTWARE,
            KeyError::Passphrase(_) => exit::CONFIG,
        };
        CommandError::new(code, "keys", e)
    }
}

impl From<WkdError> for CommandError {
    fn from(e: WkdError) -> Self {
        let code = match e {
            WkdError::Keys(e) => return CommandError::from(e),
            WkdError::Io { .. } => exit::IOERR,
            WkdError::NoUserId(_) => exit::DATA,
            WkdError::Crypto(_) => exit::SOFTWARE,
        };
        CommandError::new(code, "wkd export", e)
    }
}

impl From<StoreError> for CommandError {
    fn from(e: StoreError) -> Self {
        KeyError::Store(e).into()
    }
}

impl From<ConfigError> for CommandError {
    fn from(e: ConfigError) -> Self {
        CommandError::new(exit::CONFIG, "configuration", e)
    }
}

type Result<T> = std::result::Result<T, CommandError>;

fn list_address(s: &str) -> Result<String> {
    let a = normalize_address(s);
    if !valid_address(&a) {
        return Err(CommandError::new(
            exit::USAGE,
            "address",
            format!("{s:?} is not a valid address"),
        ));
    }
    Ok(a)
}

/// The store the daemon uses too (SQLite, or PostgreSQL with `database_url`).
fn open_store(config: &Config) -> Result<std::sync::Arc<dyn Store>> {
    Ok(crate::store::open(config)?)
}

fn existing_list(config: &Config, list: &str) -> Result<()> {
    if !config.policy_path(list).exists() {
        return Err(CommandError::new(
            exit::USAGE,
            list,
            format!(
                "no such list (no policy file {})",
                config.policy_path(list).display()
            ),
        ));
    }
    Ok(())
}

/// `list create ADDRESS`: the list key and a policy file with every default spelled out.
pub fn list_create(config: &Config, address: &str, out: &mut dyn Write) -> Result<()> {
    let list = list_address(address)?;
    let policy = config.policy_path(&list);
    if policy.exists() {
        return Err(CommandError::new(exit::USAGE, &list, "list already exists"));
    }
    let passphrases = keys::Passphrases::configured(config);
    let store = open_store(config)?;
    let home = keys::KeyHome::of(&config.keyring_dir, &*store);
    let cert = keys::create_list_key_with(home, &list, &passphrases)?;
    std::fs::create_dir_all(&config.policy_dir)
        .map_err(|e| CommandError::new(exit::IOERR, config.policy_dir.display().to_string(), e))?;
    std::fs::write(&policy, Policy::default_file_text(&list))
        .map_err(|e| CommandError::new(exit::IOERR, policy.display().to_string(), e))?;
    // Running daemons pick the new list up with the next message.
    store.touch()?;
    writeln!(out, "created list {list}").ok();
    writeln!(out, "  list key   {}", cert.fingerprint()).ok();
    match home {
        keys::KeyHome::Files(dir) => writeln!(
            out,
            "  secret key {}",
            keys::list_dir(dir, &list).join("secret.pgp").display()
        ),
        keys::KeyHome::Database(_) => writeln!(out, "  secret key in the database"),
    }
    .ok();
    writeln!(out, "  policy     {}", policy.display()).ok();
    match passphrases.source() {
        Some(source) => writeln!(out, "  protected  with the passphrase from {source}").ok(),
        None => writeln!(
            out,
            "  protected  no (no passphrase configured; see listcrypt list protect)"
        )
        .ok(),
    };
    Ok(())
}

/// Where `list protect` finds the key: the database, unless the site moved to PostgreSQL and
/// this key is still only in `keyring_dir` (it must be protected before `list upload`).
fn key_home_for_protect<'a>(
    config: &'a Config,
    store: &'a dyn Store,
    list: &str,
) -> Result<keys::KeyHome<'a>> {
    let home = keys::KeyHome::of(&config.keyring_dir, store);
    let on_disk = keys::list_dir(&config.keyring_dir, list).join("secret.pgp");
    if store.keeps_keys() && store.list_key_get(list)?.is_none() && on_disk.exists() {
        return Ok(keys::KeyHome::Files(&config.keyring_dir));
    }
    Ok(home)
}

/// `list upload ADDRESS`: copies a list key from `keyring_dir` into the database (a site
/// moving to PostgreSQL); only a passphrase-protected key is uploaded.
pub fn list_upload(config: &Config, address: &str, out: &mut dyn Write) -> Result<()> {
    let list = list_address(address)?;
    existing_list(config, &list)?;
    let store = open_store(config)?;
    if keys::upload_list_key(&config.keyring_dir, &*store, &list)? {
        writeln!(out, "uploaded {list}'s key to the database").ok();
    } else {
        writeln!(out, "{list}'s key is in the database already").ok();
    }
    Ok(())
}

/// `certs export DIR`: every member certificate into a pgp.cert.d directory (for
/// `sq --cert-store DIR`), merged with what DIR holds.
pub fn certs_export(config: &Config, dir: &Path, out: &mut dyn Write) -> Result<()> {
    let store = open_store(config)?;
    let from = keys::CertStore::of(&config.keyring_dir, &*store);
    let to = keys::CertDir::at(dir);
    let certs = from.all()?;
    for cert in &certs {
        to.insert(cert)?;
    }
    writeln!(
        out,
        "exported {} certificate(s) to {}",
        certs.len(),
        dir.display()
    )
    .ok();
    Ok(())
}

/// `certs import DIR`: every certificate of a pgp.cert.d directory into the certificate
/// store (the database with `database_url`, else `keyring_dir/certs`), merged.
pub fn certs_import(config: &Config, dir: &Path, out: &mut dyn Write) -> Result<()> {
    if !dir.is_dir() {
        return Err(CommandError::new(
            exit::USAGE,
            dir.display().to_string(),
            "no such directory",
        ));
    }
    let store = open_store(config)?;
    let to = keys::CertStore::of(&config.keyring_dir, &*store);
    let certs = keys::CertDir::at(dir).all()?;
    for cert in &certs {
        to.insert(cert)?;
    }
    // Bound certificates may have changed: daemons reload.
    store.touch()?;
    writeln!(
        out,
        "imported {} certificate(s) from {}",
        certs.len(),
        dir.display()
    )
    .ok();
    Ok(())
}

/// `list protect ADDRESS`: encrypts the list key at rest, or changes its passphrase. The new
/// passphrase: `new_file`, else the configured one for a key not yet protected, else asked.
pub fn list_protect(
    config: &Config,
    address: &str,
    new_file: Option<&Path>,
    out: &mut dyn Write,
) -> Result<()> {
    let list = list_address(address)?;
    existing_list(config, &list)?;
    let current = keys::Passphrases::interactive(config);
    let store = open_store(config)?;
    let home = key_home_for_protect(config, &*store, &list)?;
    let on_disk = keys::load_list_key(home, &list)?;
    let protected = pgp::protection(&on_disk) == pgp::Protection::Protected;
    let new = match (new_file, config.passphrase_source()) {
        (Some(path), _) => crate::config::PassphraseSource::File(path.to_path_buf()).read()?,
        (None, Some(source)) if !protected => source.read()?,
        (None, _) => {
            // Opened before asking for the new one, so a wrong current passphrase stops early.
            keys::open_list_key(home, &list, &current)?;
            crate::config::prompt_passphrase(&format!("New passphrase for {list}"), true)?
                .ok_or_else(|| {
                    CommandError::new(
                        exit::USAGE,
                        &list,
                        "no new passphrase: give --new-passphrase-file FILE or run on a terminal",
                    )
                })?
        }
    };
    let before = keys::protect_list_key(home, &list, &current, &new)?;
    store.touch()?;
    match before {
        pgp::Protection::Protected => writeln!(out, "changed the passphrase of {list}'s key"),
        _ => writeln!(out, "protected {list}'s key with a passphrase"),
    }
    .ok();
    Ok(())
}

/// `list unprotect ADDRESS`: stores the list key without a passphrase again.
pub fn list_unprotect(config: &Config, address: &str, out: &mut dyn Write) -> Result<()> {
    let list = list_address(address)?;
    existing_list(config, &list)?;
    let current = keys::Passphrases::interactive(config);
    let store = open_store(config)?;
    let home = keys::KeyHome::of(&config.keyring_dir, &*store);
    keys::unprotect_list_key(home, &list, &current)?;
    store.touch()?;
    writeln!(out, "{list}'s key is no longer protected by a passphrase").ok();
    Ok(())
}

/// `list export-key ADDRESS`: the public key, armored.
pub fn list_export_key(config: &Config, address: &str, out: &mut dyn Write) -> Result<()> {
    let list = list_address(address)?;
    existing_list(config, &list)?;
    let store = open_store(config)?;
    let cert = keys::load_list_key(keys::KeyHome::of(&config.keyring_dir, &*store), &list)?;
    let armored =
        pgp::armored_public(&cert).map_err(|e| CommandError::new(exit::SOFTWARE, "export", e))?;
    out.write_all(&armored)
        .map_err(|e| CommandError::new(exit::IOERR, "stdout", e))?;
    Ok(())
}

/// `list rotate-subkey ADDRESS`: a new encryption subkey, the old ones retired.
pub fn list_rotate_subkey(
    config: &Config,
    address: &str,
    grace_days: u32,
    mode: keys::RotateMode,
    out: &mut dyn Write,
) -> Result<()> {
    let list = list_address(address)?;
    existing_list(config, &list)?;
    let grace = std::time::Duration::from_secs(u64::from(grace_days) * 86_400);
    let passphrases = keys::Passphrases::interactive(config);
    let store = open_store(config)?;
    let home = keys::KeyHome::of(&config.keyring_dir, &*store);
    let r = keys::rotate_subkey(home, &list, grace, mode, &passphrases)?;
    // Running daemons pick the new key up with the next message.
    store.touch()?;
    if let Some(f) = &r.new_subkey {
        writeln!(out, "new encryption subkey {f}").ok();
    }
    for f in &r.retiring {
        writeln!(
            out,
            "retiring {f} (expires in {grace_days} days; secret kept until then)"
        )
        .ok();
    }
    for f in &r.destroyed {
        writeln!(out, "destroyed the secret of expired subkey {f}").ok();
    }
    if r.new_subkey.is_some() {
        writeln!(
            out,
            "members should refresh the list key: listcrypt list export-key {list}"
        )
        .ok();
    }
    Ok(())
}

/// `list rotate-subkey --prune-only --all`: destroy the expired subkey secrets of every list
/// in `policy_dir` (the daily timer, so a new list needs no new timer line).
pub fn list_prune_all(config: &Config, out: &mut dyn Write) -> Result<()> {
    for list in keys::list_names(config)? {
        list_rotate_subkey(config, &list, 0, keys::RotateMode::PruneOnly, out)?;
    }
    Ok(())
}

pub fn member_add(
    config: &Config,
    list: &str,
    address: &str,
    cert_file: &Path,
    role: Role,
    key_id: keys::RecipientKeyId,
    out: &mut dyn Write,
) -> Result<()> {
    let list = list_address(list)?;
    let address = list_address(address)?;
    existing_list(config, &list)?;
    let cert = keys::read_cert_file(cert_file)?;
    let store = open_store(config)?;
    let b = keys::add_member(config, &*store, &list, &address, &cert, role, key_id).map_err(
        |e| match e {
            KeyError::Unusable(why) => CommandError::new(exit::DATA, address.clone(), why),
            other => other.into(),
        },
    )?;
    writeln!(
        out,
        "bound {} on {list} to {} as {}",
        b.address,
        b.fingerprint,
        b.role.as_str()
    )
    .ok();
    Ok(())
}

pub fn member_remove(
    config: &Config,
    list: &str,
    address: &str,
    out: &mut dyn Write,
) -> Result<()> {
    let list = list_address(list)?;
    let address = list_address(address)?;
    existing_list(config, &list)?;
    let store = open_store(config)?;
    if !store.unbind(&list, &address)? {
        return Err(CommandError::new(
            exit::DATA,
            &address,
            format!("not bound on {list}"),
        ));
    }
    writeln!(out, "unbound {address} from {list}").ok();
    Ok(())
}

/// One line per binding: `ADDRESS FINGERPRINT ROLE STATE EXPIRES`.
pub fn member_list(config: &Config, list: &str, out: &mut dyn Write) -> Result<()> {
    let list = list_address(list)?;
    existing_list(config, &list)?;
    let store = open_store(config)?;
    for row in keys::member_rows(&config.keyring_dir, &*store, &list)? {
        writeln!(out, "{}", row.line()).ok();
    }
    Ok(())
}

/// `notify-expiry`: members whose key stops being usable within `days` get an encrypted
/// notice (at most weekly); owners get the list of members whose keys are unusable (at most
/// daily). Sent through the reinjection listener. Meant for a daily cron job.
pub fn notify_expiry(config: &Config, days: u32, out: &mut dyn Write) -> Result<u8> {
    let store = open_store(config)?;
    let keyring = Keyring::load_with(
        config,
        &*store,
        &keys::Passphrases::interactive(config),
        keys::LockedKeys::Fail,
    )?;
    let now = std::time::SystemTime::now();
    let horizon = now + std::time::Duration::from_secs(u64::from(days) * 86_400);
    let mut outgoing = Vec::new();
    let mut lists: Vec<_> = keyring.lists.values().cloned().collect();
    lists.sort_by(|a, b| a.address.cmp(&b.address));
    for list in &lists {
        let unusable = notices::member_notices(&*store, list, horizon, &mut outgoing, out)?;
        notices::owner_notices(&*store, list, &unusable, &mut outgoing, out)?;
    }
    send_notices(config, &*store, &outgoing)?;
    Ok(exit::OK)
}

/// Sends the notices in order through the reinjection listener (see [`notices::deliver`]).
fn send_notices(config: &Config, store: &dyn Store, notices: &[Notice]) -> Result<()> {
    if notices.is_empty() {
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CommandError::new(exit::SOFTWARE, "runtime", e))?;
    Ok(runtime.block_on(notices::deliver(config, store, notices))?)
}

impl From<NoticeError> for CommandError {
    fn from(e: NoticeError) -> Self {
        match e {
            NoticeError::Store(e) => e.into(),
            NoticeError::Build(e) => CommandError::new(exit::SOFTWARE, "notice", e),
            NoticeError::Send(e) => CommandError::new(exit::TEMPFAIL, "send", e),
        }
    }
}

/// One warning per other host whose recorded policy digest differs from this host's files:
/// policy files are deployed to every host, and hosts that disagree decide differently.
fn policy_digest_warnings(config: &Config, store: &dyn Store) -> Result<Vec<String>> {
    let me = config.host_name();
    let mine = keys::policy_digest(config)?;
    Ok(store
        .hosts()?
        .into_iter()
        .filter(|h| h.host != me && h.policy_sha256 != mine)
        .map(|h| {
            let at = h
                .seen
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            format!(
                "policy files differ between hosts: {} recorded digest {} on {}, this host \
                 ({me}) has {}; deploy the same {} to every host",
                h.host,
                short(&h.policy_sha256),
                keys::format_date(at),
                short(&mine),
                config.policy_dir.display()
            )
        })
        .collect())
}

fn short(digest: &str) -> &str {
    digest.get(..16).unwrap_or(digest)
}

/// `check-config`: the daemon config, every policy file, every key and every binding.
pub fn check_config(config: &Config, out: &mut dyn Write) -> Result<()> {
    let mut problems = Vec::new();
    let names = keys::list_names(config)?;
    let store = open_store(config)?;
    let passphrases = keys::Passphrases::interactive(config);
    for list in &names {
        match Policy::load(&config.policy_path(list)) {
            Err(e) => problems.push(e.to_string()),
            Ok(p) => problems.extend(archive::check(config, &*store, list, &p)),
        }
        for w in keys::secret_key_warnings(config, list, config.daemon_uid()) {
            eprintln!("warning: {w}");
        }
        match keys::open_list_key(
            keys::KeyHome::of(&config.keyring_dir, &*store),
            list,
            &passphrases,
        ) {
            Ok(cert) => {
                if !keys::cert_policy_ok(&cert) {
                    problems.push(format!(
                        "{list}: list key is not valid under the standard policy"
                    ));
                }
            }
            Err(e @ KeyError::Passphrase(_)) => problems.push(e.to_string()),
            Err(e) => problems.push(format!("{list}: {e}")),
        }
        let certs = keys::CertStore::of(&config.keyring_dir, &*store);
        for b in store.bindings(list)? {
            let cert = b.fingerprint.parse().ok().map(|f| certs.get(&f));
            match cert {
                Some(Ok(Some(cert))) => {
                    if let Err(why) = keys::check_member_cert(&cert, &b.address) {
                        problems.push(format!("{list}: {}: {why}", b.address));
                    }
                }
                Some(Err(e)) => problems.push(format!("{list}: {}: {e}", b.address)),
                _ => problems.push(format!(
                    "{list}: {}: certificate {} missing",
                    b.address, b.fingerprint
                )),
            }
        }
    }
    if names.is_empty() {
        eprintln!(
            "listcrypt: warning: no lists in {}",
            config.policy_dir.display()
        );
    }
    for w in policy_digest_warnings(config, &*store)? {
        eprintln!("warning: {w}");
    }
    // Limits that do not fit in each other still run (the derived ones apply): a warning.
    for w in config.limits.misfits() {
        eprintln!("warning: {w}");
    }
    if problems.is_empty() {
        writeln!(out, "configuration ok: {} list(s)", names.len()).ok();
        Ok(())
    } else {
        for p in &problems {
            eprintln!("{p}");
        }
        Err(CommandError::new(
            exit::CONFIG,
            "check-config",
            format!("{} problem(s)", problems.len()),
        ))
    }
}

fn read_stdin(limit: u64) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    std::io::stdin()
        .take(limit + 1)
        .read_to_end(&mut buf)
        .map_err(|e| CommandError::new(exit::IOERR, "stdin", e))?;
    Ok(buf)
}

fn load_keyring(config: &Config) -> Result<Keyring> {
    let store = open_store(config)?;
    let passphrases = keys::Passphrases::interactive(config);
    Ok(Keyring::load_with(
        config,
        &*store,
        &passphrases,
        keys::LockedKeys::Fail,
    )?)
}

/// The list `process` runs for, with the keyring snapshot it was found in.
fn process_list(config: &Config, list: &str) -> Result<(Keyring, String)> {
    let list = list_address(list)?;
    existing_list(config, &list)?;
    let keyring = load_keyring(config)?;
    if !keyring.lists.contains_key(&list) {
        return Err(CommandError::new(exit::CONFIG, &list, "list not loaded"));
    }
    Ok((keyring, list))
}

/// `process inbound`: the same `inbound::Transaction` the milter drives, over a read-only view
/// of the replay record. Returns the exit code (0 processed, 1 not processed).
pub fn process_inbound(
    config: &Config,
    list: &str,
    from: &str,
    rcpts: &[String],
    out: &mut dyn Write,
) -> Result<u8> {
    let (keyring, list) = process_list(config, list)?;
    let message = read_stdin(config.limits.max_message_bytes)?;
    // Without --rcpt the message is a post: the list's posting address is the recipient.
    let rcpts = if rcpts.is_empty() {
        std::slice::from_ref(&list).to_vec()
    } else {
        rcpts.to_vec()
    };
    let mut tx = inbound::Transaction::new(std::sync::Arc::new(keyring), from);
    for r in &rcpts {
        if let RcptOutcome::Refuse(refusal) = tx.rcpt(r) {
            let word = match refusal.reply().code.starts_with('4') {
                true => "tempfail",
                false => "reject",
            };
            writeln!(out, "{word} {refusal}\r").ok();
            return Ok(exit::NOT_PROCESSED);
        }
    }
    match tx.target() {
        Target::List { list: l, .. } if l.address == list => {}
        Target::KeyAddress(l) if l.address == list => {
            // The daemon answers these itself (replies by SMTP): nothing passes on.
            writeln!(
                out,
                "discard mail to the key address is answered by the daemon, not passed on\r"
            )
            .ok();
            // The dry run shows the reply and the writes it would make, and makes none.
            key_address_dry_run(config, l, from, &message, out)?;
            return Ok(exit::NOT_PROCESSED);
        }
        _ => {
            writeln!(out, "tempfail {}\r", Refusal::MixedTransaction).ok();
            return Ok(exit::NOT_PROCESSED);
        }
    }
    let store = open_store(config)?;
    let ledger = inbound::Peeking(&*store);
    // The daemon's clock: the database's where hosts share one.
    let now = store.now()?;
    let verdict = tx.finish(&message, &config.limits, &ledger, now);
    // The milter's sender change too; on stderr, since stdout is the message Mailman gets.
    if let Some(sender) = tx.envelope_sender(config.inbound_envelope_sender, &verdict) {
        eprintln!(
            "note: envelope sender <{sender}> in place of <{from}> (inbound_envelope_sender)"
        );
    }
    match verdict {
        Verdict::Deliver {
            rewrite,
            hold: None,
            ..
        } => {
            out.write_all(&rewrite.render(&message))
                .map_err(|e| CommandError::new(exit::IOERR, "stdout", e))?;
            Ok(exit::OK)
        }
        other => {
            writeln!(out, "{}\r", other.decision_line()).ok();
            Ok(exit::NOT_PROCESSED)
        }
    }
}

/// What the key address would answer and write, without writing.
fn key_address_dry_run(
    config: &Config,
    list: &keys::ListKeys,
    from: &str,
    message: &[u8],
    out: &mut dyn Write,
) -> Result<()> {
    let store = open_store(config)?;
    let processor = crate::key_address::Processor {
        list,
        store: &*store,
        keyring_dir: &config.keyring_dir,
        limits: &config.limits,
    };
    let outcome = processor
        .process(from, message, store.now()?)
        .map_err(|e| match e {
            crate::key_address::KeyAddressError::Store(e) => e.into(),
            crate::key_address::KeyAddressError::Keys(e) => e.into(),
            e => CommandError::new(exit::SOFTWARE, "key address", e),
        })?;
    writeln!(out, "{}\r", outcome.summary).ok();
    for effect in &outcome.effects {
        writeln!(out, "would {effect}\r").ok();
    }
    if let Some(reply) = &outcome.reply {
        writeln!(out, "reply to {}:\r", reply.to).ok();
        out.write_all(&reply.message)
            .map_err(|e| CommandError::new(exit::IOERR, "stdout", e))?;
    }
    Ok(())
}

/// `process outbound`: the same `outbound::Transaction` the milter drives; writes
/// `DIR/batch-N.eml` and `.rcpt`, and one line per refused recipient.
pub fn process_outbound(
    config: &Config,
    list: &str,
    from: &str,
    rcpts: &[String],
    dir: &Path,
    out: &mut dyn Write,
) -> Result<u8> {
    let (keyring, list) = process_list(config, list)?;
    let keyring = std::sync::Arc::new(keyring);
    if outbound::list_for_sender(&keyring, from).is_none_or(|l| l.address != list) {
        tracing::warn!("{from} is no address of {list}; Mailman sends list mail from LIST-bounces");
    }
    let keys = keyring.lists[&list].clone();
    let mut tx = outbound::Transaction::for_list(keyring.clone(), keys, from);
    let message = read_stdin(config.limits.max_message_bytes)?;
    let mut refused = 0;
    for r in rcpts {
        if let RcptOutcome::Refuse(refusal) = tx.rcpt(r) {
            refused += 1;
            writeln!(out, "{r} {refusal}\r").ok();
        }
    }
    if refused == rcpts.len() {
        return Ok(exit::NOT_PROCESSED);
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| CommandError::new(exit::IOERR, dir.display().to_string(), e))?;
    if tx.route() == Some(outbound::Route::Loopback) {
        // Mailman talking to itself passes untouched.
        return write_batch(dir, 1, &crate::mime::to_crlf(&message), tx.recipients())
            .map(|()| exit::OK);
    }
    let plan = tx
        .finish(&message, &[])
        .map_err(|e| CommandError::new(exit::SOFTWARE, "encrypt", e))?;
    for (i, batch) in plan.batches.iter().enumerate() {
        write_batch(
            dir,
            i + 1,
            &batch.rewrite.render(&message),
            &batch.recipients,
        )?;
    }
    Ok(exit::OK)
}

fn write_batch(dir: &Path, n: usize, eml: &[u8], rcpts: &[String]) -> Result<()> {
    let base = dir.join(format!("batch-{n}"));
    std::fs::write(base.with_extension("eml"), eml)
        .map_err(|e| CommandError::new(exit::IOERR, base.display().to_string(), e))?;
    let list: String = rcpts.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(base.with_extension("rcpt"), list)
        .map_err(|e| CommandError::new(exit::IOERR, base.display().to_string(), e))
}
