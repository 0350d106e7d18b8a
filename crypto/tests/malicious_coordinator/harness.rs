//! An adversarial coordinator: real `SiteMachine`s with the default site
//! policy, driven by a script that may send every site a different message,
//! and that records everything a coordinator would collect (plus what
//! colluding sites hand over) for the isolation oracle.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use confide_crypto::graph::{self, SecAggParams};
use confide_crypto::protocol::{
    ConsistencyRequest, IncomingShares, KeyAdvert, KeyDirectory, MaskingSet, NeighbourKeys,
    RelayedAdvert, RelayedMaskingSet, RelayedSignature, RoundConfig, ShareBundle, SiteMachine,
    SiteOutput, SitePolicy, SurvivorSignature, UnmaskRequest,
};
use confide_crypto::ring::Ring;
use confide_crypto::sim::isolation::{self, Knowledge, Leak};
use confide_crypto::suite::{SigningKey, Suite};
use confide_crypto::{MemberId, ProtocolError};
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

pub const LEN: usize = 6;
pub const ROUND: u64 = 9;

/// The round an honest coordinator would announce to `n` sites with the
/// default parameter choice (complete graph, γ = δ = 0.1).
pub fn honest_config(suite: Suite, n: usize, context: [u8; 32]) -> RoundConfig {
    let params = graph::choose_complete(n, 0.1, 0.1).expect("parameters");
    let c = graph::colluders(n, 0.1).expect("γ");
    RoundConfig {
        round: ROUND,
        suite,
        ring: Ring::U32,
        cohort: (1..=n as MemberId).collect(),
        params,
        graph_seed: [4; 32],
        vector_len: LEN,
        min_survivors: params.t.max(3),
        max_colluders: c,
        context,
    }
}

/// A smaller view of the round: only `cohort`, complete graph, collusion
/// bound `c`, everything else as `base`.
pub fn view(base: &RoundConfig, cohort: Vec<MemberId>, c: usize) -> RoundConfig {
    let n = cohort.len();
    let k = n - 1;
    RoundConfig {
        cohort,
        params: SecAggParams {
            k,
            t: graph::secure_threshold(k, c),
        },
        min_survivors: 3,
        max_colluders: c,
        ..base.clone()
    }
}

pub struct World {
    pub suite: Suite,
    pub keys: BTreeMap<MemberId, SigningKey>,
    pub views: BTreeMap<MemberId, RoundConfig>,
    pub sites: BTreeMap<MemberId, SiteMachine<u32>>,
    /// The first error each site raised (it takes no further part).
    pub errors: BTreeMap<MemberId, ProtocolError>,
    pub inputs: BTreeMap<MemberId, Vec<u32>>,
    pub colluders: BTreeSet<MemberId>,
    pub know: Knowledge<u32>,
    pub adverts: BTreeMap<MemberId, KeyAdvert>,
    pub bundles: BTreeMap<MemberId, ShareBundle>,
    pub masking: BTreeMap<MemberId, MaskingSet>,
    pub rng: ChaCha20Rng,
}

impl World {
    /// Every member of `members` gets the view `view_of(m)`; sites apply the
    /// default policy (a refusal is recorded in `errors`).
    pub fn new(
        suite: Suite,
        members: &[MemberId],
        view_of: impl Fn(MemberId) -> RoundConfig,
        colluders: &[MemberId],
        seed: u64,
    ) -> Self {
        Self::with_policy(
            suite,
            members,
            view_of,
            colluders,
            seed,
            &SitePolicy::default(),
        )
    }

    /// As [`World::new`], with every site applying `policy`.
    pub fn with_policy(
        suite: Suite,
        members: &[MemberId],
        view_of: impl Fn(MemberId) -> RoundConfig,
        colluders: &[MemberId],
        seed: u64,
        policy: &SitePolicy,
    ) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let mut dir = KeyDirectory::new();
        let mut keys = BTreeMap::new();
        for &m in members {
            let k = SigningKey::generate(suite, &mut rng);
            dir.insert(m, k.verifying_key().expect("key"));
            keys.insert(m, k);
        }
        let dir = Arc::new(dir);
        let mut w = World {
            suite,
            keys,
            views: BTreeMap::new(),
            sites: BTreeMap::new(),
            errors: BTreeMap::new(),
            inputs: BTreeMap::new(),
            colluders: colluders.iter().copied().collect(),
            know: Knowledge::default(),
            adverts: BTreeMap::new(),
            bundles: BTreeMap::new(),
            masking: BTreeMap::new(),
            rng,
        };
        for &m in members {
            let cfg = view_of(m);
            let input: Vec<u32> = (0..LEN).map(|_| w.rng.next_u32()).collect();
            w.inputs.insert(m, input.clone());
            if w.colluders.contains(&m) {
                w.know.colluder_inputs.insert(m, input);
            }
            match SiteMachine::new(
                cfg.clone(),
                m,
                w.keys[&m].clone(),
                dir.clone(),
                policy,
                &mut w.rng,
            ) {
                Ok(site) => {
                    w.sites.insert(m, site);
                }
                Err(e) => {
                    w.errors.insert(m, e);
                }
            }
            w.views.insert(m, cfg);
        }
        for (&m, site) in w.sites.iter_mut() {
            if let Some(SiteOutput::Advertise(a)) = site.poll_output() {
                w.know.mask_public.insert(m, a.mask_public.clone());
                w.adverts.insert(m, a);
            }
        }
        w
    }

    pub fn identity(&self, m: MemberId) -> Vec<u8> {
        self.keys[&m]
            .verifying_key()
            .expect("key")
            .as_bytes()
            .to_vec()
    }

    fn fail(&mut self, m: MemberId, e: ProtocolError) {
        self.sites.remove(&m);
        self.errors.entry(m).or_insert(e);
    }

    /// The adverts `to`'s own view says it should get.
    pub fn honest_adverts(&self, to: MemberId) -> Vec<RelayedAdvert> {
        let topo = self.views[&to].topology().expect("topology");
        topo.neighbours(to)
            .into_iter()
            .filter_map(|v| {
                self.adverts.get(&v).map(|a| RelayedAdvert {
                    advert: a.clone(),
                    identity: self.identity(v),
                })
            })
            .collect()
    }

    /// Deliver `adverts` to `to`; keep its share bundle.
    pub fn send_keys(&mut self, to: MemberId, adverts: Vec<RelayedAdvert>) {
        let Some(site) = self.sites.get_mut(&to) else {
            return;
        };
        let msg = NeighbourKeys {
            round: ROUND,
            adverts,
        };
        match site.handle_neighbour_keys(msg, &mut self.rng) {
            Ok(()) => {
                if let Some(SiteOutput::Shares(b)) = site.poll_output() {
                    self.know.commitments.insert(to, b.seed_commitment);
                    self.bundles.insert(to, b);
                }
            }
            Err(e) => self.fail(to, e),
        }
    }

    /// Every sealed share addressed to `to`.
    pub fn shares_for(&self, to: MemberId) -> Vec<confide_crypto::protocol::EncryptedShare> {
        self.bundles
            .values()
            .flat_map(|b| b.shares.iter().filter(|s| s.to == to).cloned())
            .collect()
    }

    /// Deliver `shares` to `to`; colluders then hand over their secrets.
    pub fn send_shares(
        &mut self,
        to: MemberId,
        shares: Vec<confide_crypto::protocol::EncryptedShare>,
    ) {
        let Some(site) = self.sites.get_mut(&to) else {
            return;
        };
        if let Err(e) = site.handle_incoming_shares(IncomingShares {
            round: ROUND,
            shares,
        }) {
            self.fail(to, e);
            return;
        }
        if self.colluders.contains(&to)
            && let Some(leak) = site.leak()
        {
            self.know.colluder_keys.insert(to, leak.mask_secret);
            for (owner, seed, key) in leak.held {
                self.know.seed_shares.entry(owner).or_default().push(seed);
                self.know.key_shares.entry(owner).or_default().push(key);
            }
        }
    }

    /// `to` masks its input; the coordinator keeps the vector and the set.
    pub fn mask(&mut self, to: MemberId) {
        let Some(site) = self.sites.get_mut(&to) else {
            return;
        };
        if let Err(e) = site.handle_input(self.inputs[&to].clone()) {
            self.fail(to, e);
            return;
        }
        if let Some(SiteOutput::MaskedInput { vector, masking }) = site.poll_output() {
            let peers = masking.peers.iter().copied().collect();
            self.know.masked.insert(to, (vector, peers));
            self.masking.insert(to, masking);
        }
    }

    /// Advertise, share and mask honestly in everyone's own view.
    pub fn honest_until_masked(&mut self) {
        let members: Vec<MemberId> = self.sites.keys().copied().collect();
        for &m in &members {
            let a = self.honest_adverts(m);
            self.send_keys(m, a);
        }
        for &m in &members {
            let s = self.shares_for(m);
            self.send_shares(m, s);
        }
        for &m in &members {
            self.mask(m);
        }
    }

    /// The consistency request for `survivors`, with every masking set the
    /// coordinator holds for them.
    pub fn request(&self, survivors: &[MemberId]) -> ConsistencyRequest {
        ConsistencyRequest {
            round: ROUND,
            survivors: survivors.to_vec(),
            masking: survivors
                .iter()
                .filter_map(|m| {
                    // Relayed in the masker's own view, where it signed the set.
                    let set = self.masking.get(m)?;
                    let topo = self.views.get(m)?.topology().ok()?;
                    Some(RelayedMaskingSet::relay(&topo, set.clone()))
                })
                .collect(),
        }
    }

    /// Ask `to` to sign `req`; its signature, if it agreed.
    pub fn ask_to_sign(
        &mut self,
        to: MemberId,
        req: ConsistencyRequest,
    ) -> Option<RelayedSignature> {
        let site = self.sites.get_mut(&to)?;
        match site.handle_consistency_request(req) {
            Ok(()) => match site.poll_output() {
                Some(SiteOutput::Consistency(signature)) => Some(RelayedSignature {
                    signature,
                    identity: self.identity(to),
                }),
                _ => None,
            },
            Err(e) => {
                self.fail(to, e);
                None
            }
        }
    }

    /// A colluder's signature on any set, in the view of `under`.
    pub fn forge(
        &self,
        colluder: MemberId,
        survivors: &[MemberId],
        under: MemberId,
    ) -> RelayedSignature {
        let session = self.views[&under].session_id();
        let bytes = SurvivorSignature::signed_bytes(&session, survivors);
        RelayedSignature {
            signature: SurvivorSignature {
                round: ROUND,
                member: colluder,
                signature: self.keys[&colluder].sign(&bytes).expect("sign"),
            },
            identity: self.identity(colluder),
        }
    }

    /// Ask `to` to unmask; the coordinator keeps whatever shares come back.
    pub fn ask_to_unmask(&mut self, to: MemberId, req: UnmaskRequest) -> bool {
        let Some(site) = self.sites.get_mut(&to) else {
            return false;
        };
        match site.handle_unmask_request(req) {
            Ok(()) => {
                if let Some(SiteOutput::Unmask(u)) = site.poll_output() {
                    for (owner, s) in u.seed_shares {
                        self.know.seed_shares.entry(owner).or_default().push(s);
                    }
                    for (owner, s) in u.key_shares {
                        self.know.key_shares.entry(owner).or_default().push(s);
                    }
                    for (peer, key) in u.pair_keys {
                        let pair = (u.from.min(peer), u.from.max(peer));
                        self.know.pair_keys.insert(pair, key);
                    }
                    return true;
                }
                false
            }
            Err(e) => {
                self.fail(to, e);
                false
            }
        }
    }

    /// Sums of fewer than `min_honest` honest inputs the coordinator can now
    /// compute (empty: nothing isolated).
    pub fn leaks(&self, min_honest: usize) -> Vec<Leak<u32>> {
        let thresholds: BTreeSet<usize> = self.views.values().map(|c| c.params.t).collect();
        let thresholds: Vec<usize> = thresholds.into_iter().collect();
        let truth: BTreeMap<MemberId, Vec<u32>> = self
            .inputs
            .iter()
            .filter(|(m, _)| !self.colluders.contains(m))
            .map(|(&m, x)| (m, x.clone()))
            .collect();
        isolation::leaks(
            self.suite,
            ROUND,
            &thresholds,
            &self.know,
            &truth,
            min_honest,
        )
    }
}
