//! The cohort a re-run must have, learned from sites' `REPLAY_COHORT`
//! declines: pure bookkeeping, no clock, no locks.
//!
//! A site that signed survivor set `S` on a model replays its input on that
//! model only to a complete-graph cohort of exactly `S`
//! (`client/src/round/contribution.rs`). A coordinator that lost `S` — a
//! standby after failover, or a restart between the unmask and the
//! checkpoint — plans some other cohort; the sites of `S` decline it and
//! name `S`. [`ReplayClaims`] keeps those names per model, and the
//! scheduler's next training round on that model uses exactly `S`
//! ([`super::plan_replay_round`]) once every site of `S` is connected
//! ([`members`]), waiting (not failing) while one is missing.
//!
//! The names are a hint, never trusted for security: every site checks the
//! re-run against its own `S`. They are taken only from the declining
//! site's authenticated session, only if they name that site, and a claim
//! that no coordinator could ever serve (fewer than three names: no site
//! signs such a set; more than `max_sites`) is refused.

use std::collections::{BTreeMap, BTreeSet};

use confide_crypto::MemberId;

/// The fewest names a survivor set can have: sites never sign fewer than
/// three survivors (a sum of two hands each the other's input).
pub const MIN_REPLAY_COHORT: usize = 3;

/// Why a claim was not taken.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    /// The claimed set does not name the site that claims it.
    #[error("the survivor set it names does not contain the site itself")]
    NotAMember,
    /// Fewer names than any survivor set a site signs.
    #[error("{0} names; no site signs a survivor set of fewer than {MIN_REPLAY_COHORT}")]
    TooSmall(usize),
    /// More sites than the coordinator admits: it could never be served.
    #[error("{names} names; max_sites is {max_sites}, so no round could ever have this cohort")]
    TooLarge {
        /// Names claimed.
        names: usize,
        /// The setting.
        max_sites: usize,
    },
}

/// The survivor sets sites reported for one model (the newest model any
/// claim was about).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplayClaims {
    /// SHA-256 of the model the claims are about.
    model: Vec<u8>,
    /// Each claiming site's survivor set (its latest claim).
    claims: BTreeMap<String, BTreeSet<String>>,
    /// (model round, SHA-256) of the coordinator's current model, so the
    /// model is hashed once, not at every look.
    current: Option<(u64, Vec<u8>)>,
}

impl ReplayClaims {
    /// `site` declined a training round on `model`: it replays only to
    /// `cohort`. A claim on another model than the stored ones replaces them
    /// (only the model of the round in progress can be claimed). Returns
    /// whether the claim is new or changed.
    pub fn claim(
        &mut self,
        model: &[u8],
        site: &str,
        cohort: BTreeSet<String>,
        max_sites: usize,
    ) -> Result<bool, ClaimError> {
        if !cohort.contains(site) {
            return Err(ClaimError::NotAMember);
        }
        if cohort.len() < MIN_REPLAY_COHORT {
            return Err(ClaimError::TooSmall(cohort.len()));
        }
        if cohort.len() > max_sites {
            return Err(ClaimError::TooLarge {
                names: cohort.len(),
                max_sites,
            });
        }
        if self.model != model {
            self.model = model.to_vec();
            self.claims.clear();
        }
        Ok(self.claims.insert(site.to_string(), cohort.clone()) != Some(cohort))
    }

    /// Whether no claim is held.
    pub fn is_empty(&self) -> bool {
        self.claims.is_empty()
    }

    /// The cohort a training round on the current model (the one of model
    /// round `model_round`, hashed by `hash` when not cached) must have:
    /// the set claimed by the most sites (ties: the smallest in order, so
    /// the choice is deterministic), with how many sets were claimed.
    /// `None` without a claim on this model; claims on an older model are
    /// dropped.
    pub fn required(
        &mut self,
        model_round: u64,
        hash: impl FnOnce() -> Vec<u8>,
    ) -> Option<(BTreeSet<String>, usize)> {
        if self.claims.is_empty() {
            return None;
        }
        let current = match &self.current {
            Some((r, h)) if *r == model_round => h.clone(),
            _ => {
                let h = hash();
                self.current = Some((model_round, h.clone()));
                h
            }
        };
        if current != self.model {
            self.claims.clear();
            return None;
        }
        let mut votes: BTreeMap<&BTreeSet<String>, usize> = BTreeMap::new();
        for set in self.claims.values() {
            *votes.entry(set).or_default() += 1;
        }
        let sets = votes.len();
        // Highest count; among equals the first in order.
        let (best, _) =
            votes
                .into_iter()
                .fold(
                    None,
                    |acc: Option<(&BTreeSet<String>, usize)>, (set, n)| match acc {
                        Some((_, m)) if m >= n => acc,
                        _ => Some((set, n)),
                    },
                )?;
        Some((best.clone(), sets))
    }
}

/// The connected members that are exactly `required`, listed by member
/// id, or the names of `required` not connected.
pub fn members(
    required: &BTreeSet<String>,
    connected: &[(MemberId, String)],
) -> Result<Vec<(MemberId, String)>, Vec<String>> {
    let mut found: Vec<(MemberId, String)> = connected
        .iter()
        .filter(|(_, name)| required.contains(name))
        .cloned()
        .collect();
    let present: BTreeSet<&String> = found.iter().map(|(_, n)| n).collect();
    let missing: Vec<String> = required
        .iter()
        .filter(|n| !present.contains(n))
        .cloned()
        .collect();
    if !missing.is_empty() {
        return Err(missing);
    }
    found.sort();
    Ok(found)
}
