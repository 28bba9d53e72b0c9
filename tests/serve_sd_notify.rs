//! `listcrypt serve` under systemd's Type=notify (sd_notify(3)): READY=1 on the datagram
//! socket named by NOTIFY_SOCKET once the milter sockets accept connections, then WATCHDOG=1
//! at least every WATCHDOG_USEC.

mod support;

use std::os::unix::net::{UnixDatagram, UnixStream};
use std::process::Stdio;
use std::time::{Duration, Instant};
use support::site::{Site, LIST};

#[test]
fn ready_after_bind_then_watchdog_pings() {
    let site = Site::new();
    site.create_list(LIST);
    let notify_path = site.path("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let watchdog = Duration::from_millis(400);
    // systemd names the watched process in WATCHDOG_PID: the shell's PID, kept by exec.
    let cli = site.cli();
    let mut child = std::process::Command::new("sh")
        .args(["-c", "WATCHDOG_PID=$$ exec \"$0\" \"$@\""])
        .arg(cli.get_program())
        .args(cli.get_args())
        .arg("serve")
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", watchdog.as_micros().to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let mut recv = || {
        let n = notify.recv(&mut buf).expect("a notification within 20 s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let first = recv();
    // READY=1 promises both milter sockets accept connections now.
    let ready_ok = first.lines().any(|l| l == "READY=1")
        && ["inbound.sock", "outbound.sock"]
            .iter()
            .all(|s| UnixStream::connect(site.path(&format!("run/{s}"))).is_ok());
    let start = Instant::now();
    let pings: Vec<String> = (0..3).map(|_| recv()).collect();
    let elapsed = start.elapsed();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(ready_ok, "first notification {first:?}");
    assert!(
        pings.iter().all(|p| p.lines().any(|l| l == "WATCHDOG=1")),
        "{pings:?}"
    );
    // Three pings, each due within the watchdog interval.
    assert!(elapsed < watchdog * 3, "{elapsed:?}");
}
