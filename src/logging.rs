//! Logs to journald when it is there, else stderr. Never bodies, keys or passphrases.

use crate::config::LogTarget;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

pub fn init(target: LogTarget, level: &str) {
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let journald = match target {
        LogTarget::Stderr => false,
        LogTarget::Journald => true,
        LogTarget::Auto => std::path::Path::new("/run/systemd/journal/socket").exists(),
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
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .try_init();
}
