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
    assert_eq!(p.config.min_survivors, p.config.params.t.max(2));
    // Unsafe explicit parameters: no plan, and the error says which round.
    s.secagg.k = Some(2);
    s.secagg.t = Some(1);
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
