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
