//! Conversions of the consistency and unmask stages: the signed masking set
//! (sent with the first masked-input chunk), the consistency request and
//! response, and the unmask request. Survivor signatures carry their
//! signer's identity the way relayed adverts do: the verifying key is the
//! crypto identity, the site name and certificate are relayed beside it for
//! the site's own check against the federation CA. Relayed masking sets carry
//! none: the sites that check them hold the key from the advert.

use confide_crypto::MemberId;
use confide_crypto::protocol::{
    ConsistencyRequest, MaskingSet, RelayedMaskingSet, RelayedSignature, SurvivorSignature,
    UnmaskRequest,
};

use super::{ConvertError, RelayedIdentity, bad};
use crate::v1;

/// (site, certificate) to relay for `member` (empty when unknown).
fn relayed<'a>(
    identity_of: &impl Fn(MemberId) -> Option<&'a RelayedIdentity>,
    member: MemberId,
) -> (String, Vec<u8>) {
    identity_of(member)
        .map(|i| (i.site.clone(), i.certificate.clone()))
        .unwrap_or_default()
}

/// Crypto → wire.
pub fn masking_set_to_proto(m: &MaskingSet) -> v1::MaskingSet {
    let MaskingSet {
        round,
        member,
        peers,
        signature,
    } = m;
    v1::MaskingSet {
        round: *round,
        member: *member,
        peers: peers.clone(),
        signature: signature.clone(),
    }
}

/// Wire → crypto (the machines check order and membership).
pub fn masking_set_from_proto(m: &v1::MaskingSet) -> MaskingSet {
    let v1::MaskingSet {
        round,
        member,
        peers,
        signature,
    } = m;
    MaskingSet {
        round: *round,
        member: *member,
        peers: peers.clone(),
        signature: signature.clone(),
    }
}

/// Crypto → wire.
pub fn consistency_request_to_proto(m: &ConsistencyRequest) -> v1::ConsistencyRequest {
    let ConsistencyRequest {
        round,
        survivors,
        masking,
    } = m;
    v1::ConsistencyRequest {
        round: *round,
        survivors: survivors.clone(),
        masking: masking
            .iter()
            .map(|r| {
                let RelayedMaskingSet {
                    member,
                    unmasked,
                    signature,
                } = r;
                v1::RelayedMaskingSet {
                    member: *member,
                    unmasked: unmasked.clone(),
                    signature: signature.clone(),
                }
            })
            .collect(),
    }
}

/// Wire → crypto, in wire order (the machines check order and membership).
pub fn consistency_request_from_proto(m: &v1::ConsistencyRequest) -> ConsistencyRequest {
    let v1::ConsistencyRequest {
        round,
        survivors,
        masking,
    } = m;
    ConsistencyRequest {
        round: *round,
        survivors: survivors.clone(),
        masking: masking
            .iter()
            .map(|r| {
                let v1::RelayedMaskingSet {
                    member,
                    unmasked,
                    signature,
                } = r;
                RelayedMaskingSet {
                    member: *member,
                    unmasked: unmasked.clone(),
                    signature: signature.clone(),
                }
            })
            .collect(),
    }
}

/// Crypto → wire.
pub fn consistency_response_to_proto(
    s: &SurvivorSignature,
    session: &str,
) -> v1::ConsistencyResponse {
    let SurvivorSignature {
        round,
        member,
        signature,
    } = s;
    v1::ConsistencyResponse {
        session: session.to_string(),
        round: *round,
        member: *member,
        signature: signature.clone(),
    }
}

/// Wire → crypto. The session travels beside the signature; the caller
/// checks it.
pub fn consistency_response_from_proto(r: &v1::ConsistencyResponse) -> SurvivorSignature {
    let v1::ConsistencyResponse {
        session: _,
        round,
        member,
        signature,
    } = r;
    SurvivorSignature {
        round: *round,
        member: *member,
        signature: signature.clone(),
    }
}

/// Crypto → wire; identities travel as `verifying_key` only.
pub fn unmask_request_to_proto(m: &UnmaskRequest) -> v1::UnmaskRequest {
    unmask_request_with_certificates(m, |_| None)
}

/// Crypto → wire, as the coordinator relays it: each signature with its
/// signer's site name and certificate from `identity_of`.
pub fn unmask_request_with_certificates<'a>(
    m: &UnmaskRequest,
    identity_of: impl Fn(MemberId) -> Option<&'a RelayedIdentity>,
) -> v1::UnmaskRequest {
    let UnmaskRequest {
        round,
        survivors,
        signatures,
    } = m;
    v1::UnmaskRequest {
        round: *round,
        survivors: survivors.clone(),
        signatures: signatures
            .iter()
            .map(|r| {
                let RelayedSignature {
                    signature,
                    identity,
                } = r;
                let SurvivorSignature {
                    round,
                    member,
                    signature,
                } = signature;
                let (site, certificate) = relayed(&identity_of, *member);
                v1::RelayedSignature {
                    signature: Some(v1::SurvivorSignature {
                        round: *round,
                        member: *member,
                        signature: signature.clone(),
                    }),
                    verifying_key: identity.clone(),
                    certificate,
                    site,
                }
            })
            .collect(),
    }
}

/// Wire → crypto, in wire order; each signature's relayed `verifying_key`
/// must be present.
pub fn unmask_request_from_proto(m: &v1::UnmaskRequest) -> Result<UnmaskRequest, ConvertError> {
    let v1::UnmaskRequest {
        round,
        survivors,
        signatures: relayed,
    } = m;
    let mut signatures = Vec::with_capacity(relayed.len());
    for r in relayed {
        let v1::RelayedSignature {
            signature,
            verifying_key,
            certificate: _,
            site: _,
        } = r;
        let v1::SurvivorSignature {
            round,
            member,
            signature,
        } = signature
            .as_ref()
            .ok_or_else(|| bad("unmask_request.signatures.signature", "missing"))?;
        if verifying_key.is_empty() {
            return Err(bad(
                "unmask_request.signatures.verifying_key",
                format!("empty for member {member}"),
            ));
        }
        signatures.push(RelayedSignature {
            signature: SurvivorSignature {
                round: *round,
                member: *member,
                signature: signature.clone(),
            },
            identity: verifying_key.clone(),
        });
    }
    Ok(UnmaskRequest {
        round: *round,
        survivors: survivors.clone(),
        signatures,
    })
}
