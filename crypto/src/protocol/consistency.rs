//! The consistency stage: every survivor signs the one survivor set before any
//! share is revealed.
//!
//! Without it a coordinator can tell each site a different story about who
//! survived (so that some sites reveal a member's self-mask seed and others its
//! mask key), or withhold shares so that a victim masks with few peers and then
//! call exactly those peers dropped. Here:
//!
//! 1. With its masked input each site sends a [`MaskingSet`]: the peers it
//!    masked with, signed over the session id.
//! 2. The coordinator sends every survivor the same [`ConsistencyRequest`]: the
//!    survivor set and every survivor's signed masking set, relayed compactly
//!    ([`RelayedMaskingSet`]: the neighbours *not* masked with, and no
//!    identity), so the request is O(n + unmasked edges) rather than O(n·k).
//! 3. A site checks the request against its own view ([`check_request`]) and
//!    signs the set ([`SurvivorSignature`]) — once per round.
//! 4. The [`super::UnmaskRequest`] must carry at least
//!    [`RoundConfig::quorum`] valid signatures on that identical set
//!    ([`check_quorum`]); only then does a site reveal shares.
//!
//! The dropped set is not announced: every site derives it from the signed
//! masking sets as the peers some survivor masked with that are not survivors.

use std::collections::{BTreeMap, BTreeSet};

use super::{IdentityVerifier, MemberId, RoundConfig, Topology};
use crate::error::ProtocolError;
use crate::graph::connectivity;
use crate::suite::VerifyingKey;

/// A member's signed list of the peers it masked its input with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaskingSet {
    /// Round number.
    pub round: u64,
    /// Who masked.
    pub member: MemberId,
    /// The peers, strictly ascending.
    pub peers: Vec<MemberId>,
    /// Signature by the member's long-term key over [`MaskingSet::signed_bytes`].
    pub signature: Vec<u8>,
}

impl MaskingSet {
    /// `"confide/v2/masking-set" ‖ session id ‖ member (u32 BE) ‖
    /// count (u32 BE) ‖ peers (u32 BE each)`.
    pub fn signed_bytes(session: &[u8; 32], member: MemberId, peers: &[MemberId]) -> Vec<u8> {
        let mut m = Vec::with_capacity(64 + 4 * peers.len());
        m.extend_from_slice(b"confide/v2/masking-set");
        m.extend_from_slice(session);
        m.extend_from_slice(&member.to_be_bytes());
        push_ids(&mut m, peers);
        m
    }
}

/// A masking set as the coordinator relays it. The peers travel as their
/// complement in the member's neighbourhood (usually just the dropped
/// neighbours, often nothing), and no identity travels: the only sites that
/// check the signature are those holding the member's shares, and they hold
/// its verifying key from its advert, checked at stage 2.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayedMaskingSet {
    /// Who masked.
    pub member: MemberId,
    /// The member's neighbours it did *not* mask with, strictly ascending.
    pub unmasked: Vec<MemberId>,
    /// The member's signature over its whole set ([`MaskingSet::signed_bytes`]).
    pub signature: Vec<u8>,
}

impl RelayedMaskingSet {
    /// Relay `set` in the neighbourhoods of `topo`. Peers outside the
    /// member's neighbourhood cannot be expressed (the coordinator refuses
    /// such a set on receipt); were any there, the rebuilt set would differ
    /// from the signed one and its signature would fail.
    pub fn relay(topo: &Topology, set: MaskingSet) -> Self {
        let unmasked = topo
            .neighbours(set.member)
            .into_iter()
            .filter(|p| set.peers.binary_search(p).is_err())
            .collect();
        RelayedMaskingSet {
            member: set.member,
            unmasked,
            signature: set.signature,
        }
    }

    /// The peers masked with: the member's neighbours minus
    /// [`RelayedMaskingSet::unmasked`], ascending; or why the complement is
    /// malformed.
    pub fn peers(&self, topo: &Topology) -> Result<Vec<MemberId>, String> {
        if self.unmasked.windows(2).any(|w| w[0] >= w[1]) {
            return Err("unmasked peers are not strictly ascending".into());
        }
        if let Some(p) = self
            .unmasked
            .iter()
            .find(|&&p| !topo.are_neighbours(self.member, p))
        {
            return Err(format!("names {p} as unmasked, not a neighbour"));
        }
        Ok(topo
            .neighbours(self.member)
            .into_iter()
            .filter(|p| self.unmasked.binary_search(p).is_err())
            .collect())
    }
}

/// Coordinator → every survivor: the one survivor set and the masking sets
/// of all its members.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsistencyRequest {
    /// Round number.
    pub round: u64,
    /// Members whose masked inputs are in the sum, strictly ascending.
    pub survivors: Vec<MemberId>,
    /// One per survivor.
    pub masking: Vec<RelayedMaskingSet>,
}

/// Survivor → coordinator: its signature on the survivor set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SurvivorSignature {
    /// Round number.
    pub round: u64,
    /// Signer.
    pub member: MemberId,
    /// Signature over [`SurvivorSignature::signed_bytes`].
    pub signature: Vec<u8>,
}

impl SurvivorSignature {
    /// `"confide/v2/survivors" ‖ session id ‖ count (u32 BE) ‖ survivors`.
    pub fn signed_bytes(session: &[u8; 32], survivors: &[MemberId]) -> Vec<u8> {
        let mut m = Vec::with_capacity(64 + 4 * survivors.len());
        m.extend_from_slice(b"confide/v2/survivors");
        m.extend_from_slice(session);
        push_ids(&mut m, survivors);
        m
    }
}

/// A survivor-set signature as relayed, with its signer's identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayedSignature {
    /// The signature.
    pub signature: SurvivorSignature,
    /// Opaque identity material for [`IdentityVerifier`].
    pub identity: Vec<u8>,
}

fn push_ids(m: &mut Vec<u8>, ids: &[MemberId]) {
    m.extend_from_slice(&(ids.len().min(u32::MAX as usize) as u32).to_be_bytes());
    for id in ids {
        m.extend_from_slice(&id.to_be_bytes());
    }
}

/// A survivor set that passed [`check_request`].
#[derive(Clone, Debug)]
pub(crate) struct CheckedSurvivors {
    pub(crate) survivors: BTreeSet<MemberId>,
    /// Peers some survivor masked with that are not survivors: their mask
    /// keys are to be rebuilt.
    pub(crate) dropped: BTreeSet<MemberId>,
    /// (masker, peer): survivors where the masker listed the peer and the
    /// peer did not list it; the masker reveals their pair key.
    pub(crate) one_sided: BTreeSet<(MemberId, MemberId)>,
}

/// The survivor-set rules every site applies before signing (and the
/// coordinator before asking): see the module docs.
pub(crate) struct SurvivorRules<'a> {
    pub(crate) cfg: &'a RoundConfig,
    pub(crate) topo: &'a Topology,
    pub(crate) session: &'a [u8; 32],
    /// Fewest survivors acceptable (the larger of the round's and the site's).
    pub(crate) min_survivors: usize,
    /// Apply the connectivity rule (off only through a test-only knob, to
    /// show what the rule prevents).
    pub(crate) connectivity: bool,
}

impl SurvivorRules<'_> {
    /// Structure only: ascending members of the cohort, enough of them.
    pub(crate) fn check_set(&self, survivors: &[MemberId]) -> Result<(), ProtocolError> {
        let bad = |r: String| Err(ProtocolError::Inconsistent(r));
        if survivors.windows(2).any(|w| w[0] >= w[1]) {
            return bad("survivors are not strictly ascending".into());
        }
        if let Some(&m) = survivors.iter().find(|&&m| !self.topo.contains(m)) {
            return bad(format!("survivor {m} is not in the cohort"));
        }
        let need = self.min_survivors.max(self.cfg.quorum());
        if survivors.len() < need {
            return bad(format!(
                "{} survivors, at least {need} required (minimum survivors and signature quorum)",
                survivors.len()
            ));
        }
        Ok(())
    }

    /// Every survivor's masking set: its shape, and the signature of each set
    /// whose owner has a key in `verify`. A site passes the keys of the
    /// neighbours whose adverts it accepted, verified then: they include
    /// every member whose shares it holds and may reveal, and a forged set
    /// of any member is caught by all the holders of that member's shares,
    /// who then reveal nothing. Returns the peers of each survivor.
    pub(crate) fn masking_sets(
        &self,
        survivors: &BTreeSet<MemberId>,
        masking: &[RelayedMaskingSet],
        verify: Option<&BTreeMap<MemberId, VerifyingKey>>,
    ) -> Result<BTreeMap<MemberId, BTreeSet<MemberId>>, ProtocolError> {
        let mut sets = BTreeMap::new();
        let bad = |r: &RelayedMaskingSet, why: String| {
            Err(ProtocolError::Inconsistent(format!(
                "masking set of member {}: {why}",
                r.member
            )))
        };
        // (set, key, signed bytes): checked together once all are read.
        let mut unverified = Vec::new();
        for r in masking {
            let bad = |why: String| bad(r, why);
            if !survivors.contains(&r.member) {
                return bad("member is not a survivor".into());
            }
            if sets.contains_key(&r.member) {
                return bad("sent twice".into());
            }
            let peers = match r.peers(self.topo) {
                Ok(p) => p,
                Err(why) => return bad(why),
            };
            if let Some(vk) = verify.and_then(|keys| keys.get(&r.member)) {
                if vk.suite() != self.cfg.suite {
                    return bad("signature does not verify for this round".into());
                }
                let signed = MaskingSet::signed_bytes(self.session, r.member, &peers);
                unverified.push((r, vk, signed));
            }
            sets.insert(r.member, peers.into_iter().collect::<BTreeSet<_>>());
        }
        let items: Vec<(&VerifyingKey, &[u8], &[u8])> = unverified
            .iter()
            .map(|(r, vk, signed)| (*vk, signed.as_slice(), r.signature.as_slice()))
            .collect();
        let valid = VerifyingKey::verify_each(&items);
        if let Some(((r, ..), _)) = unverified.iter().zip(valid).find(|(_, ok)| !ok) {
            return bad(r, "signature does not verify for this round".into());
        }
        if let Some(m) = survivors.iter().find(|m| !sets.contains_key(m)) {
            return Err(ProtocolError::Inconsistent(format!(
                "no masking set for survivor {m}"
            )));
        }
        Ok(sets)
    }

    /// The global rules over the masking sets. A pair of survivors masked
    /// *mutually* when each lists the other; a pair where only `p` lists `q`
    /// is one-sided: `p`'s input holds a mask `q`'s lacks, which never
    /// cancels, so `p` reveals that pair's key at unmask
    /// ([`CheckedSurvivors::one_sided`]). Revealing it leaves the sum as if
    /// neither had masked with the other — what a coordinator withholding
    /// both shares of the pair gets anyway — so the rules below count mutual
    /// masks only: every survivor masked mutually with at least `t`
    /// survivors (so no survivor's pairwise masks can all be removed), and
    /// the survivor graph of mutual masks stays connected whichever
    /// `max_colluders` survivors are removed (else the coordinator learns the
    /// sum of each remaining component: see [`connected_without_colluders`]).
    /// Returns the derived dropped set and the one-sided pairs.
    pub(crate) fn check_masking(
        &self,
        survivors: &BTreeSet<MemberId>,
        sets: &BTreeMap<MemberId, BTreeSet<MemberId>>,
    ) -> Result<CheckedSurvivors, ProtocolError> {
        let t = self.cfg.params.t;
        let mut dropped = BTreeSet::new();
        let mut one_sided = BTreeSet::new();
        let mut mutual: BTreeMap<MemberId, BTreeSet<MemberId>> = BTreeMap::new();
        for (&p, peers) in sets {
            let linked = mutual.entry(p).or_default();
            for &q in peers {
                if !survivors.contains(&q) {
                    dropped.insert(q);
                } else if sets.get(&q).is_some_and(|s| s.contains(&p)) {
                    linked.insert(q);
                } else {
                    one_sided.insert((p, q));
                }
            }
            if linked.len() < t {
                return Err(ProtocolError::Inconsistent(format!(
                    "survivor {p} masked mutually with {} other survivors, at least {t} required",
                    linked.len()
                )));
            }
        }
        if self.connectivity {
            connected_without_colluders(self.topo, survivors, &mutual, self.cfg.max_colluders)?;
        }
        Ok(CheckedSurvivors {
            survivors: survivors.clone(),
            dropped,
            one_sided,
        })
    }
}

/// The survivor masking graph (survivors joined where they masked with each
/// other; `sets` holds mutual masks only) must stay connected after removing any
/// `c` vertices. Masks between two honest survivors are never revealed, so
/// with its colluders removed the coordinator learns the sum of each
/// component: the one honest sum only if one component remains, whoever the
/// `c` colluders are. The ≥ `t` rule alone does not ensure this on a sparse
/// graph (two arcs of the ring bridged only by colluders); on the complete
/// graph it does, and the minimum-degree fast path passes at once.
pub(crate) fn connected_without_colluders(
    topo: &Topology,
    survivors: &BTreeSet<MemberId>,
    sets: &BTreeMap<MemberId, BTreeSet<MemberId>>,
    c: usize,
) -> Result<(), ProtocolError> {
    // Fast path, the honest case: every ring edge between survivors is a
    // masking edge, so the graph is at least as connected as the ring on the
    // survivors' positions. Otherwise (or if that is not enough) the exact test.
    if ring_bound(topo, survivors, sets).is_some_and(|kappa| kappa > c) {
        return Ok(());
    }
    let ids: Vec<MemberId> = survivors.iter().copied().collect();
    let adj: Vec<Vec<usize>> = ids
        .iter()
        .map(|u| {
            sets.get(u)
                .into_iter()
                .flatten()
                .filter_map(|v| ids.binary_search(v).ok())
                .collect()
        })
        .collect();
    if connectivity::survives_removal(&adj, c) {
        return Ok(());
    }
    Err(ProtocolError::Inconsistent(format!(
        "the masking graph of the {} survivors can be split by removing {c} of them (the \
         collusion bound): the coordinator could learn partial sums",
        ids.len()
    )))
}

/// At least `quorum` valid signatures on (`session`, `survivors`) from
/// distinct survivors.
pub(crate) fn check_quorum(
    cfg: &RoundConfig,
    session: &[u8; 32],
    survivors: &[MemberId],
    signatures: &[RelayedSignature],
    verifier: &dyn IdentityVerifier,
) -> Result<(), ProtocolError> {
    let signed = SurvivorSignature::signed_bytes(session, survivors);
    let need = cfg.quorum();
    // The key a signature would count under: one for this round, by a
    // survivor, with a key of the round's suite. Others are ignored, not
    // fatal: only the count of valid ones matters.
    let key = |r: &RelayedSignature| {
        let s = &r.signature;
        if s.round != cfg.round || survivors.binary_search(&s.member).is_err() {
            return None;
        }
        let vk = verifier.verifying_key(s.member, &r.identity).ok()?;
        (vk.suite() == cfg.suite).then_some(vk)
    };
    // Verifying is the cost of this stage. The first `need` candidates from
    // distinct members are checked together (one batch where the suite has
    // them); more, one by one, only while the quorum is short.
    let mut first = Vec::with_capacity(need);
    let mut members = BTreeSet::new();
    for (i, r) in signatures.iter().enumerate() {
        if first.len() == need {
            break;
        }
        if !members.contains(&r.signature.member)
            && let Some(vk) = key(r)
        {
            members.insert(r.signature.member);
            first.push((i, vk));
        }
    }
    let items: Vec<(&VerifyingKey, &[u8], &[u8])> = first
        .iter()
        .map(|(i, vk)| {
            (
                vk,
                signed.as_slice(),
                signatures[*i].signature.signature.as_slice(),
            )
        })
        .collect();
    let mut valid = BTreeSet::new();
    for ((i, _), ok) in first.iter().zip(VerifyingKey::verify_each(&items)) {
        if ok {
            valid.insert(signatures[*i].signature.member);
        }
    }
    let checked: BTreeSet<usize> = first.iter().map(|(i, _)| *i).collect();
    for (i, r) in signatures.iter().enumerate() {
        if valid.len() >= need {
            break;
        }
        let member = r.signature.member;
        if checked.contains(&i) || valid.contains(&member) {
            continue;
        }
        if let Some(vk) = key(r)
            && vk.verify(&signed, &r.signature.signature).is_ok()
        {
            valid.insert(member);
        }
    }
    if valid.len() < need {
        return Err(ProtocolError::Inconsistent(format!(
            "{} valid signatures on the survivor set, quorum is {need}",
            valid.len()
        )));
    }
    Ok(())
}

/// The survivors' ring connectivity ([`connectivity::ring_connectivity`]) if
/// each survivor masked with every survivor within `⌊k/2⌋` ring positions;
/// `None` if one did not (a withheld share) or a member is unknown.
fn ring_bound(
    topo: &Topology,
    survivors: &BTreeSet<MemberId>,
    sets: &BTreeMap<MemberId, BTreeSet<MemberId>>,
) -> Option<usize> {
    let n = topo.cohort.len();
    let h = topo.graph.k() / 2;
    let position = |m: &MemberId| topo.index.get(m).and_then(|&i| topo.graph.position(i));
    let mut positions = Vec::with_capacity(survivors.len());
    for u in survivors {
        let pu = position(u)?;
        positions.push(pu);
        let set = sets.get(u)?;
        for v in topo.neighbours(*u) {
            let pv = position(&v)?;
            let d = pu.abs_diff(pv).min(n - pu.abs_diff(pv));
            if d <= h && survivors.contains(&v) && !set.contains(&v) {
                return None;
            }
        }
    }
    Some(connectivity::ring_connectivity(n, h, &positions))
}
