//! Faults for the campaign (tests/e2e_campaign.rs), each a real component that misbehaves on
//! demand: a second milter that tempfails at end of message now and then (or never: the no-op
//! milter of the load run), a TCP gate in front of a listener that can be taken down (new
//! connections refused, open ones cut) and brought back, and a size-limited tmpfs for a state
//! directory that can be filled to the last byte and emptied again.

use super::process::run;
use indymilter::{Callbacks, SetErrorReply, Status};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// The text of the flaky milter's tempfail, to tell it from listcrypt's.
pub const FLAKY_TEXT: &str = "campaign milter after listcrypt: please try again";

/// A milter on 127.0.0.1 that answers `451 4.7.0` at the end of a message with probability
/// `rate` (seeded), and lets everything else pass. Stopped on drop.
pub struct FlakyMilter {
    /// For Postfix's `smtpd_milters`, e.g. `inet:127.0.0.1:PORT`.
    pub address: String,
    eoms: Arc<AtomicUsize>,
    tempfails: Arc<AtomicUsize>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl FlakyMilter {
    pub fn start(rate: f64, seed: u64) -> FlakyMilter {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("milter: bind");
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let eoms = Arc::new(AtomicUsize::new(0));
        let tempfails = Arc::new(AtomicUsize::new(0));
        let rng = Arc::new(Mutex::new(StdRng::seed_from_u64(seed)));
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let (seen, failed) = (eoms.clone(), tempfails.clone());
        let thread = thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("milter: runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let callbacks = Callbacks::<()>::new().on_eom(move |cx| {
                    seen.fetch_add(1, Ordering::SeqCst);
                    let fail = rate > 0.0 && rng.lock().unwrap().gen_bool(rate);
                    if fail {
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                    Box::pin(async move {
                        if !fail {
                            return Status::Continue;
                        }
                        cx.reply
                            .set_error_reply("451", Some("4.7.0"), [FLAKY_TEXT])
                            .expect("a valid 4xx reply");
                        Status::Tempfail
                    })
                });
                let stop = async move {
                    let _ = stopped.await;
                };
                indymilter::run(listener, callbacks, Default::default(), stop)
                    .await
                    .expect("milter: run");
            });
        });
        FlakyMilter {
            address: format!("inet:127.0.0.1:{port}"),
            eoms,
            tempfails,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    /// Ends of message seen (Postfix asks the milters in order: only after listcrypt's yes).
    pub fn eoms(&self) -> usize {
        self.eoms.load(Ordering::SeqCst)
    }

    pub fn tempfails(&self) -> usize {
        self.tempfails.load(Ordering::SeqCst)
    }
}

impl Drop for FlakyMilter {
    fn drop(&mut self) {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[derive(Default)]
struct GateState {
    up: bool,
    /// Open connections (client side) by number, cut when the gate goes down.
    open: Vec<(usize, TcpStream)>,
    forwarded: usize,
    cut: usize,
}

/// A TCP forwarder on a fixed 127.0.0.1 port to 127.0.0.1:`upstream`. `down` closes the
/// listening socket (connect gets ECONNREFUSED, as from a stopped listener) and cuts the open
/// connections; `up` listens again on the same port.
pub struct Gate {
    pub port: u16,
    state: Arc<Mutex<GateState>>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Gate {
    pub fn start(upstream: u16) -> Gate {
        let first = TcpListener::bind("127.0.0.1:0").expect("gate: bind");
        let port = first.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(GateState {
            up: true,
            ..Default::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, stop) = (state.clone(), stop.clone());
            thread::spawn(move || {
                let mut listener = Some(first);
                while !stop.load(Ordering::SeqCst) {
                    let up = state.lock().unwrap().up;
                    if !up {
                        listener = None;
                        thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                    if listener.is_none() {
                        // std sets SO_REUSEADDR: the port is ours again at once.
                        match TcpListener::bind(("127.0.0.1", port)) {
                            Ok(l) => listener = Some(l),
                            Err(_) => {
                                thread::sleep(Duration::from_millis(50));
                                continue;
                            }
                        }
                    }
                    let l = listener.as_ref().unwrap();
                    l.set_nonblocking(true).unwrap();
                    match l.accept() {
                        Ok((conn, _)) => {
                            let _ = conn.set_nonblocking(false);
                            let mut s = state.lock().unwrap();
                            s.forwarded += 1;
                            let id = s.forwarded;
                            if let Ok(c) = conn.try_clone() {
                                s.open.push((id, c));
                            }
                            drop(s);
                            let state = state.clone();
                            thread::spawn(move || {
                                forward(conn, upstream);
                                state.lock().unwrap().open.retain(|(i, _)| *i != id);
                            });
                        }
                        Err(_) => thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
        };
        Gate {
            port,
            state,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops listening and cuts every open connection; returns how many were cut.
    pub fn down(&self) -> usize {
        let mut s = self.state.lock().unwrap();
        s.up = false;
        let mut cut = 0;
        for (_, conn) in s.open.drain(..) {
            if conn.shutdown(Shutdown::Both).is_ok() {
                cut += 1;
            }
        }
        s.cut += cut;
        cut
    }

    pub fn up(&self) {
        self.state.lock().unwrap().up = true;
    }

    /// Connections forwarded so far, and connections cut by `down`.
    pub fn counts(&self) -> (usize, usize) {
        let s = self.state.lock().unwrap();
        (s.forwarded, s.cut)
    }
}

fn forward(client: TcpStream, upstream: u16) {
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let (Ok(client2), Ok(server2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let up = thread::spawn(move || pump(client2, server2));
    pump(server, client);
    let _ = up.join();
}

fn pump(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    // Either side gone: the other goes too, as when a listener process dies.
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A tmpfs of `size_mib` MiB mounted over `dir` (needs root), which `fill` fills to the last
/// byte and `empty` empties. Unmounted on drop.
pub struct SmallDisk {
    pub dir: PathBuf,
    filler: PathBuf,
    mounted: bool,
}

impl SmallDisk {
    pub fn mount(dir: &Path, size_mib: u64) -> SmallDisk {
        let out = run(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o"])
                .arg(format!("size={size_mib}m,mode=0700"))
                .arg("campaign-state")
                .arg(dir),
            None,
        );
        assert!(
            out.status.success(),
            "mount -t tmpfs on {} failed (root needed): {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk {
            dir: dir.to_path_buf(),
            filler: dir.join("campaign-filler"),
            mounted: true,
        }
    }

    /// Writes a file until the disk is full; returns the bytes it took.
    pub fn fill(&self) -> u64 {
        let mut f = fs::File::create(&self.filler).expect("create the filler");
        let chunk = vec![0u8; 1 << 20];
        let mut written = 0u64;
        // Then smaller writes, so that not even one page is left.
        for size in [1 << 20, 4096, 1] {
            while let Ok(n) = f.write(&chunk[..size]) {
                if n == 0 {
                    break;
                }
                written += n as u64;
            }
        }
        let _ = f.sync_all();
        written
    }

    pub fn empty(&self) {
        let _ = fs::remove_file(&self.filler);
    }

    /// Bytes free, as statvfs says.
    pub fn free(&self) -> u64 {
        let out = run(
            Command::new("df")
                .args(["--output=avail", "-B1"])
                .arg(&self.dir),
            None,
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Unmounts (lazily if still busy); the caller stops the processes using it first.
    pub fn unmount(&mut self) {
        if !self.mounted {
            return;
        }
        self.mounted = false;
        self.empty();
        let ok = run(Command::new("umount").arg(&self.dir), None)
            .status
            .success();
        if !ok {
            let _ = run(Command::new("umount").arg("-l").arg(&self.dir), None);
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        self.unmount();
    }
}
