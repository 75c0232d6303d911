//! Factor rules: how each op's operand dims relate to its result's dims.
//!
//! Every op states, once, here, which *factors* its dims are made of. A dim is the row-major
//! product of its factors; the same factor id in two places means "the same index space", so a
//! split of that factor in one place is the same split in the other. Sharding propagation,
//! resharding and the cost model read these rules and never the op kinds.

use crate::dim::Dim;
use crate::graph::{Graph, ValueId};
use crate::ops::Op;
use crate::types::{ReduceOp, TensorType};

/// Index of a factor within one rule.
pub type FactorId = usize;

/// What splitting a factor over a mesh axis means for the op.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FactorKind {
    /// In operands and result alike: each rank computes its own part; no communication.
    Pass,
    /// In operands only: each rank computes a partial result, pending this reduction.
    Reduction(ReduceOp),
    /// Must be whole on every rank (softmax's dim, normalized dims, sdpa's key sequence, a
    /// reshape group that has no common factoring).
    Replicated,
    /// In the result only (a broadcast's new dims, `full`'s dims): any rank makes its part alone.
    New,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FactorDef {
    pub extent: Dim,
    pub kind: FactorKind,
}

/// One op's rule: the factors, and which factors (outer first) make up each dim of each operand
/// and of the result. A dim of extent 1 has no factors.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FactorRule {
    pub factors: Vec<FactorDef>,
    pub operands: Vec<Vec<Vec<FactorId>>>,
    pub result: Vec<Vec<FactorId>>,
    /// Whether a reduction pending in operand 0 stays pending in the result (the op's
    /// linearity), so that resharding may leave the reduction for later.
    pub carries_partial: PartialFlow,
}

/// How a reduction pending in an op's operand 0 passes through the op.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum PartialFlow {
    /// It does not: a partial operand is reduced first.
    #[default]
    Blocked,
    /// The op only moves elements, or maps them monotonically one by one (reshape, permute, a
    /// float cast): any pending reduction stays pending.
    Moves,
    /// The op is linear in operand 0 while its other operands are whole (multiplying or dividing
    /// by a replicated value): a pending sum stays pending.
    Linear,
}

impl FactorRule {
    /// Whether a reduction `op` pending in operand 0 stays pending in the result (the other
    /// operands then whole on that axis).
    pub fn carries(&self, op: ReduceOp) -> bool {
        match self.carries_partial {
            PartialFlow::Blocked => false,
            PartialFlow::Moves => true,
            PartialFlow::Linear => op == ReduceOp::Sum,
        }
    }
}

impl FactorRule {
    pub(crate) fn add(&mut self, extent: Dim, kind: FactorKind) -> FactorId {
        self.factors.push(FactorDef { extent, kind });
        self.factors.len() - 1
    }

    /// A factor for one dim, or none for an extent-1 dim.
    pub(crate) fn dim_factor(&mut self, extent: &Dim, kind: FactorKind) -> Vec<FactorId> {
        if *extent == Dim::constant(1) {
            Vec::new()
        } else {
            vec![self.add(extent.clone(), kind)]
        }
    }

    /// The factors of a dim of `operand`.
    pub fn operand_dim(&self, operand: usize, dim: usize) -> &[FactorId] {
        self.operands
            .get(operand)
            .and_then(|o| o.get(dim))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }
}

/// The rule of the op producing `v`, seen from the result `v` is.
pub fn rule_of(g: &Graph, v: ValueId) -> FactorRule {
    let tys: Vec<&TensorType> = g.operands(v).into_iter().map(|o| g.ty(o)).collect();
    g.op(v).def().rule(&tys, &g.ty(v).shape, g.node(v).result)
}

/// The rule of `op` (seen from its first result) applied to operands of types `xs` with result
/// shape `out`. The op must have passed inference with these operands.
pub fn factor_rule(op: &Op, xs: &[&TensorType], out: &[Dim]) -> FactorRule {
    op.def().rule(xs, out, 0)
}

/// Checks that a rule fits the shapes it was made for: one factor list per dim, each multiplying
/// to its dim, reductions only in operands and new factors only in the result. For tests and
/// debug assertions in the passes.
pub fn check_rule(rule: &FactorRule, operands: &[&TensorType], out: &[Dim]) -> Result<(), String> {
    let fits = |dims: &[Vec<FactorId>], shape: &[Dim], what: &str| -> Result<(), String> {
        if dims.len() != shape.len() {
            return Err(format!(
                "{what}: {} factor lists for rank {}",
                dims.len(),
                shape.len()
            ));
        }
        for (i, (fs, d)) in dims.iter().zip(shape).enumerate() {
            let mut p = Dim::constant(1);
            for &f in fs {
                let def = rule
                    .factors
                    .get(f)
                    .ok_or_else(|| format!("{what}: factor {f} does not exist"))?;
                p = p.mul(&def.extent).map_err(|e| e.to_string())?;
            }
            if p != *d {
                return Err(format!("{what} dim {i}: factors multiply to {p}, not {d}"));
            }
        }
        Ok(())
    };
    if rule.operands.len() != operands.len() {
        return Err(format!(
            "{} operand lists for {} operands",
            rule.operands.len(),
            operands.len()
        ));
    }
    for (k, (dims, ty)) in rule.operands.iter().zip(operands).enumerate() {
        fits(dims, &ty.shape, &format!("operand {k}"))?;
        if dims
            .iter()
            .flatten()
            .any(|&f| rule.factors[f].kind == FactorKind::New)
        {
            return Err(format!("operand {k} has a new factor"));
        }
    }
    fits(&rule.result, out, "result")?;
    if rule
        .result
        .iter()
        .flatten()
        .any(|&f| matches!(rule.factors[f].kind, FactorKind::Reduction(_)))
    {
        return Err("the result has a reduction factor".into());
    }
    Ok(())
}

/// Stand-in values for symbols when grouping reshape dims: distinct large primes, so that two
/// products agree numerically only when they agree symbolically (checked exactly afterwards).
fn estimate(d: &Dim) -> Option<i128> {
    const PRIMES: [i64; 8] = [
        10_007, 10_009, 10_037, 10_039, 10_061, 10_067, 10_069, 10_079,
    ];
    let bindings = d
        .symbols()
        .into_iter()
        .map(|s| {
            let h = s
                .bytes()
                .fold(0usize, |a, b| a.wrapping_mul(31).wrapping_add(b as usize));
            (s, PRIMES[h % PRIMES.len()] + (h % 997) as i64 * 100)
        })
        .collect();
    d.eval(&bindings).ok().map(|v| v as i128)
}

/// Groups the dims of a reshape into runs with equal products, then factors each group by the
/// finest common refinement of both sides' row-major boundaries. A group with none (`[6, 4]` to
/// `[4, 6]`) or with symbols on both sides of a many-to-many change keeps its dims whole.
pub(crate) fn reshape_factors(
    r: &mut FactorRule,
    from: &[Dim],
    to: &[Dim],
) -> (Vec<Vec<FactorId>>, Vec<Vec<FactorId>>) {
    let one = Dim::constant(1);
    let mut a_out: Vec<Vec<FactorId>> = vec![Vec::new(); from.len()];
    let mut b_out: Vec<Vec<FactorId>> = vec![Vec::new(); to.len()];
    let a_idx: Vec<usize> = (0..from.len()).filter(|&i| from[i] != one).collect();
    let b_idx: Vec<usize> = (0..to.len()).filter(|&i| to[i] != one).collect();
    let (mut i, mut j) = (0, 0);
    while i < a_idx.len() && j < b_idx.len() {
        let (gi, gj) = (i, j);
        let mut pa = estimate(&from[a_idx[i]]);
        let mut pb = estimate(&to[b_idx[j]]);
        i += 1;
        j += 1;
        loop {
            match (pa, pb) {
                (Some(x), Some(y)) if x == y => break,
                (Some(x), Some(y)) if x < y && i < a_idx.len() => {
                    pa = estimate(&from[a_idx[i]]).and_then(|e| x.checked_mul(e));
                    i += 1;
                }
                (Some(x), Some(y)) if x > y && j < b_idx.len() => {
                    pb = estimate(&to[b_idx[j]]).and_then(|e| y.checked_mul(e));
                    j += 1;
                }
                _ => {
                    // No equal-product grouping (or overflow): everything left stays whole.
                    i = a_idx.len();
                    j = b_idx.len();
                    break;
                }
            }
        }
        factor_group(
            r,
            from,
            &a_idx[gi..i],
            &mut a_out,
            to,
            &b_idx[gj..j],
            &mut b_out,
        );
    }
    for &k in &a_idx[i.min(a_idx.len())..] {
        a_out[k] = r.dim_factor(&from[k], FactorKind::Replicated);
    }
    for &k in &b_idx[j.min(b_idx.len())..] {
        b_out[k] = r.dim_factor(&to[k], FactorKind::Replicated);
    }
    (a_out, b_out)
}

#[allow(clippy::too_many_arguments)]
fn factor_group(
    r: &mut FactorRule,
    from: &[Dim],
    a: &[usize],
    a_out: &mut [Vec<FactorId>],
    to: &[Dim],
    b: &[usize],
    b_out: &mut [Vec<FactorId>],
) {
    let whole = |r: &mut FactorRule, a_out: &mut [Vec<FactorId>], b_out: &mut [Vec<FactorId>]| {
        for &k in a {
            a_out[k] = r.dim_factor(&from[k], FactorKind::Replicated);
        }
        for &k in b {
            b_out[k] = r.dim_factor(&to[k], FactorKind::Replicated);
        }
    };
    // One side is a single dim: the other side's dims are its factors (splits and merges).
    let (single, many, single_out, many_out, many_dims, single_dims) = if a.len() == 1 {
        (a[0], b, &mut *a_out, &mut *b_out, to, from)
    } else if b.len() == 1 {
        (b[0], a, &mut *b_out, &mut *a_out, from, to)
    } else {
        return refine(r, from, a, a_out, to, b, b_out).unwrap_or_else(|| whole(r, a_out, b_out));
    };
    let product = many
        .iter()
        .try_fold(Dim::constant(1), |p, &k| p.mul(&many_dims[k]));
    if product.as_ref() != Ok(&single_dims[single]) {
        return whole(r, single_out, many_out);
    }
    for &k in many {
        let f = r.dim_factor(&many_dims[k], FactorKind::Pass);
        single_out[single].extend(f.iter().copied());
        many_out[k] = f;
    }
}

/// Finest common refinement of two groups of constant dims, or `None` when their row-major
/// boundaries do not nest.
fn refine(
    r: &mut FactorRule,
    from: &[Dim],
    a: &[usize],
    a_out: &mut [Vec<FactorId>],
    to: &[Dim],
    b: &[usize],
    b_out: &mut [Vec<FactorId>],
) -> Option<()> {
    let consts = |dims: &[Dim], idx: &[usize]| {
        idx.iter()
            .map(|&k| dims[k].as_const())
            .collect::<Option<Vec<i64>>>()
    };
    let (av, bv) = (consts(from, a)?, consts(to, b)?);
    // Inner sizes at each boundary, innermost first.
    let bounds = |v: &[i64]| {
        let mut out = vec![1i64];
        for x in v.iter().rev() {
            out.push(out.last()?.checked_mul(*x)?);
        }
        Some(out)
    };
    let (ba, bb) = (bounds(&av)?, bounds(&bv)?);
    let mut all: Vec<i64> = ba.iter().chain(&bb).copied().collect();
    all.sort_unstable();
    all.dedup();
    if all.windows(2).any(|w| w[1] % w[0] != 0) {
        return None;
    }
    // Factors innermost first: the ratio between consecutive boundaries.
    let factors: Vec<(i64, i64, FactorId)> = all
        .windows(2)
        .map(|w| {
            (
                w[0],
                w[1],
                r.add(Dim::constant(w[1] / w[0]), FactorKind::Pass),
            )
        })
        .collect();
    let assign = |idx: &[usize], bv: &[i64], out: &mut [Vec<FactorId>]| {
        for (pos, &k) in idx.iter().enumerate() {
            let hi = bv[idx.len() - pos];
            let lo = bv[idx.len() - pos - 1];
            out[k] = factors
                .iter()
                .rev()
                .filter(|(l, h, _)| *l >= lo && *h <= hi)
                .map(|f| f.2)
                .collect();
        }
    };
    assign(a, &ba, a_out);
    assign(b, &bb, b_out);
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::DType;
    use crate::ops::{Broadcast, Linear, Matmul, Reshape, Sdpa, Softmax};

    fn t(shape: &[Dim]) -> TensorType {
        TensorType::new(DType::F32, shape.to_vec())
    }

    fn d(n: i64) -> Dim {
        Dim::constant(n)
    }

    fn extents(r: &FactorRule, ids: &[FactorId]) -> Vec<String> {
        ids.iter()
            .map(|&f| r.factors[f].extent.to_string())
            .collect()
    }

    fn reshape(from: &[Dim], to: &[Dim]) -> FactorRule {
        factor_rule(
            &Op::Reshape(Reshape { shape: to.to_vec() }),
            &[&t(from)],
            to,
        )
    }

    #[test]
    fn reshape_splits_a_fused_dim_into_factors() {
        let (b, s) = (Dim::symbol("B"), Dim::symbol("S"));
        let r = reshape(
            &[b.clone(), s.clone(), d(2304)],
            &[b, s, d(3), d(16), d(48)],
        );
        assert_eq!(extents(&r, r.operand_dim(0, 2)), ["3", "16", "48"]);
        assert_eq!(
            r.result[2..],
            [
                vec![r.operands[0][2][0]],
                vec![r.operands[0][2][1]],
                vec![r.operands[0][2][2]]
            ]
        );
        assert_eq!(r.operands[0][0], r.result[0]);
        assert!(r.factors.iter().all(|f| f.kind == FactorKind::Pass));
    }

    #[test]
    fn reshape_merges_and_refines_many_to_many() {
        let r = reshape(&[d(16), d(48)], &[d(768)]);
        assert_eq!(extents(&r, &r.result[0]), ["16", "48"]);
        // [12, 4] -> [3, 16]: inner boundaries {1, 4, 48} and {1, 16, 48} nest as 1 | 4 | 16 | 48,
        // so the factors are 3, 4, 4 (outer first): 12 = (3, 4), 16 = (4, 4).
        let r = reshape(&[d(12), d(4)], &[d(3), d(16)]);
        assert_eq!(extents(&r, &r.operands[0][0]), ["3", "4"]);
        assert_eq!(extents(&r, &r.operands[0][1]), ["4"]);
        assert_eq!(extents(&r, &r.result[1]), ["4", "4"]);
        // [6, 4] -> [4, 6] has no common factoring: every dim stays whole.
        let r = reshape(&[d(6), d(4)], &[d(4), d(6)]);
        assert!(r.factors.iter().all(|f| f.kind == FactorKind::Replicated));
    }

    #[test]
    fn reshape_with_symbols_and_unit_dims() {
        let (b, s) = (Dim::symbol("B"), Dim::symbol("S"));
        let bs = b.mul(&s).unwrap();
        let r = reshape(&[b.clone(), s.clone(), d(1), d(768)], &[bs, d(768)]);
        assert_eq!(r.result[0], [r.operands[0][0][0], r.operands[0][1][0]]);
        assert!(r.operands[0][2].is_empty());
        assert_eq!(r.result[1], r.operands[0][3]);
    }

    #[test]
    fn matmul_contracts_k_as_a_sum_and_linear_shares_out_with_bias() {
        let r = factor_rule(
            &Op::Matmul(Matmul),
            &[&t(&[d(2), d(8), d(4)]), &t(&[d(4), d(6)])],
            &[d(2), d(8), d(6)],
        );
        let k = r.operands[0][2][0];
        assert_eq!(r.operands[1][0], [k]);
        assert_eq!(r.factors[k].kind, FactorKind::Reduction(ReduceOp::Sum));
        assert_eq!(r.result[0], r.operands[0][0]);
        let r = factor_rule(
            &Op::Linear(Linear),
            &[&t(&[d(2), d(4)]), &t(&[d(6), d(4)]), &t(&[d(6)])],
            &[d(2), d(6)],
        );
        assert_eq!(r.operands[2][0], r.result[1]);
        assert_eq!(r.operands[1][1], r.operands[0][1]);
    }

    #[test]
    fn broadcast_dims_are_new_and_softmax_dim_is_whole() {
        let r = factor_rule(
            &Op::Broadcast(Broadcast {
                shape: vec![d(4), d(3)],
                implicit: true,
            }),
            &[&t(&[d(3)])],
            &[d(4), d(3)],
        );
        assert_eq!(r.factors[r.result[0][0]].kind, FactorKind::New);
        assert_eq!(r.operands[0], [r.result[1].clone()]);
        let r = factor_rule(
            &Op::Softmax(Softmax { dim: 1 }),
            &[&t(&[d(4), d(3)])],
            &[d(4), d(3)],
        );
        assert_eq!(r.factors[r.result[1][0]].kind, FactorKind::Replicated);
        assert_eq!(r.factors[r.result[0][0]].kind, FactorKind::Pass);
    }

    #[test]
    fn sdpa_shares_heads_and_keeps_keys_whole() {
        let q = t(&[d(2), d(16), d(8), d(48)]);
        let r = factor_rule(
            &Op::Sdpa(Sdpa {
                causal: true,
                scale: None,
                stats: false,
            }),
            &[&q, &q, &q],
            &q.shape,
        );
        assert_eq!(r.operands[1][1], r.result[1], "heads are one factor");
        assert_eq!(r.factors[r.operands[1][2][0]].kind, FactorKind::Replicated);
    }
}
