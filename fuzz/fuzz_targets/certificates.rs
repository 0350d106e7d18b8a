//! Certificates from peers: the coordinator's view of a client certificate
//! (`PeerCert::from_der`) and a site's check of a relayed identity
//! (`CertificateVerifier`) on arbitrary bytes.
#![no_main]
use std::sync::OnceLock;

use confide_client::identity::CertificateVerifier;
use confide_crypto::Suite;
use confide_crypto::protocol::IdentityVerifier;
use libfuzzer_sys::fuzz_target;

fn verifier() -> &'static Option<CertificateVerifier> {
    static V: OnceLock<Option<CertificateVerifier>> = OnceLock::new();
    V.get_or_init(|| {
        CertificateVerifier::from_ca_pem(Suite::Intl, include_bytes!("../ca.pem")).ok()
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = confide_coordinator::access::PeerCert::from_der(data);
    let _ = confide_client::identity::certificate_key(data);
    if let Some(v) = verifier() {
        let _ = v.verifying_key(1, data);
    }
});
