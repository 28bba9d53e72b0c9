//! Logs to journald, syslog or stderr (colour only on a terminal). Never bodies, keys or
//! passphrases.

use crate::config::LogTarget;
use std::io::{IsTerminal, Write};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// The local syslog socket, where syslog(3) writes too.
pub const SYSLOG_SOCKET: &str = "/dev/log";

/// Library errors capture no backtrace unless `RUST_LIB_BACKTRACE` asks for one.
///
/// Sequoia makes an error value for every component it finds without a binding signature
/// while it checks a certificate, several per message, and under `RUST_BACKTRACE` (which
/// admins set for panics) each one unwinds the stack: 5% of the daemon's user CPU on inbound
/// posts, and 1.13x the CPU per post in one A/B run. std reads `RUST_LIB_BACKTRACE` first;
/// panics still follow `RUST_BACKTRACE`. Call it first thing in `main`, before any thread
/// exists.
pub fn library_backtraces_off() {
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
}

pub fn init(target: LogTarget, level: &str) {
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let journald = match target {
        LogTarget::Stderr | LogTarget::Syslog => false,
        LogTarget::Journald => true,
        LogTarget::Auto => Path::new("/run/systemd/journal/socket").exists(),
    };
    if journald {
        if let Ok(layer) = tracing_journald::layer() {
            let _ = tracing_subscriber::registry()
                .with(filter)
                .with(layer.with_syslog_identifier("listcrypt".into()))
                .try_init();
            return;
        }
    }
    if target == LogTarget::Syslog {
        let _ = syslog_subscriber(Syslog::new(SYSLOG_SOCKET), filter).try_init();
        return;
    }
    // Escape sequences only for a terminal: a file or a pipe gets plain text.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

/// One line per event, without time or level: syslog stamps the time and the level is the
/// datagram's severity.
pub fn syslog_subscriber(sink: Syslog, filter: EnvFilter) -> impl tracing::Subscriber + Send {
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(false)
        .without_time()
        .with_level(false)
        .with_writer(sink)
        .finish()
}

/// RFC 3164 datagrams to a local syslog socket, facility mail, tagged `listcrypt[PID]`.
pub struct Syslog {
    path: PathBuf,
    socket: Option<UnixDatagram>,
    pid: u32,
}

/// Facility `mail` (RFC 3164 section 4.1.1, LOG_MAIL in syslog.h).
const FACILITY_MAIL: u8 = 2;

impl Syslog {
    pub fn new(path: impl Into<PathBuf>) -> Syslog {
        Syslog {
            path: path.into(),
            socket: UnixDatagram::unbound().ok(),
            pid: std::process::id(),
        }
    }

    /// The datagram of one message: `<PRI>Mmm dd hh:mm:ss listcrypt[PID]: message`.
    fn datagram(&self, severity: u8, message: &[u8]) -> Vec<u8> {
        let pri = FACILITY_MAIL * 8 + severity;
        let stamp = chrono::Local::now().format("%b %e %H:%M:%S");
        let mut out = format!("<{pri}>{stamp} listcrypt[{}]: ", self.pid).into_bytes();
        out.extend_from_slice(message.trim_ascii_end());
        out
    }

    /// A line syslog cannot take (no daemon, message too long) goes to stderr, never nowhere.
    fn send(&self, severity: u8, message: &[u8]) {
        let datagram = self.datagram(severity, message);
        let sent = self
            .socket
            .as_ref()
            .is_some_and(|s| s.send_to(&datagram, &self.path).is_ok());
        if !sent {
            let _ = std::io::stderr().write_all(message);
        }
    }
}

impl Syslog {
    fn datagram_writer(&self, level: &Level) -> Datagram<'_> {
        Datagram {
            sink: self,
            severity: severity(level),
            buf: Vec::new(),
        }
    }
}

/// Severity of a tracing level (RFC 3164 section 4.1.1).
fn severity(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// One event's text, sent as one datagram when the formatter is done with it.
pub struct Datagram<'a> {
    sink: &'a Syslog,
    severity: u8,
    buf: Vec<u8>,
}

impl Write for Datagram<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Datagram<'_> {
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            self.sink.send(self.severity, &self.buf);
        }
    }
}

impl<'a> MakeWriter<'a> for Syslog {
    type Writer = Datagram<'a>;

    fn make_writer(&'a self) -> Datagram<'a> {
        self.datagram_writer(&Level::INFO)
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Datagram<'a> {
        self.datagram_writer(meta.level())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn receive(socket: &UnixDatagram) -> String {
        let mut buf = [0u8; 2048];
        let n = socket.recv(&mut buf).expect("a datagram");
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    /// `<PRI>` then `Mmm dd hh:mm:ss ` (RFC 3164 section 4.1.2: day space-padded) then the tag.
    fn assert_header(datagram: &str, pri: &str, message: &str) {
        let rest = datagram
            .strip_prefix(pri)
            .unwrap_or_else(|| panic!("{datagram}"));
        let (stamp, tail) = rest.split_at(16);
        let months = "JanFebMarAprMayJunJulAugSepOctNovDec";
        assert!(
            months.contains(&stamp[..3]) && stamp.as_bytes()[3] == b' ',
            "{datagram}"
        );
        let day = stamp[4..6].trim_start().parse::<u32>().unwrap();
        assert!((1..=31).contains(&day), "{datagram}");
        assert_eq!(&stamp[6..7], " ");
        let time: Vec<u32> = stamp[7..15]
            .split(':')
            .map(|p| p.parse().unwrap())
            .collect();
        assert!(time.len() == 3 && time[0] < 24 && time[1] < 60 && time[2] < 61);
        assert_eq!(&stamp[15..], " ");
        let tag = format!("listcrypt[{}]: {message}", std::process::id());
        assert_eq!(tail, tag);
    }

    #[test]
    fn syslog_datagrams_carry_facility_mail_and_the_level() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let subscriber = syslog_subscriber(Syslog::new(&path), EnvFilter::new("debug"));
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("NOQUEUE: inbound: recipient x@y refused");
            tracing::error!("4F2A1C0D12: inbound: failed");
            tracing::warn!("w");
            tracing::debug!("d");
        });
        // PRI = facility * 8 + severity: mail (2) with info (6), error (3), warning (4),
        // debug (7).
        assert_header(
            &receive(&socket),
            "<22>",
            "NOQUEUE: inbound: recipient x@y refused",
        );
        assert_header(&receive(&socket), "<19>", "4F2A1C0D12: inbound: failed");
        assert_header(&receive(&socket), "<20>", "w");
        assert_header(&receive(&socket), "<23>", "d");
    }
}
