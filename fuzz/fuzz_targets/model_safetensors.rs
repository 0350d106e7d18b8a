//! `Model::from_safetensors` on arbitrary bytes (the downloaded global model).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = confide_client::train::Model::from_safetensors(data) {
        let _ = m.num_params();
        let _ = m.to_safetensors(None);
    }
});
