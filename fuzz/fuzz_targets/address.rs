//! Address parsing: normalisation of arbitrary RCPT/MAIL arguments and the list lookup.
//! Beyond not panicking: a normalised address prints as text that normalises to itself.
#![no_main]
use libfuzzer_sys::fuzz_target;
use listcrypt::address::{self, AddressConfig, ListDirectory};

struct OneList;

impl ListDirectory for OneList {
    type List = ();
    fn find(&self, address: &str) -> Option<()> {
        (address == "enc@lists.example.test" || address == "enc-owner@lists.example.test")
            .then_some(())
    }
    fn key_suffix<'a>(&'a self, _: &'a ()) -> &'a str {
        "key"
    }
    fn hosts_domain(&self, domain: &str) -> bool {
        domain == "lists.example.test"
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let cfg = AddressConfig {
        recipient_delimiter: "+-".into(),
        ..AddressConfig::default()
    };
    if let Some(n) = address::normalize(text) {
        assert_eq!(address::normalize(&n.to_string()).as_ref(), Some(&n));
        let _ = address::classify(&n, &OneList, &cfg);
        let _ = address::classify_sender(&n, &OneList, &AddressConfig::default());
        let _ = address::is_in_list_domain(&n, &OneList);
    }
});
