//! `insert-resharding`: wherever an op needs an operand laid out differently from how it was
//! produced, insert the cheapest collective, each its own node with its full type:
//!
//! | operand on the axis | op needs | inserted |
//! |---|---|---|
//! | partial | whole | `allreduce` |
//! | partial (sum) | split | `reduce_scatter` (never allreduce-then-slice) |
//! | partial (max/min) | split | `allreduce`, then `shard` |
//! | split | whole | `allgather` |
//! | whole | split | `shard` (a local slice, no traffic) |
//! | split in one dim | split in another | `all_to_all` |
//! | split in a dim | another split of the same dim | `allgather`, then `shard` |
//!
//! What an op needs follows from its result's layout and its factor rule: a split of a pass
//! factor in the result needs the same split in every operand that has the factor, and nothing
//! on the axis elsewhere; a partial result needs its operands split on the reduction factor. A
//! `linear` whose result is partial is first split into the partial product and a bias add after
//! the reduction, so the bias is added once. Results of the function are never left partial.

use std::collections::BTreeMap;
use tpc_ir::ops::{Broadcast, CollectiveOp, Linear};

use tpc_ir::rule::{rule_of, FactorKind};
use tpc_ir::{Collective, Dim, Graph, Node, Op, ReduceOp, Sharding, TensorType, ValueId};

use crate::cost::{collective_bytes, global_bytes};
use crate::place::{
    locate, locate_even, nested_factors, place_in, places_of, same_layout, split_factors,
    splits_of_dim, Names, Place,
};
use crate::{Error, Result};

/// A layout change on one axis: whole (`None`) or a place.
type Target = Option<Place>;

/// `ty` with its layout on `axis` replaced by `to`.
fn with_place(ty: &TensorType, axis: &str, to: &Target) -> Result<TensorType> {
    let mut out = ty.clone();
    let sh: &mut Sharding = &mut out.sharding;
    sh.partial.retain(|p| p.axis != axis);
    for ds in &mut sh.dims {
        for f in &mut ds.factors {
            f.axes.retain(|a| a != axis);
        }
        if ds.factors.iter().all(|f| f.axes.is_empty()) {
            ds.factors.clear();
        }
    }
    match to {
        None | Some(Place::Fixed) => {}
        Some(Place::Partial(op)) => sh.partial.push(tpc_ir::Partial {
            axis: axis.to_string(),
            op: *op,
        }),
        Some(Place::Split {
            dim,
            outer,
            size,
            inner,
        }) => {
            // The other axes' splits of the dim stay; the new one must nest with them.
            let kept = places_of(&out);
            let mut splits = splits_of_dim(&kept, *dim);
            let factors = if splits.is_empty() {
                Some(split_factors(outer, size, inner, axis))
            } else {
                splits.push((axis, outer, size, inner));
                nested_factors(&splits)
            };
            let Some(factors) = factors else {
                return Err(Error::Unsupported(format!(
                    "splitting dim {dim} over `{axis}` where another axis splits it in a way the two do not nest"
                )));
            };
            let ds = out
                .sharding
                .dims
                .get_mut(*dim)
                .ok_or_else(|| Error::Unsupported(format!("no dim {dim}")))?;
            ds.factors = factors;
        }
    }
    Ok(out)
}

/// The collectives that change a value's layout on an axis of `n` ranks (when known) from one
/// place to another: the module's table, stated once for inserting them and for counting their
/// bytes.
enum Conversion {
    Nothing,
    One(Collective),
    /// Made whole by the first, then cut by the second.
    ThroughWhole(Collective, Collective),
    /// A pending reduction asked of a value that has none: no collective makes it.
    MakePartial,
}

fn conversion(from: &Target, to: &Target, n: Option<i64>) -> Conversion {
    use Conversion::*;
    match (from, to) {
        (Some(a), Some(b)) if same_layout(a, b, n) => Nothing,
        (a, b) if a == b => Nothing,
        (Some(Place::Fixed), _) | (_, Some(Place::Fixed)) => Nothing,
        (Some(Place::Partial(op)), None) => One(Collective::AllReduce(*op)),
        (Some(Place::Partial(ReduceOp::Sum)), Some(Place::Split { .. })) => {
            One(Collective::ReduceScatter(ReduceOp::Sum))
        }
        (Some(Place::Partial(op)), Some(Place::Split { .. })) => {
            ThroughWhole(Collective::AllReduce(*op), Collective::Shard)
        }
        (Some(Place::Split { .. }), None) => One(Collective::AllGather),
        (None, Some(Place::Split { .. })) => One(Collective::Shard),
        (Some(Place::Split { dim: a, .. }), Some(Place::Split { dim: b, .. })) if a != b => {
            One(Collective::AllToAll)
        }
        (Some(Place::Split { .. }), Some(Place::Split { .. })) => {
            ThroughWhole(Collective::AllGather, Collective::Shard)
        }
        (_, Some(Place::Partial(_))) => MakePartial,
        _ => Nothing,
    }
}

/// A layout change of `x` (for `user`, when there is one) that resharding cannot make yet, as a
/// located error.
fn refused(g: &Graph, x: ValueId, user: Option<ValueId>, axis: &str, e: Error) -> Error {
    let Error::Unsupported(what) = e else {
        return e;
    };
    let at = user.unwrap_or(x);
    let mut d = Diagnostic::error(
        format!(
            "not supported yet: `%{}` needs a `{axis}` collective: {what}",
            g.name(x)
        ),
        g.node(at).span,
        format!("needs `%{}` laid out differently on `{axis}`", g.name(x)),
    )
    .with_help(
        "split each dim over one mesh axis (or give the axes different dims), or lay the value out as this op needs it",
    );
    if at != x {
        d = d.with_secondary(g.node(x).span, format!("`%{}` is laid out here", g.name(x)));
    }
    Error::Refused {
        diagnostics: vec![d],
    }
}

struct Resharder {
    axes: Vec<String>,
    /// Conversions already made: (value, axis, target) -> the converted value.
    made: BTreeMap<(ValueId, String, Target), ValueId>,
    changed: bool,
    names: Names,
    /// What a person should hear about: an annotated split undone by an allgather.
    warnings: Vec<Diagnostic>,
    /// Mesh axis sizes when known, to see that two writings of a split are one layout.
    axis_sizes: BTreeMap<String, i64>,
    /// Symbol values the cost model sizes tensors at.
    symbols: BTreeMap<String, i64>,
    /// The ops resharding made to compute a value in another layout: their types are not the
    /// user's, so gathering them undoes no annotation.
    made_ops: std::collections::BTreeSet<ValueId>,
}

impl Resharder {
    /// One collective node converting `x` on `axis`, placed before `before` (or at the end).
    fn collective(
        &mut self,
        g: &mut Graph,
        before: Option<ValueId>,
        x: ValueId,
        axis: &str,
        kind: Collective,
        to: &Target,
    ) -> Result<ValueId> {
        let ty = with_place(g.ty(x), axis, to).map_err(|e| refused(g, x, before, axis, e))?;
        if kind == Collective::AllGather && g.node(x).explicit_type && !self.made_ops.contains(&x) {
            self.warn_undone(g, x, before, axis);
        }
        let name = self.names.fresh(&format!("{}.{}", g.name(x), kind.name()));
        let node = Node {
            name,
            op: Op::Collective(CollectiveOp {
                kind,
                axis: axis.to_string(),
            }),
            result: 0,
            ty,
            span: g.node(x).span,
            explicit_type: true,
        };
        self.changed = true;
        Ok(match before {
            Some(b) => g.insert_before(b, node, &[x]),
            None => g.add_node(node, &[x]),
        })
    }

    /// `x` converted on `axis` from its current layout to `to`.
    fn convert(
        &mut self,
        g: &mut Graph,
        before: Option<ValueId>,
        x: ValueId,
        axis: &str,
        to: &Target,
    ) -> Result<ValueId> {
        let from = places_of(g.ty(x)).get(axis).cloned();
        let n = self.axis_sizes.get(axis).copied();
        if matches!(conversion(&from, to, n), Conversion::Nothing) {
            return Ok(x);
        }
        let key = (x, axis.to_string(), to.clone());
        if let Some(&done) = self.made.get(&key) {
            return Ok(done);
        }
        let out = match conversion(&from, to, n) {
            Conversion::Nothing => x,
            Conversion::One(kind) => self.collective(g, before, x, axis, kind, to)?,
            Conversion::ThroughWhole(first, then) => {
                let whole = self.collective(g, before, x, axis, first, &None)?;
                self.collective(g, before, whole, axis, then, to)?
            }
            Conversion::MakePartial => {
                return Err(Error::Unsupported(format!(
                    "making %{} partial over `{axis}`",
                    g.name(x)
                )));
            }
        };
        self.made.insert(key, out);
        Ok(out)
    }

    /// What the op producing `v` needs of each operand on `axis`, from its result's layout.
    fn needs(&self, g: &Graph, v: ValueId, axis: &str) -> Result<Option<Vec<Target>>> {
        let place = places_of(g.ty(v)).get(axis).cloned();
        self.needs_as(g, v, place.as_ref(), axis)
    }

    /// [`Resharder::needs`] were `v` laid out as `place` on `axis`.
    fn needs_as(
        &self,
        g: &Graph,
        v: ValueId,
        place: Option<&Place>,
        axis: &str,
    ) -> Result<Option<Vec<Target>>> {
        let rule = rule_of(g, v);
        let operands = g.operands(v);
        let whole = || vec![None; operands.len()];
        let needs_of = |factor| {
            operands
                .iter()
                .zip(&rule.operands)
                .map(|(_, dims)| {
                    dims.iter()
                        .enumerate()
                        .find(|(_, fs)| fs.contains(&factor))
                        .map(|(d, fs)| (d, fs.clone()))
                })
                .collect::<Vec<_>>()
        };
        Ok(Some(match place {
            None => whole(),
            Some(Place::Fixed) => return Ok(None),
            Some(Place::Split {
                dim,
                outer,
                size,
                inner,
            }) => {
                let split = rule
                    .result
                    .get(*dim)
                    // Either writing of an even split (`16@tp` of a (8, 2) dim on 8 ranks is its
                    // 8 split) is the op's.
                    .and_then(|fs| {
                        let n = self.axis_sizes.get(axis).copied();
                        locate_even(&rule, fs, outer, size, inner, n)
                    });
                match split {
                    Some(s)
                        if matches!(
                            rule.factors[s.factor].kind,
                            FactorKind::Pass | FactorKind::New
                        ) =>
                    {
                        needs_of(s.factor)
                            .into_iter()
                            .map(|found| found.and_then(|(d, fs)| place_in(&rule, d, &fs, &s)))
                            .collect()
                    }
                    _ => {
                        return Err(Error::NotLocal {
                            value: g.name(v).to_string(),
                            axis: axis.to_string(),
                        })
                    }
                }
            }
            Some(Place::Partial(op)) if rule.carries(*op) => {
                // An op that only moves elements, or is linear in its first operand, keeps a
                // pending reduction pending: that operand stays partial, the others whole.
                let mut needs = whole();
                if let Some(first) = needs.first_mut() {
                    *first = Some(Place::Partial(*op));
                }
                needs
            }
            Some(Place::Partial(op)) => {
                // The operand split that made the result partial: a reduction factor of that op.
                let split = operands.iter().zip(&rule.operands).find_map(|(&o, dims)| {
                    match places_of(g.ty(o)).get(axis) {
                        Some(Place::Split {
                            dim,
                            outer,
                            size,
                            inner,
                        }) => locate(&rule, dims.get(*dim)?, outer, size, inner)
                            .filter(|s| rule.factors[s.factor].kind == FactorKind::Reduction(*op)),
                        _ => None,
                    }
                });
                // No operand arrives split on a reduction (a declared partial result): split the
                // first reduction of that kind locally, which makes each rank's sum partial.
                let split = split.or_else(|| {
                    let f = rule
                        .factors
                        .iter()
                        .position(|f| f.kind == FactorKind::Reduction(*op))?;
                    let one = Dim::constant(1);
                    Some(crate::place::FactorSplit {
                        factor: f,
                        outer: one.clone(),
                        size: rule.factors[f].extent.clone(),
                        inner: one,
                    })
                });
                let Some(s) = split else {
                    return Err(Error::Unsupported(format!(
                        "%{} is partial over `{axis}` but its `{}` reduces nothing",
                        g.name(v),
                        g.op(v).name()
                    )));
                };
                needs_of(s.factor)
                    .into_iter()
                    .map(|found| found.and_then(|(d, fs)| place_in(&rule, d, &fs, &s)))
                    .collect()
            }
        }))
    }

    /// `v`, split on `axis` where its op cannot split (a softmax declared split on its own dim),
    /// becomes the op computed whole on that axis, then a local `shard` to the declared layout.
    /// Returns the node now computing the op.
    fn shard_after(&mut self, g: &mut Graph, v: ValueId, axis: &str) -> Result<ValueId> {
        let node = g.node(v).clone();
        let whole = Node {
            name: self.names.fresh(&format!("{}.whole", node.name)),
            op: node.op.clone(),
            result: node.result,
            ty: with_place(&node.ty, axis, &None)?,
            span: node.span,
            explicit_type: true,
        };
        let operands = g.operands(v);
        let w = g.insert_before(v, whole, &operands);
        for i in (0..operands.len()).rev() {
            g.remove_operand_edge(v, i);
        }
        g.set_operand(v, 0, w);
        g.node_mut(v).op = Op::Collective(CollectiveOp {
            kind: Collective::Shard,
            axis: axis.to_string(),
        });
        g.node_mut(v).result = 0;
        self.changed = true;
        Ok(w)
    }

    /// Warns that `x`, whose split the program wrote, is gathered whole over `axis` for `user`:
    /// the annotation costs traffic instead of saving it.
    fn warn_undone(&mut self, g: &Graph, x: ValueId, user: Option<ValueId>, axis: &str) {
        let at = user.unwrap_or(x);
        let mut d = Diagnostic::warning(
            format!(
                "`%{}` is split over `{axis}` as written, but is gathered whole over `{axis}` for `%{}`",
                g.name(x),
                g.name(at)
            ),
            g.node(at).span,
            format!("needs `%{}` whole on `{axis}`", g.name(x)),
        )
        .with_help(format!(
            "the allgather undoes the annotation: leave `%{}` whole on `{axis}`, or split what its users compute the same way (`--report json` lists the bytes)",
            g.name(x)
        ));
        if at != x {
            d = d.with_secondary(g.node(x).span, "split here");
        }
        self.warnings.push(d);
    }

    /// Inserts what the op producing `v` needs, operand by operand, axis by axis. A change on
    /// one axis that does not nest with another axis's split of the same dim yet waits until
    /// the other axes are done (`%w: [32, 64@tp]` to `(2@dp, 32@tp)`: tp's change first, then
    /// dp's shard nests inside it).
    fn fix(&mut self, g: &mut Graph, v: ValueId) -> Result<()> {
        let mut pending = self.axes.clone();
        loop {
            let mut waiting = Vec::new();
            let mut refused = None;
            for axis in &pending {
                match self.fix_axis(g, v, axis) {
                    Ok(()) => {}
                    Err(e @ Error::Refused { .. }) => {
                        waiting.push(axis.clone());
                        refused = Some(e);
                    }
                    Err(e) => return Err(e),
                }
            }
            match refused {
                None => return Ok(()),
                // Nothing else changed this round: the layouts cannot nest.
                Some(e) if waiting.len() == pending.len() => return Err(e),
                Some(_) => pending = waiting,
            }
        }
    }

    /// [`Resharder::fix`] on one axis.
    fn fix_axis(&mut self, g: &mut Graph, v: ValueId, axis: &str) -> Result<()> {
        let Some(needs) = self.needs(g, v, axis)? else {
            return Ok(());
        };
        for (i, need) in needs.iter().enumerate() {
            let Some(&x) = g.operands(v).get(i) else {
                continue;
            };
            let y = self.convert(g, Some(v), x, axis, need)?;
            if y != x {
                g.set_operand(v, i, y);
            }
        }
        Ok(())
    }

    /// The bytes converting `ty` on `axis` to `to` moves, by the collectives [`Resharder::convert`]
    /// inserts ([`collective_bytes`]).
    fn conversion_bytes(&self, ty: &TensorType, axis: &str, to: &Target) -> f64 {
        let from = places_of(ty).get(axis).cloned();
        let n = self.axis_sizes.get(axis).copied();
        let whole = global_bytes(ty, &self.symbols);
        match conversion(&from, to, n) {
            Conversion::Nothing | Conversion::MakePartial => 0.0,
            Conversion::One(kind) => collective_bytes(kind, whole, n),
            Conversion::ThroughWhole(first, then) => {
                collective_bytes(first, whole, n) + collective_bytes(then, whole, n)
            }
        }
    }

    /// Where the operands of `v` disagree with its layout on `axis`, the cheaper of the two
    /// plans: converting the operands to what `v`'s layout needs, or computing `v` in the layout
    /// its operands give (`%h.sharded`) and converting that result once (a declared
    /// `3072!` hidden layer is computed split from split weights and gathered, not computed
    /// from gathered weights). Returns the op now computing `v`.
    fn compute_where_cheaper(&mut self, g: &mut Graph, v: ValueId, axis: &str) -> Result<ValueId> {
        if g.op(v).num_results() > 1 || matches!(g.op(v), Op::Collective(_) | Op::Param(_)) {
            return Ok(v);
        }
        let have = places_of(g.ty(v)).get(axis).cloned();
        let operands = g.operands(v);
        let cost_of = |r: &Self, needs: &[Target]| -> f64 {
            operands
                .iter()
                .zip(needs)
                .filter(|(&x, need)| !r.made.contains_key(&(x, axis.to_string(), (*need).clone())))
                .map(|(&x, need)| r.conversion_bytes(g.ty(x), axis, need))
                .sum()
        };
        let Ok(Some(needs)) = self.needs(g, v, axis) else {
            return Ok(v);
        };
        let here = cost_of(self, &needs);
        if here == 0.0 {
            return Ok(v);
        }
        // The layouts the operands give the result: each operand's split, found in the rule.
        let rule = rule_of(g, v);
        let n = self.axis_sizes.get(axis).copied();
        let mut alternatives: Vec<Place> = Vec::new();
        for (&x, dims) in operands.iter().zip(&rule.operands) {
            let Some(Place::Split {
                dim,
                outer,
                size,
                inner,
            }) = places_of(g.ty(x)).get(axis).cloned()
            else {
                continue;
            };
            let Some(s) = dims
                .get(dim)
                .and_then(|fs| locate_even(&rule, fs, &outer, &size, &inner, n))
            else {
                continue;
            };
            let alt = match rule.factors[s.factor].kind {
                // A bias would be added on every rank of a partial linear.
                FactorKind::Reduction(_)
                    if matches!(g.op(v), Op::Linear(_)) && operands.len() == 3 =>
                {
                    None
                }
                FactorKind::Reduction(op) => Some(Place::Partial(op)),
                FactorKind::Pass => rule
                    .result
                    .iter()
                    .enumerate()
                    .find(|(_, fs)| fs.contains(&s.factor))
                    .and_then(|(d, fs)| place_in(&rule, d, fs, &s)),
                _ => None,
            };
            if let Some(alt) = alt {
                if Some(&alt) != have.as_ref() && !alternatives.contains(&alt) {
                    alternatives.push(alt);
                }
            }
        }
        let mut best: Option<(f64, TensorType, Collective)> = None;
        for alt in alternatives {
            let target = Some(alt.clone());
            let Conversion::One(kind) = conversion(&target, &have, n) else {
                continue;
            };
            let Ok(ty) = with_place(g.ty(v), axis, &target) else {
                continue;
            };
            let Ok(Some(alt_needs)) = self.needs_as(g, v, Some(&alt), axis) else {
                continue;
            };
            let cost = cost_of(self, &alt_needs) + self.conversion_bytes(&ty, axis, &have);
            if cost < here && best.as_ref().is_none_or(|(b, ..)| cost < *b) {
                best = Some((cost, ty, kind));
            }
        }
        let Some((_, ty, kind)) = best else {
            return Ok(v);
        };
        let node = g.node(v).clone();
        let computed = Node {
            name: self.names.fresh(&format!("{}.sharded", node.name)),
            op: node.op.clone(),
            result: node.result,
            ty,
            span: node.span,
            explicit_type: true,
        };
        let w = g.insert_before(v, computed, &operands);
        for i in (0..operands.len()).rev() {
            g.remove_operand_edge(v, i);
        }
        g.set_operand(v, 0, w);
        g.node_mut(v).op = Op::Collective(CollectiveOp {
            kind,
            axis: axis.to_string(),
        });
        g.node_mut(v).result = 0;
        self.made_ops.insert(w);
        self.changed = true;
        Ok(w)
    }

    /// `linear(x, w, b)` with a partial result becomes `linear(x, w)` (partial), then
    /// `add(.., b)` on the reduced value, so that the bias is added once.
    fn split_bias(&mut self, g: &mut Graph, v: ValueId) -> Result<Vec<ValueId>> {
        let ops = g.operands(v);
        let partial = !g.ty(v).sharding.partial.is_empty();
        if !(matches!(g.op(v), Op::Linear(_)) && ops.len() == 3 && partial) {
            return Ok(vec![v]);
        }
        let (x, w, b) = (ops[0], ops[1], ops[2]);
        // The sum (bias included) is laid out as its users need it where they all agree on a
        // split: then the reduction is a reduce_scatter and the bias is added to the local part.
        let mut sum_ty = g.ty(v).clone();
        for p in g.ty(v).sharding.partial.clone() {
            let mut wanted: Option<Target> = None;
            let mut agree = true;
            for u in g.users(v) {
                let needs = self.needs(g, u, &p.axis)?.unwrap_or_default();
                for (i, o) in g.operands(u).into_iter().enumerate() {
                    if o != v {
                        continue;
                    }
                    let need = needs.get(i).cloned().flatten();
                    match &wanted {
                        None => wanted = Some(need),
                        Some(w) => agree &= *w == need,
                    }
                }
            }
            let target = match wanted {
                Some(Some(split @ Place::Split { .. })) if agree => Some(split),
                _ => None,
            };
            sum_ty = with_place(&sum_ty, &p.axis, &target)?;
        }
        let ty = g.ty(v).clone();
        let span = g.node(v).span;
        let name = self.names.fresh(&format!("{}.part", g.name(v)));
        let product = g.insert_before(
            v,
            Node {
                name,
                op: Op::Linear(Linear),
                result: 0,
                ty: ty.clone(),
                span,
                explicit_type: true,
            },
            &[x, w],
        );
        // The bias broadcast to the result's shape: laid out like the result on the new dims (each
        // rank makes its own part, no traffic) and like the bias on its own dim.
        let mut bty = TensorType::new(g.ty(b).dtype, ty.shape.clone());
        bty.sharding.dims = sum_ty.sharding.dims.clone();
        bty.sharding.dims[ty.rank() - 1] =
            g.ty(b).sharding.dims.first().cloned().unwrap_or_default();
        let name = self.names.fresh(&format!("{}.bias", g.name(v)));
        let shape = ty.shape.clone();
        let bias = g.insert_before(
            v,
            Node {
                name,
                op: Op::Broadcast(Broadcast {
                    shape,
                    implicit: false,
                }),
                result: 0,
                ty: bty,
                span,
                explicit_type: true,
            },
            &[b],
        );
        let node = g.node_mut(v);
        node.op = Op::Binary(tpc_ir::BinaryOp::Add);
        node.ty = sum_ty;
        g.set_operand(v, 0, product);
        g.set_operand(v, 1, bias);
        g.remove_operand_edge(v, 2);
        self.changed = true;
        Ok(vec![product, bias, v])
    }
}

/// Inserts the collectives `g`'s layouts need; the outcome carries the warnings (an annotated
/// split undone by an allgather).
pub(crate) fn run(g: &mut Graph, cx: &crate::PassContext) -> Result<Outcome> {
    let axes: Vec<String> = g.mesh.axes.iter().map(|a| a.name.clone()).collect();
    if axes.is_empty() {
        return Ok(Outcome::changed(false));
    }
    let mut r = Resharder {
        axes: axes.clone(),
        made: BTreeMap::new(),
        changed: false,
        names: Names::of(g),
        warnings: Vec::new(),
        axis_sizes: cx.axis_sizes.clone(),
        symbols: cx.symbols.clone(),
        made_ops: std::collections::BTreeSet::new(),
    };
    let ops: Vec<ValueId> = g
        .values()
        .iter()
        .copied()
        .filter(|&v| !matches!(g.op(v), Op::Param { .. } | Op::Collective { .. }))
        .collect();
    for v in ops {
        for u in r.split_bias(g, v)? {
            // Where its operands would give it another layout at fewer bytes moved, the op
            // computes there and its result is converted after.
            let mut u = u;
            for axis in &axes {
                u = r.compute_where_cheaper(g, u, axis)?;
            }
            // A layout the op cannot make locally (a split it keeps whole) is made whole and
            // sharded after; each axis at most once.
            for _ in 0..=axes.len() {
                match r.fix(g, u) {
                    Err(Error::NotLocal { axis, .. }) => u = r.shard_after(g, u, &axis)?,
                    other => {
                        other?;
                        break;
                    }
                }
            }
        }
    }
    // Results are laid out as the function's declared result types say where they say
    // something (a split, or a closed dim that must be whole), and are never partial.
    for (i, o) in g.outputs().to_vec().into_iter().enumerate() {
        let declared = g.result_types.get(i).map(|(ty, _)| ty.clone());
        let mut x = o;
        for axis in &axes {
            let have = places_of(g.ty(x)).get(axis).cloned();
            let want = match declared
                .as_ref()
                .and_then(|d| places_of(d).get(axis).cloned())
            {
                Some(p) => Some(p),
                None => have.clone().filter(|p| match p {
                    Place::Partial(_) => false,
                    Place::Split { dim, .. } => !declared
                        .as_ref()
                        .is_some_and(|d| d.sharding.dims.get(*dim).is_some_and(|ds| ds.closed)),
                    Place::Fixed => true,
                }),
            };
            if have != want && !matches!(want, Some(Place::Partial(_))) {
                x = r.convert(g, None, x, axis, &want)?;
            }
        }
        if x != o {
            g.set_output(i, x);
        }
    }
    Ok(Outcome {
        warnings: r.warnings,
        ..Outcome::changed(r.changed)
    })
}

use tpc_ir::Diagnostic;

use crate::pass::{Outcome, Pass, Phase};
use crate::PassContext;

/// `insert-resharding` as a [`Pass`]: from the sharded phase to the resharded one.
#[derive(Clone, Copy, Debug, Default)]
pub struct InsertResharding;

impl Pass for InsertResharding {
    fn name(&self) -> &'static str {
        "insert-resharding"
    }

    fn description(&self) -> &'static str {
        "insert the cheapest collective wherever an op needs an operand laid out differently"
    }

    fn requires(&self) -> Phase {
        Phase::Sharded
    }

    fn produces(&self) -> Option<Phase> {
        Some(Phase::Resharded)
    }

    fn run(&self, g: &mut Graph, cx: &PassContext) -> Result<Outcome> {
        run(g, cx)
    }
}

/// A value's layout on one axis, in words: `whole`, `split in dim 2 as (3, 16@tp, 48)`,
/// `partial (sum)`.
fn describe(p: Option<&Place>, axis: &str) -> String {
    match p {
        None => "whole".into(),
        Some(Place::Split {
            dim,
            outer,
            size,
            inner,
        }) => {
            let factors: Vec<String> = split_factors(outer, size, inner, axis)
                .iter()
                .map(|f| match f.axes.as_slice() {
                    [] => f.extent.to_string(),
                    axes => format!("{}@{}", f.extent, axes.join("")),
                })
                .collect();
            let factors = match factors.as_slice() {
                [one] => one.clone(),
                many => format!("({})", many.join(", ")),
            };
            format!("split in dim {dim} as {factors}")
        }
        Some(Place::Partial(op)) => format!("partial ({})", op.name()),
        Some(Place::Fixed) => "split with other axes".into(),
    }
}

/// The resharded phase's invariant: every op of `g` other than a collective computes its
/// result from its operands' layouts without communication, on every mesh axis: the test
/// insert-resharding makes before it inserts a collective (what the op needs of each operand,
/// from its result's layout and its factor rule; a layout the op cannot make at all is
/// [`Error::NotLocal`]). A `linear` with a bias is never partial (each rank would add the
/// bias), and a result is partial only where its declared type is. `axis_sizes` (when known)
/// tell two writings of one even split from two layouts. One diagnostic per problem, located
/// at the value and naming it.
pub fn check_local(g: &Graph, axis_sizes: &BTreeMap<String, i64>) -> Vec<Diagnostic> {
    let axes: Vec<String> = g.mesh.axes.iter().map(|a| a.name.clone()).collect();
    let mut diags = Vec::new();
    if axes.is_empty() {
        return diags;
    }
    let r = Resharder {
        axes: axes.clone(),
        made: BTreeMap::new(),
        changed: false,
        names: Names::default(),
        warnings: Vec::new(),
        axis_sizes: axis_sizes.clone(),
        symbols: BTreeMap::new(),
        made_ops: std::collections::BTreeSet::new(),
    };
    for &v in g.values() {
        if matches!(g.op(v), Op::Param { .. } | Op::Collective { .. }) {
            continue;
        }
        let node = g.node(v);
        let op = g.op(v).name();
        let operands = g.operands(v);
        if op == "linear" && operands.len() == 3 && !node.ty.sharding.partial.is_empty() {
            diags.push(
                Diagnostic::error(
                    format!(
                        "`%{}` = linear with a bias is partial: every rank would add the bias",
                        node.name
                    ),
                    node.span,
                    "bias added before the reduction",
                )
                .with_help(
                    "take the partial product without the bias, reduce it, then add the bias \
                     (insert-resharding does)",
                ),
            );
            continue;
        }
        for axis in &axes {
            let needs = match r.needs(g, v, axis) {
                Ok(Some(needs)) => needs,
                Ok(None) => continue,
                Err(Error::NotLocal { .. }) => {
                    let have = places_of(&node.ty);
                    diags.push(
                        Diagnostic::error(
                            format!(
                                "`%{}` is {} on `{axis}`, which its `{op}` cannot produce from local pieces",
                                node.name,
                                describe(have.get(axis), axis)
                            ),
                            node.span,
                            format!("not computable locally on `{axis}`"),
                        )
                        .with_help(format!(
                            "compute it whole on `{axis}` and `shard` it after (insert-resharding does)"
                        )),
                    );
                    continue;
                }
                Err(e) => {
                    diags.push(Diagnostic::error(
                        format!("`%{}`: {e}", node.name),
                        node.span,
                        format!("not computable locally on `{axis}`"),
                    ));
                    continue;
                }
            };
            let n = axis_sizes.get(axis).copied();
            for (&o, need) in operands.iter().zip(&needs) {
                let have = places_of(g.ty(o)).get(axis).cloned();
                let same = match (&have, need) {
                    (Some(a), Some(b)) => same_layout(a, b, n),
                    (a, b) => a == b,
                };
                if same || matches!(have, Some(Place::Fixed)) || matches!(need, Some(Place::Fixed))
                {
                    continue;
                }
                diags.push(
                    Diagnostic::error(
                        format!(
                            "`%{}` (`{op}`) is not computed locally on `{axis}`: it needs `%{}` {} there, but `%{}` is {}",
                            node.name,
                            g.name(o),
                            describe(need.as_ref(), axis),
                            g.name(o),
                            describe(have.as_ref(), axis)
                        ),
                        node.span,
                        format!("not computable locally on `{axis}`"),
                    )
                    .with_secondary(g.node(o).span, format!("`%{}` is laid out here", g.name(o)))
                    .with_help(format!(
                        "convert `%{}` with a collective over `{axis}` first (insert-resharding inserts it)",
                        g.name(o)
                    )),
                );
            }
        }
    }
    for (i, &o) in g.outputs().iter().enumerate() {
        let declared = g.result_types.get(i).map(|(t, _)| &t.sharding.partial);
        for p in &g.ty(o).sharding.partial {
            if declared.is_some_and(|d| d.contains(p)) {
                continue;
            }
            diags.push(
                Diagnostic::error(
                    format!(
                        "`%{}` is returned partial over `{}`, which its declared result type is not",
                        g.name(o),
                        p.axis
                    ),
                    g.node(o).span,
                    "returned before its reduction",
                )
                .with_secondary(g.return_span, "returned here")
                .with_help(format!(
                    "reduce it with an allreduce over `{}` before returning it",
                    p.axis
                )),
            );
        }
    }
    diags
}
