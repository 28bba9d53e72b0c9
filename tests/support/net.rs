//! Loopback ports for the servers the end-to-end tests start.

use super::process::wait_for;
use std::collections::BTreeSet;
use std::net::{TcpListener, TcpStream};
use std::sync::Mutex;
use std::time::Duration;

/// `N` distinct ports that were free a moment ago (all bound at once, then released), for
/// servers a test starts later. They come from below the kernel's ephemeral range: between
/// this pick and the server's own bind, an outgoing connection of a test running beside it
/// could be given an ephemeral port as its source port, and the server would not start (seen
/// in CI: `postfix start` failing with its port taken). One test process never hands out the
/// same port twice.
pub fn free_ports<const N: usize>() -> [u16; N] {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let below = ephemeral_low();
    assert!(
        below > PICK_FROM + 1000,
        "ephemeral ports from {below}: no room below them"
    );
    let span = u64::from(below - PICK_FROM);
    let mut state = seed();
    let mut held: Vec<TcpListener> = Vec::with_capacity(N);
    for _ in 0..10_000 {
        if held.len() == N {
            break;
        }
        // xorshift64: spread over the range, so test processes rarely try the same ports.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let port = PICK_FROM + (state % span) as u16;
        if given.contains(&port) {
            continue;
        }
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
            given.insert(port);
            held.push(listener);
        }
    }
    assert_eq!(held.len(), N, "no {N} free ports in {PICK_FROM}..{below}");
    std::array::from_fn(|i| held[i].local_addr().unwrap().port())
}

/// The lowest port of the picks; below it are the well-known services.
const PICK_FROM: u16 = 20_000;

/// The first port the kernel hands out as a source port (`ip_local_port_range`).
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// A different start for each call and process.
fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish() | 1
}

pub fn port_open(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

pub fn wait_for_port(what: &str, port: u16, timeout: Duration) {
    wait_for(&format!("{what} on 127.0.0.1:{port}"), timeout, || {
        port_open(port).then_some(())
    });
}
