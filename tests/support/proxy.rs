//! A TCP proxy on 127.0.0.1 in front of an SMTP listener that can stall connections on
//! demand: pass N more connections through, then hold every further one open without a byte
//! (no greeting), until released; or pass a transaction through and hold the client's QUIT
//! (the server has already queued the message). Used to stop listcrypt at a known point of its
//! reinjections.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

#[derive(Default)]
struct State {
    /// `Some(n)`: pass n more connections, then stall; `None`: pass everything.
    passes_left: Option<usize>,
    held: Vec<TcpStream>,
    stalled: usize,
    forwarded: usize,
    /// Forwarded connections that ended (both directions closed).
    finished: usize,
    /// Hold the QUIT of the next forwarded connections (never forwarded, never answered).
    hold_quit: bool,
    quits_held: usize,
    released: bool,
}

pub struct StallProxy {
    pub port: u16,
    upstream: u16,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl StallProxy {
    /// Listens on a free port and forwards each connection to 127.0.0.1:`upstream`.
    pub fn start(upstream: u16) -> StallProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy: bind");
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, stop) = (state.clone(), stop.clone());
            thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let mut s = state.lock().unwrap();
                    match s.passes_left {
                        Some(0) => {
                            s.stalled += 1;
                            s.held.push(conn);
                            continue;
                        }
                        Some(ref mut n) => *n -= 1,
                        None => {}
                    }
                    s.forwarded += 1;
                    let hold_quit = s.hold_quit;
                    drop(s);
                    let state = state.clone();
                    thread::spawn(move || {
                        forward(conn, upstream, hold_quit.then_some(&state));
                        state.lock().unwrap().finished += 1;
                    });
                }
            })
        };
        StallProxy {
            port,
            upstream,
            state,
            stop,
            thread: Some(thread),
        }
    }

    /// From now on: pass `n` more connections through, then stall every further one.
    pub fn stall_after(&self, n: usize) {
        self.state.lock().unwrap().passes_left = Some(n);
    }

    /// From now on: forward each connection's transaction, but hold its QUIT (neither
    /// forwarded nor answered) until `release`.
    pub fn hold_quit(&self) {
        let mut s = self.state.lock().unwrap();
        s.hold_quit = true;
        s.released = false;
    }

    /// QUIT commands held so far.
    pub fn quits_held(&self) -> usize {
        self.state.lock().unwrap().quits_held
    }

    /// Closes the stalled connections and held QUITs and passes everything from now on.
    pub fn release(&self) {
        let mut s = self.state.lock().unwrap();
        s.passes_left = None;
        s.hold_quit = false;
        s.released = true;
        for conn in s.held.drain(..) {
            let _ = conn.shutdown(Shutdown::Both);
        }
    }

    /// Connections stalled so far.
    pub fn stalled(&self) -> usize {
        self.state.lock().unwrap().stalled
    }

    /// Connections passed through so far, and how many of them have ended.
    pub fn forwarded(&self) -> (usize, usize) {
        let s = self.state.lock().unwrap();
        (s.forwarded, s.finished)
    }

    pub fn upstream(&self) -> u16 {
        self.upstream
    }
}

/// Copies both ways until each side has closed. With `hold_quit`, a client's `QUIT` is
/// not forwarded: the connection hangs until the proxy is released.
fn forward(client: TcpStream, upstream: u16, hold_quit: Option<&Arc<Mutex<State>>>) {
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (Ok(client2), Ok(server2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let held = hold_quit.cloned();
    let up = thread::spawn(move || pump(client2, server2, held.as_ref()));
    pump(server, client, None);
    let _ = up.join();
}

fn pump(mut from: TcpStream, mut to: TcpStream, hold_quit: Option<&Arc<Mutex<State>>>) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if let Some(state) = hold_quit {
                    if buf[..n].eq_ignore_ascii_case(b"QUIT\r\n") {
                        state.lock().unwrap().quits_held += 1;
                        while !state.lock().unwrap().released {
                            thread::sleep(std::time::Duration::from_millis(50));
                        }
                        let _ = from.shutdown(Shutdown::Both);
                        break;
                    }
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

impl Drop for StallProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.release();
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
