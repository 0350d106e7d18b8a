use proptest::prelude::*;

use super::{ring_connectivity, survives_removal};
use crate::graph::NeighbourGraph;

/// Connected after removing every set of at most `c` vertices, by brute force.
fn brute(adj: &[Vec<usize>], c: usize) -> bool {
    let m = adj.len();
    let edge = |a: usize, b: usize| adj[a].contains(&b) && adj[b].contains(&a);
    (0u32..1 << m)
        .filter(|x| x.count_ones() as usize <= c)
        .all(|removed| {
            let alive: Vec<usize> = (0..m).filter(|v| removed & (1 << v) == 0).collect();
            let Some(&first) = alive.first() else {
                return true;
            };
            let mut seen = vec![first];
            let mut stack = vec![first];
            while let Some(v) = stack.pop() {
                for &u in &alive {
                    if !seen.contains(&u) && edge(v, u) {
                        seen.push(u);
                        stack.push(u);
                    }
                }
            }
            seen.len() == alive.len()
        })
}

fn from_bits(m: usize, bits: &[bool]) -> Vec<Vec<usize>> {
    let mut adj = vec![Vec::new(); m];
    let mut i = 0;
    for a in 0..m {
        for b in a + 1..m {
            if bits.get(i).copied().unwrap_or(false) {
                adj[a].push(b);
                adj[b].push(a);
            }
            i += 1;
        }
    }
    adj
}

fn harary(n: usize, k: usize, seed: u8) -> Vec<Vec<usize>> {
    let g = NeighbourGraph::harary(n, k, &[seed; 32]).expect("graph");
    (0..n).map(|v| g.neighbours(v).to_vec()).collect()
}

/// The graph induced on `keep`, relabelled 0..keep.len().
fn induced(adj: &[Vec<usize>], keep: &[usize]) -> Vec<Vec<usize>> {
    keep.iter()
        .map(|&v| {
            adj[v]
                .iter()
                .filter_map(|u| keep.iter().position(|w| w == u))
                .collect()
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn agrees_with_brute_force_on_random_graphs(
        m in 0usize..=10,
        density in 0u32..=100,
        bits in proptest::collection::vec(0u32..100, 45),
        c in 0usize..=5,
    ) {
        let bits: Vec<bool> = bits.iter().map(|&b| b < density).collect();
        let adj = from_bits(m, &bits);
        prop_assert_eq!(survives_removal(&adj, c), brute(&adj, c));
    }

    #[test]
    fn agrees_with_brute_force_on_harary_survivors(
        k in 2usize..=8,
        seed in any::<u8>(),
        gone in proptest::collection::vec(any::<bool>(), 12),
        c in 0usize..=5,
    ) {
        let n = 12;
        let adj = harary(n, k, seed);
        let keep: Vec<usize> = (0..n).filter(|&v| !gone[v] || v % 3 == 0).collect();
        let sub = induced(&adj, &keep);
        prop_assert_eq!(survives_removal(&sub, c), brute(&sub, c));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn ring_connectivity_is_exact_on_rings(
        n in 3usize..=13,
        h in 1usize..=6,
        kept in proptest::collection::vec(any::<bool>(), 13),
    ) {
        let ring: Vec<Vec<usize>> = (0..n)
            .map(|p| (1..=h.min(n / 2)).flat_map(|o| [(p + o) % n, (p + n - o) % n]).collect())
            .collect();
        let keep: Vec<usize> = (0..n).filter(|&p| kept[p]).collect();
        let sub = induced(&ring, &keep);
        let kappa = ring_connectivity(n, h, &keep);
        for c in 0..keep.len().saturating_sub(1) {
            prop_assert_eq!(survives_removal(&sub, c), kappa > c, "c = {}, κ = {}", c, kappa);
        }
    }
}

#[test]
fn degenerate_graphs() {
    assert!(survives_removal(&[], 3));
    assert!(survives_removal(&[vec![]], 0));
    // Two isolated vertices: disconnected even with nothing removed.
    assert!(!survives_removal(&[vec![], vec![]], 0));
    // A complete graph of c + 1 vertices survives c removals; minus an edge it does not.
    let k4: Vec<Vec<usize>> = (0..4)
        .map(|v| (0..4).filter(|&u| u != v).collect())
        .collect();
    assert!(survives_removal(&k4, 3));
    assert!(survives_removal(&k4, 10));
    let mut cut = k4.clone();
    cut[0].retain(|&u| u != 1);
    cut[1].retain(|&u| u != 0);
    assert!(!survives_removal(&cut, 3));
    assert!(survives_removal(&cut, 1));
    // Edges listed at one end only do not count.
    assert!(!survives_removal(&[vec![1], vec![]], 0));
}

#[test]
fn harary_connectivity_is_its_degree() {
    for (n, k) in [(20, 4), (31, 6), (40, 7), (100, 31)] {
        let adj = harary(n, k, 9);
        assert!(survives_removal(&adj, k - 1), "n = {n}, k = {k}");
        assert!(!survives_removal(&adj, k), "n = {n}, k = {k}");
    }
}

#[test]
fn two_arcs_of_a_ring_fall_apart_without_their_bridges() {
    // Positions 0..100 on the ring of k = 30 (no diagonals); survivors are two
    // arcs and a few "colluders" in each 15-wide gap: removing the 2 × 5
    // colluders separates the arcs.
    let n = 100;
    let ring: Vec<Vec<usize>> = (0..n)
        .map(|p| {
            (1..=15)
                .flat_map(|o| [(p + o) % n, (p + n - o) % n])
                .collect()
        })
        .collect();
    let mut keep: Vec<usize> = (0..35).chain(50..85).collect();
    keep.extend([40, 41, 42, 43, 44, 90, 91, 92, 93, 94]);
    keep.sort_unstable();
    let sub = induced(&ring, &keep);
    assert!(survives_removal(&sub, 9));
    assert!(!survives_removal(&sub, 10));
    assert!(brute_free_check(&sub, &keep));
}

/// Removing exactly the gap vertices disconnects the arcs (sanity for the
/// test above, without the exponential brute force).
fn brute_free_check(sub: &[Vec<usize>], keep: &[usize]) -> bool {
    let gap: Vec<usize> = keep
        .iter()
        .enumerate()
        .filter(|&(_, &p)| (35..50).contains(&p) || (85..100).contains(&p))
        .map(|(i, _)| i)
        .collect();
    let alive: Vec<usize> = (0..sub.len()).filter(|i| !gap.contains(i)).collect();
    let rest = induced(sub, &alive);
    !survives_removal(&rest, 0)
}
