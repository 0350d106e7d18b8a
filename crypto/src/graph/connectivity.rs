//! Does a graph stay connected when any `c` of its vertices are removed?
//!
//! The consistency stage asks this of the survivor masking graph: a pairwise
//! mask between two honest survivors is never revealed, so after unmasking a
//! coordinator that colludes with some survivors learns the sum of every
//! connected component that remains once the colluders are removed. Every
//! site therefore requires the graph to withstand the removal of any
//! `max_colluders` vertices ([`survives_removal`]).
//!
//! For `m ≥ c + 2` vertices that is vertex connectivity `κ ≥ c + 1`, tested
//! exactly with Even's algorithm (1975): in any vertex order, `κ ≥ c + 1` iff
//! (1) every non-adjacent pair among the first `c + 1` vertices has `c + 1`
//! vertex-disjoint paths, and (2) every later vertex `v_j` has `c + 1`
//! vertex-disjoint paths from the set `{v_1, …, v_{j−1}}` (a super-source).
//! Each test is a unit-capacity max-flow on the split-vertex digraph that stops
//! at `c + 1` augmenting paths, seeded with the paths of length one or two
//! (common neighbours). A maximum-adjacency order makes most step-(2) tests
//! trivial on the ring-like SecAgg+ graph. Fast paths: minimum degree `≤ c`
//! fails; minimum degree `≥ (m + c − 1)/2` passes (two non-adjacent survivors
//! of any `c` removals then share a neighbour) — which covers the complete
//! graph. Step (1) dominates on large sparse graphs: with `c ≈ k` most of the
//! `≈ c²/2` pairs are non-adjacent and half their paths go around the ring
//! (tens of seconds at n = 1000, c = 100). [`ring_connectivity`] is the cheap
//! `O(n²)` bound sites use first when the survivor graph contains the ring.
//!
//! A leaf module: it knows nothing of members or rounds.

use std::collections::{BinaryHeap, VecDeque};

/// Whether removing any set of at most `c` vertices from the undirected graph
/// `adj` (vertex `i`'s neighbours are `adj[i]`) leaves it connected. A graph
/// of at most one vertex always does; one of at most `c + 1` vertices does
/// only if it is complete (else removing all but two non-adjacent vertices
/// disconnects it). Only edges listed at both ends count; self-loops,
/// duplicates and out-of-range entries are ignored.
pub fn survives_removal(adj: &[Vec<usize>], c: usize) -> bool {
    let g = Csr::new(adj);
    let m = g.len();
    if m <= 1 {
        return true;
    }
    let min_degree = (0..m).map(|v| g.degree(v)).min().unwrap_or(0);
    if m <= c + 1 {
        return min_degree + 1 == m;
    }
    let need = c + 1;
    if min_degree < need {
        return false;
    }
    if 2 * min_degree + 1 >= m + c {
        return true;
    }
    let order = max_adjacency_order(&g);
    let mut flow = Flow::new(&g);
    let mut mark = vec![false; m];
    // Step 1: non-adjacent pairs among the first `need` vertices; the paths
    // from s to t are the paths from N(s) to t avoiding s.
    for (i, &s) in order.iter().take(need).enumerate() {
        let sources = g.neighbours(s);
        for &u in sources {
            mark[u] = true;
        }
        let ok = order[i + 1..need]
            .iter()
            .all(|&t| g.adjacent(s, t) || flow.paths(sources, &mark, Some(s), t, need) >= need);
        for &u in sources {
            mark[u] = false;
        }
        if !ok {
            return false;
        }
    }
    // Step 2: every later vertex from the prefix before it.
    for &v in &order[..need] {
        mark[v] = true;
    }
    for j in need..m {
        let t = order[j];
        if flow.paths(&order[..j], &mark, None, t, need) < need {
            return false;
        }
        mark[t] = true;
    }
    true
}

/// The vertex connectivity of the ring graph — positions `0..n` on a cycle,
/// each joined to the `h` nearest on either side — induced on `positions`
/// (distinct, below `n`); `usize::MAX` if no set of them separates the rest
/// (the induced graph is complete). Removing a set disconnects the remainder
/// exactly when two disjoint runs of `h` positions hold no remaining vertex
/// while both arcs between the runs do, so the connectivity is the fewest
/// vertices inside two such runs. `O(n²)`; the SecAgg+ graph without its
/// odd-`k` diagonals is this ring, so a survivor graph containing every ring
/// edge between survivors is at least this connected.
pub fn ring_connectivity(n: usize, h: usize, positions: &[usize]) -> usize {
    if h == 0 || n < 2 * h + 2 {
        return usize::MAX;
    }
    let mut at = vec![false; n];
    for &p in positions {
        if let Some(a) = at.get_mut(p) {
            *a = true;
        }
    }
    // below[i]: vertices at positions i' < i of the doubled cycle.
    let mut below = vec![0usize; 2 * n + 1];
    for i in 0..2 * n {
        below[i + 1] = below[i] + usize::from(at[i % n]);
    }
    let count = |from: usize, len: usize| below[from + len] - below[from];
    let mut best = usize::MAX;
    for p in 0..n {
        // Second run at q = p + off, off ∈ [h + 1, n − h − 1]: both arcs are
        // non-empty as positions; they must hold a vertex too.
        for off in h + 1..n - h {
            let q = p + off;
            if count(p + h, off - h) > 0 && count(q + h, n - off - h) > 0 {
                best = best.min(count(p, h) + count(q % n, h));
            }
        }
    }
    best
}

/// Symmetric adjacency in compressed form: the arcs of vertex `v` are
/// `start[v]..start[v + 1]`, sorted by head; `rev[e]` is the opposite arc.
struct Csr {
    start: Vec<usize>,
    head: Vec<usize>,
    rev: Vec<usize>,
}

impl Csr {
    fn new(adj: &[Vec<usize>]) -> Self {
        let m = adj.len();
        let mut lists: Vec<Vec<usize>> = adj
            .iter()
            .enumerate()
            .map(|(v, l)| {
                let mut l: Vec<usize> = l.iter().copied().filter(|&u| u < m && u != v).collect();
                l.sort_unstable();
                l.dedup();
                l
            })
            .collect();
        // Keep u–v only if both list it, so the graph is undirected.
        let snapshot = lists.clone();
        for (v, l) in lists.iter_mut().enumerate() {
            l.retain(|&u| snapshot[u].binary_search(&v).is_ok());
        }
        let mut start = Vec::with_capacity(m + 1);
        let mut head = Vec::new();
        start.push(0);
        for l in &lists {
            head.extend_from_slice(l);
            start.push(head.len());
        }
        let mut rev = vec![0; head.len()];
        for v in 0..m {
            for e in start[v]..start[v + 1] {
                let u = head[e];
                let back = head[start[u]..start[u + 1]].binary_search(&v);
                // Present by the symmetrisation above.
                rev[e] = start[u] + back.unwrap_or(0);
            }
        }
        Csr { start, head, rev }
    }

    fn len(&self) -> usize {
        self.start.len() - 1
    }

    fn degree(&self, v: usize) -> usize {
        self.start[v + 1] - self.start[v]
    }

    fn neighbours(&self, v: usize) -> &[usize] {
        &self.head[self.start[v]..self.start[v + 1]]
    }

    fn adjacent(&self, a: usize, b: usize) -> bool {
        self.neighbours(a).binary_search(&b).is_ok()
    }
}

/// Maximum-adjacency order: each next vertex has the most neighbours among
/// those already placed (ties to the lowest index), so later vertices tend to
/// have many direct paths from the prefix.
fn max_adjacency_order(g: &Csr) -> Vec<usize> {
    let m = g.len();
    let mut weight = vec![0usize; m];
    let mut placed = vec![false; m];
    let mut order = Vec::with_capacity(m);
    let mut heap: BinaryHeap<(usize, std::cmp::Reverse<usize>)> =
        (0..m).map(|v| (0, std::cmp::Reverse(v))).collect();
    while let Some((w, std::cmp::Reverse(v))) = heap.pop() {
        if placed[v] || w != weight[v] {
            continue;
        }
        placed[v] = true;
        order.push(v);
        for &u in g.neighbours(v) {
            if !placed[u] {
                weight[u] += 1;
                heap.push((weight[u], std::cmp::Reverse(u)));
            }
        }
    }
    order
}

/// How a BFS reached a node of the split digraph (node `2v` is v-in, `2v + 1`
/// is v-out).
#[derive(Clone, Copy)]
enum Via {
    /// From the super-source into a source's in-node.
    Source,
    /// v-in → v-out.
    Through,
    /// v-out → v-in, undoing a path through v.
    Back,
    /// u-out → w-in along arc `e` (u → w).
    Arc(usize),
    /// w-in → u-out, undoing flow on arc `e` (u → w).
    Undo(usize),
}

/// Unit-capacity flow state over one graph, reset after every query.
struct Flow<'g> {
    g: &'g Csr,
    on_arc: Vec<bool>,
    /// A path passes through the vertex.
    through: Vec<bool>,
    /// A path starts at the vertex (super-source arc used).
    started: Vec<bool>,
    touched_arcs: Vec<usize>,
    touched: Vec<usize>,
    seen: Vec<u32>,
    stamp: u32,
    parent: Vec<(usize, Via)>,
    queue: VecDeque<usize>,
}

impl<'g> Flow<'g> {
    fn new(g: &'g Csr) -> Self {
        let m = g.len();
        Flow {
            g,
            on_arc: vec![false; g.head.len()],
            through: vec![false; m],
            started: vec![false; m],
            touched_arcs: Vec::new(),
            touched: Vec::new(),
            seen: vec![0; 2 * m],
            stamp: 0,
            parent: vec![(usize::MAX, Via::Source); 2 * m],
            queue: VecDeque::new(),
        }
    }

    /// Vertex-disjoint paths from `sources` (their membership in `is_source`)
    /// to `t`, avoiding `blocked`, counted up to `need`. `t` must not be a
    /// source.
    fn paths(
        &mut self,
        sources: &[usize],
        is_source: &[bool],
        blocked: Option<usize>,
        t: usize,
        need: usize,
    ) -> usize {
        let g = self.g;
        let mut found = 0;
        // Paths of one arc: a source adjacent to t.
        for e in g.start[t]..g.start[t + 1] {
            let a = g.head[e];
            if found < need && is_source[a] && Some(a) != blocked {
                let into_t = g.rev[e];
                self.started[a] = true;
                self.through[a] = true;
                self.on_arc[into_t] = true;
                self.touched.push(a);
                self.touched_arcs.push(into_t);
                found += 1;
            }
        }
        while found < need && self.augment(sources, blocked, t) {
            found += 1;
        }
        for &e in &self.touched_arcs {
            self.on_arc[e] = false;
        }
        for &v in &self.touched {
            self.through[v] = false;
            self.started[v] = false;
        }
        self.touched_arcs.clear();
        self.touched.clear();
        found
    }

    /// One BFS in the residual digraph; applies the path if it reaches t-in.
    fn augment(&mut self, sources: &[usize], blocked: Option<usize>, t: usize) -> bool {
        let g = self.g;
        self.stamp = self.stamp.wrapping_add(1);
        if self.stamp == 0 {
            self.seen.fill(0);
            self.stamp = 1;
        }
        self.queue.clear();
        for &a in sources {
            if !self.started[a] && Some(a) != blocked && a != t {
                self.visit(2 * a, usize::MAX, Via::Source);
            }
        }
        let sink = 2 * t;
        while let Some(x) = self.queue.pop_front() {
            let v = x / 2;
            if x % 2 == 0 {
                if !self.through[v] {
                    self.visit(x + 1, x, Via::Through);
                }
                for e in g.start[v]..g.start[v + 1] {
                    let (u, back) = (g.head[e], g.rev[e]);
                    if self.on_arc[back] && Some(u) != blocked {
                        self.visit(2 * u + 1, x, Via::Undo(back));
                    }
                }
            } else {
                if self.through[v] {
                    self.visit(x - 1, x, Via::Back);
                }
                for e in g.start[v]..g.start[v + 1] {
                    let u = g.head[e];
                    if !self.on_arc[e] && Some(u) != blocked {
                        self.visit(2 * u, x, Via::Arc(e));
                        if 2 * u == sink {
                            self.apply(sink);
                            return true;
                        }
                    }
                }
            }
        }
        false
    }

    fn visit(&mut self, node: usize, from: usize, via: Via) {
        if self.seen[node] != self.stamp {
            self.seen[node] = self.stamp;
            self.parent[node] = (from, via);
            self.queue.push_back(node);
        }
    }

    fn apply(&mut self, sink: usize) {
        let mut x = sink;
        loop {
            let (from, via) = self.parent[x];
            let v = x / 2;
            match via {
                Via::Source => {
                    self.started[v] = true;
                    self.touched.push(v);
                    return;
                }
                Via::Through => {
                    self.through[v] = true;
                    self.touched.push(v);
                }
                Via::Back => self.through[v] = false,
                Via::Arc(e) => {
                    self.on_arc[e] = true;
                    self.touched_arcs.push(e);
                }
                Via::Undo(e) => self.on_arc[e] = false,
            }
            x = from;
        }
    }
}

#[cfg(test)]
mod tests;
