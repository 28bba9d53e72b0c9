//! The server: binding the two milter sockets and running both listeners until shutdown.

use crate::config::SocketSpec;
use crate::milter::{self, Side};
use crate::state::Daemon;
use indymilter::EitherListener;
use std::future::Future;
use std::io;
use std::path::Path;
use std::sync::Arc;
use tokio::net::{TcpListener, UnixListener};

pub type AnyListener = EitherListener<TcpListener, UnixListener>;

/// Binds a milter socket. A stale unix socket is removed only if it is a socket.
pub async fn bind(spec: &SocketSpec, mode: u32, group: Option<u32>) -> io::Result<AnyListener> {
    match spec {
        SocketSpec::Unix(path) => {
            remove_stale_socket(path)?;
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            let listener = UnixListener::bind(path)?;
            // Only the MTA may connect: it could otherwise have anything signed by a list key.
            use std::os::unix::fs::PermissionsExt;
            if let Some(gid) = group {
                std::os::unix::fs::chown(path, None, Some(gid))?;
            }
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
            Ok(EitherListener::Unix(listener))
        }
        SocketSpec::Inet(host, port) => {
            let listener = TcpListener::bind((host.as_str(), *port)).await?;
            Ok(EitherListener::Tcp(listener))
        }
    }
}

fn remove_stale_socket(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} exists and is not a socket; not removing it",
                path.display()
            ),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Runs both milters until `shutdown` completes; running end-of-message work finishes first.
pub async fn run(
    inbound: AnyListener,
    outbound: AnyListener,
    daemon: Arc<Daemon>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    // Members' keys are refreshed beside the listeners, never inside a session.
    crate::refresh::start(&daemon);
    let (tx, rx) = tokio::sync::watch::channel(false);
    let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let inbound_task = indymilter::run(
        inbound,
        milter::callbacks(daemon.clone(), Side::Inbound),
        milter::milter_config(Side::Inbound),
        wait(rx.clone()),
    );
    let outbound_task = indymilter::run(
        outbound,
        milter::callbacks(daemon.clone(), Side::Outbound),
        milter::milter_config(Side::Outbound),
        wait(rx),
    );
    let trigger = async move {
        shutdown.await;
        let _ = tx.send(true);
    };
    let (a, b, ()) = tokio::join!(inbound_task, outbound_task, trigger);
    a.and(b)
}

/// The numeric group for `socket_group`: a number, or a name looked up through NSS (so groups
/// from LDAP or systemd's userdb work too).
pub fn resolve_group(name: &str) -> io::Result<Option<u32>> {
    if name.is_empty() {
        return Ok(None);
    }
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(Some(gid));
    }
    match nix::unistd::Group::from_name(name) {
        Ok(Some(group)) => Ok(Some(group.gid.as_raw())),
        Ok(None) => Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no group {name:?}"),
        )),
        Err(errno) => Err(io::Error::from(errno)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};

    #[tokio::test]
    async fn unix_sockets_get_the_mode_and_only_stale_sockets_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/in.sock");
        let spec = SocketSpec::Unix(path.clone());
        let first = bind(&spec, 0o660, None).await.unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o660);
        drop(first);
        // A stale socket from a previous run is replaced.
        bind(&spec, 0o600, None).await.unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // Anything else at that path is left alone and refused.
        let file = dir.path().join("not-a-socket");
        std::fs::write(&file, b"keep me").unwrap();
        let err = bind(&SocketSpec::Unix(file.clone()), 0o660, None)
            .await
            .err()
            .unwrap();
        assert!(err.to_string().contains("not a socket"), "{err}");
        assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    }

    #[test]
    fn groups_by_name_or_number() {
        assert_eq!(resolve_group("").unwrap(), None);
        assert_eq!(resolve_group("0").unwrap(), Some(0));
        assert_eq!(resolve_group("root").unwrap(), Some(0));
        assert!(resolve_group("no-such-group-here").is_err());
    }
}
