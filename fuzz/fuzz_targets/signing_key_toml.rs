//! A site's long-term signing-key file (`suite = ..., secret = "<hex>"`).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(k) = confide_client::config::parse_signing_key(text) {
        let _ = k.verifying_key();
    }
});
