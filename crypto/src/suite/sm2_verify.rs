//! SM2 signature verification in variable time, with a table per key.
//!
//! The `sm2` crate verifies with its constant-time linear combination.
//! Verifying handles only public values (the key, the message, the
//! signature), so constant time protects nothing there, and a site checks
//! some eighty SM2 signatures a round: its neighbours' adverts and masking
//! sets and a quorum on the survivor set, from the same long-term keys
//! round after round. This is the standard's check (GB/T 32918.2-2016
//! §7.1, steps B1–B7) on the crate's own types and arithmetic, with two
//! variable-time savings:
//!
//! - `[s]G + [t]P_A` uses the crate's table of multiples of `G` and a
//!   table of the same shape for `P_A` (33 × 8 points, about 25 KB), built
//!   the first time a key is seen and kept for the next rounds (`kept`): 130
//!   additions and 4 doublings instead of 256 doublings and about 90
//!   additions. Tables are kept for up to [`KEPT_KEYS`] keys (about
//!   26 MB); keys beyond that are checked with the crate's wNAF
//!   combination, never by building a table to throw away;
//! - a set of signatures ([`verify_each`]) takes each point's affine `x`
//!   with one field inversion for the whole set.
//!
//! Signing and key agreement, which handle secrets, stay with the crate's
//! constant-time code. The tests hold it equal to the crate's verification
//! on valid, altered and malformed signatures and keys, with and without
//! a table.

use std::sync::{Arc, LazyLock};

use elliptic_curve::ops::{MulByGeneratorVartime, Reduce};
use elliptic_curve::point::AffineCoordinates;
use elliptic_curve::sec1::ToSec1Point;
use elliptic_curve::{BatchNormalize, Group};
use primeorder::{
    LookupTable, PrimeCurveParams, PrimeCurveWithBasepointTable, Radix16Decomposition,
    Radix16Digits,
};
use sm2::{AffinePoint, ProjectivePoint, PublicKey, Scalar, Sm2};
use sm3::{Digest, Sm3};

use super::SM2_DIST_ID;
use super::kept::Kept;
use crate::error::CryptoError;

/// Verify an SM2 signature (`r ‖ s`, 64 bytes) by the SEC1-encoded key
/// `public` on `msg`, with distinguishing identifier [`SM2_DIST_ID`].
pub(super) fn verify(public: &[u8], msg: &[u8], signature: &[u8]) -> Result<(), CryptoError> {
    let pending = prepare(&*key_data(public)?, msg, signature)?;
    pending.finish(&pending.point.to_affine())
}

/// Verify several `(key, message, signature)`: whether each verifies, as
/// [`verify`] answers, with one field inversion for the set.
pub(super) fn verify_each(items: &[(&[u8], &[u8], &[u8])]) -> Vec<bool> {
    let pending: Vec<Option<Pending>> = items
        .iter()
        .map(|&(public, msg, sig)| {
            key_data(public)
                .and_then(|key| prepare(&key, msg, sig))
                .ok()
        })
        .collect();
    let points: Vec<ProjectivePoint> = pending.iter().flatten().map(|p| p.point).collect();
    let affine = <ProjectivePoint as BatchNormalize<[ProjectivePoint]>>::batch_normalize(&points);
    let mut affine = affine.iter();
    pending
        .iter()
        .map(|p| match p {
            Some(p) => affine.next().is_some_and(|a| p.finish(a).is_ok()),
            None => false,
        })
        .collect()
}

/// A signature through steps B1–B6: the point `[s]G + [t]P_A` (not the
/// identity) and what step B7 compares its `x` with.
struct Pending {
    point: ProjectivePoint,
    r: Scalar,
    e: Scalar,
}

impl Pending {
    /// B7: R = e + x1 mod n must equal r.
    fn finish(&self, point: &AffinePoint) -> Result<(), CryptoError> {
        if self.e + Scalar::reduce(&point.x()) == self.r {
            Ok(())
        } else {
            Err(CryptoError::BadSignature)
        }
    }
}

fn prepare(key: &KeyData, msg: &[u8], signature: &[u8]) -> Result<Pending, CryptoError> {
    // B1, B2: r and s in [1, n − 1] (checked when parsed).
    let sig = sm2::dsa::Signature::from_slice(signature).map_err(|_| CryptoError::BadSignature)?;
    let (r, s) = (*sig.r(), *sig.s());
    // B3, B4: e = SM3(Z_A ‖ M).
    let e = Scalar::reduce(&key.message_digest(msg));
    // B5: t = r + s mod n, not zero.
    let t = r + s;
    if bool::from(t.is_zero()) {
        return Err(CryptoError::BadSignature);
    }
    // B6: (x1, y1) = [s]G + [t]P_A, not the point at infinity.
    let point = key.mul_add(&s, &t);
    if bool::from(point.is_identity()) {
        return Err(CryptoError::BadSignature);
    }
    Ok(Pending { point, r, e })
}

/// Tables per window of a 256-bit scalar, as in the crate's generator
/// table: 1 + 256 / 8.
const WINDOW: usize = 33;

/// How many keys keep a table. At n = 1000 a site checks a quorum of at
/// least 501 survivors a round, besides its neighbours.
const KEPT_KEYS: usize = 1024;

type Table = [LookupTable<ProjectivePoint>; WINDOW];

/// What checking a signature needs of a key, computed once.
struct KeyData {
    point: ProjectivePoint,
    /// Z_A = SM3(ENTL_A ‖ ID_A ‖ a ‖ b ‖ x_G ‖ y_G ‖ x_A ‖ y_A).
    z: sm3::digest::Output<Sm3>,
    /// `table[i]` holds `[1..=8]·256^i·P_A`; `None` for keys beyond
    /// [`KEPT_KEYS`].
    table: Option<Box<Table>>,
}

static KEYS: LazyLock<Kept<KeyData>> = LazyLock::new(|| Kept::new(KEPT_KEYS));

/// The key's data, kept or made; a key seen for the first time gets a
/// table while the store has room.
fn key_data(public: &[u8]) -> Result<Arc<KeyData>, CryptoError> {
    KEYS.get_or_make(public, KeyData::new)
}

impl KeyData {
    fn new(public: &[u8], with_table: bool) -> Result<Self, CryptoError> {
        // Parsed as the crate parses a verifying key: a point on the curve,
        // not the identity.
        let key = PublicKey::from_sec1_bytes(public)
            .map_err(|_| CryptoError::InvalidPublicKey("not an SM2 verifying key"))?;
        let point = key.to_projective();
        let table = with_table.then(|| {
            let mut table = Box::new([LookupTable::default(); WINDOW]);
            let mut base = point;
            for entry in table.iter_mut() {
                *entry = LookupTable::new(base);
                for _ in 0..8 {
                    base = base.double();
                }
            }
            table
        });
        Ok(KeyData {
            point,
            z: z_digest(key.as_affine()),
            table,
        })
    }

    /// SM3(Z_A ‖ msg).
    fn message_digest(&self, msg: &[u8]) -> sm2::FieldBytes {
        let mut h = Sm3::new();
        h.update(self.z);
        h.update(msg);
        h.finalize()
    }

    /// `[s]G + [t]P_A` in variable time.
    fn mul_add(&self, s: &Scalar, t: &Scalar) -> ProjectivePoint {
        let Some(keyed) = &self.table else {
            return ProjectivePoint::mul_by_generator_and_mul_add_vartime(s, t, &self.point);
        };
        let generator: &Table = <Sm2 as PrimeCurveWithBasepointTable<WINDOW>>::BASEPOINT_TABLE;
        // Signed radix-16 digits in [−8, 8]; digit 2i weighs 256^i and
        // digit 2i + 1 weighs 16·256^i, so the odd digits are summed apart
        // and multiplied by 16 at the end, as the crate does for G alone.
        let ds = Radix16Decomposition::<Radix16Digits<Sm2>>::new(s);
        let dt = Radix16Decomposition::<Radix16Digits<Sm2>>::new(t);
        let mut even = ProjectivePoint::IDENTITY;
        let mut odd = ProjectivePoint::IDENTITY;
        let add = |acc: &mut ProjectivePoint, table: &LookupTable<ProjectivePoint>, d: i8| {
            if d != 0 {
                *acc += table.select_vartime(d);
            }
        };
        for i in (0..WINDOW).rev() {
            if i + 1 < WINDOW {
                add(&mut odd, &generator[i], ds[2 * i + 1]);
                add(&mut odd, &keyed[i], dt[2 * i + 1]);
            }
            add(&mut even, &generator[i], ds[2 * i]);
            add(&mut even, &keyed[i], dt[2 * i]);
        }
        for _ in 0..4 {
            odd = odd.double();
        }
        even + odd
    }
}

/// ENTL_A: the identifier's length in bits, two bytes big-endian (128).
const ENTL: [u8; 2] = ((SM2_DIST_ID.len() * 8) as u16).to_be_bytes();

/// Z_A for a key. Computed here because the crate keeps its own (`hash_z`)
/// private; the tests would fail on any difference, as every crate-made
/// signature would.
fn z_digest(key: &AffinePoint) -> sm3::digest::Output<Sm3> {
    let mut z = Sm3::new();
    z.update(ENTL);
    z.update(SM2_DIST_ID.as_bytes());
    z.update(Sm2::EQUATION_A.to_bytes());
    z.update(Sm2::EQUATION_B.to_bytes());
    // x ‖ y: the uncompressed SEC1 encoding without its leading 0x04.
    for p in [&AffinePoint::GENERATOR, key] {
        z.update(&p.to_sec1_point(false).as_bytes()[1..]);
    }
    z.finalize()
}

#[cfg(test)]
mod tests;
