//! Whole rounds in memory: exact sums with and without dropouts, both suites.

use confide_crypto::graph::SecAggParams;
use confide_crypto::protocol::Stage;
use confide_crypto::ring::RingElement;
use confide_crypto::sim::Simulation;
use confide_crypto::{ProtocolError, Suite};

fn inputs<R: RingElement>(n: usize, len: usize) -> Vec<Vec<R>> {
    (0..n)
        .map(|i| {
            (0..len)
                .map(|j| R::from_u64((i * 1000 + j) as u64 * 2_654_435_761))
                .collect()
        })
        .collect()
}

fn plain_sum<R: RingElement>(inputs: &[Vec<R>], members: &[u32], survivors: &[u32]) -> Vec<R> {
    let mut acc = vec![R::default(); inputs[0].len()];
    for (m, x) in members.iter().zip(inputs) {
        if survivors.contains(m) {
            for (a, b) in acc.iter_mut().zip(x) {
                *a = a.wrapping_add(*b);
            }
        }
    }
    acc
}

#[test]
fn no_dropouts_both_suites_both_rings() -> Result<(), ProtocolError> {
    for suite in Suite::ALL {
        let sim = Simulation::new(suite, 5, SecAggParams { k: 4, t: 3 });
        let x = inputs::<u32>(5, 37);
        let out = sim.run(&x)?;
        let r = out.result?;
        assert_eq!(r.survivors, sim.members);
        assert_eq!(r.sum, plain_sum(&x, &sim.members, &r.survivors));
        let x = inputs::<u64>(5, 21);
        let r = sim.run(&x)?.result?;
        assert_eq!(r.sum, plain_sum(&x, &sim.members, &r.survivors));
    }
    Ok(())
}

#[test]
fn dropout_at_each_stage() -> Result<(), ProtocolError> {
    for suite in Suite::ALL {
        for stage in [
            Stage::AdvertiseKeys,
            Stage::ShareKeys,
            Stage::MaskedInput,
            Stage::Unmask,
        ] {
            let sim = Simulation::new(suite, 6, SecAggParams { k: 5, t: 3 })
                .drop_at(2, stage)
                .with_seed(7);
            let x = inputs::<u32>(6, 50);
            let out = sim.run(&x)?;
            let r = out.result?;
            let expect_in = stage == Stage::Unmask;
            assert_eq!(r.survivors.contains(&2), expect_in, "stage {stage}");
            assert_eq!(
                r.sum,
                plain_sum(&x, &sim.members, &r.survivors),
                "stage {stage}"
            );
        }
    }
    Ok(())
}

#[test]
fn unsafe_or_inconsistent_round_configurations_are_refused() {
    use confide_crypto::protocol::RoundConfig;
    use confide_crypto::ring::Ring;
    let good = RoundConfig {
        round: 1,
        suite: Suite::Intl,
        ring: Ring::U32,
        cohort: vec![1, 2, 3, 4],
        params: SecAggParams { k: 3, t: 2 },
        graph_seed: [0; 32],
        vector_len: 10,
        min_survivors: 2,
        max_colluders: 0,
        context: [0; 32],
    };
    assert!(good.topology().is_ok());
    type Mutation = Box<dyn Fn(&mut RoundConfig)>;
    let bad: Vec<(&str, Mutation)> = vec![
        (
            "two members",
            Box::new(|c| {
                c.cohort = vec![1, 2];
                c.params = SecAggParams { k: 1, t: 1 }
            }),
        ),
        (
            "threshold 1",
            Box::new(|c| c.params = SecAggParams { k: 1, t: 1 }),
        ),
        (
            "t <= k/2",
            Box::new(|c| c.params = SecAggParams { k: 2, t: 1 }),
        ),
        (
            "t > k",
            Box::new(|c| c.params = SecAggParams { k: 3, t: 4 }),
        ),
        (
            "k >= n",
            Box::new(|c| c.params = SecAggParams { k: 4, t: 3 }),
        ),
        ("unsorted", Box::new(|c| c.cohort = vec![2, 1, 3, 4])),
        ("duplicate", Box::new(|c| c.cohort = vec![1, 1, 3, 4])),
        ("empty vector", Box::new(|c| c.vector_len = 0)),
        ("min_survivors 1", Box::new(|c| c.min_survivors = 1)),
        ("min_survivors > n", Box::new(|c| c.min_survivors = 5)),
    ];
    for (what, f) in bad {
        let mut c = good.clone();
        f(&mut c);
        assert!(
            matches!(c.topology(), Err(ProtocolError::Config(_))),
            "{what} accepted"
        );
    }
}
