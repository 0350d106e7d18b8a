//! One training input per (federation, model), re-sent exactly on a retry.
//!
//! **The threat.** Two unmasked sums over different sets of sites that both
//! hold this site's update on one model could be subtracted to isolate it
//! (or a small group's). Until this rule a site therefore refused every
//! second training round on a model once it had signed a survivor set. A
//! standby coordinator that takes over re-runs the round its predecessor
//! lost, on the same model, so every site that had signed refused and the
//! federation stalled.
//!
//! **The rule.** Per (federation, model hash) the site keeps, in its state
//! directory (`ledger.rs`; in memory only when it has none), the exact
//! quantised input `x` it first uploaded and, once it signs, the
//! survivor set `S` it signed as *site names* (the names in the members'
//! certificates, checked by [`crate::identity::CertificateVerifier`]; member
//! ids are per round and mean nothing across coordinators). Then:
//!
//! 1. Every later training round on that model is served only as a
//!    *replay* ([`Plan::Replay`]): no training, `x` re-sent bit for bit
//!    under the round's fresh masks. Its training, quantisation and vector
//!    settings must equal the first round's (else `x` would mean something
//!    else); a plaintext round is refused.
//! 2. After signing `S`: a replay round must be the complete graph over
//!    exactly `|S|` members, and the input leaves the site only if the
//!    peers it masks with are exactly `S` minus itself, by verified name
//!    (checked on the machine's masking set before the upload is queued).
//! 3. It signs a replay round's survivor set only if its names equal `S`.
//! 4. A model with a plain update (comparison mode, already readable) or
//!    whose `x` was forgotten (only the newest [`KEPT`] models' inputs are
//!    kept) is refused as before ([`ClientError::AlreadyContributed`]).
//!
//! **Why it is safe.** Assume, as a single round does, that the colluders in
//! a round number at most its announced `max_colluders` (the site's policy
//! floors it). A sum is unmasked only with a quorum `⌊(n + c)/2⌋ + 1` of
//! signatures, so more than half of the *honest* members of that round's
//! cohort signed its survivor set. Each honest site signs one name-set per
//! model (rule 3) and, from its first upload, puts one value per model in
//! every sum (rule 1).
//!
//! - A sum holding `x` after this site signed `S` comes from a round whose
//!   cohort is exactly `S` (rule 2), so its survivor set is `S` or a subset.
//!   Two different such sets, or a strict subset and `S` itself unmasked in
//!   any round (whose cohort contains `S`), would each need more than half
//!   of the honest members of `S` as signers, and no honest site signs both:
//!   at most one set is ever unmasked among them. Replaying `S` gives the
//!   same sum again; a colluder that changes its own input learns only that
//!   change.
//! - In general no integer combination of `k` distinct unmasked sums
//!   isolates one honest input: every other input it touches must appear in
//!   at least two of them, so their honest sizes total at least `2N − 1`
//!   over the `N` honest inputs touched; their signer majorities are
//!   disjoint (one name-set per site) and within those `N`, so the total is
//!   at most `2N − k`. Hence `k = 1`: a sum whose only honest input is that
//!   one, which no round can unmask while its colluders stay within its
//!   `max_colluders` (the quorum would exceed the cohort).
//! - Rule 2 is what stops the difference of two honest inputs: without it
//!   the re-sent `x` could land in a sum over another set signed by sites
//!   that had not signed before, and two sums `X ∪ {u}`, `X ∪ {v}` (each
//!   signed by half of `X` and its odd one out) give `x_u − x_v`. With it,
//!   whichever sum came second holds replayed inputs of the first one's
//!   signers, so its cohort is the first one's set — which lacks `u` or `v`.
//!
//! A masked input the site uploaded but never signed for is replayed too
//! (the same `x`, so a coordinator gains nothing from retries before the
//! consistency stage, not even training noise), without the cohort check:
//! no signature binds it yet. The cost of the rule is liveness only: a
//! re-run with another cohort (a site gone, another added) is refused by
//! the sites that signed, until the model changes. Their Decline
//! (`REPLAY_COHORT`) names `S`, so the coordinator's scheduler re-runs the
//! round with exactly `S`; the site's checks here and in `replay.rs` stay
//! the authority whatever the coordinator does with that hint.
//!
//! **Across restarts.** Everything above is written to the ledger before
//! the message it concerns leaves the site (the input before its upload,
//! `S` before the signature, the plain flag before a plain update); a
//! write that fails stops that message. A restarted site therefore replays
//! the same `x` and refuses any cohort but `S`, as if it had never stopped.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use confide_crypto::protocol::{AnySiteOutput, RingVec};
use confide_proto::v1;
use tracing::{info, warn};

use super::ledger::{self, Body, InputFile, Store, Stored};
use super::outgoing::Outgoing;
use crate::error::ClientError;

/// How many models' inputs are kept (the federation's newest ones; a retry
/// concerns the model of the round in progress).
pub(super) const KEPT: usize = 4;

/// How a training announcement is served.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Plan {
    /// No earlier input on this model: train (or any other round kind).
    Fresh,
    /// Re-send exactly `input`; with `survivors`, only into a cohort of
    /// exactly those sites, and sign only that survivor set.
    Replay {
        input: RingVec,
        survivors: Option<BTreeSet<String>>,
    },
}

/// What the site sent on one model.
#[derive(Debug)]
struct Entry {
    /// The announcement the input was computed under, without what changes
    /// from round to round ([`terms`]).
    terms: v1::RoundStart,
    /// The exact input, while it is held in memory: without a state
    /// directory, or until the ledger names its file (`file`). A
    /// model-sized vector for each of [`KEPT`] models would otherwise stay
    /// in memory for replays that rarely come. The input is kept while
    /// either is set ([`Entry::kept`]); neither once forgotten or for a
    /// plain update.
    input: Option<RingVec>,
    /// The survivor set signed (site names).
    signed: Option<BTreeSet<String>>,
    /// A plain update (already readable by the coordinator).
    plain: bool,
    /// Insertion order, for forgetting the oldest inputs.
    seq: u64,
    /// The input's file in the ledger, once written.
    file: Option<InputFile>,
}

impl Entry {
    /// Whether the input is kept, in memory or in its file.
    fn kept(&self) -> bool {
        self.input.is_some() || self.file.is_some()
    }
}

/// The models this site sent training inputs for.
#[derive(Debug, Default)]
pub(super) struct Contributions {
    entries: BTreeMap<(String, Vec<u8>), Entry>,
    seq: u64,
    /// The ledger on disk; `None`: in memory only.
    store: Option<Store>,
    /// Input files of forgotten inputs, removed after the next save.
    orphans: Vec<String>,
    /// The last masked vector, once packed for upload: the next round's
    /// vector goes into its memory ([`crate::trainer::Learn::spare`]).
    pub(super) spare: Option<RingVec>,
}

/// The parts of an announcement that decide what the input means (the
/// model, ring, length, quantisation, training settings, evaluation and
/// feature statistics); round, attempt, cohort and graph are per attempt.
fn terms(rs: &v1::RoundStart) -> v1::RoundStart {
    v1::RoundStart {
        round: 0,
        member: 0,
        cohort: Vec::new(),
        k: 0,
        t: 0,
        graph_seed: Vec::new(),
        min_survivors: 0,
        stage_timeout_secs: 0,
        plaintext: false,
        attempt: Vec::new(),
        max_colluders: 0,
        crl: Vec::new(),
        ..rs.clone()
    }
}

fn key(federation: &str, rs: &v1::RoundStart) -> (String, Vec<u8>) {
    (federation.to_string(), rs.model_sha256.clone())
}

impl Contributions {
    /// The ledger in state directory `state` (created if new), or an
    /// in-memory one without: a restart then forgets, which is logged.
    pub(super) fn open(state: Option<&Path>) -> Result<Self, ClientError> {
        let Some(state) = state else {
            warn!(
                "no state directory: this site's record of its contributions lives in memory only; after a restart it could send a second, different input on a model it already contributed to (give --state-dir)"
            );
            return Ok(Contributions::default());
        };
        let store = Store::open(state)?;
        let path = store.ledger_path();
        let mut c = Contributions::default();
        if let Some(body) = store.load()? {
            c.seq = body.seq;
            for e in body.entries {
                let model = hex::decode(&e.model).map_err(|_| ClientError::Ledger {
                    path: path.clone(),
                    reason: "a model hash is not hex".into(),
                })?;
                let terms = ledger::decode_terms(&path, &e.terms)?;
                c.entries.insert(
                    (e.federation, model),
                    Entry {
                        terms,
                        input: None,
                        signed: e.signed,
                        plain: e.plain,
                        seq: e.seq,
                        file: e.input,
                    },
                );
            }
            info!(path = %path.display(), models = c.entries.len(), kept = c.entries.values().filter(|e| e.kept()).count(), "contribution ledger loaded: earlier inputs are replayed exactly, signed survivor sets still bind");
        } else {
            info!(path = %path.display(), "no contribution ledger yet; starting one");
        }
        c.store = Some(store);
        Ok(c)
    }

    /// Writes what is new to the ledger (input files first, then the
    /// ledger naming them); a no-op in memory. Called before the message
    /// it records leaves the site, and again by every later one, so an
    /// earlier failed write is retried before anything more is sent.
    fn save(&mut self) -> Result<(), ClientError> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        for ((federation, model), e) in &mut self.entries {
            if let (Some(x), None) = (&e.input, &e.file) {
                e.file = Some(store.write_input(&ledger::input_name(federation, model), x)?);
            }
        }
        let entries = self
            .entries
            .iter()
            .map(|((federation, model), e)| Stored {
                federation: federation.clone(),
                model: hex::encode(model),
                terms: ledger::encode_terms(&e.terms),
                input: e.file.clone(),
                signed: e.signed.clone(),
                plain: e.plain,
                seq: e.seq,
            })
            .collect();
        store.save(&Body {
            seq: self.seq,
            entries,
        })?;
        for name in self.orphans.drain(..) {
            store.remove_input(&name);
        }
        // The ledger now names every written input: from here on each is
        // read from its file.
        for e in self.entries.values_mut().filter(|e| e.file.is_some()) {
            e.input = None;
        }
        Ok(())
    }

    /// How to serve announcement `rs`, or why it is refused.
    pub(super) fn plan(&self, federation: &str, rs: &v1::RoundStart) -> Result<Plan, ClientError> {
        if rs.kind != v1::RoundKind::Train as i32 {
            return Ok(Plan::Fresh);
        }
        let Some(e) = self.entries.get(&key(federation, rs)) else {
            return Ok(Plan::Fresh);
        };
        let model = hex::encode(&rs.model_sha256);
        let refuse = |why: String| {
            warn!(round = rs.round, %model, %why, "refusing a second training round on the same model");
            Err(ClientError::ReplayRefused {
                round: rs.round,
                model: model.clone(),
                why,
            })
        };
        let (false, true) = (e.plain, e.kept()) else {
            warn!(round = rs.round, %model, "refusing a second training contribution on the same model");
            return Err(ClientError::AlreadyContributed {
                round: rs.round,
                federation: federation.to_string(),
                model: model.clone(),
            });
        };
        if rs.plaintext {
            return refuse("a plaintext round (a replay is only ever sent masked)".into());
        }
        if terms(rs) != e.terms {
            return refuse(
                "its training, quantisation or vector settings differ from the first round's"
                    .into(),
            );
        }
        if let Some(s) = &e.signed {
            let n = rs.cohort.len();
            let cohort = |why: String| {
                warn!(round = rs.round, %model, %why, survivors = s.len(), "refusing a re-run with another cohort; telling the coordinator the survivor set this site signed");
                Err(ClientError::ReplayCohort {
                    round: rs.round,
                    model: model.clone(),
                    why,
                    survivors: s.iter().cloned().collect(),
                })
            };
            if n != s.len() {
                return cohort(format!(
                    "a cohort of {n} members; the survivor set this site signed had {}",
                    s.len()
                ));
            }
            if rs.k as usize + 1 != n {
                return cohort(format!(
                    "k = {} is not the complete graph over {n} members (every member must be checked against the signed set)",
                    rs.k
                ));
            }
        }
        // Read (and checked) only now that the replay is allowed.
        let input = match (&e.input, &e.file, &self.store) {
            (Some(x), _, _) => x.clone(),
            (None, Some(f), Some(store)) => store.read_input(f)?,
            // A file is named only with a store.
            _ => return refuse("its input is neither in memory nor in the ledger".into()),
        };
        info!(round = rs.round, %model, "a retry on a model this site already sent an input for: replaying it exactly, no training");
        Ok(Plan::Replay {
            input,
            survivors: e.signed.clone(),
        })
    }

    /// The masked input `x` of training round `rs` is about to leave the
    /// site (the first time on this model; a replay sends the same): `Err`
    /// if it could not be recorded, and then it must not leave.
    pub(super) fn remember_input(
        &mut self,
        federation: &str,
        rs: &v1::RoundStart,
        x: RingVec,
    ) -> Result<(), ClientError> {
        if rs.kind != v1::RoundKind::Train as i32 {
            return Ok(());
        }
        let k = key(federation, rs);
        if !self.entries.contains_key(&k) {
            self.seq += 1;
            self.entries.insert(
                k,
                Entry {
                    terms: terms(rs),
                    input: Some(x),
                    signed: None,
                    plain: false,
                    seq: self.seq,
                    file: None,
                },
            );
            self.forget_old();
        }
        self.save()
    }

    /// This site signed survivor set `survivors` (site names) in training
    /// round `rs`: a quorum may now unmask a sum holding its input.
    /// `Err` if it could not be recorded: the signature must not leave.
    pub(super) fn record_signed(
        &mut self,
        federation: &str,
        rs: &v1::RoundStart,
        survivors: BTreeSet<String>,
    ) -> Result<(), ClientError> {
        if rs.kind != v1::RoundKind::Train as i32 {
            return Ok(());
        }
        let e = self.entries.entry(key(federation, rs)).or_insert(Entry {
            // Not reached: the input is remembered at upload. Without it a
            // replay is impossible, so the model is simply refused later.
            terms: terms(rs),
            input: None,
            signed: None,
            plain: false,
            seq: 0,
            file: None,
        });
        if e.signed.is_none() {
            info!(round = rs.round, model = %hex::encode(&rs.model_sha256), survivors = survivors.len(), "survivor set signed; a retry on this model will only replay this input to these sites");
            e.signed = Some(survivors);
        }
        self.save()
    }

    /// A plain update of training round `rs` is about to leave the site:
    /// `Err` if it could not be recorded, and then it must not leave.
    pub(super) fn record_plain(
        &mut self,
        federation: &str,
        rs: &v1::RoundStart,
    ) -> Result<(), ClientError> {
        if rs.kind != v1::RoundKind::Train as i32 {
            return Ok(());
        }
        self.seq += 1;
        if let Some(old) = self.entries.insert(
            key(federation, rs),
            Entry {
                terms: terms(rs),
                input: None,
                signed: None,
                plain: true,
                seq: self.seq,
                file: None,
            },
        ) && let Some(f) = old.file
        {
            self.orphans.push(f.file);
        }
        info!(round = rs.round, model = %hex::encode(&rs.model_sha256), "plain training update on this model sent; no second one will be");
        self.save()
    }

    /// `o` as it waits in the outbox; a masked vector's memory is kept for
    /// the next round's vector.
    pub(super) fn outgoing(
        &mut self,
        o: AnySiteOutput,
        session: &str,
        start: &v1::RoundStart,
    ) -> Outgoing {
        let (out, spare) = Outgoing::from_site_keeping(o, session, start);
        if spare.is_some() {
            self.spare = spare;
        }
        out
    }

    /// A copy of input `x`, to remember once it is sent. In memory only
    /// and with [`KEPT`] inputs held, it goes into the oldest one's buffer
    /// (forgotten now rather than when `x` is remembered): copying into
    /// memory already in use costs a fraction of faulting in fresh pages,
    /// a model-sized vector every round.
    pub(super) fn copy_for_replay(&mut self, x: &RingVec) -> RingVec {
        match self.spare_input() {
            Some(mut spare) => {
                spare.clone_from(x);
                spare
            }
            None => x.clone(),
        }
    }

    /// The oldest input's buffer, taken from its entry; `None` with a state
    /// directory (inputs live in their files) or below [`KEPT`] inputs
    /// (nothing would be forgotten).
    fn spare_input(&mut self) -> Option<RingVec> {
        if self.store.is_some() {
            return None;
        }
        let held = self.entries.values().filter(|e| e.input.is_some());
        if held.count() < KEPT {
            return None;
        }
        self.entries
            .values_mut()
            .filter(|e| e.input.is_some())
            .min_by_key(|e| e.seq)
            .and_then(|e| e.input.take())
    }

    /// Keeps the inputs of the newest [`KEPT`] models. Older ones stay
    /// refused (never retrained: that would put a second value in the sums).
    fn forget_old(&mut self) {
        let mut kept: Vec<(u64, (String, Vec<u8>))> = self
            .entries
            .iter()
            .filter(|(_, e)| e.kept())
            .map(|(k, e)| (e.seq, k.clone()))
            .collect();
        kept.sort();
        let excess = kept.len().saturating_sub(KEPT);
        for (_, k) in kept.iter().take(excess) {
            if let Some(e) = self.entries.get_mut(k) {
                e.input = None;
                if let Some(f) = e.file.take() {
                    self.orphans.push(f.file);
                }
            }
        }
    }
}
