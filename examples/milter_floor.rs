//! The floor of one milter round trip on this machine, for contrib/bench/outbound-limit.sh:
//! the cheapest milter and the cheapest MTA side there can be, with nothing of listcrypt,
//! indymilter or tokio in between.
//!
//! - `milter_floor serve SOCKET`: a milter in blocking std I/O, a thread per connection. It
//!   negotiates version 6 with no actions and no protocol options, and answers every command
//!   `Continue` at once (macros and abort need no answer; quit closes).
//! - `milter_floor client SOCKET RCPTS SESSIONS`: the MTA's side as Postfix's milter client
//!   works, blocking, one command and then its answer: per session negotiation, connect,
//!   HELO and MAIL (each only if the milter did not ask to skip it or leave it unanswered),
//!   then RCPTS recipients, timed, then quit. It prints the median over the sessions of the
//!   microseconds per RCPT round trip.
//!
//! Against the `serve` side, that median is what any milter's recipient round trip costs here
//! at least: two system calls each way and two wake-ups. Outbound, Postfix sends one RCPT per
//! member and waits for each answer.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Instant;

/// Protocol options (libmilter's `SMFIP_*`) the client honours.
const NO_CONNECT: u32 = 0x1;
const NO_HELO: u32 = 0x2;
const NO_MAIL: u32 = 0x4;
const NO_RCPT: u32 = 0x8;
const NR_CONNECT: u32 = 0x1000;
const NR_HELO: u32 = 0x2000;
const NR_MAIL: u32 = 0x4000;
const NR_RCPT: u32 = 0x8000;
/// Every option of milter protocol version 6, as Postfix offers them.
const ALL_OPTIONS: u32 = 0x1f_ffff;
/// Any milter command is far smaller; a longer frame is a broken peer.
const MAX_FRAME: usize = 1 << 20;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["serve", socket] => serve(socket),
        ["client", socket, rcpts, sessions] => {
            let at_least_one = |what: &str, v: &str| match v.parse::<usize>() {
                Ok(n) if n > 0 => n,
                _ => panic!("{what}: a number of at least 1, not {v:?}"),
            };
            let rcpts = at_least_one("RCPTS", rcpts);
            let sessions = at_least_one("SESSIONS", sessions);
            println!("{:.1}", client(socket, rcpts, sessions));
        }
        _ => panic!("usage: milter_floor serve SOCKET | client SOCKET RCPTS SESSIONS"),
    }
}

fn serve(socket: &str) {
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket).expect("bind");
    for stream in listener.incoming() {
        let stream = stream.expect("accept");
        std::thread::spawn(move || answer(stream));
    }
}

/// One connection: every command answered `Continue` until quit or a broken peer.
fn answer(mut stream: UnixStream) {
    let mut negotiated = [0u8; 12];
    negotiated[..4].copy_from_slice(&6u32.to_be_bytes());
    while let Ok((command, _)) = read_frame(&mut stream) {
        let written = match command {
            b'O' => write_frame(&mut stream, b'O', &negotiated),
            b'D' | b'A' => Ok(()),
            b'Q' => return,
            _ => write_frame(&mut stream, b'c', &[]),
        };
        if written.is_err() {
            return;
        }
    }
}

/// Median microseconds per RCPT round trip over `sessions` sessions of `rcpts` recipients.
fn client(socket: &str, rcpts: usize, sessions: usize) -> f64 {
    let mut per_rcpt: Vec<f64> = (0..sessions)
        .map(|_| session(socket, rcpts))
        .map(|elapsed| elapsed * 1e6 / rcpts as f64)
        .collect();
    per_rcpt.sort_by(f64::total_cmp);
    per_rcpt[per_rcpt.len() / 2]
}

/// One session; returns the seconds its RCPT round trips took.
fn session(socket: &str, rcpts: usize) -> f64 {
    let mut s = UnixStream::connect(socket).expect("connect");
    let mut offer = Vec::with_capacity(12);
    for word in [6, 0x1ff, ALL_OPTIONS] {
        offer.extend_from_slice(&u32::to_be_bytes(word));
    }
    let (kind, reply) = exchange(&mut s, b'O', &offer, true).expect("negotiation");
    assert_eq!(kind, b'O', "the milter refused negotiation");
    let options = reply.get(8..12).expect("a negotiation reply of 12 bytes");
    let options = u32::from_be_bytes(options.try_into().expect("four bytes"));
    assert_eq!(
        options & (NO_RCPT | NR_RCPT),
        0,
        "the milter skips RCPT: nothing to time"
    );
    if options & NO_CONNECT == 0 {
        let connect = b"localhost\x004\x00\x19127.0.0.1\x00";
        exchange(&mut s, b'C', connect, options & NR_CONNECT == 0).expect("connect");
    }
    if options & NO_HELO == 0 {
        exchange(&mut s, b'H', b"localhost\0", options & NR_HELO == 0).expect("HELO");
    }
    if options & NO_MAIL == 0 {
        exchange(&mut s, b'M', b"<a@example.net>\0", options & NR_MAIL == 0).expect("MAIL");
    }
    let start = Instant::now();
    for i in 0..rcpts {
        let rcpt = format!("<m{i}@example.net>\0");
        let (kind, _) = exchange(&mut s, b'R', rcpt.as_bytes(), true).expect("RCPT");
        assert_eq!(kind, b'c', "the milter did not continue at RCPT");
    }
    let elapsed = start.elapsed().as_secs_f64();
    let _ = write_frame(&mut s, b'Q', &[]);
    elapsed
}

/// Sends one command and, if `answered`, reads its answer (else returns `Continue`).
fn exchange(
    s: &mut UnixStream,
    command: u8,
    payload: &[u8],
    answered: bool,
) -> std::io::Result<(u8, Vec<u8>)> {
    write_frame(s, command, payload)?;
    match answered {
        true => read_frame(s),
        false => Ok((b'c', Vec::new())),
    }
}

/// One frame in a single write: length (command byte included), command, payload.
fn write_frame(s: &mut UnixStream, command: u8, payload: &[u8]) -> std::io::Result<()> {
    let mut frame = Vec::with_capacity(5 + payload.len());
    frame.extend_from_slice(&u32::to_be_bytes(payload.len() as u32 + 1));
    frame.push(command);
    frame.extend_from_slice(payload);
    s.write_all(&frame)
}

fn read_frame(s: &mut UnixStream) -> std::io::Result<(u8, Vec<u8>)> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 || len > MAX_FRAME {
        return Err(std::io::ErrorKind::InvalidData.into());
    }
    let mut frame = vec![0; len];
    s.read_exact(&mut frame)?;
    let payload = frame.split_off(1);
    Ok((frame[0], payload))
}
