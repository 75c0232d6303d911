//! `propagate-sharding`: spreads the user's shardings to every value, forward (operand to
//! result) and backward (result to operand), through the ops' factor rules, until nothing changes.
//!
//! Each mesh axis propagates on its own. A value's placement on an axis is a split of one dim
//! viewed as `[outer, size, inner]` (the `size` part divided over the axis), or a pending
//! reduction. Through an op, a split that lies inside one factor of the op's rule becomes the
//! same split of that factor wherever else the factor appears: so a head split on the fused QKV
//! weight `(3, 16@tp, 48)` reaches the reshaped heads, sdpa and the output projection, with no
//! layout named anywhere. Splitting a reduction factor makes the result partial; a replicated
//! factor stops propagation (insert-resharding gathers it there).
//!
//! Propagation only adds: user annotations are never overridden, closed dims (`768!`) are never
//! split, a dim holds at most one propagated split, and the first placement a value gets wins
//! (values are visited in program order, then in reverse), so the result never depends on hash
//! order. Where an op's tensors proposed different splits, the choice is revisited by a bounded
//! search that reshards the whole program for each alternative and keeps the plan moving the
//! fewest bytes.

use std::collections::BTreeMap;

use tpc_ir::rule::{rule_of, FactorId, FactorKind, FactorRule};
use tpc_ir::{Graph, Op, ValueId};

use crate::cost::global_bytes;
use crate::pass::{OptionKind, OptionSpec, Options, Outcome, Pass, Phase};
use crate::place::{
    locate_even, nested_factors, place_in, places_of, same_layout, splits_of_dim, write_back,
    FactorSplit, Place, Places,
};
use crate::{PassContext, Result};
use tpc_ir::syntax::type_string;
use tpc_ir::{Diagnostic, ValueMap};

struct State {
    places: ValueMap<Places>,
    /// Each value's global size in bytes, for choosing between conflicting splits.
    bytes: ValueMap<f64>,
    /// Mesh axis sizes when known: an even split may then be read as a split of a factor.
    axis_sizes: BTreeMap<String, i64>,
    /// A counter of places gained, and for each value (by index) the count when it last gained
    /// one: an op is visited again only when one of its tensors changed since its last visit.
    clock: u64,
    stamp: Vec<u64>,
    /// Choices the whole-plan search made: at (op, axis), follow this split.
    forced: BTreeMap<(usize, String), FactorSplit>,
    /// Where splits disagreed and the choice placed something: the points the search may
    /// revisit, in the order met.
    conflicts: Vec<Conflict>,
}

/// An op where its tensors' splits on an axis disagreed, with the candidates.
#[derive(Clone, Debug)]
struct Conflict {
    op: usize,
    axis: String,
    candidates: Vec<FactorSplit>,
}

impl State {
    /// Gives `v` the place `p` on `axis` when it has none there, the dim is open and unsplit.
    fn offer(&mut self, g: &Graph, v: ValueId, axis: &str, p: Place) -> bool {
        // A collective's layout on each side is what it exists for: never changed.
        if matches!(g.op(v), Op::Collective { .. }) {
            return false;
        }
        let places = self.places.get_or_default(v);
        if places.contains_key(axis) {
            return false;
        }
        if let Place::Split {
            dim,
            outer,
            size,
            inner,
        } = &p
        {
            let ds = g.ty(v).sharding.dims.get(*dim);
            let closed =
                ds.is_some_and(|d| d.closed || d.factors.iter().any(|f| !f.axes.is_empty()));
            // Another axis's split of the dim leaves room only when the two nest (one inside
            // the other's inner part: `(2@dp, 32@tp)`).
            let mut splits = splits_of_dim(places, *dim);
            let taken = !splits.is_empty() && {
                splits.push((axis, outer, size, inner));
                nested_factors(&splits).is_none()
            };
            if closed || taken {
                return false;
            }
        }
        places.insert(axis.to_string(), p);
        self.touch(v);
        true
    }

    /// Records that `v` gained a place, so that the ops around it are visited again.
    fn touch(&mut self, v: ValueId) {
        self.clock += 1;
        if let Some(s) = self.stamp.get_mut(v.index()) {
            *s = self.clock;
        }
    }

    /// Whether some tensor of an op last visited at `seen` gained a place since.
    fn stale(&self, seen: Option<u64>, v: ValueId, operands: &[ValueId]) -> bool {
        let Some(seen) = seen else { return true };
        std::iter::once(&v)
            .chain(operands)
            .any(|t| self.stamp.get(t.index()).is_some_and(|&s| s > seen))
    }

    /// The split of one of the op's factors that its tensors should follow on `axis`: among the
    /// splits they already hold that lie inside one factor the rule does not keep whole, the one
    /// whose adoption reshards the fewest bytes of the tensors already placed otherwise; ties go
    /// to the first (operands in order, then the result).
    fn choose(
        &self,
        op: usize,
        rule: &FactorRule,
        tensors: &[(ValueId, &Vec<Vec<FactorId>>, bool)],
        axis: &str,
    ) -> (Option<FactorSplit>, Vec<FactorSplit>) {
        let mut candidates: Vec<FactorSplit> = Vec::new();
        for (t, dims, _) in tensors {
            if let Some(Place::Split {
                dim,
                outer,
                size,
                inner,
            }) = self.places.get(t).and_then(|p| p.get(axis))
            {
                if let Some(s) = dims.get(*dim).and_then(|fs| {
                    locate_even(
                        rule,
                        fs,
                        outer,
                        size,
                        inner,
                        self.axis_sizes.get(axis).copied(),
                    )
                }) {
                    let n = self.axis_sizes.get(axis).copied();
                    if rule.factors[s.factor].kind != FactorKind::Replicated
                        && !candidates.iter().any(|c| same_split(c, &s, n))
                    {
                        candidates.push(s);
                    }
                }
            }
        }
        if candidates.len() <= 1 {
            return (candidates.pop(), Vec::new());
        }
        if let Some(f) = self.forced.get(&(op, axis.to_string())) {
            if candidates.contains(f) {
                return (Some(f.clone()), candidates);
            }
        }
        let mut best: Option<(f64, FactorSplit)> = None;
        for c in &candidates {
            let cost = self.resharding_bytes(rule, tensors, axis, c);
            if best.as_ref().is_none_or(|(b, _)| cost < *b) {
                best = Some((cost, c.clone()));
            }
        }
        (best.map(|(_, c)| c), candidates)
    }

    /// The bytes of the op's tensors that hold a place on `axis` other than the one the split
    /// `c` gives them: what insert-resharding would move if the op followed `c`.
    fn resharding_bytes(
        &self,
        rule: &FactorRule,
        tensors: &[(ValueId, &Vec<Vec<FactorId>>, bool)],
        axis: &str,
        c: &FactorSplit,
    ) -> f64 {
        let kind = rule.factors[c.factor].kind;
        let mut bytes = 0.0;
        for (t, dims, is_result) in tensors {
            let Some(have) = self.places.get(t).and_then(|p| p.get(axis)) else {
                continue;
            };
            let wanted = match kind {
                FactorKind::Reduction(op) if *is_result => Some(Place::Partial(op)),
                _ => dims
                    .iter()
                    .enumerate()
                    .find(|(_, fs)| fs.contains(&c.factor))
                    .and_then(|(dim, fs)| place_in(rule, dim, fs, c)),
            };
            if wanted.as_ref() != Some(have) {
                bytes += self.bytes.get(t).copied().unwrap_or(0.0);
            }
        }
        bytes
    }

    /// Propagates every axis through the op producing `v` (its rule and operands given); true
    /// when some value gained a place.
    fn through(
        &mut self,
        g: &Graph,
        op: usize,
        v: ValueId,
        rule: &FactorRule,
        operands: &[ValueId],
        axes: &[String],
    ) -> bool {
        let mut tensors: Vec<(ValueId, &Vec<Vec<FactorId>>, bool)> = operands
            .iter()
            .zip(&rule.operands)
            .map(|(&o, dims)| (o, dims, false))
            .collect();
        tensors.push((v, &rule.result, true));
        let mut changed = false;
        for axis in axes {
            let (chosen, candidates) = self.choose(op, rule, &tensors, axis);
            let Some(split) = chosen else {
                continue;
            };
            let before = changed;
            changed = false;
            let kind = rule.factors[split.factor].kind;
            for (t, dims, is_result) in &tensors {
                if *is_result {
                    if let FactorKind::Reduction(op) = kind {
                        changed |= self.offer(g, *t, axis, Place::Partial(op));
                        continue;
                    }
                }
                let Some((dim, factors)) = dims
                    .iter()
                    .enumerate()
                    .find(|(_, fs)| fs.contains(&split.factor))
                else {
                    continue;
                };
                if let Some(p) = place_in(rule, dim, factors, &split) {
                    changed |= self.offer(g, *t, axis, p);
                }
            }
            // A choice between disagreeing splits that placed something: the search may try
            // the others.
            if changed
                && candidates.len() > 1
                && !self.conflicts.iter().any(|c| c.op == op && c.axis == *axis)
            {
                self.conflicts.push(Conflict {
                    op,
                    axis: axis.clone(),
                    candidates,
                });
            }
            changed |= before;
        }
        changed
    }
}

/// Whether two splits of an op's factors put the same elements on each of `n` ranks (two
/// writings of one head split, `64@tp` and `(8@tp, 8)`, are one candidate, not a conflict).
fn same_split(a: &FactorSplit, b: &FactorSplit, n: Option<i64>) -> bool {
    let place = |s: &FactorSplit| Place::Split {
        dim: 0,
        outer: s.outer.clone(),
        size: s.size.clone(),
        inner: s.inner.clone(),
    };
    a.factor == b.factor && same_layout(&place(a), &place(b), n)
}

/// Every factor the program splits over several axes written as one factor per axis
/// ([`tpc_ir::layout::one_axis_per_factor`]): a contraction over `64@dp@tp` is then a pending
/// sum over both axes, found axis by axis. Returns whether a type changed.
fn one_axis_per_factor_everywhere(g: &mut Graph, cx: &crate::PassContext) -> bool {
    let mesh = g.mesh.clone();
    let size = |a: &str| {
        cx.axis_sizes
            .get(a)
            .copied()
            .or_else(|| mesh.axes.iter().find(|x| x.name == a).and_then(|x| x.size))
    };
    let mut changed = false;
    for v in g.values().to_vec() {
        let ty = tpc_ir::layout::one_axis_per_factor(g.ty(v), &size);
        if ty != *g.ty(v) {
            g.node_mut(v).ty = ty;
            changed = true;
        }
    }
    for (t, _) in &mut g.result_types {
        let ty = tpc_ir::layout::one_axis_per_factor(t, &size);
        if ty != *t {
            *t = ty;
            changed = true;
        }
    }
    changed
}

/// How many other choices the whole-plan search tries at most: each costs a propagation and a
/// resharding of the whole program.
const MAX_TRIALS: usize = 16;

pub fn run(g: &mut Graph, cx: &crate::PassContext) -> Result<bool> {
    let axes: Vec<String> = g.mesh.axes.iter().map(|a| a.name.clone()).collect();
    if axes.is_empty() {
        return Ok(false);
    }
    let split_up = one_axis_per_factor_everywhere(g, cx);
    let order: Vec<ValueId> = g.values().to_vec();
    let initial: ValueMap<Places> = order.iter().map(|&v| (v, places_of(g.ty(v)))).collect();
    // Rules and operands do not change while propagating: compute them once.
    let ops: Vec<(ValueId, FactorRule, Vec<ValueId>)> = order
        .iter()
        .filter(|&&v| !matches!(g.op(v), Op::Param { .. } | Op::Collective { .. }))
        .map(|&v| (v, rule_of(g, v), g.operands(v)))
        .collect();
    let bytes: ValueMap<f64> = order
        .iter()
        .map(|&v| (v, global_bytes(g.ty(v), &cx.symbols)))
        .collect();
    let program = Program {
        order: &order,
        initial: &initial,
        bytes: &bytes,
        ops: &ops,
        axes: &axes,
    };
    let mut best = propagate(g, cx, &program, BTreeMap::new());
    // Where splits disagreed, each op chose by the bytes its own tensors would move. Decide by
    // the whole plan instead: try the other choices, one point at a time in program order, and
    // keep one when the resharded program moves fewer bytes in all (ties keep the first).
    if !best.conflicts.is_empty() {
        let conflicts = best.conflicts.clone();
        let mut best_cost = plan_cost(g, cx, &program, &best);
        let mut trials = 0;
        'search: for c in &conflicts {
            for candidate in &c.candidates {
                let key = (c.op, c.axis.clone());
                if best.forced.get(&key) == Some(candidate) {
                    continue;
                }
                if trials == MAX_TRIALS {
                    break 'search;
                }
                trials += 1;
                let mut forced = best.forced.clone();
                forced.insert(key, candidate.clone());
                let trial = propagate(g, cx, &program, forced);
                // The same placements are the same plan.
                if trial.places == best.places {
                    continue;
                }
                let cost = plan_cost(g, cx, &program, &trial);
                if cost < best_cost {
                    best_cost = cost;
                    best = trial;
                }
            }
        }
    }
    let mut changed = false;
    for &v in &order {
        let (before, after) = (&initial[&v], &best.places[&v]);
        if before != after {
            write_back(&mut g.node_mut(v).ty, before, after);
            changed = true;
        }
    }
    Ok(changed || split_up)
}

/// What propagation reads of the program, computed once for every trial.
struct Program<'a> {
    order: &'a [ValueId],
    initial: &'a ValueMap<Places>,
    bytes: &'a ValueMap<f64>,
    ops: &'a [(ValueId, FactorRule, Vec<ValueId>)],
    axes: &'a [String],
}

/// The bytes the program moves once resharded with the placements of `state`; a plan
/// resharding refuses costs infinitely much.
fn plan_cost(g: &Graph, cx: &crate::PassContext, p: &Program<'_>, state: &State) -> f64 {
    let mut trial = g.clone();
    for &v in p.order {
        let (before, after) = (&p.initial[&v], &state.places[&v]);
        if before != after {
            write_back(&mut trial.node_mut(v).ty, before, after);
        }
    }
    match crate::insert_resharding::run(&mut trial, cx) {
        Ok(_) => crate::cost::plan_bytes(&trial, &cx.symbols, &cx.axis_sizes),
        Err(_) => f64::INFINITY,
    }
}

/// Propagation to a fixed point, following `forced` where its splits are candidates.
fn propagate(
    g: &Graph,
    cx: &crate::PassContext,
    p: &Program<'_>,
    forced: BTreeMap<(usize, String), FactorSplit>,
) -> State {
    let (order, ops, axes) = (p.order, p.ops, p.axes);
    let mut state = State {
        places: p.initial.clone(),
        bytes: p.bytes.clone(),
        axis_sizes: cx.axis_sizes.clone(),
        clock: 0,
        stamp: vec![0; order.iter().map(|v| v.index() + 1).max().unwrap_or(0)],
        forced,
        conflicts: Vec::new(),
    };
    // Each round adds at least one (value, axis) place, so this many rounds always suffice.
    let limit = order.len() * axes.len() + 1;
    let mut declared_seeded = false;
    let mut seen: Vec<Option<u64>> = vec![None; ops.len()];
    let mut visit = |state: &mut State, i: usize| {
        let (v, rule, operands) = &ops[i];
        if !state.stale(seen[i], *v, operands) {
            return false;
        }
        let changed = state.through(g, i, *v, rule, operands, axes);
        seen[i] = Some(state.clock);
        changed
    };
    for _ in 0..limit {
        let mut changed = false;
        for i in 0..ops.len() {
            changed |= visit(&mut state, i);
        }
        // A declared result type acts like a consumer of the returned value: after the values
        // have heard from their producers (so a partial sum can still become a reduce_scatter
        // into the declared split), it gives a layout to a returned value that has none.
        if !declared_seeded {
            declared_seeded = true;
            for (o, (declared, _)) in g.outputs().iter().zip(&g.result_types) {
                let places = state.places.get_or_default(*o);
                let mut gained = false;
                for (axis, p) in places_of(declared) {
                    if let std::collections::btree_map::Entry::Vacant(e) = places.entry(axis) {
                        e.insert(p);
                        gained = true;
                    }
                }
                if gained {
                    changed = true;
                    state.touch(*o);
                }
            }
        }
        for i in (0..ops.len()).rev() {
            changed |= visit(&mut state, i);
        }
        if !changed {
            break;
        }
    }
    state
}

/// What decides between conflicting splits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Cost {
    /// The global bytes insert-resharding would move (docs/sharding.md, "Conflicts").
    #[default]
    Bytes,
}

/// `propagate-sharding` as a [`Pass`]: from the global phase to the sharded one.
#[derive(Clone, Copy, Debug, Default)]
pub struct PropagateSharding {
    cost: Cost,
}

impl Pass for PropagateSharding {
    fn name(&self) -> &'static str {
        "propagate-sharding"
    }

    fn description(&self) -> &'static str {
        "spread the user's shardings to every value through the ops' factor rules"
    }

    fn requires(&self) -> Phase {
        Phase::Global
    }

    fn produces(&self) -> Option<Phase> {
        Some(Phase::Sharded)
    }

    fn options(&self) -> &'static [OptionSpec] {
        &[OptionSpec {
            name: "cost",
            kind: OptionKind::Choice(&["bytes"]),
            default: "bytes",
            help: "what decides between conflicting splits: `bytes`, the global bytes \
                   insert-resharding would move, at the context's symbol values",
        }]
    }

    fn configure(&mut self, options: &Options) -> Result<()> {
        self.cost = match options.choice("cost")? {
            "bytes" => Cost::Bytes,
            other => {
                return Err(crate::Error::BadOptionValue {
                    pass: self.name().into(),
                    option: "cost".into(),
                    value: other.into(),
                    expected: OptionKind::Choice(&["bytes"]).expected(),
                })
            }
        };
        Ok(())
    }

    fn run(&self, g: &mut Graph, cx: &PassContext) -> Result<Outcome> {
        match self.cost {
            Cost::Bytes => run(g, cx).map(Outcome::changed),
        }
    }
}

/// The sharded phase's completeness: every value whose layout propagation (at `cx`) would
/// still extend, with the type it would get, located at the value.
pub(crate) fn check_complete(g: &Graph, cx: &PassContext) -> Vec<Diagnostic> {
    let mut after = g.clone();
    match run(&mut after, cx) {
        Ok(false) => Vec::new(),
        Ok(true) => g
            .values()
            .iter()
            .filter(|&&v| after.ty(v) != g.ty(v))
            .map(|&v| {
                Diagnostic::error(
                    format!(
                        "`%{}` is laid out as {}, but its ops' factor rules give it {}",
                        g.name(v),
                        type_string(g.ty(v)),
                        type_string(after.ty(v))
                    ),
                    g.node(v).span,
                    "layout not propagated",
                )
                .with_help(
                    "at the sharded phase every value has the layout propagation gives it: \
                     write that type, or run propagate-sharding first",
                )
            })
            .collect(),
        Err(e) => vec![Diagnostic::error(
            format!("propagate-sharding cannot run on the program: {e}"),
            g.span,
            "in this function",
        )],
    }
}
