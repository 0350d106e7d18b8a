//! A deterministic in-memory round: n sites and a coordinator exchanging
//! messages through queues, with chosen members vanishing at chosen stages and
//! messages within a stage delivered in a seeded random order. Used by this
//! crate's tests and benchmarks and by other crates' tests (`test-util`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

pub mod isolation;

use crate::error::ProtocolError;
use crate::graph::SecAggParams;
use crate::protocol::{
    CoordinatorMachine, CoordinatorOutput, KeyDirectory, MaskingSet, MemberId, RoundConfig,
    RoundResult, SiteMachine, SiteOutput, SitePolicy, Stage, StageTimeouts, SurvivorSignature,
    UnmaskResponse,
};
use crate::ring::RingElement;
use crate::suite::{SigningKey, Suite};

/// One simulated round's set-up.
#[derive(Clone, Debug)]
pub struct Simulation {
    /// Cipher suite.
    pub suite: Suite,
    /// Member ids, ascending.
    pub members: Vec<MemberId>,
    /// Degree and threshold.
    pub params: SecAggParams,
    /// Minimum survivors.
    pub min_survivors: usize,
    /// Colluders the round assumes (sets the signature quorum).
    pub max_colluders: usize,
    /// Every site's policy ([`lenient_policy`] unless set).
    pub policy: SitePolicy,
    /// Round number.
    pub round: u64,
    /// Seed of every random choice (keys, shares, graph, delivery order).
    pub seed: u64,
    /// Member → the stage whose message it never sends (it is gone from then on).
    pub drops: BTreeMap<MemberId, Stage>,
    /// Tell the coordinator when a dropped member has gone (as a closed
    /// connection would, [`CoordinatorMachine::handle_member_gone`]) instead
    /// of letting each stage's deadline pass.
    pub notify_gone: bool,
}

/// What a simulated round produced.
#[derive(Debug)]
pub struct SimOutcome<R> {
    /// The coordinator's verdict.
    pub result: Result<RoundResult<R>, ProtocolError>,
    /// Errors sites raised (a site that errs stops taking part).
    pub site_errors: Vec<(MemberId, ProtocolError)>,
    /// Stage closures reported by the coordinator: (stage, completed, dropped).
    pub stages: Vec<(Stage, Vec<MemberId>, Vec<MemberId>)>,
    /// Simulated time from the start to the verdict (1 ms per exchange,
    /// plus every stage deadline that had to pass).
    pub elapsed: Duration,
}

impl Simulation {
    /// `n` members with ids 1..=n, min_survivors = t.
    pub fn new(suite: Suite, n: usize, params: SecAggParams) -> Self {
        Simulation {
            suite,
            members: (1..=n as MemberId).collect(),
            params,
            min_survivors: params.t.max(3).min(n),
            max_colluders: 0,
            policy: lenient_policy(),
            round: 1,
            seed: 0,
            drops: BTreeMap::new(),
            notify_gone: false,
        }
    }

    /// The coordinator learns of each drop at once ([`Simulation::notify_gone`]).
    pub fn notifying_gone(mut self) -> Self {
        self.notify_gone = true;
        self
    }

    /// Member `m` vanishes before sending its message of `stage`.
    pub fn drop_at(mut self, m: MemberId, stage: Stage) -> Self {
        self.drops.insert(m, stage);
        self
    }

    /// Sites apply `policy`.
    pub fn with_policy(mut self, policy: SitePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Use another seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The round configuration the simulation announces.
    pub fn config<R: RingElement>(&self, vector_len: usize) -> RoundConfig {
        let mut rng = ChaCha20Rng::seed_from_u64(self.seed ^ 0x9e37_79b9_7f4a_7c15);
        let mut graph_seed = [0u8; 32];
        rng.fill_bytes(&mut graph_seed);
        RoundConfig {
            round: self.round,
            suite: self.suite,
            ring: R::RING,
            cohort: self.members.clone(),
            params: self.params,
            graph_seed,
            vector_len,
            min_survivors: self.min_survivors,
            max_colluders: self.max_colluders,
            context: [7; 32],
        }
    }

    fn gone(&self, m: MemberId, stage: Stage) -> bool {
        self.drops.get(&m).is_some_and(|&s| s <= stage)
    }

    /// Run the round with `inputs[i]` the input of `members[i]`.
    pub fn run<R: RingElement>(&self, inputs: &[Vec<R>]) -> Result<SimOutcome<R>, ProtocolError> {
        if inputs.len() != self.members.len() || inputs.is_empty() {
            return Err(ProtocolError::Config(
                "one input per member required".into(),
            ));
        }
        let len = inputs[0].len();
        let cfg = self.config::<R>(len);
        let mut rng = ChaCha20Rng::seed_from_u64(self.seed);
        let mut directory = KeyDirectory::new();
        let mut keys = BTreeMap::new();
        for &m in &self.members {
            let k = SigningKey::generate(self.suite, &mut rng);
            directory.insert(m, k.verifying_key()?);
            keys.insert(m, k);
        }
        let directory = Arc::new(directory);
        let start = Instant::now();
        let mut now = start;
        let mut coord = CoordinatorMachine::<R>::new(
            cfg.clone(),
            StageTimeouts::uniform(Duration::from_secs(60)),
            now,
        )?;
        // As a real coordinator does: every honest signature must pass.
        coord.check_signatures(directory.clone());
        let mut sites = BTreeMap::new();
        let mut site_errors = Vec::new();
        for (&m, input) in self.members.iter().zip(inputs) {
            let site = SiteMachine::<R>::new(
                cfg.clone(),
                m,
                keys[&m].clone(),
                directory.clone(),
                &self.policy,
                &mut rng,
            )?;
            sites.insert(m, (site, Some(input.clone())));
        }
        let mut stages = Vec::new();
        loop {
            // Gather what the live sites want to send, in a shuffled order.
            let stage = coord.stage();
            let mut outgoing = Vec::new();
            for (&m, (site, input)) in sites.iter_mut() {
                if site.stage() == Stage::MaskedInput
                    && !self.gone(m, Stage::MaskedInput)
                    && let Some(x) = input.take()
                    && let Err(e) = site.handle_input(x)
                {
                    site_errors.push((m, e));
                }
                while let Some(o) = site.poll_output() {
                    let s = match &o {
                        SiteOutput::Advertise(_) => Stage::AdvertiseKeys,
                        SiteOutput::Shares(_) => Stage::ShareKeys,
                        SiteOutput::MaskedInput { .. } => Stage::MaskedInput,
                        SiteOutput::Consistency(_) => Stage::Consistency,
                        SiteOutput::Unmask(_) => Stage::Unmask,
                    };
                    if !self.gone(m, s) {
                        outgoing.push((m, o));
                    }
                }
            }
            shuffle(&mut outgoing, &mut rng);
            for (m, o) in outgoing {
                let r = match o {
                    SiteOutput::Advertise(a) => {
                        let id = directory_identity(&keys, m)?;
                        coord.handle_advert(a, id, now)
                    }
                    SiteOutput::Shares(b) => coord.handle_shares(b, now),
                    SiteOutput::MaskedInput { vector, masking } => {
                        coord.handle_masked_input(cfg.round, m, &vector, masking, now)
                    }
                    SiteOutput::Consistency(sig) => coord.handle_consistency(sig, now),
                    SiteOutput::Unmask(u) => coord.handle_unmask_response(u, now),
                };
                if let Err(e) = r {
                    return Err(ProtocolError::Config(format!(
                        "coordinator rejected an honest message from {m}: {e}"
                    )));
                }
            }
            if self.notify_gone && coord.stage() == stage && stage != Stage::Done {
                for (&m, _) in self.drops.iter().filter(|(_, d)| **d <= stage) {
                    coord.handle_member_gone(m, now);
                }
            }
            if coord.stage() == stage && stage != Stage::Done {
                // Nobody else will answer: let the deadline pass.
                if let Some(d) = coord.poll_timeout() {
                    now = d;
                    coord.handle_timeout(now);
                }
            }
            let mut deliveries = Vec::new();
            while let Some(o) = coord.poll_output() {
                match o {
                    CoordinatorOutput::Finished(result) => {
                        return Ok(SimOutcome {
                            result,
                            site_errors,
                            stages,
                            elapsed: now.saturating_duration_since(start),
                        });
                    }
                    CoordinatorOutput::StageClosed {
                        stage,
                        completed,
                        dropped,
                    } => stages.push((stage, completed, dropped)),
                    other => deliveries.push(other),
                }
            }
            shuffle(&mut deliveries, &mut rng);
            for d in deliveries {
                let (to, r) = match d {
                    CoordinatorOutput::NeighbourKeys { to, msg } => (
                        to,
                        sites
                            .get_mut(&to)
                            .map(|(s, _)| s.handle_neighbour_keys(msg, &mut rng)),
                    ),
                    CoordinatorOutput::IncomingShares { to, msg } => (
                        to,
                        sites
                            .get_mut(&to)
                            .map(|(s, _)| s.handle_incoming_shares(msg)),
                    ),
                    CoordinatorOutput::ConsistencyRequest { to, msg } => (
                        to,
                        sites
                            .get_mut(&to)
                            .map(|(s, _)| s.handle_consistency_request(Arc::unwrap_or_clone(msg))),
                    ),
                    CoordinatorOutput::UnmaskRequest { to, msg } => (
                        to,
                        sites
                            .get_mut(&to)
                            .map(|(s, _)| s.handle_unmask_request(Arc::unwrap_or_clone(msg))),
                    ),
                    _ => continue,
                };
                if let Some(Err(e)) = r {
                    site_errors.push((to, e));
                }
            }
            now += Duration::from_millis(1);
        }
    }
}

/// A policy for simulations of the protocol's mechanics: no collusion
/// assumed and any graph accepted (the default [`SitePolicy`] would refuse the
/// sparse graphs small tests use). The minimum of 3 survivors still holds.
pub fn lenient_policy() -> SitePolicy {
    SitePolicy {
        min_cohort: 3,
        min_survivors: 3,
        collusion_fraction: 0.0,
        complete_graph_up_to: 0,
    }
}

fn directory_identity(
    keys: &BTreeMap<MemberId, SigningKey>,
    m: MemberId,
) -> Result<Vec<u8>, ProtocolError> {
    let k = keys.get(&m).ok_or(ProtocolError::NotParticipant(m))?;
    Ok(k.verifying_key()?.as_bytes().to_vec())
}

fn shuffle<T>(v: &mut [T], rng: &mut impl Rng) {
    for i in (1..v.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
}

/// Step a round by hand, one stage at a time, with full access to every
/// message in between (for adversarial tests and benchmarks). Members are the
/// cohort of `cfg`; site `i` of `sites` is `cfg.cohort[i]`.
pub struct Stepper<R: RingElement> {
    /// The coordinator.
    pub coord: CoordinatorMachine<R>,
    /// The sites, in cohort order.
    pub sites: Vec<SiteMachine<R>>,
    /// Their long-term signing keys.
    pub keys: Vec<SigningKey>,
    /// Randomness for everything.
    pub rng: ChaCha20Rng,
    /// The (fixed) time passed to the coordinator.
    pub now: Instant,
    /// Every member the coordinator blamed so far, and why.
    pub blamed: Vec<(MemberId, String)>,
}

impl<R: RingElement> Stepper<R> {
    /// Set up round `cfg` with fresh identities drawn from `seed`; sites apply
    /// [`lenient_policy`].
    pub fn new(cfg: RoundConfig, seed: u64) -> Result<Self, ProtocolError> {
        Self::with_policy(cfg, seed, &lenient_policy())
    }

    /// Set up round `cfg`; every site applies `policy`.
    pub fn with_policy(
        cfg: RoundConfig,
        seed: u64,
        policy: &SitePolicy,
    ) -> Result<Self, ProtocolError> {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let keys: Vec<SigningKey> = cfg
            .cohort
            .iter()
            .map(|_| SigningKey::generate(cfg.suite, &mut rng))
            .collect();
        let mut dir = KeyDirectory::new();
        for (&m, k) in cfg.cohort.iter().zip(&keys) {
            dir.insert(m, k.verifying_key()?);
        }
        let dir = Arc::new(dir);
        let now = Instant::now();
        let coord = CoordinatorMachine::new(
            cfg.clone(),
            StageTimeouts::uniform(Duration::from_secs(60)),
            now,
        )?;
        let sites = cfg
            .cohort
            .iter()
            .zip(&keys)
            .map(|(&m, k)| {
                SiteMachine::new(cfg.clone(), m, k.clone(), dir.clone(), policy, &mut rng)
            })
            .collect::<Result<_, _>>()?;
        Ok(Stepper {
            coord,
            sites,
            keys,
            rng,
            now,
            blamed: Vec::new(),
        })
    }

    fn index(&self, m: MemberId) -> Result<usize, ProtocolError> {
        self.coord
            .topology()
            .cohort()
            .binary_search(&m)
            .map_err(|_| ProtocolError::NotParticipant(m))
    }

    /// The identity bytes the coordinator relays for `m` (its verifying key).
    pub fn identity(&self, m: MemberId) -> Result<Vec<u8>, ProtocolError> {
        Ok(self.keys[self.index(m)?]
            .verifying_key()?
            .as_bytes()
            .to_vec())
    }

    /// Site `m`, by member id.
    pub fn site(&mut self, m: MemberId) -> Result<&mut SiteMachine<R>, ProtocolError> {
        let i = self.index(m)?;
        Ok(&mut self.sites[i])
    }

    fn drain(&mut self) -> Vec<CoordinatorOutput<R>> {
        let mut out = Vec::new();
        while let Some(o) = self.coord.poll_output() {
            match o {
                CoordinatorOutput::Blamed { member, reason } => self.blamed.push((member, reason)),
                o => out.push(o),
            }
        }
        out
    }

    /// Deliver every site's advert; returns the coordinator's outputs
    /// (NeighbourKeys messages and the stage report).
    pub fn advertise(&mut self) -> Result<Vec<CoordinatorOutput<R>>, ProtocolError> {
        for i in 0..self.sites.len() {
            while let Some(SiteOutput::Advertise(a)) = self.sites[i].poll_output() {
                let id = self.identity(a.member)?;
                self.coord.handle_advert(a, id, self.now)?;
            }
        }
        Ok(self.drain())
    }

    /// Hand the NeighbourKeys among `outputs` to the sites and their share
    /// bundles to the coordinator; returns its outputs.
    pub fn share(
        &mut self,
        outputs: Vec<CoordinatorOutput<R>>,
    ) -> Result<Vec<CoordinatorOutput<R>>, ProtocolError> {
        for o in outputs {
            if let CoordinatorOutput::NeighbourKeys { to, msg } = o {
                let i = self.index(to)?;
                self.sites[i].handle_neighbour_keys(msg, &mut self.rng)?;
            }
        }
        for i in 0..self.sites.len() {
            while let Some(SiteOutput::Shares(b)) = self.sites[i].poll_output() {
                self.coord.handle_shares(b, self.now)?;
            }
        }
        Ok(self.drain())
    }

    /// Hand the IncomingShares among `outputs` to the sites, then let each site
    /// with `Some` input mask it; returns the masked vectors, not yet delivered.
    pub fn mask(
        &mut self,
        outputs: Vec<CoordinatorOutput<R>>,
        inputs: Vec<Option<Vec<R>>>,
    ) -> Result<Vec<(MemberId, Vec<R>, MaskingSet)>, ProtocolError> {
        for o in outputs {
            if let CoordinatorOutput::IncomingShares { to, msg } = o {
                let i = self.index(to)?;
                self.sites[i].handle_incoming_shares(msg)?;
            }
        }
        let mut out = Vec::new();
        for (i, x) in inputs.into_iter().enumerate() {
            let Some(x) = x else { continue };
            self.sites[i].handle_input(x)?;
            while let Some(SiteOutput::MaskedInput { vector, masking }) =
                self.sites[i].poll_output()
            {
                out.push((self.sites[i].member(), vector, masking));
            }
        }
        Ok(out)
    }

    /// Deliver masked vectors, close the stage at its deadline if needed, and
    /// return the coordinator's outputs (consistency requests).
    pub fn submit(
        &mut self,
        masked: &[(MemberId, Vec<R>, MaskingSet)],
    ) -> Result<Vec<CoordinatorOutput<R>>, ProtocolError> {
        let round = self.coord.config().round;
        for (m, v, set) in masked {
            self.coord
                .handle_masked_input(round, *m, v, set.clone(), self.now)?;
        }
        self.close(Stage::MaskedInput);
        Ok(self.drain())
    }

    fn close(&mut self, stage: Stage) {
        if self.coord.stage() == stage
            && let Some(d) = self.coord.poll_timeout()
        {
            self.coord.handle_timeout(d);
        }
    }

    /// Let the sites answer the consistency requests among `outputs`; returns
    /// their signatures, not yet delivered.
    pub fn consistency(
        &mut self,
        outputs: Vec<CoordinatorOutput<R>>,
    ) -> Result<Vec<SurvivorSignature>, ProtocolError> {
        let mut out = Vec::new();
        for o in outputs {
            if let CoordinatorOutput::ConsistencyRequest { to, msg } = o {
                let i = self.index(to)?;
                self.sites[i].handle_consistency_request(Arc::unwrap_or_clone(msg))?;
                while let Some(SiteOutput::Consistency(s)) = self.sites[i].poll_output() {
                    out.push(s);
                }
            }
        }
        Ok(out)
    }

    /// Deliver signatures, close the stage at its deadline if needed, and
    /// return the coordinator's outputs (unmask requests).
    pub fn sign(
        &mut self,
        signatures: Vec<SurvivorSignature>,
    ) -> Result<Vec<CoordinatorOutput<R>>, ProtocolError> {
        for s in signatures {
            self.coord.handle_consistency(s, self.now)?;
        }
        self.close(Stage::Consistency);
        Ok(self.drain())
    }

    /// [`Stepper::consistency`] then [`Stepper::sign`]: every site that is
    /// asked signs, and the coordinator gets every signature.
    pub fn agree(
        &mut self,
        outputs: Vec<CoordinatorOutput<R>>,
    ) -> Result<Vec<CoordinatorOutput<R>>, ProtocolError> {
        let sigs = self.consistency(outputs)?;
        self.sign(sigs)
    }

    /// Let the sites answer the unmask requests among `outputs`; returns the
    /// responses, not yet delivered.
    pub fn responses(
        &mut self,
        outputs: Vec<CoordinatorOutput<R>>,
    ) -> Result<Vec<UnmaskResponse>, ProtocolError> {
        let mut out = Vec::new();
        for o in outputs {
            if let CoordinatorOutput::UnmaskRequest { to, msg } = o {
                let i = self.index(to)?;
                self.sites[i].handle_unmask_request(Arc::unwrap_or_clone(msg))?;
                while let Some(SiteOutput::Unmask(u)) = self.sites[i].poll_output() {
                    out.push(u);
                }
            }
        }
        Ok(out)
    }

    /// Deliver responses; returns the round's result once it has finished.
    pub fn finish(
        &mut self,
        responses: Vec<UnmaskResponse>,
    ) -> Result<Option<Result<RoundResult<R>, ProtocolError>>, ProtocolError> {
        for u in responses {
            self.coord.handle_unmask_response(u, self.now)?;
        }
        Ok(self.drain().into_iter().find_map(|o| match o {
            CoordinatorOutput::Finished(r) => Some(r),
            _ => None,
        }))
    }
}
