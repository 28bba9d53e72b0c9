//! Daemon configuration (`listcrypt.toml`) and per-list policy files.
//!
//! The file is parsed with the `toml` crate first so that every diagnostic carries
//! `file:line:column`; figment then layers `LISTCRYPT_<KEY>` environment overrides on top.

mod key_refresh;
mod mailman_api;
mod passphrase;
mod policy;
mod socket;

pub use key_refresh::{KeyRefresh, Source as KeyRefreshSource};
pub use mailman_api::{ApiEndpoint, MailmanApi};
pub use passphrase::{prompt as prompt_passphrase, PassphraseSource, CREDENTIAL_NAME};
pub use policy::{Action, Archive, HeaderProtection, MissingKeyAction, Padding, Policy};
pub use socket::SocketSpec;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Where the packaged configuration lives; used when neither `-c` nor `$LISTCRYPT_CONFIG` is given.
pub const SYSTEM_CONFIG: &str = "/etc/listcrypt/listcrypt.toml";

/// The systemd credential (`LoadCredential=`) read for the database password when
/// `database_password_file` is not set.
pub const DATABASE_PASSWORD_CREDENTIAL: &str = "listcrypt-database-password";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Syntax {
        path: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// The largest message taken from the MTA, on either listener.
    pub max_message_bytes: u64,
    /// Plaintext one inbound post may decrypt and decompress to, across nested compression;
    /// inbound uses at most [`Limits::inbound_plaintext_bytes`], what an outbound copy can carry.
    pub max_plaintext_bytes: u64,
    /// The largest encrypted copy listcrypt hands back to the MTA (Postfix's
    /// `message_size_limit` must allow it). Every other size limit is derived to fit in it.
    pub max_outbound_copy_bytes: u64,
    /// Bytes of messages all milter sessions hold at once; above it, `452 4.3.1`.
    pub max_inflight_bytes: u64,
    pub max_mime_depth: u32,
    pub max_mime_parts: u32,
    pub max_packets: u32,
    /// Accepted clock skew of an author signature's creation time, in seconds.
    pub signature_time_window: u64,
    /// Seconds of work per message before listcrypt gives up with 451 4.3.0.
    pub message_timeout: u64,
    /// Seconds an accepted post's replay record waits for Mailman to be seen with the post
    /// before it is dropped, so that the sender's next retry counts as new.
    pub replay_confirm_window: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 25 * MIB,
            // What fits the default outbound copy (see `inbound_plaintext_bytes`).
            max_plaintext_bytes: 24 * MIB,
            max_outbound_copy_bytes: 40 * MIB,
            max_inflight_bytes: 256 * MIB,
            max_mime_depth: 20,
            max_mime_parts: 500,
            max_packets: 10_000,
            signature_time_window: 7 * 24 * 3600,
            message_timeout: 300,
            replay_confirm_window: 3600,
        }
    }
}

const MIB: u64 = 1024 * 1024;

/// How much an outbound copy grows over the message Mailman sent, as a fraction over 100:
/// ASCII armour 4/3 with a CRLF every 64 characters (RFC 4880 §6.3: 1.375), times Padmé's
/// at most 12 % padding (1.54).
const COPY_GROWTH_PERCENT: u64 = 154;
/// Fixed additions to a copy: the list's signature, one PKESK per recipient of a batch of up to
/// 1000 (RSA-4096: 0.5 KiB each), the outer and Autocrypt headers.
pub const COPY_OVERHEAD_BYTES: u64 = MIB;
/// What Mailman adds to a post on its way from the inbound to the outbound listener (footer,
/// List-* and Received fields).
pub const MAILMAN_HEADROOM_BYTES: u64 = MIB;

impl Limits {
    /// The largest message the outbound listener takes from Mailman: within
    /// `max_message_bytes`, and small enough that its encrypted copy fits
    /// `max_outbound_copy_bytes`.
    pub fn outbound_message_bytes(&self) -> u64 {
        let room = self
            .max_outbound_copy_bytes
            .saturating_sub(COPY_OVERHEAD_BYTES);
        let carried = room.saturating_mul(100) / COPY_GROWTH_PERCENT;
        self.max_message_bytes.min(carried)
    }

    /// The plaintext budget of an inbound post: `max_plaintext_bytes`, but never more than the
    /// outbound listener can take back from Mailman, so an accepted post can always be sent.
    pub fn inbound_plaintext_bytes(&self) -> u64 {
        let carried = self
            .outbound_message_bytes()
            .saturating_sub(MAILMAN_HEADROOM_BYTES);
        self.max_plaintext_bytes.min(carried)
    }

    /// Where listcrypt's own limits do not fit in each other, one sentence each (for
    /// `check-config`; the daemon still runs, with the derived limits).
    pub fn misfits(&self) -> Vec<String> {
        let mut out = Vec::new();
        let outbound = self.outbound_message_bytes();
        let plaintext = self.inbound_plaintext_bytes();
        if outbound < self.max_message_bytes {
            out.push(format!(
                "limits.max_outbound_copy_bytes ({}) cannot carry a message of max_message_bytes \
                 ({}) once encrypted; the outbound listener refuses mail above {outbound} bytes",
                self.max_outbound_copy_bytes, self.max_message_bytes
            ));
        }
        if plaintext == 0 {
            out.push(format!(
                "limits.max_outbound_copy_bytes ({}) leaves no room for any post; every \
                 encrypted post is refused",
                self.max_outbound_copy_bytes
            ));
        } else if plaintext < self.max_plaintext_bytes {
            out.push(format!(
                "limits.max_plaintext_bytes ({}) is more than an outbound copy can carry; \
                 inbound posts are limited to {plaintext} bytes of plaintext",
                self.max_plaintext_bytes
            ));
        }
        if self.max_inflight_bytes < self.max_message_bytes {
            out.push(format!(
                "limits.max_inflight_bytes ({}) is below max_message_bytes ({}); a message \
                 that large is always deferred with 452 4.3.1",
                self.max_inflight_bytes, self.max_message_bytes
            ));
        }
        out
    }
}

/// What the outbound listener does with mail whose envelope sender is no managed list's.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Unmanaged {
    /// Pass it untouched (Mailman may also serve unencrypted lists).
    Accept,
    /// 550 5.7.1 at MAIL (a host that serves only encrypted lists).
    Reject,
}

/// What the inbound listener does with a recipient in a domain that hosts an encrypted list
/// but that is no address of a list.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OtherRecipients {
    /// 550 5.1.1 at RCPT: Postfix might still route it to Mailman as a post.
    #[default]
    Reject,
    /// Pass it as non-list mail: only safe where such addresses never route to Mailman.
    Accept,
}

/// The envelope sender Mailman gets with a post or command the inbound listener accepted.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum InboundEnvelopeSender {
    /// The author's. For Postfix, whose own DSNs pass listcrypt (`non_smtpd_milters`).
    #[default]
    Keep,
    /// `LIST-bounces@DOMAIN`: a DSN the MTA writes about the decrypted post goes back into
    /// Mailman, never to the author in clear. For Sendmail, whose DSNs pass no milter.
    ListBounces,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogTarget {
    Auto,
    Stderr,
    Journald,
    /// The local syslog socket (`/dev/log`), facility `mail`.
    Syslog,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub inbound_socket: String,
    pub outbound_socket: String,
    pub reinject_smtp: String,
    /// Mode of unix milter sockets (octal). Whoever can connect can have mail signed by the
    /// list key, so keep it to the MTA: 0660 with `socket_group` set to the MTA's group.
    pub socket_mode: String,
    /// Group of unix milter sockets (name or number); empty keeps the daemon's group.
    pub socket_group: String,
    /// The user `serve` drops to after binding (name or number); empty: no drop.
    pub user: String,
    /// Outbound mail that belongs to no managed list.
    pub unmanaged_outbound: Unmanaged,
    /// Inbound recipients in a list domain that are no list's address.
    pub list_domain_other_recipients: OtherRecipients,
    /// The envelope sender of accepted posts toward Mailman (milter `SMFIR_CHGFROM`).
    pub inbound_envelope_sender: InboundEnvelopeSender,
    /// Postfix's `recipient_delimiter` (any one of its characters starts an extension).
    pub recipient_delimiter: String,
    /// Mailman's `[mta] verp_format`, to recognise its VERP envelope senders.
    pub verp_format: String,
    pub policy_dir: PathBuf,
    pub keyring_dir: PathBuf,
    pub state_dir: PathBuf,
    /// A file whose first line is the list keys' passphrase; empty = none (a systemd
    /// credential `listcrypt-passphrase` takes precedence).
    pub passphrase_file: PathBuf,
    pub log: LogTarget,
    pub log_level: String,
    /// `IP:PORT` of the WKD HTTP listener (for a TLS front-end); empty = off.
    pub http_listen: String,
    /// `IP:PORT` of the OpenMetrics listener, loopback only; empty = off.
    pub metrics_listen: String,
    /// `IP:PORT` of the admin REST API (plain HTTP, for a TLS front-end); empty = off.
    /// Loopback only unless `api_allow_remote` is set.
    pub api_listen: String,
    /// Lets `api_listen` be a non-loopback address (a front-end on another host): tokens
    /// then cross that network in clear unless it is protected.
    pub api_allow_remote: bool,
    /// `postgresql://…` to share state between several MX hosts; empty = SQLite in `state_dir`.
    /// Never with a password in it: that comes from `database_password_file` or the systemd
    /// credential [`DATABASE_PASSWORD_CREDENTIAL`].
    pub database_url: String,
    /// File holding the database password (one line); empty = the systemd credential if any.
    pub database_password_file: PathBuf,
    /// This host's name in the database's record of policy digests; empty = the system's.
    pub host_name: String,
    /// Mailman's REST API (`doctor`, the owners' pages).
    pub mailman_api: MailmanApi,
    /// Members' keys kept fresh in the background (Autocrypt headers, WKD, VKS).
    pub key_refresh: KeyRefresh,
    pub limits: Limits,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            inbound_socket: "unix:var/run/inbound.sock".into(),
            outbound_socket: "unix:var/run/outbound.sock".into(),
            reinject_smtp: "127.0.0.1:10026".into(),
            socket_mode: "0660".into(),
            socket_group: String::new(),
            user: String::new(),
            unmanaged_outbound: Unmanaged::Reject,
            list_domain_other_recipients: OtherRecipients::Reject,
            inbound_envelope_sender: InboundEnvelopeSender::Keep,
            recipient_delimiter: crate::address::DEFAULT_RECIPIENT_DELIMITER.into(),
            verp_format: crate::address::DEFAULT_VERP_FORMAT.into(),
            policy_dir: "var/lists.d".into(),
            keyring_dir: "keyrings".into(),
            state_dir: "var/state".into(),
            passphrase_file: PathBuf::new(),
            log: LogTarget::Auto,
            log_level: "info".into(),
            http_listen: String::new(),
            metrics_listen: String::new(),
            api_listen: String::new(),
            api_allow_remote: false,
            database_url: String::new(),
            database_password_file: PathBuf::new(),
            host_name: String::new(),
            mailman_api: MailmanApi::default(),
            key_refresh: KeyRefresh::default(),
            limits: Limits::default(),
        }
    }
}

/// Which file (if any) the configuration came from, for the start-up announcement.
#[derive(Clone, Debug)]
pub enum Source {
    File(PathBuf),
    BuiltIn,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::File(p) => write!(f, "{}", p.display()),
            Source::BuiltIn => write!(f, "built-in defaults"),
        }
    }
}

impl Config {
    /// How addresses are read: Postfix's `recipient_delimiter` and Mailman's `verp_format`.
    pub fn address_config(&self) -> crate::address::AddressConfig {
        crate::address::AddressConfig {
            recipient_delimiter: self.recipient_delimiter.clone(),
            verp_format: self.verp_format.clone(),
        }
    }

    /// Finds and loads the configuration: `explicit`, else `$LISTCRYPT_CONFIG`, else
    /// [`SYSTEM_CONFIG`] if it exists, else the built-in default.
    pub fn locate(explicit: Option<&Path>) -> Result<(Config, Source), ConfigError> {
        let path = match explicit {
            Some(p) => Some(p.to_path_buf()),
            None => match std::env::var_os("LISTCRYPT_CONFIG") {
                Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
                _ if Path::new(SYSTEM_CONFIG).exists() => Some(PathBuf::from(SYSTEM_CONFIG)),
                _ => None,
            },
        };
        match path {
            Some(p) => Ok((Config::load(Some(&p))?, Source::File(p))),
            None => Ok((Config::load(None)?, Source::BuiltIn)),
        }
    }

    /// Loads `path` (or only defaults) plus environment overrides, then validates.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        let shown = path
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "built-in".into());
        if let Some(path) = path {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
                path: shown.clone(),
                source,
            })?;
            // Parse once on our own for precise diagnostics (figment drops positions).
            toml::from_str::<Config>(&text).map_err(|e| syntax_error(&shown, &text, &e))?;
            // From the file by name, so each value's metadata says which file it came from.
            figment = figment.merge(Toml::file_exact(path));
        }
        // LISTCRYPT_LIMITS__MAX_PACKETS=… reaches limits.max_packets.
        figment = figment.merge(Env::prefixed("LISTCRYPT_").ignore(&["CONFIG"]).split("__"));
        let mut config: Config = figment.extract().map_err(|e| ConfigError::Invalid {
            path: shown.clone(),
            message: e.to_string(),
        })?;
        config.resolve_relative_paths(&figment);
        config.validate().map_err(|message| ConfigError::Invalid {
            path: shown,
            message,
        })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        SocketSpec::parse(&self.inbound_socket).map_err(|e| format!("inbound_socket: {e}"))?;
        SocketSpec::parse(&self.outbound_socket).map_err(|e| format!("outbound_socket: {e}"))?;
        if self.inbound_socket == self.outbound_socket {
            return Err("inbound_socket and outbound_socket must differ".into());
        }
        self.reinject_smtp
            .parse::<std::net::SocketAddr>()
            .map_err(|e| format!("reinject_smtp: {e} (expected HOST:PORT)"))?;
        if !self.http_listen.is_empty() {
            self.http_listen
                .parse::<std::net::SocketAddr>()
                .map_err(|e| format!("http_listen: {e} (expected IP:PORT, or empty)"))?;
        }
        if !self.metrics_listen.is_empty() {
            let addr = self
                .metrics_listen
                .parse::<std::net::SocketAddr>()
                .map_err(|e| format!("metrics_listen: {e} (expected IP:PORT, or empty)"))?;
            // Counters name lists and traffic: nothing for other hosts to read.
            if !addr.ip().is_loopback() {
                return Err(format!("metrics_listen: {addr} is not a loopback address"));
            }
        }
        if !self.api_listen.is_empty() {
            let addr = self
                .api_listen
                .parse::<std::net::SocketAddr>()
                .map_err(|e| format!("api_listen: {e} (expected IP:PORT, or empty)"))?;
            // Bearer tokens travel in clear to this listener: only a loopback front-end, or
            // one the admin vouches for.
            if !addr.ip().is_loopback() && !self.api_allow_remote {
                return Err(format!(
                    "api_listen: {addr} is not a loopback address (set api_allow_remote = true \
                     only if the network to the TLS front-end is trusted)"
                ));
            }
        }
        if !self.database_url.is_empty() {
            database_settings(&self.database_url)?;
        }
        let mode = u32::from_str_radix(&self.socket_mode, 8)
            .map_err(|_| format!("socket_mode: {:?} is not an octal mode", self.socket_mode))?;
        if mode > 0o777 {
            return Err(format!(
                "socket_mode: {:?} is not a permission mode",
                self.socket_mode
            ));
        }
        self.mailman_api.endpoint()?;
        self.key_refresh.validate()?;
        self.address_config().validate()?;
        tracing_subscriber::EnvFilter::try_new(&self.log_level)
            .map_err(|e| format!("log_level: {e}"))?;
        let l = &self.limits;
        if l.max_message_bytes == 0 || l.max_plaintext_bytes == 0 || l.max_packets == 0 {
            return Err("limits must be positive".into());
        }
        if l.max_outbound_copy_bytes == 0 || l.max_inflight_bytes == 0 {
            return Err("limits must be positive".into());
        }
        if l.max_mime_depth == 0 || l.max_mime_parts == 0 || l.message_timeout == 0 {
            return Err("limits must be positive".into());
        }
        Ok(())
    }

    /// Relative paths written in a config file are relative to that file's directory, so the
    /// daemon reads the same files whatever its working directory; built-in defaults and
    /// environment overrides stay relative to the working directory.
    fn resolve_relative_paths(&mut self, figment: &Figment) {
        let base = |key: &str| {
            let meta = figment.find_metadata(key)?;
            let file = meta.source.as_ref()?.file_path()?;
            Some(file.parent().unwrap_or(Path::new("")).to_path_buf())
        };
        for (key, path) in [
            ("policy_dir", &mut self.policy_dir),
            ("keyring_dir", &mut self.keyring_dir),
            ("state_dir", &mut self.state_dir),
            ("passphrase_file", &mut self.passphrase_file),
            ("database_password_file", &mut self.database_password_file),
        ] {
            let set = !path.as_os_str().is_empty();
            if let (true, true, Some(dir)) = (set, path.is_relative(), base(key)) {
                *path = dir.join(&*path);
            }
        }
        // Empty means not configured, not the config file's directory.
        let password = &mut self.mailman_api.password_file;
        if let (false, true, Some(dir)) = (
            password.as_os_str().is_empty(),
            password.is_relative(),
            base("mailman_api.password_file"),
        ) {
            *password = dir.join(&*password);
        }
        for (key, socket) in [
            ("inbound_socket", &mut self.inbound_socket),
            ("outbound_socket", &mut self.outbound_socket),
        ] {
            let Some(dir) = base(key) else { continue };
            for prefix in ["unix:", "local:"] {
                if let Some(p) = socket.strip_prefix(prefix) {
                    if Path::new(p).is_relative() {
                        *socket = format!("{prefix}{}", dir.join(p).display());
                    }
                    break;
                }
            }
        }
    }

    /// The uid the daemon runs as, which owns `secret.pgp`: `user`'s, else this process's.
    pub fn daemon_uid(&self) -> Option<u32> {
        use nix::unistd::{Uid, User};
        if self.user.is_empty() {
            return Some(Uid::effective().as_raw());
        }
        let user = match self.user.parse::<u32>() {
            Ok(uid) => return Some(uid),
            Err(_) => User::from_name(&self.user),
        };
        user.ok().flatten().map(|u| u.uid.as_raw())
    }

    /// The database password: `database_password_file`, else the systemd credential
    /// `listcrypt-database-password` in `$CREDENTIALS_DIRECTORY`, else none (peer or
    /// certificate authentication). Read when the store opens, so a rotated file is used on
    /// the next start.
    pub fn database_password(&self) -> Result<Option<String>, ConfigError> {
        let path = if !self.database_password_file.as_os_str().is_empty() {
            self.database_password_file.clone()
        } else {
            match std::env::var_os("CREDENTIALS_DIRECTORY") {
                Some(dir) if !dir.is_empty() => {
                    let p = Path::new(&dir).join(DATABASE_PASSWORD_CREDENTIAL);
                    if !p.exists() {
                        return Ok(None);
                    }
                    p
                }
                _ => return Ok(None),
            }
        };
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Io {
            path: path.display().to_string(),
            source,
        })?;
        // One line, as `echo secret > file` and systemd-creds write it.
        let password = text.strip_suffix('\n').unwrap_or(&text);
        let password = password.strip_suffix('\r').unwrap_or(password);
        Ok(Some(password.to_string()))
    }

    /// `host_name`, else the system's host name (`/proc/sys/kernel/hostname`).
    pub fn host_name(&self) -> String {
        if !self.host_name.is_empty() {
            return self.host_name.clone();
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "localhost".into())
    }

    /// Path of the policy file for `list`.
    pub fn policy_path(&self, list: &str) -> PathBuf {
        self.policy_dir.join(format!("{list}.toml"))
    }
}

/// Parses `database_url` into connection settings: a `postgresql://` (or `postgres://`) URL
/// without a password, with `sslmode` `disable`, `prefer` or `require` if given.
pub fn database_settings(url: &str) -> Result<tokio_postgres::Config, String> {
    if !(url.starts_with("postgresql://") || url.starts_with("postgres://")) {
        return Err(format!(
            "database_url: expected postgresql://USER@HOST/DATABASE, got {:?}",
            url.split(':').next().unwrap_or("")
        ));
    }
    // The error text of the parser could quote the URL, password included: not shown.
    let settings: tokio_postgres::Config = url.parse().map_err(|e: tokio_postgres::Error| {
        let why = std::error::Error::source(&e)
            .map(|s| s.to_string())
            .unwrap_or_else(|| "malformed".into());
        format!("database_url: cannot parse it ({why}); sslmode may be disable, prefer or require")
    })?;
    if settings.get_password().is_some() {
        return Err(format!(
            "database_url: it contains a password; put the password in database_password_file \
             or the systemd credential {DATABASE_PASSWORD_CREDENTIAL} instead"
        ));
    }
    if settings.get_hosts().is_empty() {
        return Err("database_url: no host (for a unix socket: postgresql://USER@%2Frun%2Fpostgresql/DATABASE)".into());
    }
    Ok(settings)
}

/// Turns a `toml` error into a `file:line:column: message` diagnostic.
pub(crate) fn syntax_error(path: &str, text: &str, e: &toml::de::Error) -> ConfigError {
    let (line, column) = match e.span() {
        Some(span) => line_column(text, span.start),
        None => (1, 1),
    };
    ConfigError::Syntax {
        path: path.to_string(),
        line,
        column,
        message: e.message().trim().to_string(),
    }
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_reports_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "log_level = \"info\"\n\nbogus_key = 1\n").unwrap();
        let err = Config::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("c.toml:3:1:"), "{err}");
        assert!(err.contains("bogus_key"), "{err}");
    }

    #[test]
    fn defaults_are_valid_and_documented_sample_parses() {
        Config::load(None).unwrap();
        let contrib = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib");
        let c = Config::load(Some(&contrib.join("listcrypt.toml"))).unwrap();
        // The sample's relative paths are read against its own directory.
        let d = contrib.display();
        let want = Config {
            inbound_socket: format!("unix:{d}/var/run/inbound.sock"),
            outbound_socket: format!("unix:{d}/var/run/outbound.sock"),
            policy_dir: contrib.join("var/lists.d"),
            keyring_dir: contrib.join("keyrings"),
            state_dir: contrib.join("var/state"),
            ..Config::default()
        };
        assert_eq!(c, want, "the sample file must state the built-in defaults");
    }

    #[test]
    fn inbound_envelope_sender_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        let load = |value: &str| {
            std::fs::write(&path, format!("inbound_envelope_sender = \"{value}\"\n")).unwrap();
            Config::load(Some(&path)).map(|c| c.inbound_envelope_sender)
        };
        assert_eq!(
            Config::default().inbound_envelope_sender,
            InboundEnvelopeSender::Keep
        );
        assert_eq!(load("keep").unwrap(), InboundEnvelopeSender::Keep);
        assert_eq!(
            load("list-bounces").unwrap(),
            InboundEnvelopeSender::ListBounces
        );
        assert!(load("list_bounces").is_err());
    }

    #[test]
    fn metrics_listen_is_off_or_loopback() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        let load = |value: &str| {
            std::fs::write(&path, format!("metrics_listen = \"{value}\"\n")).unwrap();
            Config::load(Some(&path)).map_err(|e| e.to_string())
        };
        assert_eq!(Config::default().metrics_listen, "");
        load("127.0.0.1:9100").unwrap();
        load("[::1]:9100").unwrap();
        let err = load("0.0.0.0:9100").unwrap_err();
        assert!(
            err.contains("metrics_listen") && err.contains("loopback"),
            "{err}"
        );
        let err = load("192.0.2.1:9100").unwrap_err();
        assert!(err.contains("loopback"), "{err}");
        assert!(load("localhost:9100").is_err(), "an IP address, not a name");
    }

    #[test]
    fn api_listen_is_off_or_loopback_unless_remote_is_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        let load = |text: &str| {
            std::fs::write(&path, text).unwrap();
            Config::load(Some(&path)).map_err(|e| e.to_string())
        };
        assert_eq!(Config::default().api_listen, "");
        assert!(!Config::default().api_allow_remote);
        load("api_listen = \"127.0.0.1:8025\"\n").unwrap();
        load("api_listen = \"[::1]:8025\"\n").unwrap();
        let err = load("api_listen = \"0.0.0.0:8025\"\n").unwrap_err();
        assert!(
            err.contains("api_listen") && err.contains("loopback"),
            "{err}"
        );
        load("api_listen = \"192.0.2.1:8025\"\napi_allow_remote = true\n").unwrap();
        assert!(load("api_listen = \"localhost:8025\"\n").is_err());
    }

    #[test]
    fn relative_paths_follow_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "policy_dir = \"lists.d\"\nstate_dir = \"/abs/state\"\n\
             inbound_socket = \"unix:run/in.sock\"\noutbound_socket = \"inet:127.0.0.1:9\"\n",
        )
        .unwrap();
        let c = Config::load(Some(&path)).unwrap();
        assert_eq!(c.policy_dir, dir.path().join("lists.d"));
        assert_eq!(c.state_dir, Path::new("/abs/state"));
        assert_eq!(
            c.inbound_socket,
            format!("unix:{}/run/in.sock", dir.path().display())
        );
        assert_eq!(c.outbound_socket, "inet:127.0.0.1:9");
        // Not written in the file: relative to the working directory, as without a file.
        assert_eq!(c.keyring_dir, Path::new("keyrings"));
    }

    #[test]
    fn secure_defaults() {
        let c = Config::default();
        assert_eq!(c.unmanaged_outbound, Unmanaged::Reject);
        assert_eq!(c.list_domain_other_recipients, OtherRecipients::Reject);
    }

    /// Armour alone (RFC 4880 §6.3: 4 characters per 3 octets, a line break every 64) makes a
    /// copy of N octets at least 4/3·N·66/64 long; an accepted post must still fit the copy.
    #[test]
    fn inbound_plaintext_leaves_room_for_the_outbound_copy() {
        let armoured = |n: u64| n * 4 / 3 * 66 / 64;
        let l = Limits::default();
        assert!(l.misfits().is_empty(), "{:?}", l.misfits());
        let post = l.inbound_plaintext_bytes() + MAILMAN_HEADROOM_BYTES;
        assert!(post <= l.outbound_message_bytes());
        assert!(armoured(l.outbound_message_bytes()) < l.max_outbound_copy_bytes);
        // 50 MiB of plaintext (the old default) could never be sent out again.
        let old = Limits {
            max_plaintext_bytes: 50 * MIB,
            ..Limits::default()
        };
        assert!(armoured(old.max_plaintext_bytes) > old.max_outbound_copy_bytes);
        assert!(old.inbound_plaintext_bytes() < 25 * MIB);
        let w = old.misfits();
        assert!(
            w.len() == 1 && w[0].contains("max_plaintext_bytes"),
            "{w:?}"
        );
    }

    #[test]
    fn a_small_copy_limit_bounds_both_listeners() {
        let l = Limits {
            max_outbound_copy_bytes: 11 * MIB,
            ..Limits::default()
        };
        // (11 - 1) MiB / 1.54 is below the 25 MiB max_message_bytes.
        assert!(l.outbound_message_bytes() < 7 * MIB);
        assert!(l.inbound_plaintext_bytes() < l.outbound_message_bytes());
        let w = l.misfits();
        assert!(
            w.iter().any(|w| w.contains("max_outbound_copy_bytes")),
            "{w:?}"
        );
        let tight = Limits {
            max_inflight_bytes: MIB,
            ..Limits::default()
        };
        assert!(tight.misfits()[0].contains("max_inflight_bytes"));
    }

    #[test]
    fn database_url_without_a_password_and_with_a_known_sslmode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        let load = |url: &str| {
            std::fs::write(&path, format!("database_url = \"{url}\"\n")).unwrap();
            Config::load(Some(&path)).map_err(|e| e.to_string())
        };
        assert_eq!(
            Config::default().database_url,
            "",
            "SQLite unless configured"
        );
        load("postgresql://listcrypt@db.example.org/listcrypt?sslmode=require").unwrap();
        load("postgres://listcrypt@%2Frun%2Fpostgresql/listcrypt").unwrap();
        for mode in ["disable", "prefer"] {
            load(&format!("postgresql://l@db/l?sslmode={mode}")).unwrap();
        }
        let err = load("postgresql://listcrypt:hunter2@db.example.org/listcrypt").unwrap_err();
        assert!(
            err.contains("database_url") && err.contains("database_password_file"),
            "{err}"
        );
        assert!(
            !err.contains("hunter2"),
            "the password is not repeated: {err}"
        );
        let err = load("postgresql://l@db/l?sslmode=sometimes").unwrap_err();
        assert!(err.contains("sslmode"), "{err}");
        let err = load("mysql://l@db/l").unwrap_err();
        assert!(err.contains("postgresql://"), "{err}");
    }

    #[test]
    fn database_password_from_its_file_else_the_systemd_credential() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret\n").unwrap();
        let c = Config {
            database_password_file: file,
            ..Config::default()
        };
        assert_eq!(c.database_password().unwrap().as_deref(), Some("s3cret"));
        // Only this test sets CREDENTIALS_DIRECTORY in this process.
        let creds = dir.path().join("creds");
        std::fs::create_dir(&creds).unwrap();
        std::env::set_var("CREDENTIALS_DIRECTORY", &creds);
        assert_eq!(Config::default().database_password().unwrap(), None);
        std::fs::write(creds.join(DATABASE_PASSWORD_CREDENTIAL), "from-systemd").unwrap();
        let got = Config::default().database_password();
        std::env::remove_var("CREDENTIALS_DIRECTORY");
        assert_eq!(got.unwrap().as_deref(), Some("from-systemd"));
    }

    #[test]
    fn bad_socket_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "inbound_socket = \"tcp:1\"\n").unwrap();
        let err = Config::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("inbound_socket"), "{err}");
    }
}
