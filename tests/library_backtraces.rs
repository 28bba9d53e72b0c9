//! Under `RUST_BACKTRACE=1` (set by admins for panics) library errors capture no backtrace
//! once the daemon's start-up has run: sequoia makes several per message, and unwinding the
//! stack for each cost the daemon CPU on every post. Its own test binary: std decides once per
//! process whether backtraces are captured.

use std::backtrace::{Backtrace, BacktraceStatus};

#[test]
fn library_errors_capture_no_backtrace_under_rust_backtrace() {
    std::env::remove_var("RUST_LIB_BACKTRACE");
    std::env::set_var("RUST_BACKTRACE", "1");
    listcrypt::logging::library_backtraces_off();
    let error = anyhow::anyhow!("a component without a binding signature");
    assert_ne!(error.backtrace().status(), BacktraceStatus::Captured);
    assert_ne!(Backtrace::capture().status(), BacktraceStatus::Captured);
    assert_eq!(std::env::var("RUST_LIB_BACKTRACE").as_deref(), Ok("0"));
    // An admin who asks for library backtraces keeps them: only an unset variable is set.
    std::env::set_var("RUST_LIB_BACKTRACE", "1");
    listcrypt::logging::library_backtraces_off();
    assert_eq!(std::env::var("RUST_LIB_BACKTRACE").as_deref(), Ok("1"));
}
