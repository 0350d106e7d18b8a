//! The round context: the 32 bytes the layer above the crypto protocol binds
//! into a round ([`confide_crypto::RoundConfig::context`]), so every advert,
//! masking set and survivor signature of the round is signed over it.
//!
//! ```text
//!  context = H_suite( "confide/v1/round-context"
//!                   ‖ len(federation) (u64 BE) ‖ federation
//!                   ‖ CA fingerprint (32 bytes: SHA-256 of the CA certificate DER)
//!                   ‖ len(enc) (u64 BE) ‖ enc )
//!  enc     = prost encoding of the RoundStart with `member` and `crl` emptied
//! ```
//!
//! `H_suite` is the federation suite's hash (SHA-256 or SM3). Through `enc`
//! the context binds everything the announcement says: the attempt nonce
//! (fresh per round attempt, so nothing signed in one attempt verifies in
//! another), the SHA-256 of the model the site downloads, the round kind,
//! the quantisation, the training settings, the feature statistics, the
//! stage timeout, the plaintext flag, and the cryptographic parameters again.
//! `member` is zeroed because it is the one field that differs per site;
//! `crl` is emptied because the coordinator fills it in as each copy is
//! delivered (its newest CRL then), and each site checks neighbours against
//! the newest CRL *it* has seen anyway, whatever one announcement carried.
//! Two sites with different views of any of it (or of the federation or its
//! CA) compute different contexts, hence different session ids, and refuse
//! each other's signatures.
//!
//! Both sides re-encode the decoded message, so a coordinator sending fields
//! this version does not know (dropped on decoding) makes the contexts differ:
//! the round fails closed rather than binding less than was announced.
//!
//! Without TLS (local experiments and tests) there is no CA; both sides then
//! use [`NO_CA`], 32 zero bytes.

use prost::Message;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use sha2::{Digest, Sha256};

use confide_crypto::Suite;

use crate::v1;

/// Domain separation of [`round_context`].
pub const DOMAIN: &[u8] = b"confide/v1/round-context";

/// The CA fingerprint of a federation without TLS.
pub const NO_CA: [u8; 32] = [0; 32];

/// The context of the round `round_start` announces, in federation
/// `federation` under the CA with fingerprint `ca_fingerprint` (see the
/// module docs for what it binds).
pub fn round_context(
    suite: Suite,
    federation: &str,
    ca_fingerprint: &[u8; 32],
    round_start: &v1::RoundStart,
) -> [u8; 32] {
    let enc = v1::RoundStart {
        member: 0,
        crl: Vec::new(),
        ..round_start.clone()
    }
    .encode_to_vec();
    let len = |n: usize| (n as u64).to_be_bytes();
    suite.provider().hash(&[
        DOMAIN,
        &len(federation.len()),
        federation.as_bytes(),
        ca_fingerprint,
        &len(enc.len()),
        &enc,
    ])
}

/// SHA-256 of `bytes` (the model hash announced in `RoundStart.model_sha256`,
/// and the CA fingerprint of a DER certificate).
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// A CA certificate file that yields no fingerprint.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("federation CA is not a PEM certificate: {0}")]
pub struct CaError(String);

/// The fingerprint of the first certificate in `pem`: SHA-256 of its DER.
pub fn ca_fingerprint_pem(pem: &[u8]) -> Result<[u8; 32], CaError> {
    let der = CertificateDer::from_pem_slice(pem).map_err(|e| CaError(e.to_string()))?;
    Ok(sha256(der.as_ref()))
}

#[cfg(test)]
mod tests;
