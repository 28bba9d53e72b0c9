//! argv, socket bind, signals and exit codes — nothing else.

// clippy.toml sets the threshold at 80 lines; a longer function says why beside it.
#![deny(clippy::too_many_lines)]

use clap::{Args, Parser, Subcommand};
use listcrypt::admin::{self, exit, CommandError};
use listcrypt::config::{Config, SocketSpec, Source};
use listcrypt::keys::{RecipientKeyId, RotateMode};
use listcrypt::store::Role;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "listcrypt",
    version,
    about = "OpenPGP-encrypted mailing lists for Mailman 3, as a milter"
)]
struct Cli {
    /// Configuration file (else $LISTCRYPT_CONFIG, else /etc/listcrypt/listcrypt.toml, else built-in defaults)
    #[arg(short = 'c', long = "config", global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the milter daemon (inbound and outbound listeners).
    ///
    /// Example: listcrypt -c /etc/listcrypt/listcrypt.toml serve
    Serve,
    /// Validate the configuration, every policy file, every key and binding.
    ///
    /// Example: listcrypt check-config
    CheckConfig,
    /// Create lists and export their keys.
    #[command(subcommand)]
    List(ListCommand),
    /// Bind, unbind and list members' certificates.
    #[command(subcommand)]
    Member(MemberCommand),
    /// Mail members whose key expires within --days (encrypted, at most weekly) and tell
    /// owners about members without a usable key (at most daily). Run it daily from cron.
    ///
    /// Example: listcrypt notify-expiry --days 14
    NotifyExpiry {
        #[arg(long, default_value_t = 14)]
        days: u32,
    },
    /// Check the Postfix (or Sendmail), Mailman and listcrypt wiring: one line per check
    /// (`ok CHECK`, `warn CHECK: WHY — FIX`, `FAIL CHECK: WHY — FIX`); exit 1 on a FAIL. Run it
    /// as root or as a member of group list (mailman.cfg is readable only by them).
    ///
    /// Example: listcrypt doctor --postfix-config /etc/postfix --mailman-config /etc/mailman3/mailman.cfg
    Doctor(DoctorArgs),
    /// Dry-run a pipeline on a message read from standard input.
    #[command(subcommand)]
    Process(ProcessCommand),
    /// Admin API tokens: create (shown once), list, revoke.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Publish the list keys as a Web Key Directory.
    #[command(subcommand)]
    Wkd(WkdCommand),
    /// Convert member certificates between the certificate store (the database with
    /// database_url, else keyring_dir/certs) and a pgp.cert.d directory.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Copy list keys (as they are: protected keys stay protected), member certificates,
    /// policy files and a consistent snapshot of the state into DIR (new or empty, made 0700),
    /// with a manifest of SHA-256 digests. Safe while the daemon runs.
    ///
    /// Example: listcrypt backup listcrypt-backup-2026-12-06
    Backup { dir: PathBuf },
    /// The encrypted list archive (policy key `archive`).
    #[command(subcommand)]
    Archive(ArchiveCommand),
    /// Verify the backup in DIR against its manifest, then restore it; refuses a target that
    /// already holds lists, keys or state unless --force (which makes the target the backup:
    /// lists made since are removed), and a backup from a newer schema. Stop the daemon first.
    ///
    /// Example: listcrypt restore --force listcrypt-backup-2026-12-06
    Restore {
        dir: PathBuf,
        /// Replace the lists, keys, certificates and state already there
        #[arg(long)]
        force: bool,
    },
}

// --- encrypted archive (issue 15 item 5) ---
#[derive(Subcommand)]
enum ArchiveCommand {
    /// Read an encrypted archive mbox (<state_dir>/archive/LIST.mbox, or the archive
    /// address's mailbox) on standard input and write the posts, decrypted with the archive
    /// secret key, as a plain mbox on standard output, each post once (for hyperkitty_import).
    ///
    /// Example: listcrypt archive decrypt --key archive-secret.asc < enc@lists.example.org.mbox > enc.mbox
    Decrypt {
        /// The archive's secret key (armored or binary)
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// Read the key's passphrase from the first line of FILE (else it is asked on the terminal)
        #[arg(long, value_name = "FILE")]
        passphrase_file: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ArchiveKeyCommand {
    /// Import the list's archive key: a public certificate whose secret key stays off the
    /// list host; every post is archived encrypted to it.
    ///
    /// Example: listcrypt list archive-key import enc@lists.example.org archive.asc
    Import { list: String, file: PathBuf },
    /// Print the list's archive certificate, armored.
    ///
    /// Example: listcrypt list archive-key show enc@lists.example.org
    Show { list: String },
    /// Remove the list's archive key (posts of a list that still archives then wait).
    ///
    /// Example: listcrypt list archive-key remove enc@lists.example.org
    Remove { list: String },
}
// --- end encrypted archive ---

#[derive(Subcommand)]
enum TokenCommand {
    /// Make an admin API token and print it; only its digest is stored, so it is shown once.
    /// A list token acts on one list within its scopes (read, members, keys, policy; each
    /// includes reading the list); a site-admin token acts on every list and may loosen
    /// policies.
    ///
    /// Example: listcrypt token create --list enc@lists.example.org --scope members --scope read --expires 90
    Create {
        /// A token for every list, with every scope
        #[arg(long, conflicts_with_all = ["list", "scope"], required_unless_present = "list")]
        site_admin: bool,
        /// The list the token acts on
        #[arg(long, requires = "scope")]
        list: Option<String>,
        /// read, members, keys or policy (repeat for several)
        #[arg(long, value_parser = ["read", "members", "keys", "policy"])]
        scope: Vec<String>,
        /// Days until the token expires (default: never)
        #[arg(long, value_name = "DAYS")]
        expires: Option<u32>,
    },
    /// One line per token: ID, whom it is for, expiry, revocation.
    ///
    /// Example: listcrypt token list
    List,
    /// Revoke a token by its id (the part after `lct_`, before the second `_`).
    ///
    /// Example: listcrypt token revoke 3q2e7xkq5mzfhg4a
    Revoke { id: String },
}

#[derive(Subcommand)]
enum WkdCommand {
    /// Write every list's public key and the policy files, advanced and direct layout, one
    /// document root per host name under DIR (DIR/openpgpkey.DOMAIN/, DIR/DOMAIN/).
    ///
    /// Example: listcrypt wkd export wkd-root
    Export { dir: PathBuf },
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Write every member certificate into the pgp.cert.d directory DIR (merged with what it
    /// holds), for `sq --cert-store DIR`.
    ///
    /// Example: listcrypt certs export certs-export
    Export { dir: PathBuf },
    /// Read every certificate of the pgp.cert.d directory DIR into the certificate store
    /// (merged with what it holds); moving a site to PostgreSQL: import keyring_dir/certs.
    ///
    /// Example: listcrypt certs import certs-export
    Import { dir: PathBuf },
}

#[derive(Subcommand)]
enum ListCommand {
    /// Create the list key (v4, Cv25519) and a policy file with the defaults.
    ///
    /// Example: listcrypt list create enc@lists.example.org
    Create { address: String },
    /// Encrypt the list key at rest with a passphrase (RFC 9580 S2K), or change it. The new
    /// passphrase comes from --new-passphrase-file, else the configured one (passphrase_file or
    /// the systemd credential listcrypt-passphrase) for a key not yet protected, else it is
    /// asked on the terminal; a protected key's current passphrase likewise. The daemon opens
    /// the key with the configured passphrase: change that too, then restart it.
    ///
    /// Example: listcrypt list protect enc@lists.example.org --new-passphrase-file passphrase.txt
    Protect {
        address: String,
        /// Read the new passphrase from the first line of FILE
        #[arg(long, value_name = "FILE")]
        new_passphrase_file: Option<PathBuf>,
    },
    /// Copy the list key from keyring_dir into the database (database_url): moving a site to
    /// PostgreSQL. Only a passphrase-protected key is uploaded (list protect first).
    ///
    /// Example: listcrypt list upload enc@lists.example.org
    Upload { address: String },
    /// Store the list key without a passphrase again (not in a database).
    ///
    /// Example: listcrypt list unprotect enc@lists.example.org
    Unprotect { address: String },
    /// Print the list's public key, armored.
    ///
    /// Example: listcrypt list export-key enc@lists.example.org > enc.asc
    ExportKey { address: String },
    /// The list's archive key (import, show, remove).
    #[command(subcommand)]
    ArchiveKey(ArchiveKeyCommand),
    /// Add a new encryption subkey; current ones expire after the grace period (their
    /// secrets are kept until then, so mail already encrypted to them still decrypts);
    /// secrets of subkeys whose grace period ended are destroyed. Run it with --prune-only
    /// daily (listcrypt-prune-subkeys.timer, --all) to destroy retired secrets without rotating.
    ///
    /// Example: listcrypt list rotate-subkey enc@lists.example.org --grace-days 30
    RotateSubkey {
        #[arg(required_unless_present = "all")]
        address: Option<String>,
        /// Days the retiring encryption subkeys stay valid
        #[arg(long, default_value_t = 30)]
        grace_days: u32,
        /// Only destroy the secrets of retired subkeys whose grace period ended (daily cron)
        #[arg(long)]
        prune_only: bool,
        /// With --prune-only: every list in policy_dir (the daily timer)
        #[arg(long, requires = "prune_only", conflicts_with = "address")]
        all: bool,
    },
}

#[derive(Subcommand)]
enum MemberCommand {
    /// Bind ADDRESS on LIST to the certificate in CERTFILE (armored or binary).
    ///
    /// Example: listcrypt member add enc@lists.example.org alice@example.org alice.asc
    Add {
        list: String,
        address: String,
        certfile: PathBuf,
        /// member or owner (owners get Mailman's notices, encrypted)
        #[arg(long, default_value = "member", value_parser = ["member", "owner"])]
        role: String,
        /// Give this member copies with their key id visible (clients that cannot try their keys on hidden recipients)
        #[arg(long)]
        show_key_id: bool,
    },
    /// Remove ADDRESS's binding from LIST.
    ///
    /// Example: listcrypt member remove enc@lists.example.org alice@example.org
    Remove { list: String, address: String },
    /// One line per binding: ADDRESS FINGERPRINT ROLE STATE EXPIRES.
    ///
    /// Example: listcrypt member list enc@lists.example.org
    List { list: String },
}

#[derive(Subcommand)]
enum ProcessCommand {
    /// Run the inbound pipeline; print what Mailman would receive, or the decision.
    ///
    /// Example: listcrypt process inbound --list enc@lists.example.org --from alice@example.org < post.eml
    Inbound(InboundArgs),
    /// Run the outbound pipeline; write DIR/batch-N.eml and DIR/batch-N.rcpt.
    ///
    /// Example: listcrypt process outbound --list enc@lists.example.org --from enc-bounces@lists.example.org --rcpt alice@example.org --out out/ < post.eml
    Outbound(OutboundArgs),
}

#[derive(Args)]
struct DoctorArgs {
    /// Postfix configuration directory (`postconf -c DIR`); default: Postfix's own
    #[arg(long, value_name = "DIR")]
    postfix_config: Option<PathBuf>,
    /// Check Sendmail instead of Postfix: its generated configuration, usually
    /// /etc/mail/sendmail.cf (used by default when there is no postconf)
    #[arg(long, value_name = "FILE", conflicts_with = "postfix_config")]
    sendmail_cf: Option<PathBuf>,
    /// Mailman's configuration file
    #[arg(long, value_name = "FILE", default_value = "/etc/mailman3/mailman.cfg")]
    mailman_config: PathBuf,
}

impl DoctorArgs {
    fn options(self) -> admin::doctor::DoctorOptions {
        admin::doctor::DoctorOptions {
            postfix_config: self.postfix_config,
            sendmail_cf: self.sendmail_cf,
            mailman_config: self.mailman_config,
        }
    }
}

#[derive(Args)]
struct InboundArgs {
    #[arg(long)]
    list: String,
    #[arg(long)]
    from: String,
    #[arg(long)]
    rcpt: Vec<String>,
}

#[derive(Args)]
struct OutboundArgs {
    #[arg(long)]
    list: String,
    #[arg(long)]
    from: String,
    #[arg(long, required = true)]
    rcpt: Vec<String>,
    #[arg(long)]
    out: PathBuf,
}

fn main() -> ExitCode {
    // Before any thread exists (it sets an environment variable).
    listcrypt::logging::library_backtraces_off();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help, --version
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let text = e.render().to_string();
            let text = text.trim_start_matches("error: ");
            eprintln!("listcrypt: usage: {}", text.trim_end());
            return ExitCode::from(exit::USAGE);
        }
    };
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("listcrypt: {}: {}", e.what, e.why);
            ExitCode::from(e.code)
        }
    }
}

fn run(cli: Cli) -> Result<u8, CommandError> {
    let (config, source) = Config::locate(cli.config.as_deref())?;
    // Files the CLI writes as root keep the daemon's ownership; serve drops after binding;
    // doctor only reads, and needs root (or group list) for mailman.cfg.
    if !matches!(cli.command, Command::Serve | Command::Doctor(_)) {
        privileges::drop(&config)?;
    }
    let mut out = std::io::stdout().lock();
    match cli.command {
        Command::Serve => {
            drop(out);
            serve(config, source, cli.config)
        }
        Command::NotifyExpiry { days } => admin::notify_expiry(&config, days, &mut out),
        Command::Doctor(a) => admin::doctor::doctor(&config, &a.options(), &mut out),
        Command::CheckConfig => admin::check_config(&config, &mut out).map(|_| exit::OK),
        Command::List(command) => run_list(&config, command, &mut out),
        Command::Member(MemberCommand::Add {
            list,
            address,
            certfile,
            role,
            show_key_id,
        }) => admin::member_add(
            &config,
            &list,
            &address,
            &certfile,
            if role == "owner" {
                Role::Owner
            } else {
                Role::Member
            },
            if show_key_id {
                RecipientKeyId::Shown
            } else {
                RecipientKeyId::Hidden
            },
            &mut out,
        )
        .map(|_| exit::OK),
        Command::Member(MemberCommand::Remove { list, address }) => {
            admin::member_remove(&config, &list, &address, &mut out).map(|_| exit::OK)
        }
        Command::Member(MemberCommand::List { list }) => {
            admin::member_list(&config, &list, &mut out).map(|_| exit::OK)
        }
        Command::Token(command) => run_token(&config, command, &mut out),
        Command::Wkd(WkdCommand::Export { dir }) => {
            listcrypt::wkd::export_command(&config, &dir, &mut out)
                .map(|_| exit::OK)
                .map_err(CommandError::from)
        }
        Command::Certs(CertsCommand::Export { dir }) => {
            admin::certs_export(&config, &dir, &mut out).map(|_| exit::OK)
        }
        Command::Certs(CertsCommand::Import { dir }) => {
            admin::certs_import(&config, &dir, &mut out).map(|_| exit::OK)
        }
        Command::Archive(ArchiveCommand::Decrypt {
            key,
            passphrase_file,
        }) => admin::archive::decrypt(
            &key,
            passphrase_file.as_deref(),
            std::io::stdin().lock(),
            std::io::BufWriter::new(&mut out),
            &mut std::io::stderr(),
        )
        .map(|_| exit::OK),
        Command::Backup { dir } => admin::backup::backup(&config, &dir, &mut out).map(|_| exit::OK),
        Command::Restore { dir, force } => {
            admin::backup::restore(&config, &dir, force, &mut out).map(|_| exit::OK)
        }
        Command::Process(ProcessCommand::Inbound(a)) => {
            listcrypt::logging::init(listcrypt::config::LogTarget::Stderr, &quiet_level());
            admin::process_inbound(&config, &a.list, &a.from, &a.rcpt, &mut out)
        }
        Command::Process(ProcessCommand::Outbound(a)) => {
            listcrypt::logging::init(listcrypt::config::LogTarget::Stderr, &quiet_level());
            admin::process_outbound(&config, &a.list, &a.from, &a.rcpt, &a.out, &mut out)
        }
    }
}

/// The `token` verbs.
fn run_token(
    config: &Config,
    command: TokenCommand,
    out: &mut dyn std::io::Write,
) -> Result<u8, CommandError> {
    use admin::token::{self, TokenFor};
    match command {
        TokenCommand::Create {
            site_admin,
            list,
            scope,
            expires,
        } => {
            let who = match (site_admin, list) {
                (true, _) => TokenFor::SiteAdmin,
                (false, Some(list)) => TokenFor::List {
                    list,
                    scopes: scope,
                },
                (false, None) => {
                    return Err(CommandError::new(
                        exit::USAGE,
                        "token create",
                        "--site-admin or --list is required",
                    ))
                }
            };
            token::create(config, who, expires, out).map(|_| exit::OK)
        }
        TokenCommand::List => token::list(config, out).map(|_| exit::OK),
        TokenCommand::Revoke { id } => token::revoke(config, &id, out).map(|_| exit::OK),
    }
}

/// The `list` verbs.
fn run_list(
    config: &Config,
    command: ListCommand,
    out: &mut dyn std::io::Write,
) -> Result<u8, CommandError> {
    match command {
        ListCommand::Create { address } => {
            admin::list_create(config, &address, out).map(|_| exit::OK)
        }
        ListCommand::Upload { address } => {
            admin::list_upload(config, &address, out).map(|_| exit::OK)
        }
        ListCommand::RotateSubkey {
            address,
            grace_days,
            prune_only,
            all,
        } => rotate_subkey(config, address, grace_days, prune_only, all, out),
        ListCommand::Protect {
            address,
            new_passphrase_file,
        } => admin::list_protect(config, &address, new_passphrase_file.as_deref(), out)
            .map(|_| exit::OK),
        ListCommand::Unprotect { address } => {
            admin::list_unprotect(config, &address, out).map(|_| exit::OK)
        }
        ListCommand::ExportKey { address } => {
            admin::list_export_key(config, &address, out).map(|_| exit::OK)
        }
        ListCommand::ArchiveKey(c) => match c {
            ArchiveKeyCommand::Import { list, file } => {
                admin::archive::import_key(config, &list, &file, out)
            }
            ArchiveKeyCommand::Show { list } => admin::archive::show_key(config, &list, out),
            ArchiveKeyCommand::Remove { list } => admin::archive::remove_key(config, &list, out),
        }
        .map(|_| exit::OK),
    }
}

/// Says where the configuration came from; on the built-in defaults the daemon makes its
/// working directories, as it does for the sockets and the state (a configured policy_dir
/// must exist).
fn announce_config(config: &Config, source: &Source) -> Result<(), CommandError> {
    let cwd = std::env::current_dir()
        .map(|d| d.display().to_string())
        .unwrap_or_default();
    match source {
        Source::BuiltIn => tracing::info!(
            "no configuration file; using built-in defaults relative to {cwd}: sockets {} and {}, \
             policies in {}, keys in {}, state in {}",
            config.inbound_socket,
            config.outbound_socket,
            config.policy_dir.display(),
            config.keyring_dir.display(),
            config.state_dir.display()
        ),
        Source::File(p) => tracing::info!("configuration from {}", p.display()),
    }
    if matches!(source, Source::BuiltIn) {
        std::fs::create_dir_all(&config.policy_dir).map_err(|e| {
            CommandError::new(exit::CONFIG, config.policy_dir.display().to_string(), e)
        })?;
    }
    Ok(())
}

fn serve(config: Config, source: Source, path: Option<PathBuf>) -> Result<u8, CommandError> {
    listcrypt::logging::init(config.log, &config.log_level);
    announce_config(&config, &source)?;
    let path = match source {
        Source::File(p) => Some(p),
        Source::BuiltIn => path,
    };
    let user = privileges::target(&config)?;
    if user.is_none() && nix::unistd::Uid::effective().is_root() {
        tracing::warn!(
            "running as root while parsing mail from the Internet: set `user` in the configuration"
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CommandError::new(exit::SOFTWARE, "runtime", e))?;
    runtime.block_on(async move {
        let inbound_spec = SocketSpec::parse(&config.inbound_socket).map_err(|e| CommandError::new(exit::CONFIG, "inbound_socket", e))?;
        let outbound_spec = SocketSpec::parse(&config.outbound_socket).map_err(|e| CommandError::new(exit::CONFIG, "outbound_socket", e))?;
        // Bound as whoever started us (root may be needed), then root is given up for good
        // before any key, state or mail is touched.
        let inbound = bind_as_started(&config, &inbound_spec, user.as_ref()).await?;
        let outbound = bind_as_started(&config, &outbound_spec, user.as_ref()).await?;
        if let Some(user) = &user {
            privileges::become_user(user, &config)?;
            tracing::info!("running as user {}", user.name);
        }
        let daemon = Arc::new(listcrypt::Daemon::open(config.clone(), path)?);
        if daemon.lists() == 0 {
            tracing::warn!(
                "no lists in {}: nothing is encrypted until `listcrypt list create` adds one{}",
                config.policy_dir.display(),
                match config.unmanaged_outbound {
                    listcrypt::config::Unmanaged::Reject => "; all outbound mail is refused",
                    listcrypt::config::Unmanaged::Accept => "",
                }
            );
        }
        // Handlers first: a SIGHUP sent once the "serving" line is out must reload, not kill.
        let signals = signals(daemon.clone()).map_err(|e| CommandError::new(exit::SOFTWARE, "signals", e))?;
        let (http, metrics, api) = start_http(&config, &daemon).await?;
        tracing::info!(
            "listcrypt {} serving {} list(s): inbound on {inbound_spec}, outbound on {outbound_spec}",
            env!("CARGO_PKG_VERSION"),
            daemon.lists()
        );
        notify_systemd();
        listcrypt::run(inbound, outbound, daemon, signals)
            .await
            .map_err(|e| CommandError::new(exit::SOFTWARE, "milter", e))?;
        for server in [http, metrics].into_iter().flatten() {
            server.stop().await;
        }
        if let Some(api) = api {
            api.stop().await;
        }
        for spec in [&inbound_spec, &outbound_spec] {
            if let SocketSpec::Unix(p) = spec {
                let _ = std::fs::remove_file(p);
            }
        }
        tracing::info!("listcrypt stopped");
        Ok(exit::OK)
    })
}

/// The HTTP listeners that are configured: WKD, metrics and the admin API.
async fn start_http(
    config: &Config,
    daemon: &Arc<listcrypt::Daemon>,
) -> Result<
    (
        Option<listcrypt::http::Server>,
        Option<listcrypt::http::Server>,
        Option<listcrypt::api::Server>,
    ),
    CommandError,
> {
    let unavailable = |what: &str, listen: &str| {
        let what = format!("bind {what} {listen}");
        move |e| CommandError::new(exit::UNAVAILABLE, what, e)
    };
    let http = match config.http_listen.as_str() {
        "" => None,
        listen => Some(
            listcrypt::http::Server::start(listen, daemon.clone())
                .await
                .map_err(unavailable("http", listen))?,
        ),
    };
    let metrics = match config.metrics_listen.as_str() {
        "" => None,
        listen => Some(
            listcrypt::http::Server::start_metrics(listen, daemon.clone())
                .await
                .map_err(unavailable("metrics", listen))?,
        ),
    };
    let api = match config.api_listen.as_str() {
        "" => None,
        listen => Some(
            listcrypt::api::Server::start(listen, daemon.clone(), listcrypt::web::router)
                .await
                .map_err(unavailable("api", listen))?,
        ),
    };
    Ok((http, metrics, api))
}

/// systemd (Type=notify): READY=1 once the sockets are bound and the lists loaded, then
/// WATCHDOG=1 from the runtime at half the interval, so a wedged runtime gets restarted.
fn notify_systemd() {
    // Without NOTIFY_SOCKET (not under systemd) this sends nothing.
    if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
        tracing::warn!("cannot notify systemd of readiness: {e}");
    }
    let mut usec = 0;
    if sd_notify::watchdog_enabled(false, &mut usec) {
        let period = std::time::Duration::from_micros(usec / 2);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]) {
                    tracing::warn!("cannot ping the systemd watchdog: {e}");
                }
            }
        });
    }
}

/// Binds one milter socket; a unix socket, and a directory created for it, then belong to
/// `user` so the daemon can remove them at exit.
async fn bind_as_started(
    config: &Config,
    spec: &SocketSpec,
    user: Option<&nix::unistd::User>,
) -> Result<listcrypt::AnyListener, CommandError> {
    let mode = u32::from_str_radix(&config.socket_mode, 8).unwrap_or(0o660);
    let group = listcrypt::server::resolve_group(&config.socket_group)
        .map_err(|e| CommandError::new(exit::CONFIG, "socket_group", e))?;
    let dir = match spec {
        SocketSpec::Unix(p) => p
            .parent()
            .filter(|d| !d.as_os_str().is_empty() && !d.exists()),
        _ => None,
    };
    let listener = listcrypt::bind(spec, mode, group)
        .await
        .map_err(|e| CommandError::new(exit::UNAVAILABLE, format!("bind {spec}"), e))?;
    if let (Some(user), SocketSpec::Unix(p)) = (user, spec) {
        // An existing directory (e.g. /run) is left alone: only what we created changes owner.
        for path in dir.into_iter().chain([p.as_path()]) {
            std::os::unix::fs::chown(path, Some(user.uid.as_raw()), None).map_err(|e| {
                CommandError::new(exit::IOERR, format!("chown {}", path.display()), e)
            })?;
        }
    }
    Ok(listener)
}

/// `list rotate-subkey`: one list, or with `--prune-only --all` every list.
fn rotate_subkey(
    config: &Config,
    address: Option<String>,
    grace_days: u32,
    prune_only: bool,
    all: bool,
    out: &mut dyn std::io::Write,
) -> Result<u8, CommandError> {
    let mode = if prune_only {
        RotateMode::PruneOnly
    } else {
        RotateMode::NewSubkey
    };
    match address {
        Some(address) => admin::list_rotate_subkey(config, &address, grace_days, mode, out),
        None if all => admin::list_prune_all(config, out),
        // clap already requires ADDRESS unless --all is given.
        None => Err(CommandError::new(
            exit::USAGE,
            "rotate-subkey",
            "ADDRESS or --all",
        )),
    }
    .map(|_| exit::OK)
}

/// Giving up root for the configured `user`.
mod privileges {
    use listcrypt::admin::{exit, CommandError};
    use listcrypt::config::Config;
    use nix::unistd::{self, AccessFlags, Uid, User};

    /// The configured `user` when running as root and not that user already; `None` when
    /// there is nothing to drop.
    pub fn target(config: &Config) -> Result<Option<User>, CommandError> {
        let name = config.user.as_str();
        if name.is_empty() || !Uid::effective().is_root() {
            return Ok(None);
        }
        let found = match name.parse::<u32>() {
            Ok(uid) => User::from_uid(Uid::from_raw(uid)),
            Err(_) => User::from_name(name),
        };
        let user = found
            .map_err(|e| CommandError::new(exit::CONFIG, "user", e))?
            .ok_or_else(|| CommandError::new(exit::CONFIG, "user", format!("no user {name:?}")))?;
        Ok((!user.uid.is_root()).then_some(user))
    }

    /// Becomes the configured `user` if there is one to become.
    pub fn drop(config: &Config) -> Result<(), CommandError> {
        match target(config)? {
            Some(user) => become_user(&user, config),
            None => Ok(()),
        }
    }

    /// Supplementary groups, group, then user, all from `user`'s entry; afterwards root
    /// cannot be regained. `keyring_dir` and `state_dir` must then be writable.
    pub fn become_user(user: &User, config: &Config) -> Result<(), CommandError> {
        let fail = |what: &str, e: nix::Error| {
            CommandError::new(
                exit::SOFTWARE,
                format!("switch to user {}", user.name),
                format!("{what}: {e}"),
            )
        };
        let name = std::ffi::CString::new(user.name.as_str())
            .map_err(|e| CommandError::new(exit::CONFIG, "user", e))?;
        unistd::initgroups(&name, user.gid).map_err(|e| fail("initgroups", e))?;
        unistd::setgid(user.gid).map_err(|e| fail("setgid", e))?;
        unistd::setuid(user.uid).map_err(|e| fail("setuid", e))?;
        if unistd::setuid(Uid::from_raw(0)).is_ok() || Uid::effective() != user.uid {
            return Err(fail("setuid", nix::Error::EPERM));
        }
        for (key, dir) in [
            ("keyring_dir", &config.keyring_dir),
            ("state_dir", &config.state_dir),
        ] {
            if dir.exists() && unistd::access(dir, AccessFlags::W_OK | AccessFlags::X_OK).is_err() {
                return Err(CommandError::new(
                    exit::CONFIG,
                    format!("{key} {}", dir.display()),
                    format!(
                        "not writable by user {0}: chown -R {0} {1}",
                        user.name,
                        dir.display()
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// A future that completes on SIGTERM or SIGINT; SIGHUP reloads in between.
fn signals(
    daemon: Arc<listcrypt::Daemon>,
) -> std::io::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    Ok(async move {
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => {
                    // Built on the blocking pool; sessions keep the old snapshot meanwhile.
                    let d = daemon.clone();
                    match tokio::task::spawn_blocking(move || d.reload()).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => tracing::error!("reload failed, keeping the running configuration: {e}"),
                        Err(e) => tracing::error!("reload failed, keeping the running configuration: {e}"),
                    }
                }
            }
        }
        tracing::info!("shutting down");
    })
}

/// `process` keeps stderr quiet unless RUST_LOG asks for more.
fn quiet_level() -> String {
    std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into())
}
