//! A milter that does nothing, for contrib/bench/accept-rate.sh's baseline: the same library
//! (indymilter) and the same stages as listcrypt's inbound listener (Postfix sends it the
//! envelope, every header field and the body), every answer `Continue`, no message held.
//!
//! Usage: `noop_milter /path/to/socket` (a unix socket, mode 0666, removed and made anew);
//! it stops on SIGTERM or SIGINT.

use indymilter::{Callbacks, Status};
use std::os::unix::fs::PermissionsExt;

fn main() {
    let path = std::env::args().nth(1).expect("usage: noop_milter SOCKET");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path).expect("bind");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        // Registering each stage is what makes Postfix send it, as it does to listcrypt.
        let callbacks = Callbacks::<()>::new()
            .on_mail(|_, _| Box::pin(async { Status::Continue }))
            .on_rcpt(|_, _| Box::pin(async { Status::Continue }))
            .on_data(|_| Box::pin(async { Status::Continue }))
            .on_header(|_, _, _| Box::pin(async { Status::Continue }))
            .on_eoh(|_| Box::pin(async { Status::Continue }))
            .on_body(|_, _| Box::pin(async { Status::Continue }))
            .on_eom(|_| Box::pin(async { Status::Continue }));
        let stop = async {
            use tokio::signal::unix::{signal, SignalKind};
            let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
            let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        };
        indymilter::run(listener, callbacks, Default::default(), stop)
            .await
            .expect("milter");
        let _ = std::fs::remove_file(&path);
    });
}
