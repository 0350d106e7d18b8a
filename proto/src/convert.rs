//! Lossless conversions between the wire messages (`confide_proto::v1`) and
//! the protocol types of `confide_crypto`, in both directions, so the site and
//! the coordinator agree on one mapping. Checks on the way in are structural
//! (lengths, enums, ranges); the state machines check the semantics.
//! Messages are destructured field by field, so a field added to the
//! `.proto` is a compile error here until it is mapped or consciously
//! skipped.
//!
//! ```text
//!  v1::RoundStart      ──round_config──▶  RoundConfig  ──round_start──▶ v1::RoundStart
//!                        (+ federation, CA fingerprint → context)
//!  v1::KeyAdvert       ◀─────────────────▶ KeyAdvert
//!  v1::NeighbourKeys   ◀─────────────────▶ NeighbourKeys      (identity = verifying_key;
//!                                                              site + certificate relayed)
//!  v1::ShareKeysRequest◀─────────────────▶ ShareBundle
//!  v1::IncomingShares  ◀─────────────────▶ IncomingShares
//!  v1::MaskingSet      ◀─────────────────▶ MaskingSet         (first masked-input chunk)
//!  v1::ConsistencyRequest ◀──────────────▶ ConsistencyRequest (masking sets relayed like adverts)
//!  v1::ConsistencyResponse ◀─────────────▶ SurvivorSignature
//!  v1::UnmaskRequest   ◀─────────────────▶ UnmaskRequest      (signatures relayed like adverts)
//!  v1::UnmaskResponse  ◀─────────────────▶ UnmaskResponse     (44-byte shares)
//!  v1::Quantisation    ──quant_config───▶ QuantConfig
//!  v1::DeclineRequest  ◀─────────────────▶ Decline            (a site refusing a round)
//! ```
//!
//! The stage-4/5 messages live in `convert/consistency.rs`, `Decline` in
//! `convert/decline.rs`.

use crate::context;
use crate::v1;
use confide_crypto::graph::SecAggParams;
use confide_crypto::protocol::{
    EncryptedShare, IncomingShares, KeyAdvert, NeighbourKeys, PairwiseKey, RelayedAdvert,
    ShareBundle, UnmaskResponse,
};
use confide_crypto::quant::QuantConfig;
use confide_crypto::shamir::Share;
use confide_crypto::{MemberId, Ring, RoundConfig, Suite};

/// A wire message that does not convert; `field` names the offending field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ConvertError {
    /// Field path, for example `round_start.graph_seed`.
    pub field: &'static str,
    /// What is wrong.
    pub reason: String,
}

fn bad(field: &'static str, reason: impl Into<String>) -> ConvertError {
    ConvertError {
        field,
        reason: reason.into(),
    }
}

/// Largest vector a round may announce: 2^31 elements (8 GiB of u32), far
/// above any model this project trains, but small enough to refuse nonsense
/// before anything is allocated.
pub const MAX_VECTOR_LEN: u64 = 1 << 31;

mod consistency;
mod decline;
pub use consistency::{
    consistency_request_from_proto, consistency_request_to_proto, consistency_response_from_proto,
    consistency_response_to_proto, masking_set_from_proto, masking_set_to_proto,
    unmask_request_from_proto, unmask_request_to_proto, unmask_request_with_certificates,
};
pub use decline::{
    Decline, DeclineReason, MAX_DECLINE_MESSAGE, MAX_REPLAY_COHORT, MAX_SITE_NAME,
    decline_from_proto, decline_to_proto,
};

/// The cryptographic part of a round announcement, bound to `federation` and
/// the CA with fingerprint `ca_fingerprint` through
/// [`RoundConfig::context`] ([`context::round_context`]). The attempt nonce
/// and the model hash must be 32 bytes each: they enter the context, and a
/// round without them would not be bound to one attempt and one model.
pub fn round_config(
    rs: &v1::RoundStart,
    federation: &str,
    ca_fingerprint: &[u8; 32],
) -> Result<RoundConfig, ConvertError> {
    let suite: Suite = rs
        .suite
        .parse()
        .map_err(|_| bad("round_start.suite", format!("unknown suite '{}'", rs.suite)))?;
    let ring: Ring = rs
        .ring
        .parse()
        .map_err(|_| bad("round_start.ring", format!("unknown ring '{}'", rs.ring)))?;
    let graph_seed: [u8; 32] = rs.graph_seed.as_slice().try_into().map_err(|_| {
        bad(
            "round_start.graph_seed",
            format!("must be 32 bytes, got {}", rs.graph_seed.len()),
        )
    })?;
    if rs.vector_len == 0 || rs.vector_len > MAX_VECTOR_LEN {
        return Err(bad(
            "round_start.vector_len",
            format!(
                "must be between 1 and {MAX_VECTOR_LEN}, got {}",
                rs.vector_len
            ),
        ));
    }
    if rs.cohort.is_empty() {
        return Err(bad("round_start.cohort", "empty"));
    }
    for (field, v) in [
        ("round_start.attempt", &rs.attempt),
        ("round_start.model_sha256", &rs.model_sha256),
    ] {
        if v.len() != 32 {
            return Err(bad(field, format!("must be 32 bytes, got {}", v.len())));
        }
    }
    Ok(RoundConfig {
        round: rs.round,
        suite,
        ring,
        cohort: rs.cohort.clone(),
        params: SecAggParams {
            k: rs.k as usize,
            t: rs.t as usize,
        },
        graph_seed,
        // Checked: a length this platform cannot index is refused, not cut.
        vector_len: usize::try_from(rs.vector_len).map_err(|_| {
            bad(
                "round_start.vector_len",
                format!("{} elements exceed this platform's memory", rs.vector_len),
            )
        })?,
        min_survivors: rs.min_survivors as usize,
        max_colluders: rs.max_colluders as usize,
        context: context::round_context(suite, federation, ca_fingerprint, rs),
    })
}

/// A `RoundStart` carrying `cfg` for `member`; the other fields (kind,
/// quantisation, training, attempt nonce, model hash, …) are left at their
/// defaults for the caller to fill in. `cfg.context` is not carried: each
/// side derives it from the finished announcement ([`round_config`]).
pub fn round_start(cfg: &RoundConfig, member: MemberId) -> v1::RoundStart {
    v1::RoundStart {
        round: cfg.round,
        member,
        cohort: cfg.cohort.clone(),
        suite: cfg.suite.name().to_string(),
        ring: cfg.ring.to_string(),
        k: u32::try_from(cfg.params.k).unwrap_or(u32::MAX),
        t: u32::try_from(cfg.params.t).unwrap_or(u32::MAX),
        graph_seed: cfg.graph_seed.to_vec(),
        vector_len: cfg.vector_len as u64,
        min_survivors: u32::try_from(cfg.min_survivors).unwrap_or(u32::MAX),
        max_colluders: u32::try_from(cfg.max_colluders).unwrap_or(u32::MAX),
        ..Default::default()
    }
}

/// The quantiser settings of a round (`min_levels = 1`: the coordinator
/// already chose the scale, the site must not second-guess it; the
/// quantiser does check that the scale fits the announced `bits`, 0 meaning
/// the ring's).
pub fn quant_config(q: Option<&v1::Quantisation>, ring: Ring) -> Result<QuantConfig, ConvertError> {
    let v1::Quantisation {
        clip,
        scale,
        max_weight,
        max_cohort,
        bits,
    } = q.ok_or_else(|| bad("round_start.quantisation", "missing"))?;
    if !(scale.is_finite() && *scale > 0.0) {
        return Err(bad(
            "round_start.quantisation.scale",
            format!("must be a positive number, got {scale}"),
        ));
    }
    Ok(QuantConfig {
        ring,
        clip: *clip,
        max_weight: *max_weight,
        max_cohort: *max_cohort as usize,
        scale: Some(*scale),
        levels: None,
        bits: Some(if *bits == 0 { ring.bits() } else { *bits }),
        min_levels: 1,
    })
}

/// Crypto → wire.
pub fn key_advert_to_proto(a: &KeyAdvert) -> v1::KeyAdvert {
    let KeyAdvert {
        round,
        member,
        enc_public,
        mask_public,
        signature,
    } = a;
    v1::KeyAdvert {
        round: *round,
        member: *member,
        enc_public: enc_public.clone(),
        mask_public: mask_public.clone(),
        signature: signature.clone(),
    }
}

/// Wire → crypto.
pub fn key_advert_from_proto(a: &v1::KeyAdvert) -> KeyAdvert {
    let v1::KeyAdvert {
        round,
        member,
        enc_public,
        mask_public,
        signature,
    } = a;
    KeyAdvert {
        round: *round,
        member: *member,
        enc_public: enc_public.clone(),
        mask_public: mask_public.clone(),
        signature: signature.clone(),
    }
}

/// Crypto → wire; the identity travels as `verifying_key`, with no site
/// name or certificate (tests and fakes: the coordinator relays each advert
/// with its certificate via [`relayed_advert_to_proto`], encoded once).
pub fn neighbour_keys_to_proto(m: &NeighbourKeys) -> v1::NeighbourKeys {
    v1::NeighbourKeys {
        round: m.round,
        adverts: m
            .adverts
            .iter()
            .map(|r| relayed_advert_to_proto(r, None))
            .collect(),
    }
}

/// The site name and certificate (DER) the coordinator relays with one
/// member's advert, so neighbours can check the key binding themselves.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RelayedIdentity {
    /// The member's site name.
    pub site: String,
    /// The certificate the member presented over mTLS.
    pub certificate: Vec<u8>,
}

/// One advert as relayed, with its signer's site name and certificate
/// (empty when `None`); the same for every neighbour it goes to.
pub fn relayed_advert_to_proto(
    r: &RelayedAdvert,
    identity: Option<&RelayedIdentity>,
) -> v1::RelayedAdvert {
    let RelayedAdvert {
        advert,
        identity: key,
    } = r;
    let (site, certificate) = identity
        .map(|i| (i.site.clone(), i.certificate.clone()))
        .unwrap_or_default();
    v1::RelayedAdvert {
        advert: Some(key_advert_to_proto(advert)),
        verifying_key: key.clone(),
        certificate,
        site,
    }
}

/// Wire → crypto; the identity is the relayed `verifying_key`, which must be
/// present.
pub fn neighbour_keys_from_proto(m: &v1::NeighbourKeys) -> Result<NeighbourKeys, ConvertError> {
    let v1::NeighbourKeys {
        round,
        adverts: relayed,
    } = m;
    let mut adverts = Vec::with_capacity(relayed.len());
    for r in relayed {
        // Site name and certificate are for the identity check
        // the site does against the federation CA, not for the crypto machine.
        let v1::RelayedAdvert {
            advert,
            verifying_key,
            certificate: _,
            site: _,
        } = r;
        let advert = advert
            .as_ref()
            .ok_or_else(|| bad("neighbour_keys.adverts.advert", "missing"))?;
        if verifying_key.is_empty() {
            return Err(bad(
                "neighbour_keys.adverts.verifying_key",
                format!("empty for member {}", advert.member),
            ));
        }
        adverts.push(RelayedAdvert {
            advert: key_advert_from_proto(advert),
            identity: verifying_key.clone(),
        });
    }
    Ok(NeighbourKeys {
        round: *round,
        adverts,
    })
}

/// Crypto → wire.
pub fn share_to_proto(e: &EncryptedShare) -> v1::EncryptedShare {
    let EncryptedShare {
        from,
        to,
        ciphertext,
    } = e;
    v1::EncryptedShare {
        from: *from,
        to: *to,
        ciphertext: ciphertext.clone(),
    }
}

fn share_from_proto(e: &v1::EncryptedShare) -> EncryptedShare {
    let v1::EncryptedShare {
        from,
        to,
        ciphertext,
    } = e;
    EncryptedShare {
        from: *from,
        to: *to,
        ciphertext: ciphertext.clone(),
    }
}

/// Crypto → wire.
pub fn share_bundle_to_proto(b: &ShareBundle, session: &str) -> v1::ShareKeysRequest {
    let ShareBundle {
        round,
        from,
        seed_commitment,
        shares,
    } = b;
    v1::ShareKeysRequest {
        session: session.to_string(),
        round: *round,
        from: *from,
        seed_commitment: seed_commitment.to_vec(),
        shares: shares.iter().map(share_to_proto).collect(),
    }
}

/// Wire → crypto.
/// The session travels beside the bundle; the caller checks it.
pub fn share_bundle_from_proto(r: &v1::ShareKeysRequest) -> Result<ShareBundle, ConvertError> {
    let v1::ShareKeysRequest {
        session: _,
        round,
        from,
        seed_commitment,
        shares,
    } = r;
    let seed_commitment: [u8; 32] = seed_commitment.as_slice().try_into().map_err(|_| {
        bad(
            "share_keys.seed_commitment",
            format!("must be 32 bytes, got {}", seed_commitment.len()),
        )
    })?;
    Ok(ShareBundle {
        round: *round,
        from: *from,
        seed_commitment,
        shares: shares.iter().map(share_from_proto).collect(),
    })
}

/// Crypto → wire.
pub fn incoming_shares_to_proto(m: &IncomingShares) -> v1::IncomingShares {
    let IncomingShares { round, shares } = m;
    v1::IncomingShares {
        round: *round,
        shares: shares.iter().map(share_to_proto).collect(),
    }
}

/// Wire → crypto.
pub fn incoming_shares_from_proto(m: &v1::IncomingShares) -> IncomingShares {
    let v1::IncomingShares { round, shares } = m;
    IncomingShares {
        round: *round,
        shares: shares.iter().map(share_from_proto).collect(),
    }
}

fn shares_to_proto(v: &[(MemberId, Share)]) -> Vec<v1::Share> {
    v.iter()
        .map(|(owner, s)| v1::Share {
            owner: *owner,
            share: s.to_bytes().to_vec(),
        })
        .collect()
}

fn shares_from_proto(
    v: &[v1::Share],
    field: &'static str,
) -> Result<Vec<(MemberId, Share)>, ConvertError> {
    v.iter()
        .map(|s| {
            let v1::Share { owner, share } = s;
            Share::from_bytes(share)
                .map(|share| (*owner, share))
                .map_err(|e| bad(field, format!("share of member {owner}: {e}")))
        })
        .collect()
}

/// Crypto → wire (shares as 44-byte [`Share::to_bytes`]).
pub fn unmask_response_to_proto(m: &UnmaskResponse, session: &str) -> v1::UnmaskResponse {
    let UnmaskResponse {
        round,
        from,
        seed_shares,
        key_shares,
        pair_keys,
    } = m;
    v1::UnmaskResponse {
        session: session.to_string(),
        round: *round,
        from: *from,
        seed_shares: shares_to_proto(seed_shares),
        key_shares: shares_to_proto(key_shares),
        pair_keys: pair_keys
            .iter()
            .map(|(peer, key)| v1::PairKey {
                peer: *peer,
                key: key.as_bytes().to_vec(),
            })
            .collect(),
    }
}

/// Wire → crypto.
/// The session travels beside the response; the caller checks it.
pub fn unmask_response_from_proto(m: &v1::UnmaskResponse) -> Result<UnmaskResponse, ConvertError> {
    let v1::UnmaskResponse {
        session: _,
        round,
        from,
        seed_shares,
        key_shares,
        pair_keys,
    } = m;
    let pair_keys = pair_keys
        .iter()
        .map(|v1::PairKey { peer, key }| {
            PairwiseKey::from_bytes(key)
                .map(|k| (*peer, k))
                .ok_or_else(|| {
                    bad(
                        "unmask.pair_keys",
                        format!(
                            "key for peer {peer} has {} bytes, expected {}",
                            key.len(),
                            PairwiseKey::LEN
                        ),
                    )
                })
        })
        .collect::<Result<_, _>>()?;
    Ok(UnmaskResponse {
        round: *round,
        from: *from,
        seed_shares: shares_from_proto(seed_shares, "unmask.seed_shares")?,
        key_shares: shares_from_proto(key_shares, "unmask.key_shares")?,
        pair_keys,
    })
}

#[cfg(test)]
mod tests;
