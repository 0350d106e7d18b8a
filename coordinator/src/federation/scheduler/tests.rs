use super::*;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

fn settings() -> Settings {
    let mut s = Settings {
        min_sites: 3,
        max_sites: 10,
        ..Default::default()
    };
    s.tls.insecure = true;
    s
}

fn progress() -> Progress {
    Progress {
        next_round: 7,
        completed: 0,
        preprocessed: false,
        final_done: false,
        num_params: 31,
    }
}

fn sites(n: MemberId) -> Vec<(MemberId, String)> {
    (1..=n).map(|m| (m, format!("site-{m}"))).collect()
}

fn plan(
    s: &Settings,
    kind: RoundKind,
    connected: Vec<(MemberId, String)>,
    seed: u64,
) -> Result<RoundPlan, PlanError> {
    let quant = s.quantiser(s.ring).map_err(|source| PlanError::Params {
        round: 0,
        cohort: 0,
        source,
    })?;
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    plan_round(
        s,
        &quant,
        kind,
        &progress(),
        connected,
        &mut rng,
        Instant::now(),
    )
}

#[test]
fn kinds_run_statistics_then_training_then_one_evaluation() {
    let s = settings();
    let mut p = progress();
    assert_eq!(next_kind(&s, &p), Some(RoundKind::Statistics));
    p.preprocessed = true;
    assert_eq!(next_kind(&s, &p), Some(RoundKind::Train));
    p.completed = s.rounds - 1;
    assert_eq!(next_kind(&s, &p), Some(RoundKind::Train));
    p.completed = s.rounds;
    assert_eq!(next_kind(&s, &p), Some(RoundKind::Evaluate));
    p.final_done = true;
    assert_eq!(next_kind(&s, &p), None);
}

#[test]
fn kinds_skip_what_is_switched_off() {
    let mut s = settings();
    s.statistics_round = false;
    s.final_evaluation = false;
    let mut p = progress();
    assert_eq!(next_kind(&s, &p), Some(RoundKind::Train));
    p.completed = s.rounds;
    assert_eq!(next_kind(&s, &p), None);
}

#[test]
fn too_few_sites_give_no_plan() {
    let s = settings();
    assert!(matches!(
        plan(&s, RoundKind::Train, sites(2), 1),
        Err(PlanError::TooFewSites {
            connected: 2,
            min_sites: 3
        })
    ));
}

#[test]
fn cohort_has_the_configured_size_and_is_deterministic_for_a_seed()
-> Result<(), Box<dyn std::error::Error>> {
    let mut s = settings();
    s.cohort_fraction = 0.5;
    let a = plan(&s, RoundKind::Train, sites(10), 42)?;
    let b = plan(&s, RoundKind::Train, sites(10), 42)?;
    assert_eq!(a.names.len(), 5);
    assert_eq!(a.config.cohort.len(), 5);
    assert_eq!(a.names, b.names);
    assert_eq!(a.config.graph_seed, b.config.graph_seed);
    // Listed by member id, each a connected site.
    assert!(a.config.cohort.windows(2).all(|w| w[0] < w[1]));
    assert!(a.names.iter().all(|(m, n)| *n == format!("site-{m}")));
    // Another seed samples (almost surely) another cohort or graph.
    let c = plan(&s, RoundKind::Train, sites(10), 43)?;
    assert!(c.names != a.names || c.config.graph_seed != a.config.graph_seed);
    s.cohort_size = Some(4);
    assert_eq!(plan(&s, RoundKind::Train, sites(10), 42)?.names.len(), 4);
    Ok(())
}

#[test]
fn plan_carries_round_ring_and_vector_layout() -> Result<(), Box<dyn std::error::Error>> {
    let s = settings();
    let t = plan(&s, RoundKind::Train, sites(3), 1)?;
    assert_eq!(t.config.round, 7);
    assert_eq!(t.config.ring, Ring::U32);
    assert_eq!((t.model_len, t.config.vector_len), (31, 35));
    let e = plan(&s, RoundKind::Evaluate, sites(3), 1)?;
    assert_eq!((e.model_len, e.config.vector_len), (0, 4));
    let st = plan(&s, RoundKind::Statistics, sites(3), 1)?;
    assert_eq!(st.config.ring, Ring::U64);
    assert_eq!(st.config.vector_len, 2 * 30 + 1);
    assert_eq!(t.plain_deadline() - t.now, Duration::from_secs(180));
    Ok(())
}

#[test]
fn secure_parameters_follow_the_settings() -> Result<(), Box<dyn std::error::Error>> {
    let mut s = settings();
    s.secagg.k = Some(4);
    s.secagg.t = Some(3);
    let p = plan(&s, RoundKind::Train, sites(5), 1)?;
    assert_eq!((p.config.params.k, p.config.params.t), (4, 3));
    assert_eq!(p.config.min_survivors, 3);
    s.secagg.min_survivors = Some(4);
    assert_eq!(
        plan(&s, RoundKind::Train, sites(5), 1)?
            .config
            .min_survivors,
        4
    );
    // Automatic choice: a valid graph for the cohort.
    s.secagg.k = None;
    s.secagg.t = None;
    s.secagg.min_survivors = None;
    let p = plan(&s, RoundKind::Train, sites(10), 1)?;
    assert!(p.config.params.t <= p.config.params.k && p.config.params.k < 10);
    assert_eq!(p.config.min_survivors, p.config.params.t.max(3));
    // Unsafe explicit parameters: no plan, and the error says which round.
    s.secagg.k = Some(4);
    s.secagg.t = Some(2);
    assert!(matches!(
        plan(&s, RoundKind::Train, sites(5), 1),
        Err(PlanError::Params {
            round: 7,
            cohort: 5,
            ..
        })
    ));
    // Plaintext mode: no graph, min_survivors at most the cohort.
    s.secure_aggregation = false;
    let p = plan(&s, RoundKind::Train, sites(3), 1)?;
    assert_eq!((p.config.params.k, p.config.params.t), (0, 0));
    assert_eq!(p.config.min_survivors, 2);
    assert!(!p.secure);
    Ok(())
}

#[test]
fn small_cohorts_use_the_complete_graph_with_a_collusion_quorum()
-> Result<(), Box<dyn std::error::Error>> {
    let s = settings();
    // (n, k, t, colluders, quorum, min survivors): 3 and 4 survive no
    // dropout; 5 survives one.
    for (n, k, t, c, quorum, min) in [
        (3, 2, 2, 1, 3, 3),
        (4, 3, 3, 1, 3, 3),
        (5, 4, 3, 1, 4, 3),
        (10, 9, 6, 1, 6, 6),
    ] {
        let p = plan(&s, RoundKind::Train, sites(n as MemberId), 1)?;
        let cfg = &p.config;
        assert_eq!(
            (
                cfg.params.k,
                cfg.params.t,
                cfg.max_colluders,
                cfg.quorum(),
                cfg.min_survivors
            ),
            (k, t, c, quorum, min),
            "cohort of {n}"
        );
        // Exactly what a site with the default policy accepts.
        confide_crypto::protocol::SitePolicy::default().check(cfg)?;
    }
    Ok(())
}

#[test]
fn large_cohorts_use_a_sparse_graph_that_sites_accept() -> Result<(), Box<dyn std::error::Error>> {
    let mut s = settings();
    s.max_sites = 60;
    let p = plan(&s, RoundKind::Train, sites(40), 1)?;
    let cfg = &p.config;
    assert!(cfg.params.k < 39, "k = {}", cfg.params.k);
    assert_eq!(cfg.max_colluders, 4);
    confide_crypto::protocol::SitePolicy::default().check(cfg)?;
    // Raising the complete-graph bound makes it complete again.
    s.secagg.complete_graph_up_to = 40;
    assert_eq!(
        plan(&s, RoundKind::Train, sites(40), 1)?.config.params.k,
        39
    );
    Ok(())
}

#[test]
fn explicit_parameters_are_checked_like_the_sites_check_them() {
    let mut s = settings();
    // A sparse graph where the sites require the complete one.
    s.secagg.k = Some(3);
    s.secagg.t = Some(3);
    let e = s
        .secagg_params(5)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("complete graph"), "{e}");
    // The complete graph with a threshold that is a majority of k but too
    // low for two colluders.
    s.secagg.collusion_fraction = 0.4;
    s.secagg.k = Some(4);
    s.secagg.t = Some(3);
    let e = s
        .secagg_params(5)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("secure threshold 4"), "{e}");
    s.secagg.t = Some(4);
    assert!(s.secagg_params(5).is_ok());
}

#[test]
fn every_plan_has_a_fresh_attempt_and_the_announcement_binds_it()
-> Result<(), Box<dyn std::error::Error>> {
    let s = settings();
    let quant = s.quantiser(s.ring)?;
    let mut a = plan(&s, RoundKind::Train, sites(3), 1)?;
    let mut b = plan(&s, RoundKind::Train, sites(3), 2)?;
    assert_ne!(a.attempt, b.attempt);
    let model = vec![1u8, 2, 3];
    let announced = Announced {
        model_len: model.len() as u64,
        model_sha256: context::sha256(&model),
        preprocess: None,
        ca_fingerprint: &[4; 32],
    };
    let start = announce(&s, &quant, &mut a, &announced);
    assert_eq!(start.attempt, a.attempt.to_vec());
    assert_eq!(start.model_sha256, context::sha256(&model).to_vec());
    assert_eq!(start.model_bytes, 3);
    assert_eq!(start.max_colluders, 1);
    assert!(!start.plaintext);
    // A site derives exactly the coordinator's configuration, context included.
    let site_view = convert::round_config(
        &pb::RoundStart {
            member: 2,
            ..start.clone()
        },
        &s.federation,
        &[4; 32],
    )?;
    assert_eq!(site_view, a.config);
    assert_ne!(a.config.context, [0; 32]);
    // Another attempt of the same round: another context.
    b.config.round = a.config.round;
    announce(&s, &quant, &mut b, &announced);
    assert_ne!(b.config.context, a.config.context);
    Ok(())
}

fn set(names: &[&str]) -> std::collections::BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[test]
fn replay_claims_name_their_site_and_a_servable_cohort() {
    let mut c = ReplayClaims::default();
    let model = [7u8; 32];
    assert_eq!(
        c.claim(&model, "site-9", set(&["site-1", "site-2", "site-3"]), 10),
        Err(ClaimError::NotAMember)
    );
    assert_eq!(
        c.claim(&model, "site-1", set(&["site-1", "site-2"]), 10),
        Err(ClaimError::TooSmall(2))
    );
    assert!(matches!(
        c.claim(
            &model,
            "site-1",
            set(&["site-1", "site-2", "site-3", "site-4"]),
            3
        ),
        Err(ClaimError::TooLarge {
            names: 4,
            max_sites: 3
        })
    ));
    assert!(c.is_empty());
    assert_eq!(
        c.claim(&model, "site-1", set(&["site-1", "site-2", "site-3"]), 10),
        Ok(true)
    );
    // The same claim again changes nothing.
    assert_eq!(
        c.claim(&model, "site-1", set(&["site-1", "site-2", "site-3"]), 10),
        Ok(false)
    );
}

#[test]
fn the_required_cohort_is_the_one_most_sites_named_for_the_current_model() {
    let mut c = ReplayClaims::default();
    let (model, other) = (vec![1u8; 32], vec![2u8; 32]);
    let s = set(&["site-1", "site-2", "site-3", "site-4"]);
    let hashed = std::cell::Cell::new(0);
    let hash = |h: &Vec<u8>| {
        hashed.set(hashed.get() + 1);
        h.clone()
    };
    // Nothing claimed: nothing required, and the model is not hashed.
    assert_eq!(c.required(3, || hash(&model)), None);
    assert_eq!(hashed.get(), 0);
    for site in ["site-1", "site-2", "site-3"] {
        assert_eq!(c.claim(&model, site, s.clone(), 10), Ok(true));
    }
    // A lone different claim (a liar, or a stale site) loses to the others.
    let odd = set(&["site-4", "site-5", "site-6"]);
    assert_eq!(c.claim(&model, "site-4", odd.clone(), 10), Ok(true));
    assert_eq!(c.required(3, || hash(&model)), Some((s.clone(), 2)));
    assert_eq!(c.required(3, || hash(&model)), Some((s.clone(), 2)));
    assert_eq!(hashed.get(), 1, "the model is hashed once per model round");
    // A tie is broken the same way every time (the first set in order).
    let mut tie = ReplayClaims::default();
    tie.claim(&model, "site-4", odd.clone(), 10).ok();
    tie.claim(&model, "site-1", s.clone(), 10).ok();
    assert_eq!(tie.required(3, || model.clone()), Some((s.clone(), 2)));
    // The model moved on (a round succeeded): the claims are dropped.
    assert_eq!(c.required(4, || hash(&other)), None);
    assert!(c.is_empty());
    // A claim on a newer model replaces the older model's claims.
    let mut c = ReplayClaims::default();
    c.claim(&model, "site-1", s.clone(), 10).ok();
    c.claim(&other, "site-4", odd.clone(), 10).ok();
    assert_eq!(c.required(4, || other.clone()), Some((odd, 1)));
}

#[test]
fn a_replay_cohort_needs_every_site_of_the_set_connected() {
    let s = set(&["site-2", "site-3", "site-5"]);
    let connected = sites(4);
    assert_eq!(
        replay_members(&s, &connected),
        Err(vec!["site-5".to_string()])
    );
    let connected: Vec<_> = sites(6).into_iter().rev().collect();
    assert_eq!(
        replay_members(&s, &connected),
        Ok(vec![
            (2, "site-2".to_string()),
            (3, "site-3".to_string()),
            (5, "site-5".to_string())
        ])
    );
}

#[test]
fn a_replay_round_is_the_complete_graph_over_exactly_the_signed_set()
-> Result<(), Box<dyn std::error::Error>> {
    // The settings of a five-site federation with explicit k and t: the
    // re-run over the four sites that signed still gets k = 3, even below
    // min_sites and with sampling that would pick fewer.
    let mut s = settings();
    s.min_sites = 5;
    s.max_sites = 5;
    s.cohort_fraction = 0.5;
    s.secagg.k = Some(4);
    s.secagg.t = Some(3);
    let quant = s.quantiser(s.ring)?;
    let members = vec![
        (4, "site-4".to_string()),
        (1, "site-1".to_string()),
        (2, "site-2".to_string()),
        (3, "site-3".to_string()),
    ];
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let p = plan_replay_round(&s, &quant, &progress(), members, &mut rng, Instant::now())?;
    assert_eq!(p.kind, RoundKind::Train);
    assert_eq!(p.config.cohort, vec![1, 2, 3, 4]);
    assert_eq!(p.names.len(), 4);
    assert_eq!(p.config.params.k, 3);
    assert!(p.config.params.t >= 2 && p.config.params.t <= 3);
    confide_crypto::protocol::SitePolicy::default().check(&p.config)?;
    // Larger than the sparse-graph bound: still the complete graph (the
    // sites require it of a replay).
    let mut s = settings();
    s.max_sites = 40;
    s.secagg.complete_graph_up_to = 10;
    let quant = s.quantiser(s.ring)?;
    let p = plan_replay_round(&s, &quant, &progress(), sites(12), &mut rng, Instant::now())?;
    assert_eq!(p.config.params.k, 11);
    assert_eq!(p.config.cohort.len(), 12);
    Ok(())
}
