//! Where a replayed input is checked against the survivor set this site
//! signed on the model before (the rule and its argument are in
//! `contribution.rs`): which site names the round's members carry, whether
//! the peers it masks with are exactly that set before the input leaves,
//! and whether a survivor set may be signed.

use std::collections::BTreeSet;

use confide_crypto::protocol::{AnySiteOutput, RingVec};
use confide_proto::v1;
use tracing::info;

use super::contribution::Plan;
use super::{Phase, Round, RoundDriver};
use crate::error::ClientError;

/// The name a relayed member is known by across rounds and coordinators:
/// the site name (checked against its certificate under mTLS), or its
/// verifying key when a test coordinator relays none.
fn name_of(site: &str, verifying_key: &[u8]) -> String {
    if site.is_empty() {
        format!("key:{}", hex::encode(verifying_key))
    } else {
        site.to_string()
    }
}

/// Remembers the names of the neighbours whose adverts the round's machine
/// accepted (those it rejected are named in its `rejected()`).
pub(super) fn record_names(r: &mut Round, nk: &v1::NeighbourKeys) {
    let Phase::Secure(m) = &r.phase else {
        return;
    };
    let rejected: BTreeSet<u32> = m.rejected().iter().map(|(p, _)| *p).collect();
    for a in &nk.adverts {
        let Some(advert) = &a.advert else { continue };
        if !rejected.contains(&advert.member) {
            r.names
                .entry(advert.member)
                .or_insert_with(|| name_of(&a.site, &a.verifying_key));
        }
    }
}

/// The survivor set `S` this site signed on the model, if this round replays it.
fn signed_set(r: &Round) -> Option<&BTreeSet<String>> {
    match &r.plan {
        Plan::Replay {
            survivors: Some(s), ..
        } => Some(s),
        _ => None,
    }
}

/// A replay refused because of who is in it: the Decline names `s`, the
/// survivor set signed, so the coordinator can re-run with exactly it.
fn refused(r: &Round, s: &BTreeSet<String>, why: String) -> ClientError {
    ClientError::ReplayCohort {
        round: r.start.round,
        model: hex::encode(&r.start.model_sha256),
        why,
        survivors: s.iter().cloned().collect(),
    }
}

/// Names of `members` (this site is `me`), from the verified adverts only;
/// `Err` names a member without one.
fn verified_names(r: &Round, me: &str, members: &[u32]) -> Result<BTreeSet<String>, u32> {
    members
        .iter()
        .map(|&m| {
            if m == r.start.member {
                Ok(me.to_string())
            } else {
                r.names.get(&m).cloned().ok_or(m)
            }
        })
        .collect()
}

/// Before a replayed input leaves the site: the peers it is masked with
/// must be exactly the signed set `S` minus this site, and the whole cohort
/// (rule 2 of `contribution.rs`). Nothing is checked outside a replay.
pub(super) fn check_masking(r: &Round, me: &str, o: &AnySiteOutput) -> Result<(), ClientError> {
    let (Some(s), AnySiteOutput::MaskedInput { masking, .. }) = (signed_set(r), o) else {
        return Ok(());
    };
    let mut members = masking.peers.clone();
    members.push(r.start.member);
    let names = verified_names(r, me, &members)
        .map_err(|m| refused(r, s, format!("member {m} has no verified identity")))?;
    if members.len() != r.start.cohort.len() || &names != s {
        return Err(refused(
            r,
            s,
            format!(
                "this site would mask with {} (itself included), not exactly the {} sites of the survivor set it signed",
                names.len(),
                s.len()
            ),
        ));
    }
    Ok(())
}

impl RoundDriver {
    /// The input to re-send instead of training, for a replay.
    pub(super) fn replay_input(&self) -> Option<RingVec> {
        match &self.round.as_ref()?.plan {
            Plan::Replay { input, .. } => {
                info!(
                    round = self.round.as_ref().map(|r| r.start.round),
                    "replaying this site's input on this model (no training)"
                );
                Some(input.clone())
            }
            Plan::Fresh => None,
        }
    }

    /// Before signing survivor set `c`: the site names it stands for, or,
    /// in a replay, why it differs from the set signed before (rule 3).
    /// Outside a replay a survivor without a verified advert (a non-neighbour
    /// in a sparse graph) is named by member number: such a name can only
    /// make a later replay fail, never pass.
    pub(super) fn survivor_names(
        &self,
        c: &v1::ConsistencyRequest,
    ) -> Result<BTreeSet<String>, ClientError> {
        let Some(r) = self.round.as_ref() else {
            return Ok(BTreeSet::new());
        };
        let me = &self.cfg.site;
        if let Some(s) = signed_set(r) {
            let names = verified_names(r, me, &c.survivors)
                .map_err(|m| refused(r, s, format!("survivor {m} has no verified identity")))?;
            if &names != s {
                let missing = s.difference(&names).count();
                let extra = names.difference(s).count();
                return Err(refused(
                    r,
                    s,
                    format!(
                        "the survivor set differs from the one this site signed ({missing} missing, {extra} other)"
                    ),
                ));
            }
            return Ok(names);
        }
        Ok(c.survivors
            .iter()
            .map(|&m| match verified_names(r, me, &[m]) {
                Ok(n) => n.into_iter().next().unwrap_or_default(),
                Err(_) => format!("member:{m}"),
            })
            .collect())
    }
}
