//! Coordinator settings TOML parsing and validation.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(s) = confide_coordinator::Settings::from_toml_str(text) {
        let _ = s.validate();
        let _ = s.config_hash();
    }
});
