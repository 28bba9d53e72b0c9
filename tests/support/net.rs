//! Loopback ports for the servers the end-to-end tests start.

use super::process::wait_for;
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

/// `N` distinct ports that were free a moment ago (all bound at once, then released).
pub fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
        .collect();
    std::array::from_fn(|i| listeners[i].local_addr().unwrap().port())
}

pub fn port_open(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

pub fn wait_for_port(what: &str, port: u16, timeout: Duration) {
    wait_for(&format!("{what} on 127.0.0.1:{port}"), timeout, || {
        port_open(port).then_some(())
    });
}
