//! The reinjection client's reply parser over whatever a listener might send: never a panic,
//! and a reply found is a whole prefix of the input within the line and reply bounds.
#![no_main]
use libfuzzer_sys::fuzz_target;
use listcrypt::reinject::{parse_reply, MAX_REPLY_LINE, MAX_REPLY_LINES};

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((reply, used))) = parse_reply(data) {
        assert!(used > 0 && used <= data.len());
        assert!(used <= MAX_REPLY_LINE * MAX_REPLY_LINES);
        assert!(data[..used].ends_with(b"\n"));
        assert!((200..600).contains(&reply.code));
    }
});
