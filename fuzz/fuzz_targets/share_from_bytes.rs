//! `Share::from_bytes` on arbitrary bytes (shares arrive from sites in Unmask).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = confide_crypto::shamir::Share::from_bytes(data) {
        // A decoded share re-encodes to the bytes it came from.
        assert_eq!(s.to_bytes().as_slice(), data);
    }
});
