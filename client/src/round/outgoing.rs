//! The stage messages a site sends, as they wait in the round's outbox:
//! built from the site machine's output, stamped with the session when
//! (re)sent, measured for the round's log line.

use confide_crypto::Stage;
use confide_crypto::protocol::{AnySiteOutput, MaskingSet, RingVec};
use confide_proto::{layout, v1};

use crate::convert;

/// A stage message waiting to be (re)sent; kept until acknowledged so it can
/// be resent after a reconnect within the stage deadline.
#[derive(Clone, Debug)]
pub(crate) enum Outgoing {
    Advertise(v1::AdvertiseKeysRequest),
    Shares(v1::ShareKeysRequest),
    Masked(Vec<v1::MaskedInputChunk>),
    Consistency(v1::ConsistencyResponse),
    Unmask(v1::UnmaskResponse),
}

impl Outgoing {
    pub(crate) fn stage(&self) -> Stage {
        match self {
            Outgoing::Advertise(_) => Stage::AdvertiseKeys,
            Outgoing::Shares(_) => Stage::ShareKeys,
            Outgoing::Masked(_) => Stage::MaskedInput,
            Outgoing::Consistency(_) => Stage::Consistency,
            Outgoing::Unmask(_) => Stage::Unmask,
        }
    }

    /// `o` of the round `start` announced.
    pub(super) fn from_site(o: AnySiteOutput, session: &str, start: &v1::RoundStart) -> Outgoing {
        Self::from_site_keeping(o, session, start).0
    }

    /// [`Outgoing::from_site`], and a masked vector's memory once its
    /// chunks are packed, for the next round's vector to reuse.
    pub(super) fn from_site_keeping(
        o: AnySiteOutput,
        session: &str,
        start: &v1::RoundStart,
    ) -> (Outgoing, Option<RingVec>) {
        let out = match o {
            AnySiteOutput::Advertise(a) => Outgoing::Advertise(v1::AdvertiseKeysRequest {
                session: session.to_string(),
                advert: Some(convert::key_advert_to_proto(&a)),
            }),
            AnySiteOutput::Shares(b) => {
                Outgoing::Shares(convert::share_bundle_to_proto(&b, session))
            }
            AnySiteOutput::MaskedInput { vector, masking } => {
                let chunks = masked_chunks(session, start, &vector, Some(&masking));
                return (Outgoing::Masked(chunks), Some(vector));
            }
            AnySiteOutput::Consistency(s) => {
                Outgoing::Consistency(convert::consistency_response_to_proto(&s, session))
            }
            AnySiteOutput::Unmask(u) => {
                Outgoing::Unmask(convert::unmask_response_to_proto(&u, session))
            }
        };
        (out, None)
    }

    /// Stamps the current session (it may have been renewed by a rejoin).
    pub(super) fn set_session(&mut self, session: &str) {
        match self {
            Outgoing::Advertise(m) => m.session = session.to_string(),
            Outgoing::Shares(m) => m.session = session.to_string(),
            Outgoing::Masked(chunks) => {
                for c in chunks {
                    c.session = session.to_string();
                }
            }
            Outgoing::Consistency(m) => m.session = session.to_string(),
            Outgoing::Unmask(m) => m.session = session.to_string(),
        }
    }

    /// Bytes on the wire, for the round's log line (payload only for chunks).
    pub(super) fn bytes(&self) -> u64 {
        use prost::Message;
        match self {
            Outgoing::Advertise(m) => m.encoded_len() as u64,
            Outgoing::Shares(m) => m.encoded_len() as u64,
            Outgoing::Masked(chunks) => chunks.iter().map(|c| c.data.len() as u64).sum(),
            Outgoing::Consistency(m) => m.encoded_len() as u64,
            Outgoing::Unmask(m) => m.encoded_len() as u64,
        }
    }
}

/// The upload of `v` in the round `start` announced, in the wire form both
/// sides derive from it (a training vector's model slots bit-packed); the
/// first chunk carries the signed masking set of a secure round.
pub(super) fn masked_chunks(
    session: &str,
    start: &v1::RoundStart,
    v: &RingVec,
    masking: Option<&MaskingSet>,
) -> Vec<v1::MaskedInputChunk> {
    let packing = layout::round_packing(start, v.ring());
    layout::ring_vec_chunks(session, start.round, v, masking, &packing)
}
