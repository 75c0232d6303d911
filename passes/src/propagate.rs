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
//! order.

use std::collections::BTreeMap;

use tpc_ir::rule::{rule_of, FactorId, FactorKind, FactorRule};
use tpc_ir::{Dim, Factor, Graph, Op, Partial, ReduceOp, TensorType, ValueId};

use crate::Result;

/// Where a value lies on one mesh axis.
#[derive(Clone, Debug, PartialEq)]
enum Place {
    /// Dim `dim` seen as `[outer, size, inner]`, its `size` part divided over the axis.
    Split {
        dim: usize,
        outer: Dim,
        size: Dim,
        inner: Dim,
    },
    /// A pending reduction.
    Partial(ReduceOp),
    /// Used by a factor split over several axes at once: kept as written, not propagated.
    Fixed,
}

/// A value's places, by mesh axis.
type Places = BTreeMap<String, Place>;

fn product(dims: &[Dim]) -> Dim {
    dims.iter()
        .fold(Dim::constant(1), |acc, d| acc.mul(d).unwrap_or(acc))
}

/// The places a type's sharding already gives.
fn places_of(ty: &TensorType) -> Places {
    let mut out = Places::new();
    for (dim, ds) in ty.sharding.dims.iter().enumerate() {
        let extents: Vec<Dim> = ds.factors.iter().map(|f| f.extent.clone()).collect();
        for (j, f) in ds.factors.iter().enumerate() {
            match f.axes.as_slice() {
                [] => {}
                [axis] => {
                    let place = Place::Split {
                        dim,
                        outer: product(&extents[..j]),
                        size: f.extent.clone(),
                        inner: product(&extents[j + 1..]),
                    };
                    out.insert(axis.clone(), place);
                }
                several => {
                    for a in several {
                        out.insert(a.clone(), Place::Fixed);
                    }
                }
            }
        }
    }
    for p in &ty.sharding.partial {
        out.insert(p.axis.clone(), Place::Partial(p.op));
    }
    out
}

/// A split as the op's rule sees it: factor `f` seen as `[outer, size, inner]`.
#[derive(Clone, Debug, PartialEq)]
struct FactorSplit {
    factor: FactorId,
    outer: Dim,
    size: Dim,
    inner: Dim,
}

/// The rule factor of a dim (made of `factors`, outer first) that holds the split
/// `[outer, size, inner]` entirely, with the split in that factor's terms.
fn locate(
    rule: &FactorRule,
    factors: &[FactorId],
    outer: &Dim,
    size: &Dim,
    inner: &Dim,
) -> Option<FactorSplit> {
    let extents: Vec<Dim> = factors
        .iter()
        .map(|&f| rule.factors[f].extent.clone())
        .collect();
    for (j, &f) in factors.iter().enumerate() {
        let before = product(&extents[..j]);
        let after = product(&extents[j + 1..]);
        let Some(o) = outer.exact_div(&before) else {
            continue;
        };
        let Some(i) = inner.exact_div(&after) else {
            continue;
        };
        if o.mul(size).ok().and_then(|p| p.mul(&i).ok()).as_ref() == Some(&extents[j]) {
            return Some(FactorSplit {
                factor: f,
                outer: o,
                size: size.clone(),
                inner: i,
            });
        }
    }
    None
}

/// The place in a tensor's dim (made of `factors`) of a split of factor `s.factor`.
fn place_in(rule: &FactorRule, dim: usize, factors: &[FactorId], s: &FactorSplit) -> Option<Place> {
    let j = factors.iter().position(|&f| f == s.factor)?;
    let extents: Vec<Dim> = factors
        .iter()
        .map(|&f| rule.factors[f].extent.clone())
        .collect();
    Some(Place::Split {
        dim,
        outer: product(&extents[..j]).mul(&s.outer).ok()?,
        size: s.size.clone(),
        inner: s.inner.mul(&product(&extents[j + 1..])).ok()?,
    })
}

struct State {
    places: BTreeMap<ValueId, Places>,
}

impl State {
    /// Gives `v` the place `p` on `axis` when it has none there, the dim is open and unsplit.
    fn offer(&mut self, g: &Graph, v: ValueId, axis: &str, p: Place) -> bool {
        let places = self.places.entry(v).or_default();
        if places.contains_key(axis) {
            return false;
        }
        if let Place::Split { dim, .. } = &p {
            let ds = g.ty(v).sharding.dims.get(*dim);
            let closed =
                ds.is_some_and(|d| d.closed || d.factors.iter().any(|f| !f.axes.is_empty()));
            let taken = places
                .values()
                .any(|q| matches!(q, Place::Split { dim: d, .. } if d == dim));
            if closed || taken {
                return false;
            }
        }
        places.insert(axis.to_string(), p);
        true
    }

    /// Propagates every axis through the op producing `v` (its rule and operands given); true
    /// when some value gained a place.
    fn through(
        &mut self,
        g: &Graph,
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
            // The first tensor (operands in order, then the result) whose split lies in one factor.
            let split = tensors.iter().find_map(|(t, dims, _)| {
                match self.places.get(t).and_then(|p| p.get(axis)) {
                    Some(Place::Split {
                        dim,
                        outer,
                        size,
                        inner,
                    }) => locate(rule, dims.get(*dim)?, outer, size, inner),
                    _ => None,
                }
            });
            let Some(split) = split else { continue };
            let kind = rule.factors[split.factor].kind;
            if kind == FactorKind::Replicated {
                continue;
            }
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
        }
        changed
    }
}

/// Writes the places a value gained into its type's sharding.
fn write_back(ty: &mut TensorType, before: &Places, after: &Places) {
    for (axis, p) in after {
        if before.contains_key(axis) {
            continue;
        }
        match p {
            Place::Split {
                dim,
                outer,
                size,
                inner,
            } => {
                let one = Dim::constant(1);
                let mut factors = Vec::new();
                if *outer != one {
                    factors.push(Factor {
                        extent: outer.clone(),
                        axes: vec![],
                    });
                }
                factors.push(Factor {
                    extent: size.clone(),
                    axes: vec![axis.clone()],
                });
                if *inner != one {
                    factors.push(Factor {
                        extent: inner.clone(),
                        axes: vec![],
                    });
                }
                if let Some(ds) = ty.sharding.dims.get_mut(*dim) {
                    ds.factors = factors;
                }
            }
            Place::Partial(op) => ty.sharding.partial.push(Partial {
                axis: axis.clone(),
                op: *op,
            }),
            Place::Fixed => {}
        }
    }
}

pub fn run(g: &mut Graph) -> Result<bool> {
    let axes: Vec<String> = g.mesh.axes.iter().map(|a| a.name.clone()).collect();
    if axes.is_empty() {
        return Ok(false);
    }
    let order: Vec<ValueId> = g.values().to_vec();
    let initial: BTreeMap<ValueId, Places> =
        order.iter().map(|&v| (v, places_of(g.ty(v)))).collect();
    let mut state = State {
        places: initial.clone(),
    };
    // Rules and operands do not change while propagating: compute them once.
    let ops: Vec<(ValueId, FactorRule, Vec<ValueId>)> = order
        .iter()
        .filter(|&&v| !matches!(g.op(v), Op::Param { .. }))
        .map(|&v| (v, rule_of(g, v), g.operands(v)))
        .collect();
    // Each round adds at least one (value, axis) place, so this many rounds always suffice.
    let limit = order.len() * axes.len() + 1;
    for _ in 0..limit {
        let mut changed = false;
        for (v, rule, operands) in ops.iter().chain(ops.iter().rev()) {
            changed |= state.through(g, *v, rule, operands, &axes);
        }
        if !changed {
            break;
        }
    }
    let mut changed = false;
    for &v in &order {
        let (before, after) = (&initial[&v], &state.places[&v]);
        if before != after {
            write_back(&mut g.node_mut(v).ty, before, after);
            changed = true;
        }
    }
    Ok(changed)
}
