//! Header parsing: a message's header block, each field's decoded text, the first mailbox of
//! address fields (how From is read), and that mailbox through address normalisation.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(e) = listcrypt::mime::Entity::parse(data) else {
        return;
    };
    for h in &e.headers {
        let _ = listcrypt::mime::header_text(h);
        if let Some(a) = listcrypt::message::first_address(h) {
            if let Some(n) = listcrypt::address::normalize(&a) {
                assert_eq!(listcrypt::address::normalize(&n.to_string()).as_ref(), Some(&n));
            }
        }
    }
});
