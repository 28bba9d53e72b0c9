//! The MIME entry points: classification of a whole message and the bounded tree walk.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = listcrypt::mime::classify(data, 20, 500);
    let _ = listcrypt::mime::walk_entity(data, 20, 500);
    if let Ok(e) = listcrypt::mime::Entity::parse(data) {
        for h in &e.headers {
            let _ = listcrypt::mime::header_text(h);
        }
    }
});
