//! The SecAgg+ round as two sans-IO state machines: [`SiteMachine`] (one per
//! participant) and [`CoordinatorMachine`]. Neither does I/O, reads the clock
//! or touches a global RNG: messages go in through `handle_*`, messages come
//! out through `poll_output`, time and randomness are arguments.
//!
//! ```text
//!  site                                coordinator
//!  ────                                ───────────
//!  new() ─ Advertise(KeyAdvert) ─────▶ handle_advert        stage AdvertiseKeys
//!  handle_neighbour_keys ◀─────────── NeighbourKeys (signed adverts of neighbours)
//!        ─ Shares(ShareBundle) ──────▶ handle_shares        stage ShareKeys
//!  handle_incoming_shares ◀────────── IncomingShares (AEAD-sealed, addressed to it)
//!  handle_input(x) ─ MaskedInput ────▶ handle_masked_input  stage MaskedInput (summed on arrival)
//!  handle_unmask_request ◀─────────── UnmaskRequest (survivors, dropped)
//!        ─ Unmask(UnmaskResponse) ───▶ handle_unmask_response  stage Unmask
//!                                      ─ Finished(sum of survivors' inputs)
//! ```
//!
//! [`PlainAggregator`] is the coordinator of a round with secure aggregation
//! off: only the masked-input stage, plaintext vectors, the same checks and
//! the same [`CoordinatorOutput::Finished`] report. [`AnySite`] and
//! [`AnyCoordinator`] erase the ring (and, for the coordinator, secure versus
//! plain) so callers that learn the ring at run time write each call once;
//! vectors then travel as [`RingVec`].
//!
//! Files: `site.rs` and `coordinator.rs` hold the machines, `unmask.rs` the
//! coordinator's reconstruction step, `output.rs` what coordinators report,
//! `plain.rs` and `any.rs` the above. This file holds the shared message
//! types and key-derivation helpers, and imports nothing back from them.

mod any;
mod consistency;
mod coordinator;
mod output;
mod plain;
mod policy;
mod site;
mod unmask;

pub use any::{
    AnyCoordinator, AnyOutput, AnyRoundResult, AnySite, AnySiteOutput, AnyUnmaskJob,
    AnyUnmaskOutcome, RingVec,
};
pub use consistency::{
    ConsistencyRequest, MaskingSet, RelayedMaskingSet, RelayedSignature, SurvivorSignature,
};
pub use coordinator::{CoordinatorMachine, StageTimeouts, UnmaskJob, UnmaskOutcome};
pub use output::{CoordinatorOutput, RoundResult};
pub use plain::PlainAggregator;
pub use policy::SitePolicy;
#[cfg(any(test, feature = "test-util"))]
pub use site::LeakedSecrets;
pub use site::{SiteMachine, SiteOutput};

// Defined in a leaf module so `error` and `kdf` need not import `protocol`.
pub use crate::ids::{MemberId, Stage};

use std::collections::{BTreeSet, HashMap};

use zeroize::Zeroizing;

use crate::error::{CryptoError, ProtocolError};
use crate::graph::{self, NeighbourGraph, SecAggParams};
use crate::prg::Prg;
use crate::ring::Ring;
use crate::shamir::Share;
use crate::suite::{Suite, VerifyingKey};

/// Everything both sides must agree on for one round. The coordinator picks
/// it and announces it; each site validates it before taking part.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoundConfig {
    /// Round number; bound into every key, AAD and signature.
    pub round: u64,
    /// The federation's cipher suite.
    pub suite: Suite,
    /// The ring of the masked vectors.
    pub ring: Ring,
    /// The cohort, strictly ascending member ids.
    pub cohort: Vec<MemberId>,
    /// Neighbour-graph degree and Shamir threshold.
    pub params: SecAggParams,
    /// Public seed from which everyone derives the same neighbour graph.
    pub graph_seed: [u8; 32],
    /// Length of every input vector (model elements, weight and extra slots).
    pub vector_len: usize,
    /// Fewest members whose inputs may be aggregated (never below 2: a sum of
    /// one input is that input).
    pub min_survivors: usize,
    /// Most cohort members assumed to collude with the coordinator; sets the
    /// quorum of survivor-set signatures ([`RoundConfig::quorum`]).
    pub max_colluders: usize,
    /// What the layer above binds into the round: a hash over the federation,
    /// its CA, the attempt nonce, the model and the training settings. Opaque
    /// here; it enters [`RoundConfig::session_id`] with everything above.
    pub context: [u8; 32],
}

impl RoundConfig {
    /// The hash every signature of the round covers: the suite, ring, round,
    /// cohort, `k`, `t`, graph seed, vector length, minimum survivors,
    /// collusion bound and [`RoundConfig::context`]. Two sites holding
    /// different views of the round compute different ids, so each refuses
    /// the other's signed messages.
    pub fn session_id(&self) -> [u8; 32] {
        let mut cohort = Vec::with_capacity(4 * self.cohort.len());
        for id in &self.cohort {
            cohort.extend_from_slice(&id.to_be_bytes());
        }
        let ring = match self.ring {
            Ring::U32 => [32u8],
            Ring::U64 => [64u8],
        };
        let count = |v: usize| (v as u64).to_be_bytes();
        self.suite.provider().hash(&[
            b"confide/v2/session",
            &[self.suite.code()],
            &ring,
            &self.round.to_be_bytes(),
            &count(self.cohort.len()),
            &cohort,
            &count(self.params.k),
            &count(self.params.t),
            &self.graph_seed,
            &count(self.vector_len),
            &count(self.min_survivors),
            &count(self.max_colluders),
            &self.context,
        ])
    }

    /// Signatures on one survivor set needed before any site reveals shares:
    /// `⌊(n + c)/2⌋ + 1` of the `n` cohort members. Honest sites sign one set
    /// per round, so two different sets would need `2·quorum ≤ n + c` signers
    /// (the `c` colluders signing both): impossible.
    pub fn quorum(&self) -> usize {
        (self.cohort.len() + self.max_colluders) / 2 + 1
    }

    /// Check the configuration and derive the neighbour graph.
    pub fn topology(&self) -> Result<Topology, ProtocolError> {
        let n = self.cohort.len();
        // With two members each would learn the other's input from the sum.
        if n < 3 {
            return Err(ProtocolError::Config(format!(
                "a cohort needs at least 3 members, got {n}"
            )));
        }
        // A threshold of 1 would make every share the secret itself.
        if self.params.t < 2 {
            return Err(ProtocolError::Config(format!(
                "threshold t must be at least 2, got {}",
                self.params.t
            )));
        }
        if self.cohort.windows(2).any(|w| w[0] >= w[1]) {
            return Err(ProtocolError::Config(
                "cohort ids must be strictly ascending".into(),
            ));
        }
        if self.cohort.last().is_some_and(|&id| id == MemberId::MAX) {
            return Err(ProtocolError::Config(format!(
                "member id {} is reserved",
                MemberId::MAX
            )));
        }
        graph::validate(n, self.params).map_err(|e| ProtocolError::Config(e.to_string()))?;
        if self.min_survivors < 2 || self.min_survivors > n {
            return Err(ProtocolError::Config(format!(
                "min_survivors must be between 2 and the cohort size {n}, got {}",
                self.min_survivors
            )));
        }
        if self.max_colluders >= n || self.quorum() > n {
            return Err(ProtocolError::Config(format!(
                "collusion bound {} leaves no quorum in a cohort of {n}",
                self.max_colluders
            )));
        }
        let width = match self.ring {
            Ring::U32 => 4u64,
            Ring::U64 => 8u64,
        };
        if self.vector_len == 0 || (self.vector_len as u64).saturating_mul(width) > Prg::MAX_BYTES {
            return Err(ProtocolError::Config(format!(
                "vector length {} must be between 1 and {}",
                self.vector_len,
                Prg::MAX_BYTES / width
            )));
        }
        let graph = NeighbourGraph::harary(n, self.params.k, &self.graph_seed)
            .map_err(|e| ProtocolError::Config(e.to_string()))?;
        let index = self
            .cohort
            .iter()
            .enumerate()
            .map(|(i, &id)| (id, i))
            .collect();
        Ok(Topology {
            cohort: self.cohort.clone(),
            graph,
            index,
        })
    }
}

/// The cohort and its neighbour graph, addressed by member id.
#[derive(Clone, Debug)]
pub struct Topology {
    cohort: Vec<MemberId>,
    graph: NeighbourGraph,
    index: HashMap<MemberId, usize>,
}

impl Topology {
    /// Whether `id` is in the cohort.
    pub fn contains(&self, id: MemberId) -> bool {
        self.index.contains_key(&id)
    }

    /// The cohort, ascending.
    pub fn cohort(&self) -> &[MemberId] {
        &self.cohort
    }

    /// Neighbours of `id`, ascending (empty for a non-member).
    pub fn neighbours(&self, id: MemberId) -> Vec<MemberId> {
        match self.index.get(&id) {
            Some(&i) => {
                let mut v: Vec<MemberId> = self
                    .graph
                    .neighbours(i)
                    .iter()
                    .map(|&j| self.cohort[j])
                    .collect();
                v.sort_unstable();
                v
            }
            None => Vec::new(),
        }
    }

    /// Whether `a` and `b` are neighbours.
    pub fn are_neighbours(&self, a: MemberId, b: MemberId) -> bool {
        match (self.index.get(&a), self.index.get(&b)) {
            (Some(&i), Some(&j)) => self.graph.are_neighbours(i, j),
            _ => false,
        }
    }

    /// Drop members with fewer than `t` neighbours inside `set`, repeatedly,
    /// until every remaining member has at least `t`. Returns the removed.
    pub(crate) fn prune(&self, set: &mut BTreeSet<MemberId>, t: usize) -> Vec<MemberId> {
        let mut removed = Vec::new();
        loop {
            let weak: Vec<MemberId> = set
                .iter()
                .copied()
                .filter(|&u| {
                    self.neighbours(u)
                        .iter()
                        .filter(|v| set.contains(v))
                        .count()
                        < t
                })
                .collect();
            if weak.is_empty() {
                return removed;
            }
            for u in weak {
                set.remove(&u);
                removed.push(u);
            }
        }
    }
}

/// Shamir x-coordinate of the shares a member holds.
pub(crate) fn share_x(holder: MemberId) -> u32 {
    holder.wrapping_add(1)
}

/// A member's signed per-round public keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyAdvert {
    /// Round number.
    pub round: u64,
    /// Who advertises.
    pub member: MemberId,
    /// Public key for share encryption.
    pub enc_public: Vec<u8>,
    /// Public key for pairwise-mask agreement.
    pub mask_public: Vec<u8>,
    /// Signature by the member's long-term key over [`KeyAdvert::signed_bytes`].
    pub signature: Vec<u8>,
}

impl KeyAdvert {
    /// The exact bytes a member signs:
    /// `"confide/v2/key-advert" ‖ session id ‖ member (u32 BE) ‖
    /// len(enc) (u16 BE) ‖ enc ‖ len(mask) (u16 BE) ‖ mask`, the session id
    /// being [`RoundConfig::session_id`] of the signer's view of the round.
    pub fn signed_bytes(
        session: &[u8; 32],
        member: MemberId,
        enc_public: &[u8],
        mask_public: &[u8],
    ) -> Vec<u8> {
        let mut m = Vec::with_capacity(64 + enc_public.len() + mask_public.len());
        m.extend_from_slice(b"confide/v2/key-advert");
        m.extend_from_slice(session);
        m.extend_from_slice(&member.to_be_bytes());
        for k in [enc_public, mask_public] {
            m.extend_from_slice(&(k.len().min(u16::MAX as usize) as u16).to_be_bytes());
            m.extend_from_slice(k);
        }
        m
    }
}

/// An advert as relayed by the coordinator, with the identity (for example the
/// site's certificate) the receiving site checks it against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayedAdvert {
    /// The advert.
    pub advert: KeyAdvert,
    /// Opaque identity material for [`IdentityVerifier`].
    pub identity: Vec<u8>,
}

/// Coordinator → site: the adverts of the site's neighbours.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NeighbourKeys {
    /// Round number.
    pub round: u64,
    /// One per neighbour that advertised.
    pub adverts: Vec<RelayedAdvert>,
}

/// The longest [`EncryptedShare::ciphertext`] the coordinator accepts.
pub const MAX_SEALED_SHARE_BYTES: usize = 256;

/// One AEAD-sealed pair of shares from `from` to `to`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncryptedShare {
    /// Dealer.
    pub from: MemberId,
    /// Holder.
    pub to: MemberId,
    /// `seal(from ‖ to ‖ self-mask-seed share ‖ mask-key share)`.
    pub ciphertext: Vec<u8>,
}

/// Site → coordinator: shares for every neighbour, and a commitment to the
/// self-mask seed so a wrong reconstruction is caught.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShareBundle {
    /// Round number.
    pub round: u64,
    /// Dealer.
    pub from: MemberId,
    /// Hash commitment to the self-mask seed.
    pub seed_commitment: [u8; 32],
    /// One per neighbour named in the site's [`NeighbourKeys`].
    pub shares: Vec<EncryptedShare>,
}

/// Coordinator → site: the sealed shares addressed to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IncomingShares {
    /// Round number.
    pub round: u64,
    /// From each neighbour that completed the share stage.
    pub shares: Vec<EncryptedShare>,
}

/// Coordinator → signers of the survivor set: the set again, with the
/// signatures of at least [`RoundConfig::quorum`] members on it (an honest
/// coordinator relays `quorum + max_colluders` of them at most: enough
/// whatever the colluders signed). Who dropped is not sent: every site
/// derives it from the signed masking sets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnmaskRequest {
    /// Round number.
    pub round: u64,
    /// Members whose masked inputs are in the sum.
    pub survivors: Vec<MemberId>,
    /// Survivor-set signatures, each with its signer's identity.
    pub signatures: Vec<RelayedSignature>,
}

/// Survivor → coordinator: self-mask-seed shares of surviving neighbours and
/// mask-key shares of dropped neighbours — never both for one member — and
/// the pairwise mask keys of its one-sided pairs.
#[derive(Clone, Debug)]
pub struct UnmaskResponse {
    /// Round number.
    pub round: u64,
    /// Responder.
    pub from: MemberId,
    /// (owner, share of the owner's self-mask seed).
    pub seed_shares: Vec<(MemberId, Share)>,
    /// (owner, share of the owner's mask-agreement secret key).
    pub key_shares: Vec<(MemberId, Share)>,
    /// (peer, the pairwise mask key of this round's pair) for every surviving
    /// peer this site masked with that did not mask with it: that mask is in
    /// this site's input only and cannot cancel (see `consistency.rs`).
    pub pair_keys: Vec<(MemberId, PairwiseKey)>,
}

/// The PRG key of one pair's mask in one round (the KDF output over their
/// agreement, round and ids); revealing it uncovers that one mask only.
#[derive(Clone, PartialEq, Eq)]
pub struct PairwiseKey(Zeroizing<[u8; 16]>);

impl PairwiseKey {
    /// Length on the wire.
    pub const LEN: usize = 16;

    /// From wire bytes, which must be [`PairwiseKey::LEN`] long.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let key: [u8; 16] = bytes.try_into().ok()?;
        Some(Self(Zeroizing::new(key)))
    }

    /// The key bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// The mask PRG it keys.
    pub(crate) fn prg(&self, suite: Suite) -> Prg {
        Prg::new(suite, &self.0)
    }
}

impl std::fmt::Debug for PairwiseKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PairwiseKey(..)")
    }
}

/// Maps a member and its relayed identity material to its long-term
/// verifying key; the transport decides what the identity is (a certificate
/// checked against the federation CA, or a plain key in tests).
pub trait IdentityVerifier: Send + Sync {
    /// The member's verifying key, or why the identity is not acceptable.
    fn verifying_key(&self, member: MemberId, identity: &[u8]) -> Result<VerifyingKey, String>;
}

/// An [`IdentityVerifier`] over a fixed table of known keys; the relayed
/// identity must equal the registered key bytes.
#[derive(Clone, Debug, Default)]
pub struct KeyDirectory {
    keys: HashMap<MemberId, VerifyingKey>,
}

impl KeyDirectory {
    /// An empty directory.
    pub fn new() -> Self {
        Self::default()
    }

    /// Register a member's key.
    pub fn insert(&mut self, member: MemberId, key: VerifyingKey) {
        self.keys.insert(member, key);
    }
}

impl IdentityVerifier for KeyDirectory {
    fn verifying_key(&self, member: MemberId, identity: &[u8]) -> Result<VerifyingKey, String> {
        let key = self
            .keys
            .get(&member)
            .ok_or_else(|| format!("member {member} is not in the key directory"))?;
        if key.as_bytes() != identity {
            return Err(format!(
                "identity relayed for member {member} is not its registered key"
            ));
        }
        Ok(key.clone())
    }
}

/// An [`IdentityVerifier`] for identities that are the verifying key's own
/// bytes: what a coordinator holds for the keys sites joined with (it bound
/// each to the site's certificate itself), and a site without certificates
/// (insecure mode, tests) has to trust. Refuses an empty identity.
#[derive(Clone, Copy, Debug)]
pub struct RelayedKeyVerifier {
    /// The federation's suite.
    pub suite: Suite,
}

impl IdentityVerifier for RelayedKeyVerifier {
    fn verifying_key(&self, member: MemberId, identity: &[u8]) -> Result<VerifyingKey, String> {
        if identity.is_empty() {
            return Err(format!("no verifying key relayed for member {member}"));
        }
        Ok(VerifyingKey::from_bytes(self.suite, identity))
    }
}

/// Commitment to a self-mask seed.
pub(crate) fn seed_commitment(
    suite: Suite,
    round: u64,
    member: MemberId,
    seed: &[u8; 32],
) -> [u8; 32] {
    suite.provider().hash(&[
        b"confide/v1/seed-commitment",
        &[suite.code()],
        &round.to_be_bytes(),
        &member.to_be_bytes(),
        seed,
    ])
}

/// AAD of a sealed share pair.
pub(crate) fn share_aad(suite: Suite, round: u64, from: MemberId, to: MemberId) -> Vec<u8> {
    let mut a = Vec::with_capacity(40);
    a.extend_from_slice(b"confide/v1/share");
    a.push(suite.code());
    a.extend_from_slice(&round.to_be_bytes());
    a.extend_from_slice(&from.to_be_bytes());
    a.extend_from_slice(&to.to_be_bytes());
    a
}

/// The key of the pairwise mask between `a` and `b` this round, the same
/// from either end of the pair ([`PairwiseKey::prg`] expands it).
pub(crate) fn pairwise_key(
    suite: Suite,
    round: u64,
    my_secret: &[u8; 32],
    peer_public: &[u8],
    a: MemberId,
    b: MemberId,
) -> Result<PairwiseKey, CryptoError> {
    let shared = suite.provider().agree(my_secret, peer_public)?;
    pairwise_key_of(suite, round, &shared, a, b)
}

/// [`pairwise_key`] from the pair's agreement already made.
pub(crate) fn pairwise_key_of(
    suite: Suite,
    round: u64,
    shared: &[u8; 32],
    a: MemberId,
    b: MemberId,
) -> Result<PairwiseKey, CryptoError> {
    let key = crate::kdf::derive_key(
        suite,
        crate::kdf::Purpose::PairwiseMask,
        &shared[..],
        round,
        a.min(b),
        a.max(b),
    )?;
    Ok(PairwiseKey(key))
}

/// The PRG of a member's self mask.
pub(crate) fn self_mask_prg(
    suite: Suite,
    round: u64,
    member: MemberId,
    seed: &[u8; 32],
) -> Result<Prg, CryptoError> {
    let key = crate::kdf::derive_key(
        suite,
        crate::kdf::Purpose::SelfMask,
        seed,
        round,
        member,
        member,
    )?;
    Ok(Prg::new(suite, &key))
}

/// Plaintext of a sealed share pair: from ‖ to ‖ seed share ‖ key share.
pub(crate) const SHARE_PLAINTEXT_LEN: usize = 8 + 2 * crate::shamir::SHARE_LEN;
