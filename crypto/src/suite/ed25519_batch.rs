//! Ed25519 signatures checked together.
//!
//! A site checks dozens of Ed25519 signatures at once each round: a quorum
//! on the survivor set (at least 51 at n = 100) and its neighbours' signed
//! masking sets. ed25519-dalek's batch verification checks a set with one
//! multi-scalar multiplication, under coefficients derived from all of its
//! inputs; on this project's machines it costs about half of checking each
//! signature with ring.
//!
//! It answers one question only, whether every signature verifies;
//! `VerifyingKey::verify_each` checks them singly after a failure. Batch
//! and single verification (both cofactorless) can disagree only on a
//! signature whose `R` or key has a small-order component, or whose `R` is
//! encoded non-canonically (which the batch decodes and ring refuses). The
//! latter is a re-encoding of a signature the key's holder made on that
//! very message. The former only the key's holder can make, unless the key
//! itself has small order, which its holder chose when it had it certified.
//! Either way the signer is a certified site that signed, or deviates, and
//! every check that counts signatures already assumes such sites sign
//! whatever they like.

use std::sync::LazyLock;

use ed25519_dalek::{Signature, VerifyingKey};

use super::kept::Kept;
use crate::error::CryptoError;

/// Decompressed keys kept across rounds: the batch then decompresses only
/// each signature's `R`.
static KEYS: LazyLock<Kept<VerifyingKey>> = LazyLock::new(|| Kept::new(KEPT_KEYS));

/// How many keys stay decompressed: 192 bytes each, about 270 with the
/// store's entry, so about 1.1 MB.
const KEPT_KEYS: usize = 4096;

fn parse(key: &[u8], _kept: bool) -> Result<VerifyingKey, CryptoError> {
    let key: &[u8; 32] = key
        .try_into()
        .map_err(|_| CryptoError::InvalidPublicKey("an Ed25519 verifying key is 32 bytes"))?;
    VerifyingKey::from_bytes(key)
        .map_err(|_| CryptoError::InvalidPublicKey("not an Ed25519 verifying key"))
}

/// `Ok` only if each `(key, message, signature)` verifies.
pub(super) fn verify_all(items: &[(&[u8], &[u8], &[u8])]) -> Result<(), CryptoError> {
    verify_all_in(&KEYS, items)
}

/// [`verify_all`] with the keys kept in `kept`.
fn verify_all_in(
    kept: &Kept<VerifyingKey>,
    items: &[(&[u8], &[u8], &[u8])],
) -> Result<(), CryptoError> {
    let mut keys = Vec::with_capacity(items.len());
    let mut sigs = Vec::with_capacity(items.len());
    let mut msgs = Vec::with_capacity(items.len());
    for &(key, msg, sig) in items {
        keys.push(*kept.get_or_make(key, parse)?);
        sigs.push(Signature::from_slice(sig).map_err(|_| CryptoError::BadSignature)?);
        msgs.push(msg);
    }
    ed25519_dalek::verify_batch(&msgs, &sigs, &keys).map_err(|_| CryptoError::BadSignature)
}

#[cfg(test)]
mod tests;
