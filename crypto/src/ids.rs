//! The two identifiers every layer of a round shares: who ([`MemberId`]) and
//! when ([`Stage`]).
//!
//! This is a leaf module (it imports nothing from the crate) so that
//! `error` and `kdf` can name members and stages without importing
//! `protocol`, which itself depends on both of them.
//!
//! `MemberId` stays a plain `u32` alias rather than a newtype: it is part of
//! the public API of every crate in the workspace (wire conversions, tests,
//! the coordinator's tables), so a newtype would ripple through all of them
//! for little gain at this layer.

use std::fmt;

/// A member's id within the federation's current cohort numbering.
pub type MemberId = u32;

/// The stages of a round, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    /// Members send signed per-round public keys.
    AdvertiseKeys,
    /// Members send AEAD-sealed Shamir shares for their neighbours.
    ShareKeys,
    /// Members send their masked input vectors.
    MaskedInput,
    /// Survivors sign the one survivor set the coordinator announced.
    Consistency,
    /// Survivors send the shares needed to remove the masks.
    Unmask,
    /// The round has ended.
    Done,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::AdvertiseKeys => "advertise-keys",
            Stage::ShareKeys => "share-keys",
            Stage::MaskedInput => "masked-input",
            Stage::Consistency => "consistency",
            Stage::Unmask => "unmask",
            Stage::Done => "done",
        })
    }
}
