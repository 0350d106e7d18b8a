//! How each stage of the coordinator's round closes: who completed it, what
//! goes out next, and when the round ends.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Instant;

use super::{CoordinatorMachine, Phase, UnmaskJob};
use crate::error::ProtocolError;
use crate::ids::{MemberId, Stage};
use crate::protocol::consistency::SurvivorRules;
use crate::protocol::{
    ConsistencyRequest, CoordinatorOutput, EncryptedShare, IncomingShares, NeighbourKeys,
    RelayedAdvert, RelayedMaskingSet, RelayedSignature, RoundResult, SurvivorSignature, Topology,
    UnmaskRequest,
};
use crate::ring::RingElement;

/// The NeighbourKeys of a closed advertise stage, made one per poll.
pub(super) struct KeyRelay {
    /// Outputs queued before the keys, which are polled first.
    pub(super) after: usize,
    round: u64,
    /// The adverts of U1.
    adverts: BTreeMap<MemberId, RelayedAdvert>,
    /// Members of U1 still to get theirs, ascending.
    to: VecDeque<MemberId>,
}

impl KeyRelay {
    /// The next member's NeighbourKeys: its neighbours' adverts in U1.
    pub(super) fn next<R>(&mut self, topo: &Topology) -> Option<CoordinatorOutput<R>> {
        let u = self.to.pop_front()?;
        let adverts = topo
            .neighbours(u)
            .iter()
            .filter_map(|v| self.adverts.get(v).cloned())
            .collect();
        Some(CoordinatorOutput::NeighbourKeys {
            to: u,
            msg: NeighbourKeys {
                round: self.round,
                adverts,
            },
        })
    }
}

impl<R: RingElement> CoordinatorMachine<R> {
    /// Blame every member refused by more sites than may collude: at least
    /// one honest site found its advert or share bad.
    fn blame_refused(&mut self) {
        let c = self.cfg.max_colluders;
        for (&q, by) in &self.refusals {
            if by.len() > c {
                self.out.push_back(CoordinatorOutput::Blamed {
                    member: q,
                    reason: format!(
                        "its key advert or sealed shares were refused by {} sites",
                        by.len()
                    ),
                });
            }
        }
    }

    pub(super) fn finish(&mut self, result: Result<RoundResult<R>, ProtocolError>) {
        self.phase = Phase::Done;
        self.deadline = None;
        self.out.push_back(CoordinatorOutput::Finished(result));
    }

    fn closed(&mut self, stage: Stage, completed: &BTreeSet<MemberId>, dropped: Vec<MemberId>) {
        self.out.push_back(CoordinatorOutput::StageClosed {
            stage,
            completed: completed.iter().copied().collect(),
            dropped,
        });
    }

    fn enough(&mut self, stage: Stage, set: &BTreeSet<MemberId>) -> bool {
        if set.len() < self.cfg.min_survivors {
            let need = self.cfg.min_survivors;
            self.finish(Err(ProtocolError::TooFewSurvivors {
                stage,
                have: set.len(),
                need,
            }));
            return false;
        }
        true
    }

    pub(super) fn close_stage(&mut self, now: Instant) {
        let t = self.cfg.params.t;
        match std::mem::replace(&mut self.phase, Phase::Done) {
            Phase::Advertise { adverts } => {
                let mut u1: BTreeSet<MemberId> = adverts.keys().copied().collect();
                let mut dropped: Vec<MemberId> = self
                    .topo
                    .cohort()
                    .iter()
                    .copied()
                    .filter(|m| !u1.contains(m))
                    .collect();
                dropped.extend(self.topo.prune(&mut u1, t));
                self.closed(Stage::AdvertiseKeys, &u1, dropped);
                if !self.enough(Stage::AdvertiseKeys, &u1) {
                    return;
                }
                // Made as they are polled, in this place in the output order:
                // all at once they are n·k advert copies (65 MB at n = 1000).
                self.relay = Some(KeyRelay {
                    after: self.out.len(),
                    round: self.cfg.round,
                    adverts: adverts
                        .iter()
                        .filter(|(m, _)| u1.contains(m))
                        .map(|(&m, r)| (m, r.clone()))
                        .collect(),
                    to: u1.iter().copied().collect(),
                });
                for (m, r) in adverts {
                    if u1.contains(&m) {
                        self.identities.insert(m, r.identity);
                        self.adverts.insert(m, r.advert);
                    }
                }
                self.deadline = Some(now + self.timeouts.get(Stage::ShareKeys));
                self.phase = Phase::Share {
                    u1,
                    bundles: BTreeMap::new(),
                };
            }
            Phase::Share { u1, bundles } => {
                // A member that dealt no share to a live neighbour refused its advert.
                for (&p, shares) in &bundles {
                    let to: BTreeSet<MemberId> = shares.iter().map(|s| s.to).collect();
                    for q in self.topo.neighbours(p) {
                        if u1.contains(&q) && !to.contains(&q) {
                            self.refusals.entry(q).or_default().insert(p);
                        }
                    }
                }
                let mut u2: BTreeSet<MemberId> = bundles.keys().copied().collect();
                let mut dropped: Vec<MemberId> = u1.difference(&u2).copied().collect();
                dropped.extend(self.topo.prune(&mut u2, t));
                self.closed(Stage::ShareKeys, &u2, dropped);
                self.commitments.retain(|m, _| u2.contains(m));
                if !self.enough(Stage::ShareKeys, &u2) {
                    return;
                }
                let mut inbox: HashMap<MemberId, Vec<EncryptedShare>> = HashMap::new();
                for (from, shares) in bundles {
                    if !u2.contains(&from) {
                        continue;
                    }
                    for s in shares {
                        if u2.contains(&s.to) {
                            inbox.entry(s.to).or_default().push(s);
                        }
                    }
                }
                for &u in &u2 {
                    let shares = inbox.remove(&u).unwrap_or_default();
                    self.delivered
                        .insert(u, shares.iter().map(|s| s.from).collect());
                    self.out.push_back(CoordinatorOutput::IncomingShares {
                        to: u,
                        msg: IncomingShares {
                            round: self.cfg.round,
                            shares,
                        },
                    });
                }
                self.deadline = Some(now + self.timeouts.get(Stage::MaskedInput));
                self.phase = Phase::Input {
                    u2,
                    received: BTreeMap::new(),
                    // Empty while the caller keeps the sum (`sum_outside`).
                    acc: if self.outside {
                        Vec::new()
                    } else {
                        vec![R::default(); self.cfg.vector_len]
                    },
                };
            }
            Phase::Input { u2, received, acc } => {
                // A survivor that did not mask with a peer whose share it was
                // delivered refused that share.
                for (&p, set) in &received {
                    let peers: BTreeSet<MemberId> = set.peers.iter().copied().collect();
                    for &q in self.delivered.get(&p).into_iter().flatten() {
                        if !peers.contains(&q) {
                            self.refusals.entry(q).or_default().insert(p);
                        }
                    }
                }
                self.blame_refused();
                let u3: BTreeSet<MemberId> = received.keys().copied().collect();
                let dropped: Vec<MemberId> = u2.difference(&u3).copied().collect();
                self.closed(Stage::MaskedInput, &u3, dropped);
                if !self.enough(Stage::MaskedInput, &u3) {
                    return;
                }
                // The sites will apply these rules; checking first names the
                // culprit instead of collecting refusals.
                let session = self.cfg.session_id();
                let rules = SurvivorRules {
                    cfg: &self.cfg,
                    topo: &self.topo,
                    session: &session,
                    min_survivors: self.cfg.min_survivors,
                    connectivity: true,
                };
                let survivors: Vec<MemberId> = u3.iter().copied().collect();
                let relayed: Vec<RelayedMaskingSet> = received
                    .into_values()
                    .map(|set| RelayedMaskingSet::relay(&self.topo, set))
                    .collect();
                let checked = rules.check_set(&survivors).and_then(|()| {
                    let sets = rules.masking_sets(&u3, &relayed, None)?;
                    let checked = rules.check_masking(&u3, &sets)?;
                    Ok((checked, sets))
                });
                let (checked, masking) = match checked {
                    Ok(c) => c,
                    // Nobody is Blamed here: one-sided pairs are resolved at
                    // unmask (their masker reveals the pair key), and what
                    // still fails — too few mutual masks, a split graph —
                    // a coordinator can bring about alone.
                    Err(e) => {
                        self.finish(Err(e));
                        return;
                    }
                };
                // What each survivor signs, for `check_signatures` (a few
                // bytes per survivor; made whether or not it is set yet).
                let signed = SurvivorSignature::signed_bytes(&session, &survivors);
                let msg = std::sync::Arc::new(ConsistencyRequest {
                    round: self.cfg.round,
                    survivors,
                    masking: relayed,
                });
                for &u in &u3 {
                    self.out.push_back(CoordinatorOutput::ConsistencyRequest {
                        to: u,
                        msg: msg.clone(),
                    });
                }
                self.deadline = Some(now + self.timeouts.get(Stage::Consistency));
                self.phase = Phase::Consistency {
                    checked,
                    masking,
                    acc,
                    signatures: BTreeMap::new(),
                    signed,
                };
            }
            Phase::Consistency {
                checked,
                masking,
                acc,
                signatures,
                signed: _,
            } => {
                let signers: BTreeSet<MemberId> = signatures.keys().copied().collect();
                let silent: Vec<MemberId> =
                    checked.survivors.difference(&signers).copied().collect();
                self.closed(Stage::Consistency, &signers, silent);
                let quorum = self.cfg.quorum();
                if signers.len() < quorum {
                    self.finish(Err(ProtocolError::Inconsistent(format!(
                        "{} of {} survivors signed the survivor set, quorum is {quorum}",
                        signers.len(),
                        checked.survivors.len()
                    ))));
                    return;
                }
                // A site needs `quorum` valid signatures. Checked here
                // (`check_signatures`), all relayed ones are valid; unchecked,
                // only colluders can have sent invalid ones (honest sites
                // sign the set they were sent), so any `quorum +
                // max_colluders` signers carry a quorum. The rest would be
                // sent to every signer for nothing (a third of it at n = 1000).
                let relay = quorum.saturating_add(self.cfg.max_colluders);
                let relayed: Vec<RelayedSignature> = signatures
                    .into_values()
                    .take(relay)
                    .map(|signature| RelayedSignature {
                        identity: self
                            .identities
                            .get(&signature.member)
                            .cloned()
                            .unwrap_or_default(),
                        signature,
                    })
                    .collect();
                let msg = std::sync::Arc::new(UnmaskRequest {
                    round: self.cfg.round,
                    survivors: checked.survivors.iter().copied().collect(),
                    signatures: relayed,
                });
                for &u in &signers {
                    self.out.push_back(CoordinatorOutput::UnmaskRequest {
                        to: u,
                        msg: msg.clone(),
                    });
                }
                self.deadline = Some(now + self.timeouts.get(Stage::Unmask));
                self.phase = Phase::Unmask {
                    checked,
                    masking,
                    signers,
                    acc,
                    responses: BTreeMap::new(),
                };
            }
            Phase::Unmask {
                checked,
                masking,
                signers,
                acc,
                responses,
            } => {
                let u5: BTreeSet<MemberId> = responses.keys().copied().collect();
                let silent: Vec<MemberId> = signers.difference(&u5).copied().collect();
                self.closed(Stage::Unmask, &u5, silent);
                let job = UnmaskJob {
                    cfg: self.cfg.clone(),
                    masking,
                    adverts: std::mem::take(&mut self.adverts),
                    commitments: std::mem::take(&mut self.commitments),
                    checked,
                    acc,
                    responses,
                };
                self.unmask_or_defer(job);
            }
            // Closed already; the job's outcome finishes the round.
            Phase::Unmasking => self.phase = Phase::Unmasking,
            Phase::Done => {}
        }
    }
}
