//! The coordinator's unmask stage, as free functions over borrowed round
//! state: checking a survivor's [`UnmaskResponse`] and removing every mask
//! from the sum once the stage closes.
//!
//! Kept out of `coordinator.rs` because it is the only part of the coordinator
//! that touches secrets (reconstructed seeds and mask keys); it reads the
//! machine's state but owns none, so it does not import the machine either.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::consistency::CheckedSurvivors;
use super::{
    KeyAdvert, MemberId, RoundConfig, RoundResult, UnmaskResponse, pairwise_key, seed_commitment,
    self_mask_prg, share_x,
};
use crate::error::ProtocolError;
use crate::prg::{Sign, apply_masks};
use crate::ring::RingElement;
use crate::shamir::{Reconstructor, ShamirError, Share};

/// Check that `resp` carries exactly one correctly labelled share per peer
/// its sender holds shares of (`held`, its signed masking set): a
/// self-mask-seed share for every peer in `survivors` and a mask-key share
/// for every peer in `dropped`; and exactly one pair key per one-sided pair
/// it is the masker of.
pub(super) fn check_response(
    held: &BTreeSet<MemberId>,
    checked: &CheckedSurvivors,
    resp: &UnmaskResponse,
) -> Result<(), ProtocolError> {
    let from = resp.from;
    let (survivors, dropped) = (&checked.survivors, &checked.dropped);
    let owed: BTreeSet<MemberId> = checked
        .one_sided
        .iter()
        .filter(|(p, _)| *p == from)
        .map(|&(_, q)| q)
        .collect();
    let given: BTreeSet<MemberId> = resp.pair_keys.iter().map(|(q, _)| *q).collect();
    if given != owed || given.len() != resp.pair_keys.len() {
        return Err(ProtocolError::Malformed {
            member: from,
            reason: format!(
                "pair keys for {given:?}, expected one each for {owed:?} (its one-sided pairs)"
            ),
        });
    }
    let want_seed: BTreeSet<MemberId> = held.intersection(survivors).copied().collect();
    let want_key: BTreeSet<MemberId> = held.intersection(dropped).copied().collect();
    let check_set = |list: &[(MemberId, Share)], want: &BTreeSet<MemberId>, what: &str| {
        let mut seen = BTreeSet::new();
        for (owner, share) in list {
            if !want.contains(owner) || !seen.insert(*owner) || share.x() != share_x(from) {
                return Err(ProtocolError::Malformed {
                    member: from,
                    reason: format!(
                        "unexpected, repeated or mislabelled {what} share for member {owner}"
                    ),
                });
            }
        }
        if &seen != want {
            return Err(ProtocolError::Malformed {
                member: from,
                reason: format!("{} {what} shares, expected {}", seen.len(), want.len()),
            });
        }
        Ok(())
    };
    check_set(&resp.seed_shares, &want_seed, "self-mask seed")?;
    check_set(&resp.key_shares, &want_key, "mask key")
}

/// What the unmask step reads from the coordinator: the round, who masked
/// with whom, and what members committed to in the earlier stages.
pub(super) struct Unmasker<'a> {
    /// The round configuration.
    pub cfg: &'a RoundConfig,
    /// Each survivor's signed masking set.
    pub masking: &'a BTreeMap<MemberId, BTreeSet<MemberId>>,
    /// Adverts of U1 (mask public keys check reconstructed mask keys).
    pub adverts: &'a BTreeMap<MemberId, KeyAdvert>,
    /// Self-mask-seed commitments of U2.
    pub commitments: &'a BTreeMap<MemberId, [u8; 32]>,
}

impl Unmasker<'_> {
    /// Remove every mask from `acc`, the sum of the masked inputs of the
    /// survivors: each survivor's self mask (from its reconstructed seed),
    /// for each dropped member the pairwise masks survivors added with it
    /// (from its reconstructed mask key), and each one-sided pair's mask
    /// (from the key its masker revealed).
    pub(super) fn unmask<R: RingElement>(
        &self,
        checked: &CheckedSurvivors,
        mut acc: Vec<R>,
        responses: &BTreeMap<MemberId, UnmaskResponse>,
        blamed: &mut BTreeMap<MemberId, String>,
    ) -> Result<RoundResult<R>, ProtocolError> {
        let (u3, dropped) = (&checked.survivors, &checked.dropped);
        let suite = self.cfg.suite;
        let round = self.cfg.round;
        let t = self.cfg.params.t;
        // Group the received shares by owner.
        // Shares by owner, each with who sent it (to name a bad one).
        type Held<'r> = Vec<(MemberId, &'r Share)>;
        let mut seed_shares: BTreeMap<MemberId, Held> = BTreeMap::new();
        let mut key_shares: BTreeMap<MemberId, Held> = BTreeMap::new();
        for r in responses.values() {
            for (owner, s) in &r.seed_shares {
                seed_shares.entry(*owner).or_default().push((r.from, s));
            }
            for (owner, s) in &r.key_shares {
                key_shares.entry(*owner).or_default().push((r.from, s));
            }
        }

        // Lagrange coefficients depend only on the set of x-coordinates; owners
        // answered by the same neighbours reuse them.
        let mut cache: HashMap<Vec<u32>, Reconstructor> = HashMap::new();
        let mut rebuild = |owner: MemberId, held: Option<&Held>, what: &'static str| {
            let mut held: Vec<(MemberId, Share)> = held
                .map(|v| v.iter().map(|(from, s)| (*from, (*s).clone())).collect())
                .unwrap_or_default();
            held.sort_by_key(|(_, s)| s.x());
            loop {
                if held.len() < t {
                    return Err(ProtocolError::Reconstruction {
                        member: owner,
                        what,
                        have: held.len(),
                        need: t,
                    });
                }
                let shares: Vec<Share> = held.iter().map(|(_, s)| s.clone()).collect();
                let xs: Vec<u32> = shares.iter().map(Share::x).collect();
                let rec = match cache.get(&xs) {
                    Some(r) => r,
                    None => {
                        let r = Reconstructor::new(&xs, t)?;
                        cache.entry(xs).or_insert(r)
                    }
                };
                match rec.reconstruct(&shares) {
                    Ok(secret) => return Ok(secret),
                    // With redundancy a single bad share is located: leave
                    // it out, name its sender, and try again.
                    Err(ShamirError::Inconsistent { offender: Some(x) }) => {
                        let Some(i) = held.iter().position(|(_, s)| s.x() == x) else {
                            return Err(ShamirError::Inconsistent { offender: Some(x) }.into());
                        };
                        let (from, _) = held.remove(i);
                        blamed.insert(
                            from,
                            format!("sent an inconsistent {what} share of member {owner}"),
                        );
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        };
        let mut reconstructions = 0;
        // Every mask to take out, applied in one pass at the end.
        let mut masks = Vec::with_capacity(u3.len());
        for &u in u3 {
            let seed = rebuild(u, seed_shares.get(&u), "self-mask seed")?;
            let committed = self.commitments.get(&u).copied().unwrap_or_default();
            if seed_commitment(suite, round, u, &seed) != committed {
                return Err(ProtocolError::CommitmentMismatch {
                    member: u,
                    what: "self-mask seed",
                });
            }
            masks.push((self_mask_prg(suite, round, u, &seed)?, Sign::Sub));
            reconstructions += 1;
        }
        // The pairwise keys to derive: (index into `secrets`, v, u, u's mask
        // public key, how u applied the mask).
        let mut secrets = Vec::with_capacity(dropped.len());
        let mut pairs = Vec::new();
        for &v in dropped {
            let secret = rebuild(v, key_shares.get(&v), "mask key")?;
            let advert = self
                .adverts
                .get(&v)
                .ok_or(ProtocolError::NotParticipant(v))?;
            let public = suite.provider().agreement_public(&secret).map_err(|_| {
                ProtocolError::CommitmentMismatch {
                    member: v,
                    what: "mask key",
                }
            })?;
            if public != advert.mask_public {
                return Err(ProtocolError::CommitmentMismatch {
                    member: v,
                    what: "mask key",
                });
            }
            reconstructions += 1;
            let masked_with_v = self
                .masking
                .iter()
                .filter(|(u, peers)| u3.contains(u) && peers.contains(&v))
                .map(|(&u, _)| u);
            for u in masked_with_v {
                let peer = self
                    .adverts
                    .get(&u)
                    .ok_or(ProtocolError::NotParticipant(u))?;
                // u added +mask if v > u, −mask otherwise; undo exactly that.
                let sign = if v > u { Sign::Sub } else { Sign::Add };
                pairs.push((secrets.len(), v, u, &peer.mask_public[..], sign));
            }
            secrets.push(secret);
        }
        // One key agreement per pair: about 10⁴ with a thousand sites, a
        // second on one core, so they are spread across the cores.
        let keys = par_map(&pairs, |&(i, v, u, public, sign)| {
            pairwise_key(suite, round, &secrets[i], public, v, u).map(|k| (k.prg(suite), sign))
        });
        for k in keys {
            masks.push(k?);
        }
        for &(p, q) in &checked.one_sided {
            let key = responses
                .get(&p)
                .and_then(|r| r.pair_keys.iter().find(|(v, _)| *v == q))
                .map(|(_, k)| k)
                .ok_or(ProtocolError::MissingPairKey { masker: p, peer: q })?;
            // p added +mask towards a larger id, −mask otherwise.
            masks.push((key.prg(suite), if q > p { Sign::Sub } else { Sign::Add }));
        }
        apply_masks(&masks, &mut acc)?;
        Ok(RoundResult {
            sum: acc,
            survivors: u3.iter().copied().collect(),
            dropped: dropped.iter().copied().collect(),
            reconstructions,
        })
    }
}

/// `f` over `items` in order, split across the cores the mask PRG uses
/// ([`crate::prg::threads`]), at least 64 items a thread.
fn par_map<T: Sync, U: Send>(items: &[T], f: impl Fn(&T) -> U + Sync) -> Vec<U> {
    let n = crate::prg::threads().min(items.len() / 64).max(1);
    if n == 1 {
        return items.iter().map(f).collect();
    }
    let per = items.len().div_ceil(n);
    let f = &f;
    std::thread::scope(|s| {
        let parts: Vec<_> = items
            .chunks(per)
            .map(|c| s.spawn(move || c.iter().map(f).collect::<Vec<U>>()))
            .collect();
        parts
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::par_map;

    #[test]
    fn par_map_keeps_the_order_of_its_items() {
        for len in [0usize, 1, 63, 64, 129, 1000, 4097] {
            let items: Vec<u64> = (0..len as u64).collect();
            let want: Vec<u64> = items.iter().map(|x| x * x + 1).collect();
            assert_eq!(par_map(&items, |x| x * x + 1), want, "{len} items");
        }
    }
}
