//! SM2 signature verification in variable time.
//!
//! The `sm2` crate verifies with its constant-time linear combination.
//! Verifying handles only public values (the key, the message, the
//! signature), so constant time protects nothing there, and a site checks
//! some eighty SM2 signatures a round: its neighbours' adverts and masking
//! sets and a quorum on the survivor set. This is the standard's check
//! (GB/T 32918.2-2016 §7.1, steps B1–B7) on the crate's own types and
//! arithmetic, with its variable-time multi-scalar multiplication instead.
//! Signing and key agreement, which handle secrets, stay with the crate's
//! constant-time code. The tests hold it equal to the crate's verification
//! on valid, altered and malformed signatures and keys.

use elliptic_curve::Group;
use elliptic_curve::ops::{MulByGeneratorVartime, Reduce};
use elliptic_curve::point::AffineCoordinates;
use elliptic_curve::sec1::ToSec1Point;
use primeorder::PrimeCurveParams;
use sm2::{AffinePoint, ProjectivePoint, PublicKey, Scalar, Sm2};
use sm3::{Digest, Sm3};

use super::SM2_DIST_ID;
use crate::error::CryptoError;

/// Verify an SM2 signature (`r ‖ s`, 64 bytes) by the SEC1-encoded key
/// `public` on `msg`, with distinguishing identifier [`SM2_DIST_ID`].
pub(super) fn verify(public: &[u8], msg: &[u8], signature: &[u8]) -> Result<(), CryptoError> {
    // Parsed as the crate parses a verifying key: a point on the curve,
    // not the identity.
    let key = PublicKey::from_sec1_bytes(public)
        .map_err(|_| CryptoError::InvalidPublicKey("not an SM2 verifying key"))?;
    // B1, B2: r and s in [1, n − 1] (checked when parsed).
    let sig = sm2::dsa::Signature::from_slice(signature).map_err(|_| CryptoError::BadSignature)?;
    let (r, s) = (*sig.r(), *sig.s());
    // B3, B4: e = SM3(Z_A ‖ M).
    let e = Scalar::reduce(&message_digest(key.as_affine(), msg));
    // B5: t = r + s mod n, not zero.
    let t = r + s;
    if bool::from(t.is_zero()) {
        return Err(CryptoError::BadSignature);
    }
    // B6: (x1, y1) = [s]G + [t]P_A, not the point at infinity.
    let point = ProjectivePoint::mul_by_generator_and_mul_add_vartime(&s, &t, &key.to_projective());
    if bool::from(point.is_identity()) {
        return Err(CryptoError::BadSignature);
    }
    // B7: R = e + x1 mod n must equal r.
    if e + Scalar::reduce(&point.to_affine().x()) == r {
        Ok(())
    } else {
        Err(CryptoError::BadSignature)
    }
}

/// ENTL_A: the identifier's length in bits, two bytes big-endian (128).
const ENTL: [u8; 2] = ((SM2_DIST_ID.len() * 8) as u16).to_be_bytes();

/// SM3(Z_A ‖ msg), where Z_A = SM3(ENTL_A ‖ ID_A ‖ a ‖ b ‖ x_G ‖ y_G ‖ x_A ‖ y_A).
/// Computed here because the crate keeps its own (`hash_z`) private; the
/// tests would fail on any difference, as every crate-made signature would.
fn message_digest(key: &AffinePoint, msg: &[u8]) -> sm2::FieldBytes {
    let mut z = Sm3::new();
    z.update(ENTL);
    z.update(SM2_DIST_ID.as_bytes());
    z.update(Sm2::EQUATION_A.to_bytes());
    z.update(Sm2::EQUATION_B.to_bytes());
    // x ‖ y: the uncompressed SEC1 encoding without its leading 0x04.
    for p in [&AffinePoint::GENERATOR, key] {
        z.update(&p.to_sec1_point(false).as_bytes()[1..]);
    }
    let mut h = Sm3::new();
    h.update(z.finalize());
    h.update(msg);
    h.finalize()
}

#[cfg(test)]
mod tests;
