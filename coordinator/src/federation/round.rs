//! The active round: the crypto machine ([`AnyCoordinator`]) with the
//! round's bookkeeping. Site messages are routed into the machine by one
//! helper ([`ActiveRound::deliver`]); the machine's outputs become tasks on
//! the cohort's streams ([`ActiveRound::pump`]); masked inputs arrive as
//! bounded [`Upload`]s.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use confide_crypto::protocol::{AnyCoordinator, AnyOutput, AnyRoundResult};
use confide_crypto::protocol::{
    KeyAdvert, MaskingSet, ShareBundle, SurvivorSignature, UnmaskResponse,
};
use confide_crypto::{MemberId, ProtocolError, Stage};
use confide_proto::convert;
use confide_proto::v1 as pb;
use tokio::sync::OwnedSemaphorePermit;
use tracing::info;

use super::registry::{Registry, SessionInfo};
use super::scheduler::RoundKind;
use crate::error::RequestError;

/// Wraps a task kind.
pub fn task(kind: pb::task::Kind) -> pb::Task {
    pb::Task { kind: Some(kind) }
}

/// A site's stage message, converted from the wire.
#[derive(Debug)]
pub enum SiteMessage {
    /// Stage 1: the site's advert, its verifying key and its TLS certificate.
    Advert {
        /// The advert.
        advert: KeyAdvert,
        /// The verifying key the site joined with.
        identity: Vec<u8>,
        /// DER of the TLS certificate presented (empty in insecure mode).
        certificate: Vec<u8>,
    },
    /// Stage 2: sealed shares.
    Shares(ShareBundle),
    /// Stage 3: the (masked) vector, little-endian, and the signed set of
    /// peers it was masked with (none in plaintext mode).
    Input {
        /// The vector.
        vector: Vec<u8>,
        /// The masking set from the upload's first chunk.
        masking: Option<MaskingSet>,
    },
    /// Stage 4: a signature on the survivor set.
    Consistency(SurvivorSignature),
    /// Stage 5: unmask shares.
    Unmask(UnmaskResponse),
}

impl SiteMessage {
    /// Payload bytes, for the round's traffic counters.
    fn payload_bytes(&self) -> u64 {
        let n = match self {
            SiteMessage::Advert { advert, .. } => {
                advert.enc_public.len() + advert.mask_public.len() + advert.signature.len()
            }
            SiteMessage::Shares(b) => b.shares.iter().map(|s| s.ciphertext.len() + 8).sum(),
            SiteMessage::Input { vector, masking } => {
                vector.len()
                    + masking
                        .as_ref()
                        .map_or(0, |m| 4 * m.peers.len() + m.signature.len())
            }
            SiteMessage::Consistency(s) => s.signature.len(),
            SiteMessage::Unmask(r) => (r.seed_shares.len() + r.key_shares.len()) * 48,
        };
        n as u64
    }
}

/// The round in progress.
pub struct ActiveRound {
    /// Round id.
    pub id: u64,
    /// Kind.
    pub kind: RoundKind,
    /// Cohort members' site names.
    pub names: BTreeMap<MemberId, String>,
    /// Each member's site name and TLS certificate as presented with its
    /// advert this round: what neighbours get relayed to check the binding.
    relayed: BTreeMap<MemberId, convert::RelayedIdentity>,
    /// The crypto machine.
    pub machine: AnyCoordinator,
    /// Elements of each site's vector.
    pub vector_len: usize,
    /// The model the round started from (safetensors).
    pub model_bytes: Arc<Vec<u8>>,
    /// The machine's result, once it finished.
    pub result: Option<Result<AnyRoundResult, ProtocolError>>,
    /// Start.
    pub started: Instant,
    stage_started: Instant,
    /// Seconds per closed stage.
    pub stage_secs: Vec<(String, f64)>,
    /// Payload bytes received.
    pub bytes_in: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// Every task sent to each member this round, replayed when its stream
    /// reconnects (sites ignore what they already handled).
    pub sent: BTreeMap<MemberId, Vec<pb::Task>>,
}

impl ActiveRound {
    /// A round started at `now`, nothing sent yet.
    pub fn new(
        id: u64,
        kind: RoundKind,
        names: BTreeMap<MemberId, String>,
        machine: AnyCoordinator,
        vector_len: usize,
        model_bytes: Arc<Vec<u8>>,
        now: Instant,
    ) -> Self {
        ActiveRound {
            id,
            kind,
            names,
            relayed: BTreeMap::new(),
            machine,
            vector_len,
            model_bytes,
            result: None,
            started: now,
            stage_started: now,
            stage_secs: Vec::new(),
            bytes_in: 0,
            bytes_out: 0,
            sent: BTreeMap::new(),
        }
    }

    /// Send `t` to `to` (and remember it for a replay).
    pub fn send(&mut self, registry: &Registry, to: MemberId, t: pb::Task) {
        self.bytes_out += prost::Message::encoded_len(&t) as u64;
        self.sent.entry(to).or_default().push(t.clone());
        if let Some(name) = self.names.get(&to) {
            registry.send(name, t);
        }
    }

    /// The site may send messages of this round: it is in the cohort and the
    /// message names this round.
    pub fn admit(&self, info: &SessionInfo, round: u64) -> Result<(), RequestError> {
        if self.id != round {
            return Err(RequestError::WrongRound {
                expected: self.id,
                got: round,
            });
        }
        if !self.names.contains_key(&info.member) {
            return Err(RequestError::NotInCohort {
                site: info.site.clone(),
                round,
            });
        }
        Ok(())
    }

    /// Route one site message into the machine.
    pub fn deliver(
        &mut self,
        from: MemberId,
        msg: SiteMessage,
        now: Instant,
    ) -> Result<(), RequestError> {
        self.bytes_in += msg.payload_bytes();
        match msg {
            SiteMessage::Advert {
                advert,
                identity,
                certificate,
            } => {
                // Recorded before the machine sees the advert: a duplicate is
                // refused by the machine and the certificate stays the first one.
                let site = self.names.get(&from).cloned().unwrap_or_default();
                self.relayed
                    .entry(from)
                    .or_insert(convert::RelayedIdentity { site, certificate });
                self.machine.handle_advert(advert, identity, now)?
            }
            SiteMessage::Shares(bundle) => self.machine.handle_shares(bundle, now)?,
            SiteMessage::Input { vector, masking } => self
                .machine
                .handle_masked_input_bytes(self.id, from, &vector, masking, now)?,
            SiteMessage::Consistency(sig) => self.machine.handle_consistency(sig, now)?,
            SiteMessage::Unmask(resp) => self.machine.handle_unmask_response(resp, now)?,
        }
        Ok(())
    }

    /// Checks before an upload of `total_len` elements is buffered; returns
    /// the bytes per element.
    pub fn precheck_upload(
        &self,
        info: &SessionInfo,
        round: u64,
        total_len: u64,
    ) -> Result<usize, RequestError> {
        if self.id != round {
            return Err(RequestError::WrongRound {
                expected: self.id,
                got: round,
            });
        }
        let stage = self.machine.stage();
        if stage != Stage::MaskedInput {
            return Err(RequestError::NotUploading { round, stage });
        }
        self.admit(info, round)?;
        if !self.machine.pending().contains(&info.member) {
            return Err(RequestError::AlreadySubmitted(info.member));
        }
        if total_len != self.vector_len as u64 {
            return Err(RequestError::VectorLength {
                expected: self.vector_len,
                got: total_len,
            });
        }
        Ok(self.machine.width())
    }

    /// Drain the machine's outputs at `now`: send tasks, record stage
    /// closures and the result.
    pub fn pump(&mut self, registry: &Registry, now: Instant) {
        while let Some(o) = self.machine.poll_output() {
            match o {
                AnyOutput::NeighbourKeys { to, msg } => {
                    // With each advert, the signer's site name and the DER it
                    // presented when it advertised (empty in insecure mode).
                    let keys =
                        convert::neighbour_keys_with_certificates(&msg, |m| self.relayed.get(&m));
                    self.send(registry, to, task(pb::task::Kind::NeighbourKeys(keys)));
                }
                AnyOutput::IncomingShares { to, msg } => {
                    let shares = convert::incoming_shares_to_proto(&msg);
                    self.send(registry, to, task(pb::task::Kind::IncomingShares(shares)));
                }
                AnyOutput::ConsistencyRequest { to, msg } => {
                    // Masking sets and signatures travel with their signer's
                    // site and certificate, like adverts.
                    let req = convert::consistency_request_with_certificates(&msg, |m| {
                        self.relayed.get(&m)
                    });
                    self.send(registry, to, task(pb::task::Kind::ConsistencyRequest(req)));
                }
                AnyOutput::UnmaskRequest { to, msg } => {
                    let req =
                        convert::unmask_request_with_certificates(&msg, |m| self.relayed.get(&m));
                    self.send(registry, to, task(pb::task::Kind::UnmaskRequest(req)));
                }
                AnyOutput::StageClosed {
                    stage,
                    completed,
                    dropped,
                } => {
                    let secs = now
                        .saturating_duration_since(self.stage_started)
                        .as_secs_f64();
                    self.stage_started = now;
                    self.stage_secs.push((stage.to_string(), secs));
                    info!(round = self.id, %stage, secs = format!("{secs:.3}"), completed = completed.len(), dropped = ?dropped, "stage closed");
                }
                AnyOutput::Finished(res) => self.result = Some(res),
            }
        }
    }
}

/// A masked-input upload in progress: bounded by a semaphore permit and by
/// the round's vector length, so memory never exceeds
/// `max_concurrent_uploads × vector bytes`.
pub struct Upload {
    pub(super) round: u64,
    pub(super) member: MemberId,
    total: usize,
    width: usize,
    buf: Vec<u8>,
    _permit: OwnedSemaphorePermit,
}

impl Upload {
    /// An empty upload of `total` elements of `width` bytes.
    pub(super) fn new(
        round: u64,
        member: MemberId,
        total: usize,
        width: usize,
        permit: OwnedSemaphorePermit,
    ) -> Self {
        Upload {
            round,
            member,
            total,
            width,
            buf: Vec::with_capacity(total * width),
            _permit: permit,
        }
    }

    /// Append one chunk; `offset` counts elements and must continue the stream.
    pub fn push(&mut self, offset: u64, data: &[u8]) -> Result<(), RequestError> {
        let have = self.buf.len() / self.width;
        if offset != have as u64 {
            return Err(RequestError::ChunkOffset {
                offset,
                expected: have as u64,
            });
        }
        if !data.len().is_multiple_of(self.width)
            || self.buf.len() + data.len() > self.total * self.width
        {
            return Err(RequestError::ChunkSize {
                bytes: data.len(),
                elements: self.total,
                width: self.width,
            });
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }

    /// The whole vector and the upload slot, or why the stream is incomplete.
    pub(super) fn into_vector(self) -> Result<(Vec<u8>, OwnedSemaphorePermit), RequestError> {
        if self.buf.len() != self.total * self.width {
            return Err(RequestError::Truncated {
                received: self.buf.len() / self.width,
                elements: self.total,
            });
        }
        Ok((self.buf, self._permit))
    }
}
