//! A milter that does nothing, for contrib/bench/accept-rate.sh's baseline: the same library
//! (indymilter) and the same stages as listcrypt's inbound listener (Postfix sends it the
//! envelope, every header field and the body), every answer `Continue`, no message held.
//!
//! With `--rewrite` it also makes the edits listcrypt's inbound end of message makes to an
//! encrypted post, without any OpenPGP: it deletes `Content-Type` and `MIME-Version`, adds
//! both anew, and replaces the body with its first three quarters (about the size of the
//! plaintext that base64-armored ciphertext decrypts to). The difference between it and the
//! plain no-op milter is what any milter that rewrites posts this way costs Postfix and the
//! protocol; the difference between it and listcrypt is listcrypt's own work.
//!
//! Usage: `noop_milter /path/to/socket [--rewrite]` (a unix socket, mode 0666, removed and
//! made anew); it stops on SIGTERM or SIGINT.

use indymilter::{Callbacks, ContextActions, Status};
use std::ffi::CString;
use std::os::unix::fs::PermissionsExt;

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("usage: noop_milter SOCKET [--rewrite]");
    let rewrite = match args.next().as_deref() {
        None => false,
        Some("--rewrite") => true,
        Some(other) => panic!("unknown argument {other:?}; usage: noop_milter SOCKET [--rewrite]"),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path).expect("bind");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        let stop = async {
            use tokio::signal::unix::{signal, SignalKind};
            let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
            let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        };
        let config = indymilter::Config {
            actions: if rewrite {
                indymilter::Actions::ADD_HEADER
                    | indymilter::Actions::CHANGE_HEADER
                    | indymilter::Actions::REPLACE_BODY
            } else {
                indymilter::Actions::empty()
            },
            ..Default::default()
        };
        indymilter::run(listener, callbacks(rewrite), config, stop)
            .await
            .expect("milter");
        let _ = std::fs::remove_file(&path);
    });
}

/// Every stage registered, which is what makes Postfix send it, as it does to listcrypt; the
/// body is kept only with `--rewrite`.
fn callbacks(rewrite: bool) -> Callbacks<Vec<u8>> {
    Callbacks::<Vec<u8>>::new()
        .on_mail(|cx, _| {
            Box::pin(async move {
                cx.data = Some(Vec::new());
                Status::Continue
            })
        })
        .on_rcpt(|_, _| Box::pin(async { Status::Continue }))
        .on_data(|_| Box::pin(async { Status::Continue }))
        .on_header(|_, _, _| Box::pin(async { Status::Continue }))
        .on_eoh(|_| Box::pin(async { Status::Continue }))
        .on_body(move |cx, chunk| {
            Box::pin(async move {
                if let (true, Some(body)) = (rewrite, cx.data.as_mut()) {
                    body.extend_from_slice(&chunk);
                }
                Status::Continue
            })
        })
        .on_eom(move |cx| {
            Box::pin(async move {
                if !rewrite {
                    return Status::Continue;
                }
                let body = cx.data.take().unwrap_or_default();
                match edit(&cx.actions, &body).await {
                    Ok(()) => Status::Continue,
                    Err(_) => Status::Tempfail,
                }
            })
        })
}

async fn edit(
    actions: &indymilter::EomActions,
    body: &[u8],
) -> Result<(), indymilter::ActionError> {
    for name in ["Content-Type", "MIME-Version"] {
        actions.change_header(name, 1, None::<CString>).await?;
    }
    actions.add_header("MIME-Version", "1.0").await?;
    actions
        .add_header(
            "Content-Type",
            "multipart/signed; micalg=pgp-sha512; protocol=\"application/pgp-signature\"; boundary=\"b\"",
        )
        .await?;
    for chunk in body[..body.len() / 4 * 3].chunks(65_535) {
        actions.replace_body(chunk).await?;
    }
    Ok(())
}
