//! Key derivation with purpose-binding labels.
//!
//! Every symmetric key in a round is 16 bytes of HKDF output (HKDF-SHA-256 for
//! `intl`, HKDF-SM3 for `gm`) with
//!
//! ```text
//! salt = "confide/v1"
//! info = label ‖ suite code (1 byte) ‖ round (u64 BE) ‖ a (u32 BE) ‖ b (u32 BE)
//! ```
//!
//! where the label names the purpose ([`Purpose::label`]). For pairwise masks
//! `a < b` are the two member ids in ascending order (both sides derive the
//! same key); for the self mask `a = b =` the owner; for share encryption
//! `a` is the sender and `b` the receiver, so each direction has its own key.

use zeroize::Zeroizing;

use crate::error::CryptoError;
use crate::ids::MemberId;
use crate::suite::Suite;

/// HKDF salt for all Confide keys.
pub const SALT: &[u8] = b"confide/v1";

/// What a derived key is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// PRG key of the pairwise mask between two members.
    PairwiseMask,
    /// PRG key of a member's self mask.
    SelfMask,
    /// AEAD key for Shamir shares from one member to another.
    ShareEncryption,
}

impl Purpose {
    /// The label bound into `info`.
    pub fn label(self) -> &'static [u8] {
        match self {
            Purpose::PairwiseMask => b"confide/v1/pairwise-mask",
            Purpose::SelfMask => b"confide/v1/self-mask",
            Purpose::ShareEncryption => b"confide/v1/share-encryption",
        }
    }
}

/// Derive a 16-byte key as documented at module level.
pub fn derive_key(
    suite: Suite,
    purpose: Purpose,
    ikm: &[u8],
    round: u64,
    a: MemberId,
    b: MemberId,
) -> Result<Zeroizing<[u8; 16]>, CryptoError> {
    let mut info = Vec::with_capacity(48);
    info.extend_from_slice(purpose.label());
    info.push(suite.code());
    info.extend_from_slice(&round.to_be_bytes());
    info.extend_from_slice(&a.to_be_bytes());
    info.extend_from_slice(&b.to_be_bytes());
    let mut out = Zeroizing::new([0u8; 16]);
    suite.provider().kdf(ikm, SALT, &info, &mut out[..])?;
    Ok(out)
}
