//! The isolation oracle: given everything a (malicious) coordinator collected
//! in a round — masked inputs with their masking sets, every share any site
//! revealed, and the secrets of the sites colluding with it — which sums of
//! honest inputs can it compute?
//!
//! Each pairwise mask appears in exactly two masked inputs with opposite
//! signs, and each self mask in one. A linear combination of masked inputs
//! is free of unknown masks only if it gives both ends of every unknown
//! pairwise mask the same coefficient and gives zero to any input whose self
//! mask is unknown or which has an unknown mask towards an input the
//! coordinator does not have. So the smallest computable sums are exactly the
//! sums over the "unblocked" connected components of the graph whose edges
//! are the unknown pairwise masks. The oracle finds them, *computes* each
//! such sum from the collected material, and checks it against the true
//! inputs — a claim of recovery is always a real recovery.

use std::collections::{BTreeMap, BTreeSet};

use zeroize::Zeroizing;

use crate::protocol::{MemberId, PairwiseKey, pairwise_key, seed_commitment, self_mask_prg};
use crate::ring::{self, RingElement};
use crate::shamir::{self, Share};
use crate::suite::Suite;

/// What the coordinator learned, and (for checking) the truth.
#[derive(Default)]
pub struct Knowledge<R> {
    /// Each member's mask public key, as it advertised it.
    pub mask_public: BTreeMap<MemberId, Vec<u8>>,
    /// Each member's self-mask-seed commitment.
    pub commitments: BTreeMap<MemberId, [u8; 32]>,
    /// Masked inputs received, with the peers each was masked with.
    pub masked: BTreeMap<MemberId, (Vec<R>, BTreeSet<MemberId>)>,
    /// Every self-mask-seed share obtained, by owner.
    pub seed_shares: BTreeMap<MemberId, Vec<Share>>,
    /// Every mask-key share obtained, by owner.
    pub key_shares: BTreeMap<MemberId, Vec<Share>>,
    /// Pairwise mask keys revealed for one-sided pairs, by (smaller id,
    /// larger id).
    pub pair_keys: BTreeMap<(MemberId, MemberId), PairwiseKey>,
    /// Mask secrets of colluding members.
    pub colluder_keys: BTreeMap<MemberId, Zeroizing<[u8; 32]>>,
    /// Inputs of colluding members (known to the coordinator).
    pub colluder_inputs: BTreeMap<MemberId, Vec<R>>,
}

/// A sum of fewer honest inputs than allowed, recovered exactly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leak<R> {
    /// The honest members whose inputs it sums.
    pub honest: BTreeSet<MemberId>,
    /// The recovered sum (equal to the true sum; checked).
    pub sum: Vec<R>,
}

/// Reconstruct a 32-byte secret from `shares` that satisfies `accept`,
/// trying every `t`-subset (shares may come from several lies).
fn rebuild(
    shares: &[Share],
    t: usize,
    accept: impl Fn(&[u8; 32]) -> bool,
) -> Option<Zeroizing<[u8; 32]>> {
    let mut uniq: Vec<Share> = Vec::new();
    for s in shares {
        if !uniq.iter().any(|u| u.to_bytes() == s.to_bytes()) {
            uniq.push(s.clone());
        }
    }
    if uniq.len() < t || t == 0 {
        return None;
    }
    // Small in tests; subsets of size t in lexicographic order.
    let n = uniq.len();
    let mut idx: Vec<usize> = (0..t).collect();
    loop {
        let pick: Vec<Share> = idx.iter().map(|&i| uniq[i].clone()).collect();
        let xs: BTreeSet<u32> = pick.iter().map(Share::x).collect();
        if xs.len() == t
            && let Ok(secret) = shamir::reconstruct(&pick, t)
            && accept(&secret)
        {
            return Some(secret);
        }
        let mut i = t;
        loop {
            if i == 0 {
                return None;
            }
            i -= 1;
            if idx[i] != i + n - t {
                break;
            }
        }
        idx[i] += 1;
        for j in i + 1..t {
            idx[j] = idx[j - 1] + 1;
        }
    }
}

/// Every sum over fewer than `min_honest` honest inputs (and at least one)
/// that the coordinator can compute from `k` (secrets are rebuilt at each of
/// `thresholds`: the views a lying coordinator announced may differ), each checked against `truth`
/// (the honest members' real inputs). Panics if a computed sum disagrees with
/// the truth: that would be a bug in the oracle, not a finding.
pub fn leaks<R: RingElement>(
    suite: Suite,
    round: u64,
    thresholds: &[usize],
    k: &Knowledge<R>,
    truth: &BTreeMap<MemberId, Vec<R>>,
    min_honest: usize,
) -> Vec<Leak<R>> {
    let p = suite.provider();
    let seeds: BTreeMap<MemberId, Zeroizing<[u8; 32]>> = k
        .masked
        .keys()
        .filter_map(|&u| {
            let shares = k.seed_shares.get(&u)?;
            let committed = k.commitments.get(&u)?;
            thresholds
                .iter()
                .find_map(|&t| {
                    rebuild(shares, t, |s| {
                        seed_commitment(suite, round, u, s) == *committed
                    })
                })
                .map(|s| (u, s))
        })
        .collect();
    let mut keys: BTreeMap<MemberId, Zeroizing<[u8; 32]>> = k
        .key_shares
        .iter()
        .filter_map(|(&v, shares)| {
            let public = k.mask_public.get(&v)?;
            thresholds
                .iter()
                .find_map(|&t| {
                    rebuild(shares, t, |s| {
                        p.agreement_public(s).is_ok_and(|pk| &pk == public)
                    })
                })
                .map(|s| (v, s))
        })
        .collect();
    for (&c, secret) in &k.colluder_keys {
        keys.insert(c, secret.clone());
    }
    let pair_key = |u: MemberId, v: MemberId| k.pair_keys.get(&(u.min(v), u.max(v)));
    // The pairwise mask between u and v as u applied it, if known.
    let mask = |u: MemberId, v: MemberId, len: usize| -> Option<Vec<R>> {
        let prg = match (keys.get(&u), keys.get(&v), pair_key(u, v)) {
            (Some(s), _, _) => pairwise_key(suite, round, s, k.mask_public.get(&v)?, u, v)
                .ok()?
                .prg(suite),
            (None, Some(s), _) => pairwise_key(suite, round, s, k.mask_public.get(&u)?, u, v)
                .ok()?
                .prg(suite),
            (None, None, Some(key)) => key.prg(suite),
            (None, None, None) => return None,
        };
        let mut m = vec![R::default(); len];
        if v > u {
            prg.add_into(&mut m).ok()?;
        } else {
            prg.sub_from(&mut m).ok()?;
        }
        Some(m)
    };
    let known = |u: MemberId, v: MemberId| {
        keys.contains_key(&u) || keys.contains_key(&v) || pair_key(u, v).is_some()
    };

    // Components over received inputs, edges = unknown mutual masks.
    let members: Vec<MemberId> = k.masked.keys().copied().collect();
    let mut comp: BTreeMap<MemberId, usize> = BTreeMap::new();
    let mut groups: Vec<Vec<MemberId>> = Vec::new();
    for &start in &members {
        if comp.contains_key(&start) {
            continue;
        }
        let id = groups.len();
        let mut stack = vec![start];
        let mut group = Vec::new();
        comp.insert(start, id);
        while let Some(u) = stack.pop() {
            group.push(u);
            // Only a mask both ends applied can cancel, so only those join
            // members; a one-sided unknown mask blocks its holder instead.
            let peers = &k.masked[&u].1;
            for &v in peers {
                let mutual = k.masked.get(&v).is_some_and(|(_, vp)| vp.contains(&u));
                if mutual && !known(u, v) && !comp.contains_key(&v) {
                    comp.insert(v, id);
                    stack.push(v);
                }
            }
        }
        groups.push(group);
    }

    let mut out = Vec::new();
    for group in groups {
        let set: BTreeSet<MemberId> = group.iter().copied().collect();
        let honest: BTreeSet<MemberId> = set
            .iter()
            .copied()
            .filter(|m| !k.colluder_inputs.contains_key(m))
            .collect();
        if honest.is_empty() || honest.len() >= min_honest {
            continue;
        }
        let len = k.masked[&group[0]].0.len();
        let mut acc = vec![R::default(); len];
        let mut blocked = false;
        for &u in &group {
            let (y, peers) = &k.masked[&u];
            let (Some(seed), true) = (seeds.get(&u), y.len() == len) else {
                blocked = true;
                break;
            };
            ring::add_assign(&mut acc, y);
            let Ok(prg) = self_mask_prg(suite, round, u, seed) else {
                blocked = true;
                break;
            };
            if prg.sub_from(&mut acc).is_err() {
                blocked = true;
                break;
            }
            // A mask cancels inside the group only if both ends applied it.
            let cancels = |v: &MemberId| {
                set.contains(v) && k.masked.get(v).is_some_and(|(_, vp)| vp.contains(&u))
            };
            for &v in peers.iter().filter(|v| !cancels(v)) {
                match mask(u, v, len) {
                    Some(m) => ring::sub_assign(&mut acc, &m),
                    None => {
                        blocked = true;
                        break;
                    }
                }
            }
            if blocked {
                break;
            }
            if let Some(x) = k.colluder_inputs.get(&u) {
                ring::sub_assign(&mut acc, x);
            }
        }
        if blocked {
            continue;
        }
        let mut expect = vec![R::default(); len];
        for h in &honest {
            if let Some(x) = truth.get(h) {
                ring::add_assign(&mut expect, x);
            }
        }
        assert_eq!(
            acc, expect,
            "isolation oracle computed a wrong sum for {honest:?}: oracle bug"
        );
        out.push(Leak { honest, sum: acc });
    }
    out
}
